//! Shared by the bad-input tests: a tampering proxy in front of the simulator, and a rig that
//! runs library passes through it.
//!
//! The proxy forwards every request to the simulator unchanged unless its rule says otherwise:
//! answer itself (HTML, garbage, an error status), rewrite the JSON the simulator answered, or
//! change the answer's content type. It can also give real folders and files hostile names: the
//! client sees the hostile names in listings and asks for them; the proxy translates them back
//! before forwarding, so the simulator only ever sees its own names. Every request the client
//! sent is logged with its raw (still percent-encoded) path and query.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use axum::Router;
use serde_json::Value;

use tapis_webodm_sync::clients::Clients;
use tapis_webodm_sync::config::Config;
use tapis_webodm_sync::engine::pass::{self, PassOptions};
use tapis_webodm_sync::engine::state::Store;
use tapis_webodm_sync::engine::PassSummary;
use tapis_webodm_sync::sim::{DatasetSpec, ExpectedFlight, Sim};

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Raw path, percent-encoding kept.
    pub raw_path: String,
    pub query: Option<String>,
}

/// What the rule sees of a request.
pub struct Req<'a> {
    pub method: &'a Method,
    pub raw_path: &'a str,
    /// Path segments, percent-decoded (hostile names already translated back to real ones).
    pub segs: Vec<String>,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// The id of the target flight's project once the proxy saw it created.
    pub target_pid: Option<i64>,
}

impl Req<'_> {
    /// `Some(path)` for a Tapis directory listing of `system` (path relative to its root).
    pub fn tapis_list(&self, system: &str) -> Option<String> {
        self.tapis("ops", system)
    }

    /// `Some(path)` for a Tapis content download from `system`.
    pub fn tapis_content(&self, system: &str) -> Option<String> {
        self.tapis("content", system)
    }

    fn tapis(&self, kind: &str, system: &str) -> Option<String> {
        let s = &self.segs;
        (s.len() >= 4 && s[0] == "v3" && s[1] == "files" && s[2] == kind && s[3] == system)
            .then(|| s[4..].join("/"))
    }

    /// Whether this is a WebODM route below the target flight's project, ending in `tail`
    /// (e.g. `["tasks"]`, `["upload"]`).
    pub fn target_project(&self, tail: &str) -> bool {
        let Some(pid) = self.target_pid else {
            return false;
        };
        let s = &self.segs;
        s.len() >= 3
            && s[0] == "api"
            && s[1] == "projects"
            && s[2] == pid.to_string()
            && self.raw_path.trim_end_matches('/').ends_with(tail)
    }

    pub fn is(&self, method: Method) -> bool {
        *self.method == method
    }
}

