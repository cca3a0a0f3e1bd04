//! Simulated WebODM REST API (`/api/…`), following `contracts/webodm.md`.
// Handlers return a ready error `Response` as `Err`, once per request: its size is no concern.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::{Check, Kind};
use super::faults::Cut;
use super::processing::{self, Outcome, Processing};
use super::report::TaskReport;
use super::sharing::{self, Accounts, Perms};
use super::util::{
    capped, fmt_time, html_404, json, param, percent_decode, query_pairs, respond, unix, uuid4,
    TimeFmt,
};
use super::Shared;

/// A WebODM project as the simulator holds it (read back by tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimProject {
    /// Project id.
    pub id: i64,
    /// Name as stored (trimmed).
    pub name: String,
    /// Description.
    pub description: String,
    /// Tags as the API returns them.
    pub tags: Vec<String>,
    /// Tasks in creation order.
    pub tasks: Vec<SimTask>,
    /// The account that created it (it has every permission).
    pub owner: String,
    /// Other users who may see it: username → permissions (`add`, `change`, `delete`, `view`).
    pub users: BTreeMap<String, Vec<String>>,
    /// Groups that may see it: name → permissions.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A WebODM task as the simulator holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTask {
    /// Task id (UUID).
    pub id: String,
    /// Name (WebODM allows none).
    pub name: Option<String>,
    /// Still accepting uploads (not committed).
    pub partial: bool,
    /// Processing options as sent.
    pub options: Value,
    /// Tags as the API returns them.
    pub tags: Vec<String>,
    /// Stored images: name → (size, SHA-256 hex).
    pub images: BTreeMap<String, (u64, String)>,
    /// Processing status now: `None` (not picked up), 10 queued, 20 running, 30 failed,
    /// 40 completed, 50 canceled.
    pub status: Option<i64>,
    /// The processing error of a failed attempt (may be `None` even then).
    pub last_error: Option<String>,
    /// Processing attempts started: commits (also of a committed task) and restarts.
    pub attempts: u32,
    /// `restart/` requests received.
    pub restarts: u32,
    /// Assets offered for download (filled once completed).
    pub available_assets: Vec<String>,
}

/// The simulated WebODM's data.
#[derive(Debug)]
pub(crate) struct State {
    next_id: i64,
    pub projects: Vec<Project>,
    /// Users and groups.
    pub accounts: Accounts,
    /// Flights (by key tag) whose every processing attempt fails, with this `last_error`.
    pub failing: HashMap<String, Option<String>>,
    /// File names the next upload carrying them drops: not stored, left out of its answer.
    pub drop_from_next_upload: HashSet<String>,
}

/// A stored project.
#[derive(Clone, Debug)]
pub(crate) struct Project {
    pub id: i64,
    pub name: String,
    description: String,
    /// Space-joined, as WebODM stores them.
    tags: String,
    created_at: String,
    pub tasks: Vec<Task>,
    /// Who may see it.
    pub perms: Perms,
}

/// A stored task.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    id: String,
    project: i64,
    name: Option<String>,
    pub partial: bool,
    auto_processing_node: bool,
    options: Value,
    tags: String,
    created_at: String,
    pub images: BTreeMap<String, (u64, String)>,
    pub processing: Processing,
}

/// Splits stored tags the way the API returns them.
fn split_tags(tags: &str) -> Vec<String> {
    tags.split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Project {
    /// Tags as the API returns them.
    pub fn tags(&self) -> Vec<String> {
        split_tags(&self.tags)
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "tasks": self.tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            "owned": true,
            "created_at": self.created_at,
            "permissions": ["add", "change", "delete", "view"],
            "tags": self.tags(),
            "name": self.name,
            "description": self.description,
            "public": false,
            "public_edit": false,
            "public_id": null,
        })
    }

    /// The public read-back form.
    pub fn to_sim(&self) -> SimProject {
        let map = |list: &[(String, Vec<String>)]| list.iter().cloned().collect();
        SimProject {
            id: self.id,
            name: self.name.clone(),
            description: self.description.clone(),
            tags: self.tags(),
            tasks: self.tasks.iter().map(Task::to_sim).collect(),
            owner: self.perms.owner.clone(),
            users: map(&self.perms.users),
            groups: map(&self.perms.groups),
        }
    }

    /// The `last_error` every attempt of this project's tasks gets, when its flight was told
    /// to fail.
    fn failing<'a>(
        &self,
        failing: &'a HashMap<String, Option<String>>,
    ) -> Option<&'a Option<String>> {
        self.tags().iter().find_map(|t| failing.get(t))
    }
}

impl Task {
    /// Assets offered now (none until completed).
    fn available_assets(&self, completed: bool) -> Vec<String> {
        if completed {
            processing::assets(&self.options, self.images.keys())
        } else {
            Vec::new()
        }
    }

