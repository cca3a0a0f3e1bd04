//! Simulated Tapis v3 (`/v3/…`): tokens, systems listing and share info, file listing,
//! content, folder creation and uploads, following `contracts/tapis.md` (server behaviour, not
//! the OpenAPI spec).
// Handlers return a ready error `Response` as `Err`, once per request: its size is no concern.
#![allow(clippy::result_large_err)]

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;
use futures_util::{stream, StreamExt};
use rand::seq::SliceRandom;
use serde_json::{json, Map, Value};

use super::auth::{Check, Issued, Kind};
use super::dataset::{Dataset, Dir, SimSystem};
use super::faults::Cut;
use super::files::{Conflict, Entry, Item};
use super::util::{
    capped, fmt_time, glob_match, json, like_match, param, percent_decode, query_pairs, text, unix,
    TimeFmt,
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
    } else if rest
        .strip_prefix("systems/share/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        Some("/v3/systems/share/{system}")
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
    let allowed: &[Method] = match template {
        "/v3/oauth2/tokens" => &[Method::POST],
        "/v3/files/ops/{system}" | "/v3/files/ops/{system}/{path}" => &[Method::GET, Method::POST],
        _ => &[Method::GET],
    };
    if !allowed.contains(&method) {
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
        None if template == "/v3/systems" => list_systems(sh, &user, &q),
        None => {
            let id = percent_decode(rest.strip_prefix("systems/share/").unwrap_or(""));
            share_info(sh, &user, &id)
        }
        Some((sys, file)) => {
            let sys = percent_decode(sys);
            let segments = path_segments(file);
            match (template, method == Method::POST) {
                ("/v3/files/ops/{system}", true) => mkdir(sh, &user, &sys, req).await,
                (_, true) => insert(sh, &user, &sys, segments, req).await,
                ("/v3/files/content/{system}/{path}", _) => {
                    content(sh, &user, &sys, &segments, cut)
                }
                _ => list_files(sh, &user, &sys, &segments, &q),
            }
        }
    };
    (template.to_owned(), resp)
}

/// The segments of a path, percent-decoded, without empty, `.` and `..` segments.
fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .map(percent_decode)
        .filter(|s| !s.is_empty() && s != ".." && s != ".")
        .collect()
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
        "isPublic": s.public,
        "sharedWithUsers": s.shares(),
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
        "SHARED_PUBLIC" => |s, u| s.owner != u && s.public,
        "READ_PERM" => |_, _| false,
        "SHARED_DIRECT" => |s, u| s.owner != u && s.is_shared_with(u),
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
    for s in sh.dataset().systems.iter().filter(|s| visible(s, user)) {
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
    let without_shares = sh.faults.get().listing_without_shares;
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
                // A selected attribute is written one by one (tapis-systems'
                // `TapisSystemDTO.addJsonAttribute`): `isPublic` as a string.
                Some(w) => r
                    .into_iter()
                    .filter(|(k, _)| w.contains(&k.as_str()))
                    .filter(|(k, _)| {
                        !(without_shares && matches!(k.as_str(), "isPublic" | "sharedWithUsers"))
                    })
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("isPublic", Value::Bool(b)) => (k, Value::String(b.to_string())),
                        (_, v) => (k, v),
                    })
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
fn files_system<'a>(ds: &'a Dataset, user: &str, id: &str) -> Result<&'a SimSystem, Response> {
    match ds.system(id) {
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

/// One entry of a listing, as Tapis serializes it (typed: listings are the simulator's
/// hottest answer, and building a `Value` per entry cost more CPU than the client decoding it).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct FileItem {
    mime_type: Option<&'static str>,
    #[serde(rename = "type")]
    kind: &'static str,
    owner: &'static str,
    group: &'static str,
    native_permissions: &'static str,
    url: String,
    last_modified: String,
    name: String,
    path: String,
    size: u64,
}

