//! Simulated Tapis v3 (`/v3/…`): tokens, systems listing, file listing and content, following
//! `contracts/tapis.md` (server behaviour, not the OpenAPI spec).
// Handlers return a ready error `Response` as `Err`, once per request: its size is no concern.
#![allow(clippy::result_large_err)]

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{stream, StreamExt};
use rand::seq::SliceRandom;
use serde_json::{json, Map, Value};

use super::auth::{Check, Issued, Kind};
use super::dataset::{Dir, File, NodeRef, SimSystem};
use super::faults::Cut;
use super::util::{
    fmt_time, glob_match, json, like_match, param, percent_decode, query_pairs, text, unix, TimeFmt,
};
use super::Shared;

const VERSION: &str = "1.7.1";

/// The stats route template of a `/v3/…` path; `None` for an unknown URL.
pub(crate) fn template(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v3/")?;
    if rest == "oauth2/tokens" {
        Some("/v3/oauth2/tokens")
    } else if rest == "systems" {
        Some("/v3/systems")
    } else if let Some(p) = rest.strip_prefix("files/ops/") {
        let file = p.split_once('/').map_or("", |(_, f)| f);
        Some(if file.trim_matches('/').is_empty() {
            "/v3/files/ops/{system}"
        } else {
            "/v3/files/ops/{system}/{path}"
        })
    } else if rest.starts_with("files/content/") {
        Some("/v3/files/content/{system}/{path}")
    } else {
        None
    }
}

/// Answers one `/v3/…` request; returns the route template for stats. A download is cut short
/// as `cut` says.
pub(crate) async fn handle(sh: &Arc<Shared>, req: Request, cut: Option<Cut>) -> (String, Response) {
    let path = req.uri().path().to_owned();
    let Some(template) = template(&path) else {
        let body = json!({"status": "error", "message": "HTTP 404 Not Found", "result": null, "version": VERSION, "metadata": null});
        return ("<unknown>".to_owned(), json(StatusCode::NOT_FOUND, &body));
    };
    let rest = path.strip_prefix("/v3/").unwrap_or("");
    let target = rest
        .strip_prefix("files/ops/")
        .or_else(|| rest.strip_prefix("files/content/"))
        .map(|p| p.split_once('/').unwrap_or((p, "")));
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST
        || (method == Method::POST) != (template == "/v3/oauth2/tokens")
    {
        return (
            template.to_owned(),
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTP 405 Method Not Allowed".into(),
            ),
        );
    }
    if template == "/v3/oauth2/tokens" {
        return (template.to_owned(), tokens(sh, req).await);
    }
    let user = match authenticate(sh, req.headers()) {
        Ok(u) => u,
        Err(r) => return (template.to_owned(), r),
    };
    let q = query_pairs(req.uri().query());
    let resp = match target {
        None => list_systems(sh, &user, &q),
        Some((sys, file)) => {
            let sys = percent_decode(sys);
            let segments: Vec<String> = file
                .split('/')
                .map(percent_decode)
                .filter(|s| !s.is_empty() && s != ".." && s != ".")
                .collect();
            if template.starts_with("/v3/files/ops/") {
                list_files(sh, &user, &sys, &segments, &q)
            } else {
                content(sh, &user, &sys, &segments, cut)
            }
        }
    };
    (template.to_owned(), resp)
}