    /// Its processing now, for the report.
    pub fn report(&self) -> TaskReport {
        let v = self.processing.view();
        TaskReport {
            id: self.id.clone(),
            partial: self.partial,
            available_assets: self.available_assets(v.completed),
            status: v.status,
            last_error: v.last_error,
            attempts: self.processing.attempts,
            restarts: self.processing.restarts,
        }
    }

    /// The public read-back form, with the processing state now.
    fn to_sim(&self) -> SimTask {
        let v = self.processing.view();
        SimTask {
            id: self.id.clone(),
            name: self.name.clone(),
            partial: self.partial,
            options: self.options.clone(),
            tags: split_tags(&self.tags),
            images: self.images.clone(),
            status: v.status,
            last_error: v.last_error,
            attempts: self.processing.attempts,
            restarts: self.processing.restarts,
            available_assets: self.available_assets(v.completed),
        }
    }

    fn json(&self) -> Value {
        let v = self.processing.view();
        json!({
            "id": self.id,
            "project": self.project,
            "processing_node": if v.on_node { json!(1) } else { Value::Null },
            "processing_node_name": if v.on_node { json!("node-odm-1") } else { Value::Null },
            "can_rerun_from": [],
            "uuid": "",
            "name": self.name,
            "processing_time": v.processing_time,
            "auto_processing_node": self.auto_processing_node,
            "status": v.status,
            "last_error": v.last_error,
            "options": self.options,
            "available_assets": self.available_assets(v.completed),
            "created_at": self.created_at,
            "pending_action": v.pending_action,
            "public": false,
            "public_edit": false,
            "resize_to": -1,
            "upload_progress": 0.0,
            "resize_progress": 0.0,
            "running_progress": v.running_progress,
            "import_url": "",
            "images_count": self.images.len(),
            "partial": self.partial,
            "potree_scene": {},
            "epsg": null,
            "tags": split_tags(&self.tags),
            "orthophoto_extent": null,
            "dsm_extent": null,
            "dtm_extent": null,
        })
    }
}

impl State {
    /// An empty WebODM whose only non-stock account is `daemon`'s.
    pub fn new(daemon: &str) -> State {
        State {
            next_id: 0,
            projects: Vec::new(),
            accounts: Accounts::new(daemon),
            failing: HashMap::new(),
            drop_from_next_upload: HashSet::new(),
        }
    }

    fn project(&mut self, id: &str) -> Option<&mut Project> {
        project_in(&mut self.projects, id)
    }

    /// Removes a task (drift tests); whether it existed.
    pub fn delete_task(&mut self, project_id: i64, task_id: &str) -> bool {
        let Some(p) = self.projects.iter_mut().find(|p| p.id == project_id) else {
            return false;
        };
        let before = p.tasks.len();
        p.tasks.retain(|t| t.id != task_id);
        p.tasks.len() != before
    }

    /// Removes every task still partial (what WebODM does 72 h after creation); how many.
    pub fn expire_partial_tasks(&mut self) -> usize {
        let mut removed = 0;
        for p in &mut self.projects {
            let before = p.tasks.len();
            p.tasks.retain(|t| !t.partial);
            removed += before - p.tasks.len();
        }
        removed
    }

    /// Removes a project and its tasks; whether it existed.
    pub fn delete_project(&mut self, id: i64) -> bool {
        let before = self.projects.len();
        self.projects.retain(|p| p.id != id);
        self.projects.len() != before
    }

    /// A person sets what `who` may do on a project; false when the project, user or group
    /// does not exist.
    pub fn grant(&mut self, project_id: i64, who: &sharing::SimGrantee, perms: &[&str]) -> bool {
        let known = match who {
            sharing::SimGrantee::User(u) => self.accounts.has_user(u),
            sharing::SimGrantee::Group(g) => self.accounts.has_group(g),
        };
        match self.projects.iter_mut().find(|p| p.id == project_id) {
            Some(p) if known => {
                p.perms.grant(who, perms);
                true
            }
            _ => false,
        }
    }

    /// A person cancels a task (as `…/cancel/` does); whether it existed.
    pub fn cancel_task(&mut self, project_id: i64, task_id: &str) -> bool {
        let task = self
            .projects
            .iter_mut()
            .find(|p| p.id == project_id)
            .and_then(|p| p.tasks.iter_mut().find(|t| t.id == task_id));
        match task {
            Some(t) => {
                t.partial = false;
                t.processing.cancel();
                true
            }
            None => false,
        }
    }
}

fn now_str() -> String {
    fmt_time(unix(SystemTime::now()), TimeFmt::MicrosZ)
}

fn not_found() -> Response {
    json(StatusCode::NOT_FOUND, &json!({"detail": "Not found."}))
}

fn bad(value: Value) -> Response {
    json(StatusCode::BAD_REQUEST, &value)
}

fn forbidden(detail: &str) -> Response {
    json(StatusCode::FORBIDDEN, &json!({ "detail": detail }))
}