fn file_item(sys: &str, path: &str, item: &Item<'_>) -> FileItem {
    let (kind, perms) = match item.dir {
        Some(_) => ("dir", "rwxr-xr-x"),
        None => ("file", "rw-r--r--"),
    };
    FileItem {
        mime_type: item.mime,
        kind,
        owner: "1003",
        group: "1003",
        native_permissions: perms,
        url: format!("tapis://{sys}/{path}"),
        last_modified: fmt_time(std::time::Duration::from_secs(item.mtime), TimeFmt::Seconds),
        name: item.name.clone(),
        path: path.to_owned(),
        size: item.size,
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// A listing in progress: where items go and what selects them.
struct Listing<'a> {
    written: &'a super::files::Written,
    sys: &'a str,
    pattern: Option<&'a str>,
    offset: usize,
    limit: usize,
    out: Vec<FileItem>,
}

impl Listing<'_> {
    /// Lists the folder at `path` (generated part `dir`), applying pattern/offset/limit;
    /// recursing as Tapis does when `depth` is set.
    fn dir(&mut self, path: &str, dir: Option<&Dir>, depth: Option<usize>) {
        let children = self.written.children(self.sys, path, dir);
        let pattern = self.pattern;
        let entries: Vec<Item<'_>> = children
            .into_iter()
            .filter(|c| pattern.is_none_or(|p| glob_match(p, &c.name)))
            .skip(self.offset)
            .take(self.limit)
            .collect();
        for child in entries {
            let child_path = join(path, &child.name);
            self.out.push(file_item(self.sys, &child_path, &child));
            if let (Some(d), Some(sub)) = (depth, child.dir) {
                if d < 20 {
                    self.dir(&child_path, sub, Some(d + 1));
                }
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
    let ds = sh.dataset();
    let sys = match files_system(&ds, user, sys_id) {
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
    let written = sh.written.lock().expect("written lock");
    let Some(entry) = written.lookup(sys, segments) else {
        return path_not_found(sys_id, &path);
    };
    let mut listing = Listing {
        written: &written,
        sys: sys_id,
        pattern,
        offset: offset as usize,
        limit: limit as usize,
        out: Vec::new(),
    };
    match entry {
        Entry::File(found) => {
            let name = segments.last().map_or("", String::as_str);
            listing
                .out
                .push(file_item(sys_id, &path, &found.item(name)));
        }
        Entry::Dir(d) => listing.dir(&path, d, recurse.then_some(1)),
    }
    #[derive(serde::Serialize)]
    struct Answer {
        status: &'static str,
        message: &'static str,
        result: Vec<FileItem>,
        version: &'static str,
        metadata: serde_json::Map<String, Value>,
    }
    let body = serde_json::to_string(&Answer {
        status: "success",
        message: "FILES_LIST_SUCCESS Listing successful.",
        result: listing.out,
        version: VERSION,
        metadata: Default::default(),
    })
    .expect("listings serialize");
    super::util::respond(StatusCode::OK, "application/json", body)
}

fn content(
    sh: &Arc<Shared>,
    user: &str,
    sys_id: &str,
    segments: &[String],
    cut: Option<Cut>,
) -> Response {
    let ds = sh.dataset();
    let sys = match files_system(&ds, user, sys_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = segments.join("/");
    let found = sh
        .written
        .lock()
        .expect("written lock")
        .lookup(sys, segments);
    let file = match found {
        None => return path_not_found(sys_id, &path),
        Some(Entry::Dir(_)) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("FILES_CONT_DIR_NOZIP Path is a directory; zip=true is required. System: {sys_id} Path: /{path}"),
            )
        }
        Some(Entry::File(f)) => f,
    };
    let name = segments.last().cloned().unwrap_or_default();
    let limit = cut.as_ref().map_or(u64::MAX, |c| c.limit(file.size()));
    let counter = Arc::clone(sh);
    let chunks = capped(file.chunks(), limit, move |n| {
        counter
            .stats
            .bytes_downloaded
            .fetch_add(n, Ordering::Relaxed);
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
    if let Ok(v) = HeaderValue::from_bytes(format!("attachment; filename=\"{name}\"").as_bytes()) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// `GET /v3/systems/share/{id}`: who the system is shared with, and whether publicly.
fn share_info(sh: &Shared, user: &str, id: &str) -> Response {
    let ds = sh.dataset();
    let Some(sys) = ds.system(id) else {
        return error_json(
            StatusCode::NOT_FOUND,
            format!("SYSAPI_NOT_FOUND System not found. System: {id}"),
        );
    };
    if !sys.visible_to(user) {
        return error_json(
            StatusCode::FORBIDDEN,
            format!("SYSAPI_UNAUTH User not authorized. User: {user} System: {id}"),
        );
    }
    json(
        StatusCode::OK,
        &json!({
            "status": "success",
            "message": format!("TAPIS_FOUND Share info found for system {id}"),
            "version": VERSION,
            "result": {"public": sys.public, "userList": sys.shares()},
            "metadata": null,
        }),
    )
}

/// The answer to a write that succeeded.
fn written_ok(message: String) -> Response {
    json(
        StatusCode::OK,
        &json!({"status": "success", "message": message, "result": null, "version": VERSION, "metadata": null}),
    )
}

/// The answer to a write that clashes with what is there.
fn conflict(sys: &str, c: Conflict) -> Response {
    let message = match c {
        Conflict::NotADir(p) => {
            format!("FILES_CLIENT_SSH_OP_ERR Path exists and is not a directory. System: {sys} Path: /{p}")
        }
        Conflict::IsADir(p) => {
            format!("FILES_CLIENT_SSH_OP_ERR Path is a directory. System: {sys} Path: /{p}")
        }
    };
    service_error(StatusCode::BAD_REQUEST, message)
}

/// `POST /v3/files/ops/{system}` with JSON `{"path": …}`: makes the folder and its parents; an
/// existing folder is no error.
async fn mkdir(sh: &Shared, user: &str, sys_id: &str, req: Request) -> Response {
    let ds = sh.dataset();
    let sys = match files_system(&ds, user, sys_id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "Could not read the request body.".into(),
            )
        }
    };
    let path = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v.get("path").and_then(Value::as_str).map(str::to_owned),
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("FILES_JSON_PARSE_ERR Unable to parse the request body: {e}"),
            )
        }
    };
    let Some(path) = path else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "mkdir.path: must not be null".into(),
        );
    };
    let segments = path_segments(&path);
    let made = sh
        .written
        .lock()
        .expect("written lock")
        .mkdir(sys, &segments);
    match made {
        Ok(()) => written_ok(format!(
            "FILES_MKDIR_OK Directory created. System: {sys_id} Path: /{}",
            segments.join("/")
        )),
        Err(c) => conflict(sys_id, c),
    }
}