/// What to do with one request.
pub enum Action {
    /// Forward unchanged.
    Forward,
    /// Answer without forwarding.
    Reply {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Forward, then rewrite the JSON answer.
    Json(Box<dyn Fn(Value) -> Value + Send + Sync>),
    /// Forward, then replace the answer's body bytes.
    Bytes(Box<dyn Fn(Vec<u8>) -> Vec<u8> + Send + Sync>),
    /// Forward, then replace the answer's content type.
    ContentType(&'static str),
}

pub type Rule = Arc<dyn Fn(&Req<'_>) -> Action + Send + Sync>;

/// Hostile names given to real folders and files.
#[derive(Default, Clone)]
pub struct Renames {
    /// (system, real flight) → hostile name.
    pub flights: BTreeMap<(String, String), String>,
    /// (system, real flight, real image) → hostile name.
    pub images: BTreeMap<(String, String, String), String>,
}

impl Renames {
    fn real_flight(&self, system: &str, shown: &str) -> Option<String> {
        self.flights
            .iter()
            .find(|((s, _), h)| s == system && h.as_str() == shown)
            .map(|((_, f), _)| f.clone())
    }
    fn shown_flight(&self, system: &str, real: &str) -> String {
        self.flights
            .get(&(system.to_string(), real.to_string()))
            .cloned()
            .unwrap_or_else(|| real.to_string())
    }
    fn real_image(&self, system: &str, flight: &str, shown: &str) -> Option<String> {
        self.images
            .iter()
            .find(|((s, f, _), h)| s == system && f == flight && h.as_str() == shown)
            .map(|((_, _, i), _)| i.clone())
    }
    fn shown_image(&self, system: &str, flight: &str, real: &str) -> String {
        self.images
            .get(&(system.to_string(), flight.to_string(), real.to_string()))
            .cloned()
            .unwrap_or_else(|| real.to_string())
    }

    /// Decoded segments with hostile names replaced by the real ones.
    fn to_real(&self, segs: &mut [String]) {
        if segs.len() >= 6 && segs[0] == "v3" && segs[1] == "files" {
            let system = segs[3].clone();
            if let Some(real) = self.real_flight(&system, &segs[4]) {
                segs[4] = real;
            }
            if segs.len() == 8 {
                let flight = segs[4].clone();
                if let Some(real) = self.real_image(&system, &flight, &segs[7]) {
                    segs[7] = real;
                }
            }
        }
    }

    /// A listing answer with real names replaced by the hostile ones.
    fn to_shown(&self, segs: &[String], mut v: Value) -> Value {
        if segs.len() < 4 || segs[1] != "files" || segs[2] != "ops" {
            return v;
        }
        let system = segs[3].clone();
        let Some(items) = v.get_mut("result").and_then(Value::as_array_mut) else {
            return v;
        };
        for item in items {
            let Some(path) = item.get("path").and_then(Value::as_str) else {
                continue;
            };
            let mut parts: Vec<String> = path.split('/').map(str::to_string).collect();
            let real_flight = parts[0].clone();
            if parts.len() == 4 {
                parts[3] = self.shown_image(&system, &real_flight, &parts[3]);
            }
            parts[0] = self.shown_flight(&system, &real_flight);
            let name = parts.last().cloned().unwrap_or_default();
            item["path"] = Value::String(parts.join("/"));
            item["name"] = Value::String(name);
        }
        v
    }
}

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    rule: Rule,
    renames: Renames,
    /// Name of the target flight's project, to learn its id.
    target_project: String,
    target_pid: Mutex<Option<i64>>,
    seen: Mutex<Vec<Seen>>,
}

/// Percent-decodes one path segment.
pub fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_path(segs: &[String]) -> String {
    let mut url = url::Url::parse("http://x/").unwrap();
    {
        let mut p = url.path_segments_mut().unwrap();
        p.clear();
        p.extend(segs);
    }
    url.path().to_string()
}

async fn handle(State(px): State<Arc<Proxy>>, req: Request) -> Response {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    px.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        raw_path: raw_path.clone(),
        query: query.clone(),
    });
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    // Keep a trailing slash: split gives a last empty segment.
    let mut segs: Vec<String> = raw_path[1..].split('/').map(decode).collect();
    px.renames.to_real(&mut segs);
    let action = {
        let target_pid = *px.target_pid.lock().unwrap();
        let r = Req {
            method: &method,
            raw_path: &raw_path,
            segs: segs.clone(),
            query: query.as_deref(),
            body: &body,
            target_pid,
        };
        (px.rule)(&r)
    };
    if let Action::Reply {
        status,
        content_type,
        body,
    } = action
    {
        return Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
    }
    let path = if px.renames.flights.is_empty() && px.renames.images.is_empty() {
        raw_path.clone()
    } else {
        encode_path(&segs)
    };
    let url = match &query {
        Some(q) => format!("{}{}?{}", px.upstream, path, q),
        None => format!("{}{}", px.upstream, path),
    };
    let mut fwd = px.client.request(method.clone(), url).body(body.to_vec());
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            fwd = fwd.header(k, v);
        }
    }
    let resp = match fwd.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(format!("proxy: {e}")))
                .unwrap()
        }
    };
    let status = resp.status().as_u16();
    let mut content_type = resp
        .headers()
        .get("content-type")
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = resp.headers().get("content-disposition").cloned();
    // A HEAD answer's size is in its Content-Length alone (the body is empty): pass it on.
    let head_length = (method == Method::HEAD)
        .then(|| resp.headers().get("content-length").cloned())
        .flatten();
    let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
    // Learn the target project's id from its creation (or lookup).
    if segs.first().map(String::as_str) == Some("api")
        && segs.get(1).map(String::as_str) == Some("projects")
    {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let items = match &v {
                Value::Array(a) => a.clone(),
                o => vec![o.clone()],
            };
            for p in items {
                if p.get("name").and_then(Value::as_str) == Some(px.target_project.as_str()) {
                    if let Some(id) = p.get("id").and_then(Value::as_i64) {
                        *px.target_pid.lock().unwrap() = Some(id);
                    }
                }
            }
        }
    }
    if status == 200 && segs.first().map(String::as_str) == Some("v3") {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if !(px.renames.flights.is_empty() && px.renames.images.is_empty()) {
                bytes = serde_json::to_vec(&px.renames.to_shown(&segs, v)).unwrap();
            }
        }
    }
    match action {
        Action::Json(f) => {
            let v: Value = serde_json::from_slice(&bytes).expect("upstream answered JSON");
            bytes = serde_json::to_vec(&f(v)).unwrap();
        }
        Action::Bytes(f) => bytes = f(bytes),
        Action::ContentType(t) => content_type = HeaderValue::from_static(t),
        Action::Forward | Action::Reply { .. } => {}
    }
    let mut b = Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some(d) = disposition {
        b = b.header("content-disposition", d);
    }
    if let Some(len) = head_length {
        b = b.header("content-length", len);
    }
    b.body(Body::from(bytes)).unwrap()
}