/// Python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The routes, as counted in stats.
#[derive(Clone, Copy)]
enum Route {
    TokenAuth,
    Projects,
    Project,
    Tasks,
    Task,
    Upload,
    Commit,
    Download,
    Users,
    Groups,
    Permissions,
    Edit,
    Restart,
    Cancel,
    Asset,
}

impl Route {
    fn template(self) -> &'static str {
        match self {
            Route::TokenAuth => "/api/token-auth/",
            Route::Projects => "/api/projects/",
            Route::Project => "/api/projects/{project}/",
            Route::Tasks => "/api/projects/{project}/tasks/",
            Route::Task => "/api/projects/{project}/tasks/{task}/",
            Route::Upload => "/api/projects/{project}/tasks/{task}/upload/",
            Route::Commit => "/api/projects/{project}/tasks/{task}/commit/",
            Route::Download => "/api/projects/{project}/tasks/{task}/images/download/{filename}",
            Route::Users => "/api/users/",
            Route::Groups => "/api/groups/",
            Route::Permissions => "/api/projects/{project}/permissions/",
            Route::Edit => "/api/projects/{project}/edit/",
            Route::Restart => "/api/projects/{project}/tasks/{task}/restart/",
            Route::Cancel => "/api/projects/{project}/tasks/{task}/cancel/",
            Route::Asset => "/api/projects/{project}/tasks/{task}/download/{asset}",
        }
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::TokenAuth
            | Route::Upload
            | Route::Commit
            | Route::Edit
            | Route::Restart
            | Route::Cancel => &[Method::POST],
            Route::Projects | Route::Tasks => &[Method::GET, Method::POST],
            Route::Project => &[Method::GET, Method::DELETE],
            Route::Task | Route::Users | Route::Groups | Route::Permissions => &[Method::GET],
            Route::Download => &[Method::HEAD],
            Route::Asset => &[Method::GET, Method::HEAD],
        }
    }
}

/// Splits `/api/…` into a route and its raw (still percent-encoded) parameters.
fn route(path: &str) -> Option<(Route, Vec<&str>)> {
    let rest = path.strip_prefix("/api/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.len() >= 7
        && segs[0] == "projects"
        && segs[2] == "tasks"
        && segs[4] == "images"
        && segs[5] == "download"
    {
        let file = &rest[segs[..6].iter().map(|s| s.len() + 1).sum::<usize>()..];
        let ids = [segs[1], segs[3]];
        return (!file.is_empty() && ids.iter().all(|s| !s.is_empty()))
            .then(|| (Route::Download, vec![segs[1], segs[3], file]));
    }
    // `…/download/<asset>`: the rest of the path, no trailing slash.
    if segs.len() >= 6 && segs[0] == "projects" && segs[2] == "tasks" && segs[4] == "download" {
        let asset = &rest[segs[..5].iter().map(|s| s.len() + 1).sum::<usize>()..];
        let ids = [segs[1], segs[3]];
        return (!asset.is_empty() && ids.iter().all(|s| !s.is_empty()))
            .then(|| (Route::Asset, vec![segs[1], segs[3], asset]));
    }
    // WebODM matches these two unanchored: with or without the trailing slash.
    match rest {
        "users" | "users/" => return Some((Route::Users, vec![])),
        "groups" | "groups/" => return Some((Route::Groups, vec![])),
        _ => {}
    }
    let segs = rest.strip_suffix('/')?.split('/').collect::<Vec<_>>();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let r = match segs.as_slice() {
        ["token-auth"] => (Route::TokenAuth, vec![]),
        ["projects"] => (Route::Projects, vec![]),
        ["projects", p] => (Route::Project, vec![*p]),
        ["projects", p, "tasks"] => (Route::Tasks, vec![*p]),
        ["projects", p, "tasks", t] => (Route::Task, vec![*p, *t]),
        ["projects", p, "tasks", t, "upload"] => (Route::Upload, vec![*p, *t]),
        ["projects", p, "tasks", t, "commit"] => (Route::Commit, vec![*p, *t]),
        ["projects", p, "permissions"] => (Route::Permissions, vec![*p]),
        ["projects", p, "edit"] => (Route::Edit, vec![*p]),
        ["projects", p, "tasks", t, "restart"] => (Route::Restart, vec![*p, *t]),
        ["projects", p, "tasks", t, "cancel"] => (Route::Cancel, vec![*p, *t]),
        _ => return None,
    };
    Some(r)
}

/// Checks `Authorization: JWT <token>` the way djangorestframework-jwt does.
fn authenticate(sh: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let not_provided = "Authentication credentials were not provided.";
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(forbidden(not_provided));
    };
    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [scheme, ..] if !scheme.eq_ignore_ascii_case("jwt") => Err(forbidden(not_provided)),
        [_] | [] => Err(forbidden(
            "Invalid Authorization header. No credentials provided.",
        )),
        [_, token] => match sh
            .tokens
            .lock()
            .expect("tokens lock")
            .check(Kind::Webodm, token)
        {
            Check::Valid(user) => Ok(user),
            Check::Expired(_) => Err(forbidden("Signature has expired.")),
            // WebODM tokens are never revoked.
            Check::Unknown | Check::Revoked => Err(forbidden("Error decoding signature.")),
        },
        _ => Err(forbidden(
            "Invalid Authorization header. Credentials string should not contain spaces.",
        )),
    }
}