/// Checks `X-Tapis-Token` the way the Tapis JWT filter does.
fn authenticate(sh: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let unauthorized = |msg: String| text(StatusCode::UNAUTHORIZED, msg);
    let Some(token) = headers.get("x-tapis-token").and_then(|v| v.to_str().ok()) else {
        return Err(unauthorized(
            "TAPIS_SECURITY_MISSING_JWT_INFO Required JWT header X-Tapis-Token not found in request."
                .into(),
        ));
    };
    let token = token.trim();
    let mut tokens = sh.tokens.lock().expect("tokens lock");
    let mut check = tokens.check(Kind::TapisAccess, token);
    if matches!(check, Check::Valid(_)) && sh.faults.roll(sh.faults.get().revoke_rate) {
        tokens.revoke(token);
        check = Check::Revoked;
    }
    drop(tokens);
    let user = match check {
        Check::Valid(u) => u,
        Check::Revoked => {
            sh.stats.fault("revoked");
            return Err(error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Token is revoked.".into(),
            ));
        }
        Check::Expired(at) => {
            let now = SystemTime::now();
            let late = now.duration_since(at).unwrap_or_default().as_millis();
            return Err(unauthorized(format!(
                "TAPIS_SECURITY_JWT_EXPIRED Exception message: JWT expired at {}. Current time: {}, a difference of {late} milliseconds.  Allowed clock skew: 0 milliseconds.",
                fmt_time(unix(at), TimeFmt::Seconds),
                fmt_time(unix(now), TimeFmt::Seconds),
            )));
        }
        Check::Unknown => {
            return Err(unauthorized(
                "TAPIS_SECURITY_JWT_PARSE_ERROR Unable to parse or validate the JWT in header X-Tapis-Token."
                    .into(),
            ))
        }
    };
    for h in ["x-tapis-tenant", "x-tapis-user"] {
        if headers.contains_key(h) {
            return Err(unauthorized(format!(
                "TAPIS_SECURITY_UNEXPECTED_HEADER The {h} header is not allowed with a user token."
            )));
        }
    }
    Ok(user)
}

/// The answer to an injected 5xx: the service's JSON for a 500, the gateway's plain text for a
/// 502 or 503.
pub(crate) fn fault_error(status: StatusCode) -> Response {
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return service_error(
            status,
            "TAPIS_INTERNAL_ERROR Internal server error (simulated fault).".into(),
        );
    }
    text(
        status,
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        ),
    )
}

/// The answer to an injected 429 (plain text).
pub(crate) fn throttled(retry_after_secs: u64) -> Response {
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too Many Requests: rate limit exceeded. Retry after {retry_after_secs} seconds."),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

fn error_json(status: StatusCode, message: String) -> Response {
    json(
        status,
        &json!({"status": "error", "message": message, "result": null, "version": VERSION, "metadata": null}),
    )
}

/// A service error: `status` is the reason phrase.
fn service_error(status: StatusCode, message: String) -> Response {
    json(
        status,
        &json!({"result": null, "status": status.canonical_reason().unwrap_or("Error"), "message": message, "version": VERSION, "metadata": null}),
    )
}

/// The client named by valid Basic auth, if any: `Err` when Basic auth is sent but wrong.
fn basic_client(sh: &Shared, headers: &HeaderMap) -> Result<bool, Response> {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(false);
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return Ok(false);
    };
    let decoded = STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let c = &sh.creds;
    if decoded.as_deref() == Some(&format!("{}:{}", c.tapis_client_id, c.tapis_client_key)) {
        Ok(true)
    } else {
        Err(error_json(
            StatusCode::UNAUTHORIZED,
            "Invalid client credentials.".into(),
        ))
    }
}

fn token_json(i: &Issued, key: &str) -> Value {
    let expires_in = i
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    json!({
        key: i.token,
        "expires_at": fmt_time(unix(i.expires), TimeFmt::Python),
        "expires_in": expires_in,
        "jti": i.jti,
    })
}