/// A simulator behind a tampering proxy, and a config pointing at the proxy.
pub struct Rig {
    pub sim: Sim,
    pub state: tempfile::TempDir,
    pub config: Config,
    pub clients: Clients,
    proxy: Arc<Proxy>,
    server: tokio::task::JoinHandle<()>,
}

pub fn spec(systems: usize, flights: usize, images: usize) -> DatasetSpec {
    DatasetSpec {
        seed: 11,
        systems,
        flights_per_system: flights,
        images_per_flight: images,
        image_size: 600,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// The flight the tests aim at: the first expected one.
pub fn target_of(sim: &Sim) -> ExpectedFlight {
    sim.dataset().expected_flights().remove(0)
}

impl Rig {
    pub async fn new(spec: &DatasetSpec, rule: Rule, renames: Renames) -> Rig {
        let sim = Sim::start(spec, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let target = target_of(&sim);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let target_flight = renames.shown_flight(&target.system_id, &target.flight);
        let proxy = Arc::new(Proxy {
            upstream: sim.base_url(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            rule,
            renames,
            target_project: format!("{} ({})", target_flight.trim(), target.system_id),
            target_pid: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&proxy));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let state = tempfile::tempdir().unwrap();
        let mut config = tapis_webodm_sync::demo::config_for(&sim, state.path()).unwrap();
        config.results.assets.clear();
        let url: url::Url = format!("http://{addr}").parse().unwrap();
        config.tapis.base_url = url.clone();
        config.webodm.base_url = url;
        config.retry.initial = std::time::Duration::from_millis(5);
        config.retry.max = std::time::Duration::from_millis(20);
        config.retry.max_elapsed = std::time::Duration::from_millis(200);
        let clients = Clients::new(&config).unwrap();
        Rig {
            sim,
            state,
            config,
            clients,
            proxy,
            server,
        }
    }

    pub async fn pass(&self) -> PassSummary {
        let store = Store::open(&self.config.sync.state_dir).unwrap();
        pass::pass(
            &self.config,
            &self.clients,
            Some(&store),
            &PassOptions::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .await
        .summary
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.proxy.seen.lock().unwrap().clone()
    }

    pub fn wipe_state(&self) {
        std::fs::remove_dir_all(self.state.path()).unwrap();
    }

    pub async fn shutdown(self) {
        self.server.abort();
        self.sim.shutdown().await;
    }
}

/// Whether WebODM holds exactly this flight (under `shown` flight and image names): one project
/// with one committed task holding every image byte for byte.
pub fn synced(
    sim: &Sim,
    f: &ExpectedFlight,
    shown_flight: &str,
    shown_images: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let name = format!("{} ({})", shown_flight.trim(), f.system_id);
    let projects = sim.webodm_projects();
    let mine: Vec<_> = projects.iter().filter(|p| p.name == name).collect();
    if mine.len() != 1 {
        return Err(format!("{} projects named {name:?}", mine.len()));
    }
    let p = mine[0];
    if p.tasks.len() != 1 || p.tasks[0].partial {
        return Err(format!("{name:?}: tasks {:?}", p.tasks));
    }
    let want: BTreeMap<String, (u64, String)> = f
        .images
        .iter()
        .map(|i| (shown_images(&i.name), (i.size, i.sha256.clone())))
        .collect();
    if p.tasks[0].images != want {
        return Err(format!(
            "{name:?}: images {:?}, want {:?}",
            p.tasks[0].images.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        ));
    }
    Ok(())
}

/// Whether WebODM holds a committed project for this flight at all.
pub fn has_project(sim: &Sim, f: &ExpectedFlight) -> bool {
    let name = format!("{} ({})", f.flight.trim(), f.system_id);
    sim.webodm_projects().iter().any(|p| p.name == name)
}