/// The stats route template of an `/api/…` path; `None` for an unknown URL.
pub(crate) fn template(path: &str) -> Option<&'static str> {
    route(path).map(|(r, _)| r.template())
}

/// The answer to an injected 5xx: Django's page for a 500, the proxy's (nginx) for a 502 or 503.
pub(crate) fn fault_error(status: StatusCode) -> Response {
    let body = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "\n<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n".to_owned()
    } else {
        let line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        format!("<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    };
    respond(status, "text/html; charset=utf-8", body)
}

/// The answer to an injected 429 (Django REST framework's throttling).
pub(crate) fn throttled(retry_after_secs: u64) -> Response {
    let detail =
        format!("Request was throttled. Expected available in {retry_after_secs} seconds.");
    let mut r = json(StatusCode::TOO_MANY_REQUESTS, &json!({ "detail": detail }));
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

/// Answers one `/api/…` request; returns the route template for stats. An asset download is
/// cut short as `cut` says.
pub(crate) async fn handle(sh: &Arc<Shared>, req: Request, cut: Option<Cut>) -> (String, Response) {
    let path = req.uri().path().to_owned();
    let Some((route, params)) = route(&path) else {
        return ("<unknown>".to_owned(), html_404(&path));
    };
    let params: Vec<String> = params.into_iter().map(percent_decode).collect();
    let template = route.template().to_owned();
    let method = req.method().clone();
    if let Route::TokenAuth = route {
        if method != Method::POST {
            return (template, method_not_allowed(&method));
        }
        return (template, token_auth(sh, req).await);
    }
    if matches!(route, Route::Users | Route::Groups)
        && !sh.webodm.lock().expect("webodm lock").accounts.api
    {
        // The site turned its users API off: these URLs do not exist.
        return (template, html_404(&path));
    }
    let user = match authenticate(sh, req.headers()) {
        Ok(user) => user,
        Err(r) => return (template, r),
    };
    if !route.methods().contains(&method) {
        return (template, method_not_allowed(&method));
    }
    let resp = match (route, method) {
        (Route::Projects, Method::GET) => list_projects(sh, &req),
        (Route::Projects, _) => match read_body(req).await {
            Ok(body) => create_project(sh, &user, &body),
            Err(r) => r,
        },
        (Route::Project, Method::DELETE) => {
            let mut st = sh.webodm.lock().expect("webodm lock");
            match params[0].parse() {
                Ok(id) if st.delete_project(id) => Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Body::empty())
                    .expect("a valid response"),
                _ => not_found(),
            }
        }
        (Route::Project, _) => {
            let mut st = sh.webodm.lock().expect("webodm lock");
            st.project(&params[0])
                .map_or_else(not_found, |p| json(StatusCode::OK, &p.json()))
        }
        (Route::Tasks, Method::GET) => {
            let process_ms = sh.faults.get().process_ms;
            let mut st = sh.webodm.lock().expect("webodm lock");
            st.project(&params[0]).map_or_else(not_found, |p| {
                for t in &mut p.tasks {
                    t.processing.tick(process_ms);
                }
                let tasks: Vec<Value> = p.tasks.iter().map(Task::json).collect();
                json(StatusCode::OK, &Value::Array(tasks))
            })
        }
        (Route::Tasks, _) => match read_body(req).await {
            Ok(body) => create_task(sh, &params[0], &body),
            Err(r) => r,
        },
        (Route::Task, _) => {
            let process_ms = sh.faults.get().process_ms;
            with_task(sh, &params, |t| {
                t.processing.tick(process_ms);
                json(StatusCode::OK, &t.json())
            })
        }
        (Route::Commit, _) => commit(sh, &params),
        (Route::Restart, _) => restart(sh, &params),
        (Route::Cancel, _) => with_task(sh, &params, |t| {
            t.partial = false;
            t.processing.cancel();
            json(StatusCode::OK, &json!({"success": true}))
        }),
        (Route::Asset, method) => asset(sh, &params, method == Method::HEAD, cut),
        (Route::Users, _) => {
            let q = query_pairs(req.uri().query());
            let st = sh.webodm.lock().expect("webodm lock");
            st.accounts.search_users(&q)
        }
        (Route::Groups, _) => {
            let q = query_pairs(req.uri().query());
            let st = sh.webodm.lock().expect("webodm lock");
            st.accounts.search_groups(&q)
        }
        (Route::Permissions, _) => {
            let mut st = sh.webodm.lock().expect("webodm lock");
            match st.project(&params[0]).map(|p| p.perms.clone()) {
                Some(perms) => perms.answer(&st.accounts),
                None => not_found(),
            }
        }
        (Route::Edit, _) => {
            if let Ok(id) = params[0].parse::<i64>() {
                sh.stats.edited(id);
            }
            match read_body(req).await {
                Ok(body) => edit(sh, &params[0], &body),
                Err(r) => r,
            }
        }
        (Route::Upload, _) => upload(sh, &params, req).await,
        (Route::Download, _) => with_task(sh, &params, |t| match t.images.get(&params[2]) {
            Some((size, _)) => {
                let mut r = Response::new(Body::empty());
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(*size));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
                r
            }
            None => not_found(),
        }),
        _ => unreachable!("methods checked above"),
    };
    (template, resp)
}