async fn tokens(sh: &Shared, req: Request) -> Response {
    let client = match basic_client(sh, req.headers()) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), 1 << 20).await else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "Could not read the request body.".into(),
        );
    };
    let body: Map<String, Value> = if ctype.starts_with("application/x-www-form-urlencoded") {
        url::form_urlencoded::parse(&bytes)
            .into_owned()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => m,
            _ => {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "Unable to parse the request body: JSON or form data expected.".into(),
                )
            }
        }
    };
    let get = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    let c = &sh.creds;
    let mut tokens = sh.tokens.lock().expect("tokens lock");
    let user = match get("grant_type") {
        "password" => {
            if get("username") != c.tapis_username || get("password") != c.tapis_password {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "Invalid username/password combination.".into(),
                );
            }
            c.tapis_username.clone()
        }
        "refresh_token" => {
            if sh.faults.get().refresh_fails {
                sh.stats.fault("refresh");
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "Invalid refresh_token: the token could not be refreshed.".into(),
                );
            }
            if !client {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "Invalid client credentials: Basic auth of the client is required for the refresh_token grant.".into(),
                );
            }
            match tokens.check(Kind::TapisRefresh, get("refresh_token")) {
                Check::Valid(u) => u,
                _ => return error_json(StatusCode::BAD_REQUEST, "Invalid refresh_token.".into()),
            }
        }
        "" => return error_json(StatusCode::BAD_REQUEST, "Missing grant_type.".into()),
        other => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("Invalid grant_type: {other}."),
            )
        }
    };
    let mut result = Map::new();
    let access = tokens.issue(Kind::TapisAccess, &user);
    result.insert("access_token".into(), token_json(&access, "access_token"));
    if client {
        let refresh = tokens.issue(Kind::TapisRefresh, &user);
        result.insert(
            "refresh_token".into(),
            token_json(&refresh, "refresh_token"),
        );
    }
    json(
        StatusCode::OK,
        &json!({"status": "success", "message": "Token created successfully.", "metadata": {}, "version": "1.6.0", "result": result}),
    )
}

/// Every attribute of a system.
fn system_json(s: &SimSystem) -> Map<String, Value> {
    let v = json!({
        "id": s.id,
        "description": s.description,
        "systemType": "LINUX",
        "owner": s.owner,
        "host": s.host,
        "enabled": s.enabled,
        "effectiveUserId": s.owner,
        "defaultAuthnMethod": "PKI_KEYS",
        "rootDir": s.root_dir,
        "port": 22,
        "useProxy": false,
        "canExec": false,
        "canRunBatch": false,
        "parentId": null,
        "tags": [],
        "notes": {},
        "isPublic": false,
        "isDynamicEffectiveUser": false,
        "deleted": false,
        "created": "2024-04-01T12:00:00.000000Z",
        "updated": "2024-04-01T12:00:00.000000Z",
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

/// The summary attributes returned without `select`.
const SUMMARY: [&str; 8] = [
    "id",
    "systemType",
    "owner",
    "host",
    "effectiveUserId",
    "defaultAuthnMethod",
    "canExec",
    "parentId",
];

/// One `(attr.op.value)` search condition.
struct Cond {
    attr: String,
    op: String,
    value: String,
}

/// Parses `(a.op.v)~(b.op.w)`; rejects unescaped `~ , ( )` inside a value.
fn parse_search(s: &str) -> Result<Vec<Cond>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '(' {
            return Err(format!(
                "SEARCH_INVALID_CONDITION Condition must be enclosed in parentheses: {s}"
            ));
        }
        i += 1;
        let mut raw = String::new();
        loop {
            match chars.get(i) {
                None => return Err(format!("SEARCH_UNBALANCED_PARENS Unbalanced parentheses in search: {s}")),
                Some('\\') => {
                    raw.push('\\');
                    raw.extend(chars.get(i + 1));
                    i += 2;
                }
                Some(')') => {
                    i += 1;
                    break;
                }
                Some(c @ ('(' | '~' | ',')) => {
                    return Err(format!("SEARCH_UNESCAPED_SPECIAL Unescaped special character '{c}' in search value: {s}"))
                }
                Some(c) => {
                    raw.push(*c);
                    i += 1;
                }
            }
        }
        let mut parts = raw.splitn(3, '.');
        let (Some(attr), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "SEARCH_INVALID_CONDITION Invalid condition: ({raw})"
            ));
        };
        if !["eq", "neq", "like", "nlike"].contains(&op) {
            return Err(format!(
                "SEARCH_INVALID_OPERATOR Invalid operator '{op}' in condition: ({raw})"
            ));
        }
        out.push(Cond {
            attr: attr.to_owned(),
            op: op.to_owned(),
            value: value.to_owned(),
        });
        match chars.get(i) {
            None => {}
            Some('~') => i += 1,
            Some(_) => {
                return Err(format!(
                    "SEARCH_INVALID_CONDITION Conditions must be joined by '~': {s}"
                ))
            }
        }
    }
    Ok(out)
}