/// An upload in progress: the target already exists, truncated; whatever arrived is stored
/// when it ends, also when the upload is cut short or abandoned, as a write over SSH leaves
/// a partial file behind.
struct Upload<'a> {
    sh: &'a Shared,
    sys: String,
    segments: Vec<String>,
    buf: BytesMut,
    stored: bool,
}

impl<'a> Upload<'a> {
    /// Opens the target for writing: from now on it exists, truncated.
    fn open(sh: &'a Shared, sys: &str, segments: Vec<String>) -> Upload<'a> {
        let mut upload = Upload {
            sh,
            sys: sys.to_owned(),
            segments,
            buf: BytesMut::new(),
            stored: false,
        };
        upload.store();
        upload.stored = false;
        upload
    }

    /// Writes what arrived so far as the file's content.
    fn store(&mut self) {
        self.stored = true;
        let ds = self.sh.dataset();
        if let Some(sys) = ds.system(&self.sys) {
            let bytes = std::mem::take(&mut self.buf).freeze();
            // The target was checked when the upload began; a clash now leaves it as it is.
            let _ = self
                .sh
                .written
                .lock()
                .expect("written lock")
                .write(sys, &self.segments, bytes);
        }
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if !self.stored {
            self.store();
        }
    }
}

/// `POST /v3/files/ops/{system}/{path}` multipart with the field `file`: writes the file,
/// making missing parent folders and overwriting a file already there with no condition.
async fn insert(
    sh: &Shared,
    user: &str,
    sys_id: &str,
    segments: Vec<String>,
    req: Request,
) -> Response {
    {
        let ds = sh.dataset();
        let sys = match files_system(&ds, user, sys_id) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if segments.is_empty() {
            return conflict(sys_id, Conflict::IsADir(String::new()));
        }
        let written = sh.written.lock().expect("written lock");
        if let Err(c) = written.check_file(sys, &segments) {
            return conflict(sys_id, c);
        }
    }
    let mut multipart = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(_) => {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "HTTP 415 Unsupported Media Type".into(),
            )
        }
    };
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    format!("FILES_UPLOAD_ERR Upload failed: {e}"),
                )
            }
        };
        if field.name() != Some("file") {
            continue;
        }
        let mut upload = Upload::open(sh, sys_id, segments);
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    sh.stats
                        .tapis_bytes_uploaded
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    upload.buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return error_json(
                        StatusCode::BAD_REQUEST,
                        format!("FILES_UPLOAD_ERR Upload failed: {e}"),
                    )
                }
            }
        }
        upload.store();
        let path = upload.segments.join("/");
        return written_ok(format!(
            "FILES_INSERT_OK File uploaded. System: {sys_id} Path: /{path}"
        ));
    }
    error_json(
        StatusCode::BAD_REQUEST,
        "FILES_UPLOAD_ERR No file was given in the form field `file`.".into(),
    )
}