fn method_not_allowed(method: &Method) -> Response {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "detail": format!("Method \"{method}\" not allowed.") }),
    )
}

/// Runs `f` on the task `params[1]` of project `params[0]`, or answers 404.
fn with_task(sh: &Shared, params: &[String], f: impl FnOnce(&mut Task) -> Response) -> Response {
    let mut st = sh.webodm.lock().expect("webodm lock");
    let Some(p) = st.project(&params[0]) else {
        return not_found();
    };
    match p.tasks.iter_mut().find(|t| t.id == params[1]) {
        Some(t) => f(t),
        None => not_found(),
    }
}

/// Reads a JSON or form body into a JSON object (form values stay strings).
async fn read_body(req: Request) -> Result<Value, Response> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bytes = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .map_err(|_| bad(json!({"detail": "Could not read the request body."})))?;
    if ctype.starts_with("application/json") {
        if bytes.is_empty() {
            return Ok(json!({}));
        }
        return serde_json::from_slice(&bytes)
            .map_err(|e| bad(json!({ "detail": format!("JSON parse error - {e}") })));
    }
    if ctype.starts_with("application/x-www-form-urlencoded")
        || (ctype.is_empty() && bytes.is_empty())
    {
        let mut map = serde_json::Map::new();
        for (k, v) in url::form_urlencoded::parse(&bytes).into_owned() {
            map.insert(k, Value::String(v));
        }
        return Ok(Value::Object(map));
    }
    Err(json(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &json!({ "detail": format!("Unsupported media type \"{ctype}\" in request.") }),
    ))
}

/// Tags as WebODM's `TagsField` stores them: each item of the iterable, stripped, space-joined
/// (a string is iterated character by character).
fn parse_tags(v: Option<&Value>) -> Result<String, Response> {
    let items: Vec<String> = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => s.chars().map(|c| c.to_string()).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(_) => return Err(bad(json!({"tags": ["Value must be valid JSON list."]}))),
    };
    Ok(items.iter().map(|t| t.trim()).collect::<Vec<_>>().join(" "))
}

fn token_auth_body(body: &Value) -> (Option<String>, Option<String>) {
    let get = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    (get("username"), get("password"))
}

async fn token_auth(sh: &Shared, req: Request) -> Response {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (user, pass) = token_auth_body(&body);
    let mut errors = serde_json::Map::new();
    for (k, v) in [("username", &user), ("password", &pass)] {
        if v.as_deref().is_none_or(str::is_empty) {
            errors.insert(k.into(), json!(["This field is required."]));
        }
    }
    if !errors.is_empty() {
        return bad(Value::Object(errors));
    }
    let c = &sh.creds;
    if user.as_deref() != Some(&c.webodm_username) || pass.as_deref() != Some(&c.webodm_password) {
        return bad(json!({"non_field_errors": ["Unable to login with provided credentials."]}));
    }
    let issued = sh
        .tokens
        .lock()
        .expect("tokens lock")
        .issue(Kind::Webodm, &c.webodm_username);
    json(StatusCode::OK, &json!({ "token": issued.token }))
}