/// A JSON attribute as the string search and ordering compare.
fn attr_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

fn list_systems(sh: &Shared, user: &str, q: &[(String, String)]) -> Response {
    let bad = |msg: String| text(StatusCode::BAD_REQUEST, msg);
    let list_type = param(q, "listType").unwrap_or("OWNED").to_ascii_uppercase();
    let visible: fn(&SimSystem, &str) -> bool = match list_type.as_str() {
        "OWNED" => |s, u| s.owner == u,
        "SHARED_PUBLIC" | "READ_PERM" => |_, _| false,
        "SHARED_DIRECT" => |s, u| s.owner != u && s.shared_with.iter().any(|x| x == u),
        "ALL" | "MINE" => |s, u| s.visible_to(u),
        other => {
            return error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("SYSAPI_LISTTYPE_ERROR Invalid listType: {other}"),
            )
        }
    };
    let conds = match param(q, "search").map(parse_search).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(msg) => return bad(msg),
    };
    let int = |key: &str, default: i64| -> Result<i64, Response> {
        param(q, key).map_or(Ok(default), |v| {
            v.trim()
                .parse()
                .map_err(|_| bad(format!("SEARCH_INVALID_PARAM Invalid value for {key}: {v}")))
        })
    };
    let (limit, skip) = match (int("limit", 100), int("skip", 0)) {
        (Ok(l), Ok(s)) => (l, s.max(0) as usize),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let start_after = param(q, "startAfter").filter(|s| !s.is_empty());
    if start_after.is_some() && skip > 0 {
        return bad("SEARCH_SKIP_AND_STARTAFTER Cannot specify both skip and startAfter.".into());
    }
    let order = param(q, "orderBy").filter(|s| !s.is_empty());
    let order_spec = match order.map(|o| {
        let (attr, dir) = match o.split_once('(') {
            Some((a, d)) => (a, d.strip_suffix(')').unwrap_or("?").to_ascii_lowercase()),
            None => (o, "asc".to_owned()),
        };
        match dir.as_str() {
            "asc" => Ok((attr.to_owned(), false)),
            "desc" => Ok((attr.to_owned(), true)),
            _ => Err(bad(format!("SEARCH_INVALID_ORDERBY Invalid orderBy: {o}"))),
        }
    }) {
        Some(Err(r)) => return r,
        Some(Ok(spec)) => Some(spec),
        None => None,
    };
    if start_after.is_some() && order_spec.is_none() {
        return bad("SEARCH_STARTAFTER_NO_ORDERBY startAfter requires orderBy.".into());
    }
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    for s in sh.dataset.systems.iter().filter(|s| visible(s, user)) {
        let full = system_json(s);
        let mut keep = true;
        for c in &conds {
            let Some(v) = full.get(&c.attr) else {
                return bad(format!(
                    "SEARCH_INVALID_ATTRIBUTE Invalid search attribute: {}",
                    c.attr
                ));
            };
            let v = attr_string(v);
            let m = match c.op.as_str() {
                "eq" => v == unescape(&c.value),
                "neq" => v != unescape(&c.value),
                "like" => like_match(&c.value, &v),
                _ => !like_match(&c.value, &v),
            };
            keep &= m;
        }
        if keep {
            rows.push(full);
        }
    }
    match &order_spec {
        Some((attr, desc)) => {
            if !rows.is_empty() && !rows[0].contains_key(attr) {
                return bad(format!(
                    "SEARCH_INVALID_ORDERBY Invalid orderBy attribute: {attr}"
                ));
            }
            let key = |r: &Map<String, Value>| r.get(attr).map(attr_string).unwrap_or_default();
            rows.sort_by(|a, b| {
                let o = key(a).cmp(&key(b));
                if *desc {
                    o.reverse()
                } else {
                    o
                }
            });
            if let Some(after) = start_after {
                rows.retain(|r| {
                    let o = key(r).as_str().cmp(after);
                    o == if *desc {
                        CmpOrdering::Less
                    } else {
                        CmpOrdering::Greater
                    }
                });
            }
        }
        // Without orderBy the database order is not stable between requests.
        None => rows.shuffle(&mut rand::rng()),
    }
    let total = rows.len();
    let take = if limit < 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let select = param(q, "select").unwrap_or("summaryAttributes");
    let wanted: Option<Vec<&str>> = if select.split(',').any(|s| s.trim() == "allAttributes") {
        None
    } else {
        Some(
            select
                .split(',')
                .map(str::trim)
                .flat_map(|s| {
                    if s == "summaryAttributes" {
                        SUMMARY.to_vec()
                    } else {
                        vec![s]
                    }
                })
                .collect(),
        )
    };
    let result: Vec<Value> = rows
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|r| {
            Value::Object(match &wanted {
                None => r,
                Some(w) => r
                    .into_iter()
                    .filter(|(k, _)| w.contains(&k.as_str()))
                    .collect(),
            })
        })
        .collect();
    let compute_total = param(q, "computeTotal").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    json(
        StatusCode::OK,
        &json!({
            "status": "success",
            "message": format!("TAPIS_FOUND Systems found: {} systems", result.len()),
            "version": VERSION,
            "result": result,
            "metadata": {
                "recordCount": result.len(),
                "recordLimit": limit,
                "recordsSkipped": skip,
                "orderBy": order,
                "startAfter": start_after,
                "totalCount": if compute_total { total as i64 } else { -1 },
            },
        }),
    )
}

