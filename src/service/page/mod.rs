//! The status page served at `/`: one HTML document rendered on the server from the same
//! [`Snapshot`] as `/status?full=1`, so it works without JavaScript (filters are GET query
//! parameters); with JavaScript on, `page.js` re-renders it from `/status?full=1` every few
//! seconds and filters as you type. Every name is escaped (flight and system names come from
//! Tapis); the script builds its rows with `textContent`, never HTML. The stylesheet and script
//! are compiled in and allowed by their hashes in the `Content-Security-Policy`.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue};
use base64::Engine as _;
use indicatif::HumanBytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::service::status::{LastPass, Snapshot, StatusRow};

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// Phases offered by the phase filter, in life-cycle order (see `engine::state::Phase`).
const PHASES: [&str; 12] = [
    "discovered",
    "project_created",
    "task_created",
    "uploading",
    "committed",
    "processing",
    "completed",
    "results_written",
    "failed",
    "canceled",
    "deleted_in_webodm",
    "vanished",
];

/// The filter of the flights table, from the query string (`/?phase=failed&system=…&q=…`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// A phase, or `problems` (errors, failed, deleted in WebODM); empty = all.
    #[serde(default)]
    pub phase: String,
    /// A system id; empty = all.
    #[serde(default)]
    pub system: String,
    /// Words that must appear (case-insensitively) in the system, flight, error or sharing.
    #[serde(default)]
    pub q: String,
}

impl Filter {
    /// Whether a row passes the filter.
    pub fn matches(&self, row: &StatusRow) -> bool {
        let phase_ok = match self.phase.as_str() {
            "" => true,
            "problems" => rank(row) == 0,
            p => row.phase == p,
        };
        let system_ok = self.system.is_empty() || row.system_id == self.system;
        let hay = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            row.system_id,
            row.flight_name,
            row.last_error.as_deref().unwrap_or(""),
            row.notice.as_deref().unwrap_or(""),
            row.listing_error.as_deref().unwrap_or(""),
            row.shared_with.join("\n")
        )
        .to_lowercase();
        let q_ok = self
            .q
            .split_whitespace()
            .all(|w| hay.contains(&w.to_lowercase()));
        phase_ok && system_ok && q_ok
    }
}

/// What the page needs besides the snapshot.
#[derive(Debug, Clone)]
pub struct View {
    /// Base of links into WebODM (`webodm.public_url`).
    pub webodm_url: Url,
    /// `notify.stuck_after`.
    pub stuck_after: Duration,
    /// The time the page is rendered (unix ms).
    pub now_ms: i64,
}

/// Sort rank of a row: 0 problems (an error, failed, deleted in WebODM), 1 in progress,
/// 2 done (completed, results written, canceled, vanished).
pub fn rank(row: &StatusRow) -> u8 {
    if row.last_error.is_some()
        || row.listing_error.is_some()
        || row.notice.is_some()
        || matches!(row.phase.as_str(), "failed" | "deleted_in_webodm")
    {
        0
    } else if matches!(
        row.phase.as_str(),
        "completed" | "results_written" | "canceled" | "vanished"
    ) {
        2
    } else {
        1
    }
}

/// The link into WebODM for a flight: its task's map once processed (phase `completed` or
/// `results_written`), else the dashboard.
pub fn webodm_link(base: &Url, phase: &str, project_id: Option<i64>, task_id: Option<&str>) -> Url {
    let processed = matches!(phase, "completed" | "results_written");
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        match (processed, project_id, task_id) {
            (true, Some(pid), Some(tid)) => {
                path.extend(["map", "project", &pid.to_string(), "task", tid, ""]);
            }
            _ => {
                path.extend(["dashboard", ""]);
            }
        }
    }
    url
}

/// Escapes text for HTML text and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn csp_hash(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        csp_hash(JS),
        csp_hash(CSS)
    )
});