fn list_projects(sh: &Shared, req: &Request) -> Response {
    let q = query_pairs(req.uri().query());
    let st = sh.webodm.lock().expect("webodm lock");
    // WebODM orders projects newest first.
    let mut list: Vec<&Project> = st.projects.iter().rev().collect();
    if let Some(name) = param(&q, "name") {
        list.retain(|p| p.name == name.trim());
    }
    if let Some(ordering) = param(&q, "ordering") {
        let (desc, field) = ordering
            .strip_prefix('-')
            .map_or((false, ordering), |f| (true, f));
        match field {
            "name" => list.sort_by(|a, b| a.name.cmp(&b.name)),
            "id" | "created_at" => list.sort_by_key(|p| p.id),
            _ => {}
        }
        if desc {
            list.reverse();
        }
    }
    let items: Vec<Value> = list.iter().map(|p| p.json()).collect();
    let Some(page) = param(&q, "page") else {
        return json(StatusCode::OK, &Value::Array(items));
    };
    let pages = items.len().div_ceil(10).max(1);
    let page = match page.parse::<usize>() {
        Ok(n) if (1..=pages).contains(&n) => n,
        _ => return json(StatusCode::NOT_FOUND, &json!({"detail": "Invalid page."})),
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let link = |n: usize| {
        let mut pairs: Vec<(String, String)> =
            q.iter().filter(|(k, _)| k != "page").cloned().collect();
        pairs.push(("page".into(), n.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        json!(format!("http://{host}/api/projects/?{qs}"))
    };
    let results: Vec<Value> = items.into_iter().skip((page - 1) * 10).take(10).collect();
    json(
        StatusCode::OK,
        &json!({
            "count": list.len(),
            "next": if page < pages { link(page + 1) } else { Value::Null },
            "previous": if page > 1 { link(page - 1) } else { Value::Null },
            "results": results,
        }),
    )
}

fn create_project(sh: &Shared, owner: &str, body: &Value) -> Response {
    let name = match body.get("name") {
        None => return bad(json!({"name": ["This field is required."]})),
        Some(Value::Null) => return bad(json!({"name": ["This field may not be null."]})),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(other) => other.to_string(),
    };
    if name.is_empty() {
        return bad(json!({"name": ["This field may not be blank."]}));
    }
    if name.chars().count() > 255 {
        return bad(json!({"name": ["Ensure this field has no more than 255 characters."]}));
    }
    let description = match body.get("description") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) => return bad(json!({"description": ["This field may not be null."]})),
        Some(other) => other.to_string(),
    };
    let tags = match parse_tags(body.get("tags")) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut st = sh.webodm.lock().expect("webodm lock");
    st.next_id += 1;
    let project = Project {
        id: st.next_id,
        name,
        description,
        tags,
        created_at: now_str(),
        tasks: Vec::new(),
        perms: Perms::owned_by(owner),
    };
    let out = project.json();
    st.projects.push(project);
    json(StatusCode::CREATED, &out)
}

/// Validates `options`: a list of `{"name","value"}` with truthy values (a JSON string of one
/// is accepted, as from a form).
fn parse_options(v: Option<&Value>) -> Result<Value, Response> {
    let invalid = || bad(json!({"options": ["Invalid options"]}));
    let v = match v {
        None => return Ok(json!([])),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| invalid())?,
        Some(v) => v.clone(),
    };
    let Value::Array(items) = &v else {
        return Err(invalid());
    };
    for item in items {
        let ok = item
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
            && item.get("value").is_some_and(truthy);
        if !ok {
            return Err(invalid());
        }
    }
    Ok(v)
}

