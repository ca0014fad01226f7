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
.state-healthcheckfailed,.health-healthcheckfailed,.health-error,.health-ejected{color:#b3261e;font-weight:600}\
table.members{width:100%}td.url{word-break:break-all;min-width:12em}.pod{color:#555;font-size:.9em}\
tr.more td{border-top:none;padding:0 .55em .2em;font-size:.9em}summary{cursor:pointer;color:#555}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1em .8em;margin:.3em 0}dt{color:#555}\
dd{margin:0;word-break:break-word}.class-5xx{color:#b3261e}";

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
        "<table class=\"members\">\n<thead><tr><th>Member</th><th>Status</th><th>Health</th>\
         <th title=\"Time since the member's state last changed\">For</th>\
         <th title=\"Answers per second over the last minute\">Req/s</th>\
         <th title=\"5xx answers per second over the last minute\">5xx/s</th>\
         <th title=\"Answer time, median, over the last minute\">p50</th>\
         <th title=\"Answer time, 99th percentile, over the last minute\">p99</th>\
         <th title=\"Answers since start by status class\">Answers</th>\
         <th title=\"Requests in flight\">Busy</th>\
         <th title=\"Requests sent to the member since start\">Elected</th>\
         <th title=\"Load factor\">Factor</th><th title=\"Failed requests\">Errors</th>\
         </tr></thead>\n<tbody>\n",
    );
    if c.members.is_empty() {
        writeln!(
            out,
            "<tr><td colspan=\"{MEMBER_COLUMNS}\">No members.</td></tr>"
        )?;
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

/// Columns of a member's row: the figures that matter most, the rest under "More".
const MEMBER_COLUMNS: usize = 13;

fn write_member(out: &mut String, m: &MemberView) -> fmt::Result {
    let s = &m.status;
    let url = Escaped(&s.url);
    let traffic = m.traffic.clone().unwrap_or_default();
    writeln!(
        out,
        "<tr data-member=\"{url}\"><td class=\"url\">{url}{}</td>\
         <td class=\"status state-{}\"{}>{}</td><td class=\"health health-{}\">{}</td>\
         <td class=\"num age\">{}</td><td class=\"num rps\">{}</td>\
         <td class=\"num eps\">{}</td><td class=\"num p50\">{}</td>\
         <td class=\"num p99\">{}</td><td class=\"classes\">{}</td>\
         <td class=\"num busy\">{}</td><td class=\"num elected\">{}</td>\
         <td class=\"num factor\">{}</td><td class=\"num errors\">{}</td></tr>",
        match &s.pod {
            Some(pod) => format!("<div class=\"pod\">{}</div>", Escaped(pod)),
            None => String::new(),
        },
        Escaped(&s.state.to_ascii_lowercase()),
        match &s.last_error {
            Some(error) if !error.is_empty() => format!(" title=\"{}\"", Escaped(error)),
            _ => String::new(),
        },
        Escaped(&s.state),
        Escaped(&m.health.to_ascii_lowercase()),
        Escaped(&m.health),
        age(m.state_age_seconds),
        rate(traffic.requests_per_second),
        rate(traffic.errors_per_second),
        millis(traffic.p50_ms),
        millis(traffic.p99_ms),
        classes(&traffic.by_class),
        s.busy,
        s.elected,
        s.load_factor,
        m.errors,
    )?;
    write_member_details(out, m)
}

/// The member's other columns (Apache's), shown on demand in a row of their own.
fn write_member_details(out: &mut String, m: &MemberView) -> fmt::Result {
    let s = &m.status;
    writeln!(
        out,
        "<tr class=\"more\" data-member-more=\"{}\"><td colspan=\"{MEMBER_COLUMNS}\"><details>\
         <summary>More</summary><dl>\
         <dt>Route</dt><dd class=\"route\">{}</dd><dt>Set</dt><dd class=\"set\">{}</dd>\
         <dt>Load</dt><dd class=\"load\">{}</dd>\
         <dt>To</dt><dd class=\"to\" title=\"{} bytes\">{}</dd>\
         <dt>From</dt><dd class=\"from\" title=\"{} bytes\">{}</dd>\
         <dt>Last error</dt><dd class=\"last-error\">{}</dd>\
         <dt>Protocol</dt><dd class=\"protocol\">{}</dd><dt>gRPC</dt><dd class=\"grpc-status\">{}</dd>",
        Escaped(&s.url),
        Escaped(s.route.as_deref().unwrap_or("-")),
        s.lbset,
        m.load,
        s.sent_bytes,
        human_size(s.sent_bytes),
        s.received_bytes,
        human_size(s.received_bytes),
        Escaped(
            s.last_error
                .as_deref()
                .filter(|e| !e.is_empty())
                .unwrap_or("-")
        ),
        Escaped(&m.protocol),
        grpc_statuses(m),
    )?;
    match &m.health_check {
        // Apache's columns: the thresholds, with the checks in a row so far in brackets.
        Some(hc) => write!(
            out,
            "<dt>Health check</dt><dd class=\"hc\"><span class=\"hc-method\">{}</span> \
             <span class=\"hc-uri\">{}</span> every <span class=\"hc-interval\">{}</span>; \
             passes <span class=\"hc-passes\">{} ({})</span>, fails \
             <span class=\"hc-fails\">{} ({})</span></dd>",
            Escaped(&hc.method),
            Escaped(&hc.uri),
            duration(hc.interval_ms),
            hc.passes,
            hc.passed_in_a_row,
            hc.fails,
            hc.failed_in_a_row,
        )?,
        None => out.write_str("<dt>Health check</dt><dd class=\"hc\">-</dd>")?,
    }
    writeln!(out, "</dl></details></td></tr>")
}

fn grpc_statuses(m: &MemberView) -> String {
    if m.grpc_status.is_empty() {
        return "-".to_owned();
    }
    let shown: Vec<String> = m
        .grpc_status
        .iter()
        .map(|(code, count)| format!("{code} {count}"))
        .collect();
    Escaped(&shown.join(", ")).to_string()
}

/// A rate per second: one decimal, `-` before there is one.
fn rate(per_second: Option<f64>) -> String {
    match per_second {
        Some(r) => format!("{r:.1}"),
        None => "-".to_owned(),
    }
}

/// An answer time: `0.42 ms` under 10 ms, `12.3 ms` under 100, `123 ms` above; `-` without.
fn millis(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms < 10.0 => format!("{ms:.2}&nbsp;ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}&nbsp;ms"),
        Some(ms) => format!("{ms:.0}&nbsp;ms"),
        None => "-".to_owned(),
    }
}

/// Answers by class, as `2xx 120 5xx 3` (each class in a span of its own).
fn classes(by_class: &std::collections::BTreeMap<String, u64>) -> String {
    if by_class.is_empty() {
        return "-".to_owned();
    }
    by_class
        .iter()
        .map(|(class, n)| {
            format!(
                "<span class=\"class-{0}\">{0}&nbsp;{n}</span>",
                Escaped(class)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A time since, to the second below a minute and coarser above (`45s`, `3m 20s`, `2h 5m`,
/// `4d 2h`).
fn age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m&nbsp;{s}s"),
        (0, _, _) => format!("{h}h&nbsp;{m}m"),
        _ => format!("{d}d&nbsp;{h}h"),
    }
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
    use crate::admin::manager::{ConflictView, HealthCheckView, TimeoutsView, TrafficView};
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
                "<dt>Protocol</dt><dd class=\"protocol\">h2c</dd><dt>gRPC</dt><dd class=\"grpc-status\">OK 40, UNAVAILABLE 2</dd>"
            ),
            "{page}"
        );
    }

    #[test]
    fn page_shows_rates_answer_times_and_classes_first() {
        let mut view = view_with("web.example.com", "http://10.0.0.1:8080", "refused");
        view.clusters[0].members[0].traffic = Some(TrafficView {
            window_seconds: Some(60.0),
            requests_per_second: Some(12.25),
            errors_per_second: Some(0.5),
            p50_ms: Some(0.4234),
            p99_ms: Some(123.4),
            by_class: [("2xx".to_owned(), 700), ("5xx".to_owned(), 30)].into(),
        });
        let page = render(&view, None);
        let row = "<tr data-member=\"http://10.0.0.1:8080\"><td class=\"url\">http://10.0.0.1:8080\
            <div class=\"pod\">web-0</div></td><td class=\"status state-ok\" title=\"refused\">Ok</td>\
            <td class=\"health health-ok\">Ok</td><td class=\"num age\">1m&nbsp;30s</td>\
            <td class=\"num rps\">12.2</td><td class=\"num eps\">0.5</td>\
            <td class=\"num p50\">0.42&nbsp;ms</td><td class=\"num p99\">123&nbsp;ms</td>\
            <td class=\"classes\"><span class=\"class-2xx\">2xx&nbsp;700</span> \
            <span class=\"class-5xx\">5xx&nbsp;30</span></td><td class=\"num busy\">0</td>\
            <td class=\"num elected\">42</td><td class=\"num factor\">3</td>\
            <td class=\"num errors\">0</td></tr>";
        assert!(page.contains(row), "no row\n{row}\nin\n{page}");
        // Without rates yet: dashes, never zeros that would look measured.
        let page = render(&view_with("a", "http://a:1", ""), None);
        assert!(
            page.contains("<td class=\"num rps\">-</td><td class=\"num eps\">-</td><td class=\"num p50\">-</td><td class=\"num p99\">-</td><td class=\"classes\">-</td>"),
            "{page}"
        );
    }

    #[test]
    fn ages_are_exact_below_a_minute_and_coarser_above() {
        for (seconds, shown) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m&nbsp;0s"),
            (3599, "59m&nbsp;59s"),
            (3600, "1h&nbsp;0m"),
            (86_399, "23h&nbsp;59m"),
            (90_000, "1d&nbsp;1h"),
        ] {
            assert_eq!(age(seconds), shown, "{seconds} s");
        }
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
            "<td class=\"url\">http://10.0.0.5:8080<div class=\"pod\">web-0</div></td>",
            "<td class=\"num elected\">42</td>",
            "<dd class=\"to\" title=\"1229 bytes\">1.2K</dd>",
            "<dd class=\"from\" title=\"3565158 bytes\">3.4M</dd>",
            "<td class=\"status state-ok\">Ok</td>",
            "<dd class=\"load\">-1</dd>",
            "<td class=\"health health-ok\">Ok</td>",
            "<span class=\"hc-method\">GET</span> <span class=\"hc-uri\">/&lt;up&gt;</span> every <span class=\"hc-interval\">5s</span>",
            "passes <span class=\"hc-passes\">2 (0)</span>, fails <span class=\"hc-fails\">3 (1)</span>",
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