/// The system if `user` may read its files; else the error to answer.
fn files_system<'a>(sh: &'a Shared, user: &str, id: &str) -> Result<&'a SimSystem, Response> {
    match sh.dataset.system(id) {
        Some(s) if s.visible_to(user) && s.enabled => Ok(s),
        Some(s) if s.visible_to(user) => Err(service_error(
            StatusCode::NOT_FOUND,
            format!("FILES_SYS_NOTENABLED System is not enabled. System: {id}"),
        )),
        _ => Err(service_error(
            StatusCode::NOT_FOUND,
            format!(
                "FILES_SYS_NOTFOUND System not found or not available. System: {id} User: {user}"
            ),
        )),
    }
}

fn path_not_found(sys: &str, path: &str) -> Response {
    service_error(
        StatusCode::NOT_FOUND,
        format!("FILES_CLIENT_SSH_NOT_FOUND Path not found. System: {sys} Path: /{path}"),
    )
}

fn file_item(sys: &str, path: &str, node: NodeRef<'_>) -> Value {
    let (name, mtime, kind, mime, perms, size) = match node {
        NodeRef::Dir(d) => (&d.name, d.mtime, "dir", None, "rwxr-xr-x", 4096),
        NodeRef::File(f) => (
            &f.name,
            f.mtime,
            "file",
            Some(f.mime()),
            "rw-r--r--",
            f.size,
        ),
    };
    json!({
        "mimeType": mime,
        "type": kind,
        "owner": "1003",
        "group": "1003",
        "nativePermissions": perms,
        "url": format!("tapis://{sys}/{path}"),
        "lastModified": fmt_time(std::time::Duration::from_secs(mtime), TimeFmt::Seconds),
        "name": name,
        "path": path,
        "size": size,
    })
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Lists `dir` (at `path`), applying pattern/offset/limit; recursing as Tapis does.
fn list_dir(
    sys: &str,
    path: &str,
    dir: &Dir,
    pattern: Option<&str>,
    (offset, limit): (usize, usize),
    depth: Option<usize>,
    out: &mut Vec<Value>,
) {
    let entries = dir
        .children
        .iter()
        .filter(|c| pattern.is_none_or(|p| glob_match(p, c.name())))
        .skip(offset)
        .take(limit);
    for child in entries {
        let child_path = join(path, child.name());
        out.push(file_item(sys, &child_path, child.as_ref()));
        if let (Some(d), NodeRef::Dir(sub)) = (depth, child.as_ref()) {
            if d < 20 {
                list_dir(
                    sys,
                    &child_path,
                    sub,
                    pattern,
                    (offset, limit),
                    Some(d + 1),
                    out,
                );
            }
        }
    }
}

fn list_files(
    sh: &Shared,
    user: &str,
    sys_id: &str,
    segments: &[String],
    q: &[(String, String)],
) -> Response {
    let sys = match files_system(sh, user, sys_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let invalid = |msg: String| error_json(StatusCode::BAD_REQUEST, msg);
    let int = |key: &str, default: i64| -> Result<i64, Response> {
        param(q, key).map_or(Ok(default), |v| {
            v.trim()
                .parse()
                .map_err(|_| invalid(format!("FILES_INVALID_PARAM Invalid value for {key}: {v}")))
        })
    };
    let (limit, offset) = match (int("limit", 1000), int("offset", 0)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if !(0..=1000).contains(&limit) {
        return invalid(format!(
            "listFiles.limit: must be less than or equal to 1000 and at least 0 (got {limit})"
        ));
    }
    if offset < 0 {
        return invalid(format!(
            "listFiles.offset: must be greater than or equal to 0 (got {offset})"
        ));
    }
    let pattern = param(q, "pattern").filter(|p| !p.is_empty());
    if pattern.is_some_and(|p| p.starts_with("regex:")) {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "simulator: regex patterns are not implemented (glob only)".into(),
        );
    }
    let recurse = param(q, "recurse").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let path = segments.join("/");
    let Some(node) = sys.root.lookup(segments) else {
        return path_not_found(sys_id, &path);
    };
    let mut items = Vec::new();
    match node {
        NodeRef::File(_) => items.push(file_item(sys_id, &path, node)),
        NodeRef::Dir(d) => list_dir(
            sys_id,
            &path,
            d,
            pattern,
            (offset as usize, limit as usize),
            recurse.then_some(1),
            &mut items,
        ),
    }
    json(
        StatusCode::OK,
        &json!({"status": "success", "message": "FILES_LIST_SUCCESS Listing successful.", "result": items, "version": VERSION, "metadata": {}}),
    )
}

fn content(
    sh: &Arc<Shared>,
    user: &str,
    sys_id: &str,
    segments: &[String],
    cut: Option<Cut>,
) -> Response {
    let sys = match files_system(sh, user, sys_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = segments.join("/");
    let file: &File = match sys.root.lookup(segments) {
        None => return path_not_found(sys_id, &path),
        Some(NodeRef::Dir(_)) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("FILES_CONT_DIR_NOZIP Path is a directory; zip=true is required. System: {sys_id} Path: /{path}"),
            )
        }
        Some(NodeRef::File(f)) => f,
    };
    let limit = cut.as_ref().map_or(u64::MAX, |c| c.limit(file.size));
    let counter = Arc::clone(sh);
    let mut sent = 0u64;
    let chunks = file.reader().map_while(move |chunk| {
        let take = (limit - sent).min(chunk.len() as u64);
        if take == 0 {
            return None;
        }
        sent += take;
        counter
            .stats
            .bytes_downloaded
            .fetch_add(take, Ordering::Relaxed);
        Some(Ok::<_, std::io::Error>(chunk.slice(..take as usize)))
    });
    let body = match cut.and_then(|c| c.reset) {
        None => Body::from_stream(stream::iter(chunks)),
        Some(reset) => Body::from_stream(stream::iter(chunks).chain(stream::once(async move {
            // Let what was sent leave before the connection dies.
            tokio::time::sleep(Duration::from_millis(20)).await;
            reset.trigger();
            Err(std::io::ErrorKind::ConnectionReset.into())
        }))),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) =
        HeaderValue::from_bytes(format!("attachment; filename=\"{}\"", file.name).as_bytes())
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