fn create_task(sh: &Shared, project: &str, body: &Value) -> Response {
    if let Some(node) = body.get("processing_node") {
        let msg = if node.is_null() {
            "This field may not be null.".to_owned()
        } else {
            format!(
                "Invalid pk \"{}\" - object does not exist.",
                node.as_str().map_or(node.to_string(), str::to_owned)
            )
        };
        return bad(json!({ "processing_node": [msg] }));
    }
    let options = match parse_options(body.get("options")) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let tags = match parse_tags(body.get("tags")) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let partial = body.get("partial").is_some_and(truthy);
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() > 255 => {
            return bad(json!({"name": ["Ensure this field has no more than 255 characters."]}))
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let auto = body.get("auto_processing_node").is_none_or(truthy);
    let mut st = sh.webodm.lock().expect("webodm lock");
    let Some(p) = st.project(project) else {
        return not_found();
    };
    if !partial {
        return bad(json!(["Cannot create task, you need at least 2 images"]));
    }
    let task = Task {
        id: uuid4(),
        project: p.id,
        name,
        partial,
        auto_processing_node: auto,
        options,
        tags,
        created_at: now_str(),
        images: BTreeMap::new(),
        processing: Processing::default(),
    };
    let out = task.json();
    p.tasks.push(task);
    json(StatusCode::CREATED, &out)
}

/// The name WebODM stores an uploaded file under: the part after the last `/` or `\`, cut to
/// 255 characters keeping the extension.
fn stored_name(sent: &str) -> String {
    let base = sent.rsplit(['/', '\\']).next().unwrap_or(sent);
    if base.chars().count() <= 255 {
        return base.to_owned();
    }
    let ext = base.rfind('.').map_or("", |i| &base[i..]);
    let keep = 255usize.saturating_sub(ext.chars().count());
    base.chars().take(keep).collect::<String>() + ext
}

async fn upload(sh: &Shared, params: &[String], req: Request) -> Response {
    let started = std::time::Instant::now();
    // Checks before reading the body, like the real view.
    let partial = {
        let mut st = sh.webodm.lock().expect("webodm lock");
        st.project(&params[0])
            .and_then(|p| p.tasks.iter().find(|t| t.id == params[1]))
            .map(|t| t.partial)
    };
    match partial {
        None => return not_found(),
        Some(false) => return bad(json!(["Task is not in partial state, cannot upload"])),
        Some(true) => {}
    }
    // Behind gunicorn, a body without a Content-Length (chunked) reaches Django empty.
    if !req.headers().contains_key(header::CONTENT_LENGTH) {
        return bad(json!(["No files uploaded"]));
    }
    let mut multipart = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(_) => {
            return json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &json!({"detail": "Unsupported media type in request."}),
            )
        }
    };
    // (stored name, size, sha256); recorded only once the whole body was read.
    let mut files: Vec<(String, u64, String)> = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad(json!({ "detail": format!("Multipart form parse error - {e}") })),
        };
        let name = match (field.name(), field.file_name()) {
            (Some("images"), Some(f)) if !f.is_empty() => stored_name(f),
            _ => continue,
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    sh.stats
                        .bytes_uploaded
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    size += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return bad(json!({ "detail": format!("Multipart form parse error - {e}") }))
                }
            }
        }
        files.push((name, size, hex::encode(hasher.finalize())));
    }
    if files.is_empty() {
        return bad(json!(["No files uploaded"]));
    }
    let cost = {
        let f = sh.faults.get();
        let bytes: u64 = files.iter().map(|(_, size, _)| size).sum();
        let taking_in = match f.upload_bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
        };
        // Reading the body is part of taking the files in.
        taking_in.saturating_sub(started.elapsed())
            + Duration::from_millis(f.upload_request_ms + f.upload_file_ms * files.len() as u64)
    };
    if !cost.is_zero() {
        tokio::time::sleep(cost).await;
    }
    let dropped: HashSet<String> = {
        let mut st = sh.webodm.lock().expect("webodm lock");
        files
            .iter()
            .filter(|(name, ..)| st.drop_from_next_upload.remove(name))
            .map(|(name, ..)| name.clone())
            .collect()
    };
    with_task(sh, params, |t| {
        let mut uploaded = serde_json::Map::new();
        for (name, size, sha) in files {
            if dropped.contains(&name) {
                continue;
            }
            sh.stats.files_uploaded.fetch_add(1, Ordering::Relaxed);
            uploaded.insert(name.clone(), json!(size));
            t.images.insert(name, (size, sha));
        }
        json(
            StatusCode::OK,
            &json!({"success": true, "uploaded": uploaded}),
        )
    })
}

/// The project with the id in a path (`projects` borrowed alone, so the rest of the state
/// stays usable beside it).
fn project_in<'a>(projects: &'a mut [Project], id: &str) -> Option<&'a mut Project> {
    let id: i64 = id.parse().ok()?;
    projects.iter_mut().find(|p| p.id == id)
}

/// `POST …/commit/`: the task stops being partial and (again, when it was committed before)
/// goes to processing.
fn commit(sh: &Shared, params: &[String]) -> Response {
    let faults = sh.faults.get();
    let mut guard = sh.webodm.lock().expect("webodm lock");
    let st = &mut *guard;
    let Some(p) = project_in(&mut st.projects, &params[0]) else {
        return not_found();
    };
    let failing = p.failing(&st.failing).cloned();
    let project_name = p.name.clone();
    let Some(t) = p.tasks.iter_mut().find(|t| t.id == params[1]) else {
        return not_found();
    };
    if t.images.is_empty() {
        return bad(json!(["You need to upload at least 1 file before commit"]));
    }
    // Like WebODM, a commit of a task no longer partial is accepted again (the real server
    // re-queues processing): every 200 is counted per task.
    t.partial = false;
    sh.stats.commit(&t.id);
    let task_name = t.name.clone().unwrap_or_else(|| t.id.clone());
    let outcome = match failing {
        Some(msg) => Outcome::Fail(msg),
        None if t.processing.attempts == 0
            && processing::first_attempt_fails(
                faults.fail_processing_rate,
                sh.seed,
                &project_name,
                &task_name,
            ) =>
        {
            Outcome::Fail(Some(processing::RATE_FAILURE.to_owned()))
        }
        None => Outcome::Complete,
    };
    t.processing.start(faults.process_ms, outcome, false);
    json(StatusCode::OK, &t.json())
}

/// `POST …/restart/`: clears `last_error` and processes the task again (a partial task stops
/// being partial, as in WebODM).
fn restart(sh: &Shared, params: &[String]) -> Response {
    let process_ms = sh.faults.get().process_ms;
    let mut guard = sh.webodm.lock().expect("webodm lock");
    let st = &mut *guard;
    let Some(p) = project_in(&mut st.projects, &params[0]) else {
        return not_found();
    };
    let outcome = match p.failing(&st.failing) {
        Some(msg) => Outcome::Fail(msg.clone()),
        None => Outcome::Complete,
    };
    let Some(t) = p.tasks.iter_mut().find(|t| t.id == params[1]) else {
        return not_found();
    };
    t.partial = false;
    t.processing.start(process_ms, outcome, true);
    json(StatusCode::OK, &json!({"success": true}))
}

