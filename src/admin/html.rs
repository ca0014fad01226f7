//! The balancer-manager as an HTML page: self-contained (no external CSS or scripts), read-only,
//! and escaping everything it prints, since hosts, routes and errors come from user input.

use std::fmt::{self, Write};
use std::time::Duration;

use super::manager::{ClusterView, ManagerView, MemberView};

/// How often the page asks the browser to reload when `?refresh=N` is given, at most.
pub const MAX_REFRESH_SECS: u32 = 3600;

/// Text made safe for HTML element content and quoted attribute values.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// `text` escaped for HTML.
pub fn escape(text: &str) -> String {
    Escaped(text).to_string()
}

/// A byte count the way the balancer-manager shows its To and From columns: plain below 1000,
/// then binary units with one decimal below 10 (`1.2K`, `3.4M`) and none above (`12K`, `999M`).
pub fn human_size(bytes: u64) -> String {
    if bytes < 1000 {
        return bytes.to_string();
    }
    // Precision loss above 2^53 bytes does not matter for a figure shown with two digits.
    let mut value = bytes as f64;
    for unit in ["K", "M", "G", "T", "P"] {
        value /= 1024.0;
        if value < 9.95 {
            return format!("{value:.1}{unit}");
        }
        if value < 999.5 {
            return format!("{value:.0}{unit}");
        }
    }
    value /= 1024.0;
    if value < 9.95 {
        format!("{value:.1}E")
    } else {
        format!("{value:.0}E")
    }
}

