//! Small helpers shared by the simulated services: matching, decoding, time formats, responses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

/// Tapis `like`: `*` matches any run, `!` one character, `\` escapes; whole string, case-sensitive.
pub(crate) fn like_match(pattern: &str, text: &str) -> bool {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '\\' => Tok::Lit(chars.next().unwrap_or('\\')),
            '*' => Tok::Any,
            '!' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    wildcard(&tokens, &text.chars().collect::<Vec<_>>())
}

/// Glob on a file name: `*` any run, `?` one character, `{a,b}` alternatives; case-sensitive.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    if let (Some(open), Some(close)) = (pattern.find('{'), pattern.find('}')) {
        if open < close {
            let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
            return pattern[open + 1..close]
                .split(',')
                .any(|alt| glob_match(&format!("{head}{alt}{tail}"), name));
        }
    }
    let tokens: Vec<Tok> = pattern
        .chars()
        .map(|c| match c {
            '*' => Tok::Any,
            '?' => Tok::One,
            c => Tok::Lit(c),
        })
        .collect();
    wildcard(&tokens, &name.chars().collect::<Vec<_>>())
}

#[derive(Clone, Copy, PartialEq)]
enum Tok {
    Lit(char),
    Any,
    One,
}

/// Classic wildcard matching with backtracking over the last `Any`.
fn wildcard(p: &[Tok], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(Tok::One) => {
                pi += 1;
                ti += 1;
            }
            Some(Tok::Lit(c)) if *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Any)
}

/// Percent-decodes a URL path segment (invalid escapes are kept as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string's pairs, decoded.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The first value of `key` among `pairs`.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Seconds since the epoch.
pub(crate) fn unix(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// `(year, month, day, hour, minute, second, microsecond)` in UTC.
fn civil(t: Duration) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = t.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.subsec_micros(),
    )
}

/// The ways the simulated servers print a time.
#[derive(Clone, Copy)]
pub(crate) enum TimeFmt {
    /// `2024-05-01T16:55:57Z`
    Seconds,
    /// `2024-05-01T16:55:57.123456Z` (Django REST framework)
    MicrosZ,
    /// `2024-05-01T16:55:57.123456+00:00` (Python `isoformat()`)
    Python,
}

/// Formats `t` (time since the epoch) in UTC.
pub(crate) fn fmt_time(t: Duration, fmt: TimeFmt) -> String {
    let (y, mo, d, h, mi, s, us) = civil(t);
    let base = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    match fmt {
        TimeFmt::Seconds => format!("{base}Z"),
        TimeFmt::MicrosZ => format!("{base}.{us:06}Z"),
        TimeFmt::Python => format!("{base}.{us:06}+00:00"),
    }
}

/// A random version-4 UUID.
pub(crate) fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A response with a body and content type.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    respond(status, "application/json", value.to_string())
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: String) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Django's HTML 404 for an unknown URL.
pub(crate) fn html_404(path: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server: {}</p>\n</body>\n</html>\n",
        path.replace('<', "&lt;")
    );
    respond(StatusCode::NOT_FOUND, "text/html; charset=utf-8", body)
}

/// `chunks` up to `limit` bytes in all (the chunk that reaches it cut), each one's length
/// passed to `sent` as it goes out: a download body, whole or cut short by a fault.
pub(crate) fn capped(
    chunks: impl Iterator<Item = bytes::Bytes> + Send + 'static,
    limit: u64,
    sent: impl Fn(u64) + Send + 'static,
) -> impl Iterator<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let mut total = 0u64;
    chunks.map_while(move |chunk| {
        let take = (limit - total).min(chunk.len() as u64);
        if take == 0 {
            return None;
        }
        total += take;
        sent(take);
        Some(Ok(chunk.slice(..take as usize)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_anchors_whole_id() {
        assert!(like_match("ptdatax.project.*", "ptdatax.project.a"));
        assert!(!like_match("ptdatax.project.*", "x.ptdatax.project.a"));
        assert!(!like_match("ptdatax.project.*", "PTDATAX.PROJECT.A"));
        assert!(like_match("ptdatax.project.!", "ptdatax.project.a"));
        assert!(!like_match("ptdatax.project.!", "ptdatax.project.ab"));
        assert!(like_match("a\\*b", "a*b"));
        assert!(!like_match("a\\*b", "axb"));
    }

    #[test]
    fn glob_is_case_sensitive() {
        assert!(glob_match("*.jpg", "IMG.jpg"));
        assert!(!glob_match("*.jpg", "IMG.JPG"));
        assert!(glob_match("*.{jpg,JPG}", "IMG.JPG"));
        assert!(glob_match("IMG_000?.jpg", "IMG_0001.jpg"));
    }

    #[test]
    fn decodes_percent_and_times() {
        assert_eq!(percent_decode("Vuelo%20A%C3%B1o%202"), "Vuelo Año 2");
        assert_eq!(percent_decode("100%"), "100%");
        let t = Duration::from_micros(1_714_582_557_123_456);
        assert_eq!(fmt_time(t, TimeFmt::Seconds), "2024-05-01T16:55:57Z");
        assert_eq!(
            fmt_time(t, TimeFmt::Python),
            "2024-05-01T16:55:57.123456+00:00"
        );
        assert_eq!(fmt_time(t, TimeFmt::MicrosZ), "2024-05-01T16:55:57.123456Z");
    }
}
