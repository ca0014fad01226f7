//! `kubectl balancer members`: the balancer-manager table, rendered from `.status` alone (the
//! leader's view, summed over replicas). Pure: an object in, text out.

use crate::admin::html::human_size;
use crate::api::BalancerClusterStatus;

const HEADER: [&str; 10] = [
    "URL", "POD", "ROUTE", "FACTOR", "SET", "STATUS", "ELECTED", "BUSY", "TO", "FROM",
];

/// What the table needs of a BalancerCluster.
pub struct View<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub class: &'a str,
    pub status: Option<&'a BalancerClusterStatus>,
}

/// The member table, the members' last errors, and the READY line, as kubectl would lay them out
/// (columns padded to their widest cell, three spaces apart).
pub fn render(view: &View<'_>) -> String {
    let Some(status) = view.status else {
        return format!(
            "READY <unknown>: {}/{} has no status yet; is a kube-balancer of class {:?} running?\n",
            view.namespace, view.name, view.class
        );
    };
    let none = || "<none>".to_owned();
    let mut rows: Vec<[String; 10]> = vec![HEADER.map(str::to_owned)];
    for m in &status.members {
        rows.push([
            m.url.clone(),
            m.pod.clone().unwrap_or_else(none),
            m.route
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(none),
            m.load_factor.to_string(),
            m.lbset.to_string(),
            m.state.clone(),
            m.elected.to_string(),
            m.busy.to_string(),
            human_size(m.sent_bytes),
            human_size(m.received_bytes),
        ]);
    }
    let mut out = String::new();
    if status.members.is_empty() {
        out.push_str("No members.\n");
    } else {
        let mut widths = [0usize; 10];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(w - cell.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }

    let listed = u32::try_from(status.members.len()).unwrap_or(u32::MAX);
    if status.total_members > listed {
        out.push_str(&format!(
            "(status lists the first {listed} of {} members)\n",
            status.total_members
        ));
    }
    let errors: Vec<String> = status
        .members
        .iter()
        .filter_map(|m| {
            m.last_error
                .as_ref()
                .map(|e| format!("  {} ({}): {e}\n", m.url, m.pod.as_deref().unwrap_or("-")))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("\nLast errors:\n");
        out.extend(errors);
    }

    out.push('\n');
    let ready = status
        .ready
        .clone()
        .unwrap_or_else(|| format!("{}/{}", status.ready_members, status.total_members));
    out.push_str(&format!("READY {ready}"));
    if let Some(method) = &status.lb_method {
        out.push_str(&format!("   METHOD {method}"));
    }
    out.push('\n');
    if let Some(accepted) = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted" && c.status != "True")
    {
        out.push_str(&format!(
            "NOT ACCEPTED: {}: {}\n",
            accepted.reason.as_deref().unwrap_or("-"),
            accepted.message.as_deref().unwrap_or("-")
        ));
    }
    if let (Some(observed), Some(generation)) = (status.observed_generation, view.generation)
        && observed < generation
    {
        out.push_str(&format!(
            "(this status is of generation {observed}; the spec is at {generation}, not yet written by the controller)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(value: serde_json::Value) -> BalancerClusterStatus {
        serde_json::from_value(value).expect("a status")
    }

    fn view(status: Option<&BalancerClusterStatus>) -> View<'_> {
        View {
            namespace: "shop",
            name: "web",
            generation: Some(2),
            class: "default",
            status,
        }
    }

    #[test]
    fn the_table_lines_up_like_kubectl_and_ends_with_ready() {
        let s = status(json!({
            "observedGeneration": 2, "lbMethod": "byrequests", "ready": "1/2",
            "readyMembers": 1, "totalMembers": 2,
            "members": [
                {"url": "http://10.244.0.10:8080", "pod": "web-a", "loadFactor": 3, "lbset": 0,
                 "state": "Ok", "elected": 6, "busy": 0, "sentBytes": 0, "receivedBytes": 1229},
                {"url": "http://10.244.0.11:8080", "pod": "web-b", "route": "b", "loadFactor": 1,
                 "lbset": 1, "state": "Drain", "elected": 12345, "busy": 2, "sentBytes": 10,
                 "receivedBytes": 20, "lastError": "connect: connection refused"},
            ],
        }));
        let text = render(&view(Some(&s)));
        assert_eq!(
            text,
            "\
URL                       POD     ROUTE    FACTOR   SET   STATUS   ELECTED   BUSY   TO   FROM
http://10.244.0.10:8080   web-a   <none>   3        0     Ok       6         0      0    1.2K
http://10.244.0.11:8080   web-b   b        1        1     Drain    12345     2      10   20

Last errors:
  http://10.244.0.11:8080 (web-b): connect: connection refused

READY 1/2   METHOD byrequests
"
        );
    }

    #[test]
    fn a_cluster_without_status_says_what_to_check() {
        assert_eq!(
            render(&view(None)),
            "READY <unknown>: shop/web has no status yet; is a kube-balancer of class \"default\" running?\n"
        );
    }

    #[test]
    fn truncation_conflicts_and_stale_status_are_said() {
        let s = status(json!({
            "observedGeneration": 1, "ready": "0/300", "readyMembers": 0, "totalMembers": 300,
            "conditions": [{"type": "Accepted", "status": "False", "reason": "RouteConflict",
                            "message": "*/ is already served by shop/old, which is older"}],
        }));
        let text = render(&view(Some(&s)));
        assert_eq!(
            text,
            "\
No members.
(status lists the first 0 of 300 members)

READY 0/300
NOT ACCEPTED: RouteConflict: */ is already served by shop/old, which is older
(this status is of generation 1; the spec is at 2, not yet written by the controller)
"
        );
    }
}