/// The page for `view`; with `refresh`, the browser reloads it every that many seconds.
pub fn render(view: &ManagerView, refresh: Option<u32>) -> String {
    let mut page = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = write_page(&mut page, view, refresh);
    page
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}\
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.6em 0 .4em}\
p{margin:.3em 0}.meta,.hint{color:#555}.note{background:#f3f6fb;border-left:4px solid #6b8fc9;padding:.4em .7em}\
.warn{background:#fff4e0;border-left:4px solid #d08a00;padding:.4em .7em}\
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em}\
th,td{border:1px solid #c9ced6;padding:.25em .55em;text-align:left;vertical-align:top}\
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}\
code{font-size:.95em}.state-ok{color:#176b2c;font-weight:600}\
.state-error,.state-stopped{color:#b3261e;font-weight:600}\
.state-disabled,.state-drain{color:#8a5a00;font-weight:600}\
.state-hotstandby,.state-hotspare{color:#3d4f9f;font-weight:600}\
.state-healthcheckfailed,.health-healthcheckfailed,.health-error,.health-ejected{color:#b3261e;font-weight:600}";

fn write_page(out: &mut String, view: &ManagerView, refresh: Option<u32>) -> fmt::Result {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(secs) = refresh {
        writeln!(out, "<meta http-equiv=\"refresh\" content=\"{secs}\">")?;
    }
    out.push_str("<title>kube-balancer: balancer-manager</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Balancer manager</h1>\n");
    writeln!(
        out,
        "<p class=\"meta\">Snapshot generation <span id=\"generation\">{}</span> &middot; \
         configurations rejected <span id=\"rejected-configs\">{}</span> &middot; \
         <a href=\"?format=json\">JSON</a> &middot; <a href=\"/metrics\">metrics</a></p>",
        view.generation, view.rejected_configs
    )?;
    match refresh {
        Some(secs) => writeln!(
            out,
            "<p class=\"hint\">This page reloads every {secs} s. \
             <a href=\"?\">Stop reloading</a>.</p>"
        )?,
        None => out.push_str(
            "<p class=\"hint\">Figures are read when the page loads: reload to refresh them, \
             or <a href=\"?refresh=5\">reload every 5 s</a>.</p>\n",
        ),
    }
    out.push_str(
        "<p class=\"note\">This page is read-only. To change a member's state or load factor, \
         add it to <code>spec.memberOverrides</code> of its BalancerCluster (or of the standalone \
         file): edits are kept declaratively and survive restarts and rescheduling.</p>\n",
    );
    if !view.ready {
        out.push_str(
            "<p class=\"warn\" id=\"not-ready\">No configuration has been published yet: \
             the data plane is not ready.</p>\n",
        );
    } else if view.clusters.is_empty() {
        out.push_str("<p>No balancers are configured.</p>\n");
    }
    for cluster in &view.clusters {
        write_cluster(out, cluster)?;
    }
    out.push_str("</body>\n</html>\n");
    Ok(())
}

fn write_cluster(out: &mut String, c: &ClusterView) -> fmt::Result {
    let name = Escaped(&c.name);
    writeln!(
        out,
        "<section class=\"cluster\" data-cluster=\"{name}\">\n<h2>Balancer <code>{name}</code></h2>"
    )?;
    out.push_str(
        "<table class=\"balancer\">\n<thead><tr><th>Method</th><th>Sticky session</th>\
         <th>Failover attempts</th><th>No failover</th><th>Fail on status</th>\
         <th>Retry after error</th><th>Timeouts (connect / response / idle)</th>\
         <th>Routes</th><th>Ready members</th></tr></thead>\n<tbody><tr>",
    );
    writeln!(
        out,
        "<td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{} / {} / {}</td><td>{}</td><td class=\"num\">{} of {}</td></tr></tbody>\n</table>",
        Escaped(&c.lb_method),
        Escaped(c.sticky_session.as_deref().unwrap_or("(None)")),
        c.max_attempts,
        if c.no_failover { "On" } else { "Off" },
        fail_on_status(&c.fail_on_status),
        duration(c.retry_after_error_ms),
        duration(c.timeouts.connect_ms),
        duration(c.timeouts.response_ms),
        duration(c.timeouts.idle_ms),
        routes(c),
        c.ready_members,
        c.total_members,
    )?;
    for lost in &c.route_conflicts {
        writeln!(
            out,
            "<p class=\"warn\">Route {} is held by <code>{}</code>: requests for it do not \
             reach this balancer.</p>",
            route(lost.host.as_deref(), &lost.path_prefix),
            Escaped(&lost.held_by),
        )?;
    }
    out.push_str(
        "<table class=\"members\">\n<thead><tr><th>Worker URL</th><th>Route</th><th>Factor</th>\
         <th>Set</th><th>Status</th><th>Elected</th><th>Busy</th><th>Load</th><th>To</th>\
         <th>From</th><th>Errors</th><th>Pod</th><th>Last error</th><th>Health</th>\
         <th>HC Method</th><th>HC Interval</th><th>Passes</th><th>Fails</th><th>HC URI</th>\
         </tr></thead>\n<tbody>\n",
    );
    if c.members.is_empty() {
        out.push_str("<tr><td colspan=\"19\">No members.</td></tr>\n");
    }
    for m in &c.members {
        write_member(out, m)?;
    }
    out.push_str("</tbody>\n</table>\n");
    write_certificates(out, c)?;
    out.push_str("</section>\n");
    Ok(())
}

/// The certificates table, and what keeps the TLS from being served as configured.
fn write_certificates(out: &mut String, c: &ClusterView) -> fmt::Result {
    for problem in &c.tls_problems {
        writeln!(
            out,
            "<p class=\"warn tls-problem\">TLS: {}</p>",
            Escaped(problem)
        )?;
    }
    if c.certificates.is_empty() {
        return Ok(());
    }
    out.push_str(
        "<table class=\"certificates\">\n<thead><tr><th>Certificate</th><th>Use</th>\
         <th>Hosts</th><th>Issuer</th><th>Serial</th><th>Not after</th><th>Days left</th>\
         </tr></thead>\n<tbody>\n",
    );
    for cert in &c.certificates {
        let role = match (cert.role.as_str(), cert.default) {
            ("server", true) => "server (default)",
            (role, _) => role,
        };
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>\
             <td class=\"num{}\">{}</td></tr>",
            Escaped(&cert.source),
            Escaped(role),
            Escaped(&cert.hosts.join(", ")),
            Escaped(&cert.issuer),
            Escaped(&cert.serial),
            Escaped(&cert.not_after),
            if cert.days_left < 14 { " warn" } else { "" },
            cert.days_left,
        )?;
    }
    out.push_str("</tbody>\n</table>\n");
    Ok(())
}

fn write_member(out: &mut String, m: &MemberView) -> fmt::Result {
    let s = &m.status;
    let url = Escaped(&s.url);
    writeln!(
        out,
        "<tr data-member=\"{url}\"><td class=\"url\">{url}</td><td class=\"route\">{}</td>\
         <td class=\"num factor\">{}</td><td class=\"num set\">{}</td>\
         <td class=\"status state-{}\">{}</td><td class=\"num elected\">{}</td>\
         <td class=\"num busy\">{}</td><td class=\"num load\">{}</td>\
         <td class=\"num to\" title=\"{} bytes\">{}</td>\
         <td class=\"num from\" title=\"{} bytes\">{}</td><td class=\"num errors\">{}</td>\
         <td class=\"pod\">{}</td><td class=\"last-error\">{}</td>\
         <td class=\"health health-{}\">{}</td>",
        Escaped(s.route.as_deref().unwrap_or("")),
        s.load_factor,
        s.lbset,
        Escaped(&s.state.to_ascii_lowercase()),
        Escaped(&s.state),
        s.elected,
        s.busy,
        m.load,
        s.sent_bytes,
        human_size(s.sent_bytes),
        s.received_bytes,
        human_size(s.received_bytes),
        m.errors,
        Escaped(s.pod.as_deref().unwrap_or("")),
        Escaped(s.last_error.as_deref().unwrap_or("")),
        Escaped(&m.health.to_ascii_lowercase()),
        Escaped(&m.health),
    )?;
    match &m.health_check {
        // Apache's columns: the thresholds, with the checks in a row so far in brackets.
        Some(hc) => writeln!(
            out,
            "<td class=\"hc-method\">{}</td><td class=\"hc-interval\">{}</td>\
             <td class=\"num hc-passes\">{} ({})</td><td class=\"num hc-fails\">{} ({})</td>\
             <td class=\"hc-uri\">{}</td>",
            Escaped(&hc.method),
            duration(hc.interval_ms),
            hc.passes,
            hc.passed_in_a_row,
            hc.fails,
            hc.failed_in_a_row,
            Escaped(&hc.uri),
        )?,
        None => out.write_str(
            "<td class=\"hc-method\">-</td><td class=\"hc-interval\">-</td>\
             <td class=\"num hc-passes\">-</td><td class=\"num hc-fails\">-</td>\
             <td class=\"hc-uri\">-</td>",
        )?,
    }
    let grpc: Vec<String> = m
        .grpc_status
        .iter()
        .map(|(code, count)| format!("{code} {count}"))
        .collect();
    writeln!(
        out,
        "<td class=\"protocol\">{}</td><td class=\"grpc-status\">{}</td></tr>",
        Escaped(&m.protocol),
        if grpc.is_empty() {
            "-".to_owned()
        } else {
            Escaped(&grpc.join(", ")).to_string()
        },
    )
}

fn fail_on_status(codes: &[u16]) -> String {
    if codes.is_empty() {
        return "(none)".to_owned();
    }
    codes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn duration(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn routes(c: &ClusterView) -> String {
    if c.routes.is_empty() {
        return "(none)".to_owned();
    }
    c.routes
        .iter()
        .map(|r| route(r.host.as_deref(), &r.describe_path()))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// `host/path` (`host = /exact`, `host ~ regex`), or the path alone for a route that takes any
/// host.
fn route(host: Option<&str>, path: &str) -> String {
    let gap = if path.starts_with('/') { "" } else { " " };
    match host {
        Some(host) => format!("<code>{}{gap}{}</code>", Escaped(host), Escaped(path)),
        None => format!("<code>{}</code> (any host)", Escaped(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::manager::{ConflictView, HealthCheckView, TimeoutsView};
    use crate::api::{MemberStatus, RouteSpec};

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("a&b \"c\""), "a&amp;b &quot;c&quot;");
        assert_eq!(escape("plain.example.com/api"), "plain.example.com/api");
        assert_eq!(escape(""), "");
        assert_eq!(escape("é<ü>"), "é&lt;ü&gt;");
    }

    #[test]
    fn sizes_use_binary_units_like_the_balancer_manager() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1.0K"),
            (1024, "1.0K"),
            (1229, "1.2K"),
            (10 * 1024, "10K"),
            (999 * 1024, "999K"),
            (1023 * 1024, "1.0M"),
            (3_565_158, "3.4M"),
            (5 * 1024 * 1024 * 1024, "5.0G"),
            (u64::MAX, "16E"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(human_size(bytes), shown, "{bytes} bytes");
        }
    }

    fn view_with(host: &str, url: &str, last_error: &str) -> ManagerView {
        ManagerView {
            generation: 4,
            ready: true,
            rejected_configs: 2,
            clusters: vec![ClusterView {
                name: "shop/<b>web</b>".into(),
                lb_method: "byrequests".into(),
                sticky_session: None,
                max_attempts: 1,
                no_failover: false,
                fail_on_status: vec![502, 503],
                retry_after_error_ms: 60_000,
                timeouts: TimeoutsView {
                    connect_ms: 5_000,
                    response_ms: 60_000,
                    idle_ms: 90_000,
                },
                routes: vec![RouteSpec {
                    host: Some(host.into()),
                    path_prefix: Some("/api".into()),
                    ..RouteSpec::default()
                }],
                route_conflicts: vec![],
                certificates: vec![],
                tls_problems: vec![],
                ready_members: 1,
                total_members: 1,
                members: vec![MemberView {
                    status: MemberStatus {
                        url: url.into(),
                        pod: Some("web-0".into()),
                        route: None,
                        load_factor: 3,
                        lbset: 0,
                        state: "Ok".into(),
                        elected: 42,
                        busy: 0,
                        sent_bytes: 1229,
                        received_bytes: 3_565_158,
                        last_error: Some(last_error.into()),
                    },
                    load: -1,
                    errors: 0,
                    ejections: 0,
                    health_check_failures: 0,
                    state_age_seconds: 90,
                    traffic: None,
                    health: "Ok".into(),
                    health_check: Some(HealthCheckView {
                        method: "GET".into(),
                        interval_ms: 5_000,
                        passes: 2,
                        passed_in_a_row: 0,
                        fails: 3,
                        failed_in_a_row: 1,
                        uri: "/<up>".into(),
                        expect_status: "200-399".into(),
                        body_contains: None,
                        checks: 7,
                    }),
                    protocol: "h2c".into(),
                    grpc_status: [("OK".to_owned(), 40), ("UNAVAILABLE".to_owned(), 2)].into(),
                }],
            }],
        }
    }

    #[test]
    fn page_escapes_everything_from_user_input() {
        let mut view = view_with(
            "<script>alert(1)</script>",
            "http://a\"b:80",
            "<img src=x onerror=alert(2)>",
        );
        view.clusters[0].route_conflicts = vec![ConflictView {
            host: None,
            path_prefix: "/<u>".into(),
            held_by: "shop/<em>other</em>".into(),
        }];
        let page = render(&view, None);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>web"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;/api"));
        assert!(page.contains("data-member=\"http://a&quot;b:80\""));
        assert!(page.contains("&lt;img src=x onerror=alert(2)&gt;"));
        assert!(page.contains(
            "Route <code>/&lt;u&gt;</code> (any host) is held by <code>shop/&lt;em&gt;other&lt;/em&gt;</code>"
        ));
        assert!(!page.contains("<u>") && !page.contains("<em>"), "{page}");
    }

    #[test]
    fn page_shows_the_members_protocol_and_grpc_statuses() {
        let page = render(
            &view_with("web.example.com", "http://10.0.0.1:8080", ""),
            None,
        );
        assert!(
            page.contains(
                "<td class=\"protocol\">h2c</td><td class=\"grpc-status\">OK 40, UNAVAILABLE 2</td></tr>"
            ),
            "{page}"
        );
    }

    #[test]
    fn page_shows_the_balancer_and_member_columns() {
        let page = render(
            &view_with("shop.example.com", "http://10.0.0.5:8080", ""),
            None,
        );
        for expected in [
            "<td>(None)</td>",
            "<td>502, 503</td>",
            "<td>5s / 1m / 1m 30s</td>",
            "<code>shop.example.com/api</code>",
            "<td class=\"url\">http://10.0.0.5:8080</td>",
            "<td class=\"num elected\">42</td>",
            "<td class=\"num to\" title=\"1229 bytes\">1.2K</td>",
            "<td class=\"num from\" title=\"3565158 bytes\">3.4M</td>",
            "<td class=\"status state-ok\">Ok</td>",
            "<td class=\"num load\">-1</td>",
            "<td class=\"pod\">web-0</td>",
            "<td class=\"health health-ok\">Ok</td>",
            "<td class=\"hc-method\">GET</td><td class=\"hc-interval\">5s</td>",
            "<td class=\"num hc-passes\">2 (0)</td><td class=\"num hc-fails\">3 (1)</td>",
            "<td class=\"hc-uri\">/&lt;up&gt;</td>",
            "spec.memberOverrides",
            "?refresh=5",
        ] {
            assert!(page.contains(expected), "page lacks {expected}:\n{page}");
        }
        assert!(!page.contains("http-equiv=\"refresh\""));
        let refreshing = render(&view_with("a", "http://a:1", ""), Some(7));
        assert!(refreshing.contains("<meta http-equiv=\"refresh\" content=\"7\">"));
    }
}