/// `POST …/edit/`: all or nothing.
fn edit(sh: &Shared, project: &str, body: &Value) -> Response {
    let mut guard = sh.webodm.lock().expect("webodm lock");
    let st = &mut *guard;
    let Some(p) = st
        .projects
        .iter_mut()
        .find(|p| Some(p.id) == project.parse().ok())
    else {
        return not_found();
    };
    match sharing::edit(body, &p.perms, &st.accounts) {
        Ok(e) => {
            p.name = e.name;
            p.description = e.description;
            p.tags = e.tags;
            if let Some(perms) = e.perms {
                p.perms = perms;
            }
            json(StatusCode::OK, &json!({"success": true}))
        }
        Err(refusal) => refusal,
    }
}

/// MIME type Python's `mimetypes` gives an asset name (WebODM falls back to zip).
fn asset_mime(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("tif") => "image/tiff",
        Some("png") => "image/png",
        Some("pdf") => "application/pdf",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("kmz") => "application/vnd.google-earth.kmz",
        _ => "application/zip",
    }
}

/// `GET …/download/<asset>` with a Content-Length, or 404 "Asset does not exist".
fn asset(sh: &Arc<Shared>, params: &[String], head: bool, cut: Option<Cut>) -> Response {
    let faults = sh.faults.get();
    let (process_ms, stall_ms) = (faults.process_ms, faults.asset_stall_ms);
    let file = {
        let mut st = sh.webodm.lock().expect("webodm lock");
        let task = st
            .project(&params[0])
            .and_then(|p| p.tasks.iter_mut().find(|t| t.id == params[1]));
        let Some(t) = task else {
            return not_found();
        };
        t.processing.tick(process_ms);
        if !t
            .available_assets(t.processing.view().completed)
            .contains(&params[2])
        {
            return json(
                StatusCode::NOT_FOUND,
                &json!({"detail": "Asset does not exist"}),
            );
        }
        processing::asset_file(&t.id, &params[2], faults.asset_size)
    };
    let size = file.size;
    let body = if head {
        Body::empty()
    } else {
        let limit = cut.as_ref().map_or(u64::MAX, |c| c.limit(size));
        let counter = Arc::clone(sh);
        let chunks = capped(file.reader(), limit, move |n| {
            counter
                .stats
                .asset_bytes_downloaded
                .fetch_add(n, Ordering::Relaxed);
        });
        match cut.map(|c| c.reset) {
            None if stall_ms > 0 => {
                // The first half, a pause, then the rest.
                let (half, mut seen, mut stalled) = (size / 2, 0u64, false);
                Body::from_stream(stream::iter(chunks).then(move |chunk| {
                    let pause = !stalled && seen >= half;
                    stalled |= pause;
                    if let Ok(c) = &chunk {
                        seen += c.len() as u64;
                    }
                    async move {
                        if pause {
                            tokio::time::sleep(Duration::from_millis(stall_ms)).await;
                        }
                        chunk
                    }
                }))
            }
            None => Body::from_stream(stream::iter(chunks)),
            // Short of the Content-Length: what was sent leaves, then the connection closes.
            Some(None) => Body::from_stream(
                stream::iter(chunks).chain(
                    stream::once(async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        None
                    })
                    .filter_map(std::future::ready),
                ),
            ),
            Some(Some(reset)) => {
                Body::from_stream(stream::iter(chunks).chain(stream::once(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    reset.trigger();
                    Err(std::io::ErrorKind::ConnectionReset.into())
                })))
            }
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset_mime(&params[2])),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={}", params[2])) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names() {
        assert_eq!(stored_name("a/b/IMG.jpg"), "IMG.jpg");
        assert_eq!(stored_name("a\\b.jpg"), "b.jpg");
        let long = format!("{}.jpg", "x".repeat(300));
        let s = stored_name(&long);
        assert_eq!(s.chars().count(), 255);
        assert!(s.ends_with("x.jpg"));
    }

    #[test]
    fn routes() {
        assert!(route("/api/projects").is_none());
        assert!(route("/api/projects//tasks/").is_none());
        assert!(matches!(
            route("/api/projects/3/tasks/"),
            Some((Route::Tasks, _))
        ));
        let (r, p) = route("/api/projects/3/tasks/ab/images/download/a%20b.jpg").unwrap();
        assert!(matches!(r, Route::Download));
        assert_eq!(p, vec!["3", "ab", "a%20b.jpg"]);
    }

    #[test]
    fn tags_quirk() {
        assert_eq!(parse_tags(Some(&json!(["a", "bc"]))).unwrap(), "a bc");
        assert_eq!(
            split_tags(&parse_tags(Some(&json!("abc"))).unwrap()),
            ["a", "b", "c"]
        );
    }
}