/// The response headers of the page: HTML, no caching, a strict Content-Security-Policy (only
/// the compiled-in style and script, requests only to this endpoint, no framing).
pub fn headers() -> [(HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&CSP).expect("the policy is ASCII"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

/// "3m 20s ago" / "in 4m" between `ms` and `now_ms`.
fn relative(ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - ms).abs() / 1000;
    let d = humantime::format_duration(Duration::from_secs(secs as u64)).to_string();
    let d: String = d.split(' ').take(2).collect::<Vec<_>>().join(" ");
    if ms <= now_ms {
        format!("{d} ago")
    } else {
        format!("in {d}")
    }
}

fn parse_ms(rfc3339: &str) -> Option<i64> {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .map(crate::engine::state::to_ms)
}

/// `2026-05-20 10:11:12 UTC (3m ago)`.
fn when(rfc3339: &str, now_ms: i64) -> String {
    let shown = rfc3339.replace('T', " ").replace('Z', " UTC");
    match parse_ms(rfc3339) {
        Some(ms) => format!("{shown} ({})", relative(ms, now_ms)),
        None => shown,
    }
}

fn duration_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// Renders the whole page.
pub fn render(snap: &Snapshot, filter: &Filter, view: &View) -> String {
    let mut h = String::with_capacity(16 * 1024 + snap.flights.len() * 600);
    let e = escape;
    h.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>tapis-webodm-sync</title>\n");
    h.push_str("<noscript><meta http-equiv=\"refresh\" content=\"30\"></noscript>\n<style>");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n");
    h.push_str(&format!(
        "<body data-webodm-url=\"{}\" data-stuck-after-ms=\"{}\">\n",
        e(view.webodm_url.as_str()),
        view.stuck_after.as_millis()
    ));
    h.push_str("<header><h1>tapis-webodm-sync</h1><p id=\"updated\">");
    h.push_str(&format!(
        "Snapshot {} · <span id=\"next-pass\">{}</span>",
        e(&when(&snap.written_at, view.now_ms)),
        e(&next_pass_text(snap, view.now_ms))
    ));
    h.push_str("</p></header>\n<main>\n");
    render_summary(&mut h, snap);
    render_passes(&mut h, &snap.passes, view.now_ms);
    render_flights(&mut h, snap, filter, view);
    h.push_str(concat!(
        "<section id=\"control\" hidden><h2>Control</h2>",
        "<form id=\"pass-form\"><label>Admin token <input id=\"token\" type=\"password\" ",
        "autocomplete=\"off\" placeholder=\"tapis-webodm-sync status --admin-token\"></label> ",
        "<button type=\"submit\">Start a pass now</button> <span id=\"pass-result\"></span>",
        "</form></section>\n</main>\n<script>"
    ));
    h.push_str(JS);
    h.push_str("</script>\n</body>\n</html>\n");
    h
}

fn next_pass_text(snap: &Snapshot, now_ms: i64) -> String {
    match snap.next_pass_at.as_deref() {
        None => "a pass is running".to_string(),
        Some(t) => format!("next pass {}", when(t, now_ms)),
    }
}

fn render_summary(h: &mut String, snap: &Snapshot) {
    let counts = crate::service::status::phase_counts(&snap.flights);
    h.push_str("<section id=\"summary\"><ul class=\"chips\">");
    h.push_str(&format!(
        "<li class=\"chip\"><b>{}</b> flights</li>",
        snap.flights.len()
    ));
    for (phase, n) in &counts {
        h.push_str(&format!(
            "<li class=\"chip phase-{p}\"><b>{n}</b> {p}</li>",
            p = escape(phase)
        ));
    }
    h.push_str("</ul></section>\n");
}

fn render_passes(h: &mut String, passes: &[LastPass], now_ms: i64) {
    h.push_str("<section id=\"passes\"><h2>Last passes</h2>");
    h.push_str("<table id=\"pass-table\"><thead><tr><th>Finished</th><th>Took</th><th>Systems</th><th>Flights</th><th>Created</th><th>Uploaded</th><th>Committed</th><th>Shared, processed</th><th>Errors</th></tr></thead><tbody id=\"pass-rows\">");
    if passes.is_empty() {
        h.push_str("<tr class=\"empty\"><td colspan=\"9\">No pass finished yet.</td></tr>");
    }
    for p in passes {
        let s = &p.summary;
        let errors = p.errors_total.max(s.errors.len());
        h.push_str(&format!(
            "<tr class=\"pass{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} projects, {} tasks</td><td>{} images ({})</td><td>{}</td><td>{} grants, {} restarts, {} results ({})</td><td class=\"errors\">",
            if errors > 0 { " has-errors" } else { "" },
            escape(&when(&p.finished_at, now_ms)),
            escape(&duration_ms(s.duration_ms)),
            s.systems_scanned,
            s.flights_discovered,
            s.projects_created,
            s.tasks_created,
            s.images_uploaded,
            HumanBytes(s.bytes_uploaded),
            s.tasks_committed,
            s.grants_added,
            s.tasks_restarted,
            s.results_written,
            HumanBytes(s.result_bytes),
        ));
        if errors == 0 {
            h.push('0');
        } else {
            h.push_str(&format!("<details><summary>{errors}</summary><ul>"));
            for err in &s.errors {
                h.push_str(&format!("<li>{}</li>", escape(err)));
            }
            if errors > s.errors.len() {
                h.push_str(&format!("<li>… and {} more</li>", errors - s.errors.len()));
            }
            h.push_str("</ul></details>");
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table></section>\n");
}

fn render_flights(h: &mut String, snap: &Snapshot, filter: &Filter, view: &View) {
    let e = escape;
    let mut systems: Vec<&str> = snap.flights.iter().map(|r| r.system_id.as_str()).collect();
    systems.dedup();
    systems.sort_unstable();
    systems.dedup();
    h.push_str("<section id=\"flights\"><h2>Flights</h2>");
    h.push_str("<form id=\"filter\" method=\"get\" action=\"/\"><label>Phase <select name=\"phase\" id=\"f-phase\"><option value=\"\">all</option>");
    for p in std::iter::once("problems").chain(PHASES) {
        h.push_str(&format!(
            "<option value=\"{p}\"{}>{p}</option>",
            if filter.phase == p { " selected" } else { "" }
        ));
    }
    h.push_str("</select></label> <label>System <select name=\"system\" id=\"f-system\"><option value=\"\">all</option>");
    let mut listed = false;
    for s in &systems {
        listed |= *s == filter.system;
        h.push_str(&format!(
            "<option value=\"{v}\"{}>{v}</option>",
            if filter.system == *s { " selected" } else { "" },
            v = e(s)
        ));
    }
    if !filter.system.is_empty() && !listed {
        h.push_str(&format!(
            "<option value=\"{v}\" selected>{v}</option>",
            v = e(&filter.system)
        ));
    }
    h.push_str(&format!(
        "</select></label> <label>Search <input type=\"search\" name=\"q\" id=\"f-q\" value=\"{}\"></label> <button type=\"submit\" id=\"f-apply\">Filter</button></form>",
        e(&filter.q)
    ));
    let mut rows: Vec<&StatusRow> = snap.flights.iter().filter(|r| filter.matches(r)).collect();
    rows.sort_by(|a, b| {
        (rank(a), &a.system_id, &a.flight_name).cmp(&(rank(b), &b.system_id, &b.flight_name))
    });
    h.push_str(&format!(
        "<p id=\"shown\">{} of {} flights</p>",
        rows.len(),
        snap.flights.len()
    ));
    h.push_str("<table id=\"flight-table\"><thead><tr><th>System</th><th>Flight</th><th>Phase</th><th>Images</th><th>WebODM</th><th>Shared with</th><th>Last error</th></tr></thead><tbody id=\"flight-rows\">");
    for r in rows {
        render_row(h, r, view);
    }
    h.push_str("</tbody></table></section>\n");
}

fn render_row(h: &mut String, r: &StatusRow, view: &View) {
    let e = escape;
    let stuck = r.is_stuck(view.stuck_after, view.now_ms);
    h.push_str(&format!(
        "<tr class=\"flight rank-{}\" data-phase=\"{}\" data-system=\"{}\">",
        rank(r),
        e(&r.phase),
        e(&r.system_id)
    ));
    h.push_str(&format!("<td class=\"system\">{}</td>", e(&r.system_id)));
    h.push_str(&format!(
        "<td class=\"flight-name\">{}</td>",
        e(&r.flight_name)
    ));
    h.push_str(&format!(
        "<td class=\"phase\"><span class=\"badge phase-{p}\">{p}</span>{}</td>",
        if stuck {
            " <span class=\"badge stuck\">stuck</span>"
        } else {
            ""
        },
        p = e(&r.phase)
    ));
    h.push_str(&format!(
        "<td class=\"images\"><progress value=\"{}\" max=\"{}\"></progress> <span class=\"count\">{}/{}</span></td>",
        r.images_uploaded,
        r.images_total.max(1),
        r.images_uploaded,
        r.images_total
    ));
    let link = webodm_link(
        &view.webodm_url,
        &r.phase,
        r.project_id,
        r.task_id.as_deref(),
    );
    let label = match r.project_id {
        Some(pid) if link.path().contains("/map/") => format!("map of project {pid}"),
        Some(pid) => format!("project {pid}"),
        None => "dashboard".to_string(),
    };
    h.push_str(&format!(
        "<td class=\"link\"><a href=\"{}\">{}</a></td>",
        e(link.as_str()),
        e(&label)
    ));
    h.push_str(&format!("<td class=\"shared\">{}</td>", e(&shared_text(r))));
    h.push_str("<td class=\"error\">");
    if let Some(err) = &r.listing_error {
        h.push_str(&format!(
            "<span class=\"message\">listing failed: {}</span>",
            e(err)
        ));
    }
    if let Some(err) = &r.last_error {
        h.push_str(&format!("<span class=\"message\">{}</span>", e(err)));
        if let Some(since) = &r.error_since {
            h.push_str(&format!(
                "<span class=\"when\">since {}</span>",
                e(&when(since, view.now_ms))
            ));
        }
        if let Some(next) = &r.next_attempt_at {
            h.push_str(&format!(
                "<span class=\"when\">next attempt {}</span>",
                e(&when(next, view.now_ms))
            ));
        }
    }
    if let Some(notice) = &r.notice {
        h.push_str(&format!("<span class=\"message\">{}</span>", e(notice)));
    }
    h.push_str("</td></tr>");
}

/// Who a flight's project is shared with, and who waits for a WebODM account.
fn shared_text(r: &StatusRow) -> String {
    let mut text = r.shared_with.join(", ");
    if !r.access_waiting.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str("waiting for WebODM account: ");
        text.push_str(&r.access_waiting.join(", "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, flight: &str, phase: &str) -> StatusRow {
        StatusRow {
            system_id: system.into(),
            flight_name: flight.into(),
            phase: phase.into(),
            images_uploaded: 3,
            images_total: 4,
            project_id: Some(7),
            task_id: Some("0b7e-uuid".into()),
            task_status: Some("partial".into()),
            last_error: None,
            next_attempt_at: None,
            error_since: None,
            shared_with: vec![],
            access_waiting: vec![],
            unshared: vec![],
            listing_error: None,
            last_checked_at: None,
            phase_since: None,
            processing_time_ms: None,
            restarts: 0,
            processing_error: None,
            restart_at: None,
            results_written: vec![],
            results_conflicts: vec![],
            results_unavailable: vec![],
            notice: None,
        }
    }

    fn snap(flights: Vec<StatusRow>) -> Snapshot {
        Snapshot {
            pid: 1,
            written_at: "2026-05-20T10:00:00Z".into(),
            last_pass: None,
            passes: vec![],
            next_pass_at: Some("2026-05-20T10:05:00Z".into()),
            flights,
        }
    }

    fn view() -> View {
        View {
            webodm_url: Url::parse("https://odm.example.org/webodm/").unwrap(),
            stuck_after: Duration::from_secs(3600),
            now_ms: parse_ms("2026-05-20T10:01:00Z").unwrap(),
        }
    }

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let hostile = "<script>alert(\"x\")</script> & 'q'";
        let mut r = row(hostile, hostile, "uploading");
        r.last_error = Some(hostile.into());
        r.shared_with = vec![hostile.into()];
        let html = render(&snap(vec![r]), &Filter::default(), &view());
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("'q'"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;")
        );
        // Only the compiled-in script.
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn filters_and_problems_first() {
        let mut failing = row("s2", "Broken", "uploading");
        failing.last_error = Some("HTTP 500".into());
        let mut no_node = row("s3", "Nodeless", "committed");
        no_node.notice = Some("no processing node: grant it one".into());
        let rows = vec![
            row("s1", "Done", "completed"),
            row("s1", "Busy", "uploading"),
            failing,
            no_node,
        ];
        let html = render(&snap(rows.clone()), &Filter::default(), &view());
        let pos = |n: &str| html.find(&format!(">{n}</td>")).unwrap();
        assert!(pos("Broken") < pos("Busy") && pos("Busy") < pos("Done"));
        assert!(pos("Nodeless") < pos("Busy"), "a notice is a problem");
        assert!(html.contains("no processing node: grant it one"));
        assert!(html.contains("4 of 4 flights"));
        let f = Filter {
            phase: "problems".into(),
            ..Filter::default()
        };
        let html = render(&snap(rows.clone()), &f, &view());
        assert!(html.contains("2 of 4 flights") && html.contains(">Broken<"));
        let f = Filter {
            system: "s1".into(),
            q: "bus".into(),
            ..Filter::default()
        };
        let html = render(&snap(rows), &f, &view());
        assert!(
            html.contains("1 of 4 flights") && html.contains(">Busy<"),
            "{html}"
        );
    }

    #[test]
    fn links_go_to_the_map_once_processed() {
        let base = Url::parse("https://odm.example.org/webodm").unwrap();
        assert_eq!(
            webodm_link(&base, "uploading", Some(7), Some("0b7e-uuid")).as_str(),
            "https://odm.example.org/webodm/dashboard/"
        );
        assert_eq!(
            webodm_link(&base, "completed", Some(7), Some("0b7e-uuid")).as_str(),
            "https://odm.example.org/webodm/map/project/7/task/0b7e-uuid/"
        );
    }

    #[test]
    fn csp_allows_exactly_the_compiled_in_assets() {
        let csp = headers()
            .into_iter()
            .find(|(k, _)| k == header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .1;
        let csp = csp.to_str().unwrap();
        assert!(
            csp.contains(&csp_hash(JS)) && csp.contains(&csp_hash(CSS)),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"));
    }
}
