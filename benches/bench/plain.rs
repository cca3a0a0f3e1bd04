//! The reference loops the daemon is compared with, each run as a child process (this
//! harness binary in a mode chosen by an environment variable) on a default tokio runtime,
//! like the daemon, against a simulator in the harness process. Each prints
//! `files bytes nanos` (nanoseconds of its transfers alone) and exits 0.
//!
//! - copy loop (section 2): every image of the flight downloaded from Tapis and streamed into
//!   a WebODM upload, one image per request, N at once;
//! - WebODM's web UI (section 5): every image read from a local file and uploaded, one file
//!   per request, N at once;
//! - results loop (section 6): every asset of every processed task downloaded from WebODM
//!   into memory, then uploaded to Tapis, N at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tapis_webodm_sync::sim::Credentials;
use url::Url;

use crate::{err, R};

/// Selects the copy loop; holds the simulator's base URL.
pub const COPY_ENV: &str = "TWS_BENCH_COPY_LOOP";
/// Selects the web UI's uploads; holds the simulator's base URL.
pub const UI_ENV: &str = "TWS_BENCH_UI_UPLOAD";
/// The folder of local image files the web UI uploads.
pub const UI_DIR_ENV: &str = "TWS_BENCH_UI_DIR";
/// Selects the results loop; holds the simulator's base URL.
pub const RESULTS_ENV: &str = "TWS_BENCH_RESULTS_LOOP";
/// The assets the results loop copies, comma-separated.
pub const RESULTS_ASSETS_ENV: &str = "TWS_BENCH_RESULTS_ASSETS";
/// Where the results loop writes them, under each flight folder.
pub const RESULTS_DIR: &str = "code/odm_results_loop";
/// Transfers at once, for every loop.
pub const CONCURRENCY_ENV: &str = "TWS_BENCH_CONCURRENCY";

/// Runs the loop the environment asks for, if any: `Some(exit code)`.
pub fn main_if_asked() -> Option<std::process::ExitCode> {
    let var = |k: &str| std::env::var(k).ok();
    let concurrency = var(CONCURRENCY_ENV)
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let job: std::pin::Pin<Box<dyn std::future::Future<Output = R<Done>>>> =
        if let Some(base) = var(COPY_ENV) {
            Box::pin(async move { copy_loop(&base, concurrency).await })
        } else if let Some(base) = var(UI_ENV) {
            let dir = PathBuf::from(var(UI_DIR_ENV)?);
            Box::pin(async move { web_ui(&base, &dir, concurrency).await })
        } else if let Some(base) = var(RESULTS_ENV) {
            let assets: Vec<String> = var(RESULTS_ASSETS_ENV)?
                .split(',')
                .map(str::to_owned)
                .collect();
            Box::pin(async move { results_loop(&base, &assets, concurrency).await })
        } else {
            return None;
        };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    Some(match runtime.block_on(job) {
        Ok(d) => {
            println!("{} {} {}", d.files, d.bytes, d.time.as_nanos());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reference loop: {e}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// What a loop moved, and the time of its transfers.
struct Done {
    files: u64,
    bytes: u64,
    time: Duration,
}

/// Plain reqwest clients logged in to both simulated services: one connection pool per
/// service, as the daemon has.
struct Plain {
    base: Url,
    tapis: reqwest::Client,
    webodm: reqwest::Client,
    tapis_token: String,
    jwt: String,
}

impl Plain {
    async fn login(base: &str) -> R<Plain> {
        let c = Credentials::default();
        let base: Url = base.parse().map_err(err)?;
        let (tapis, webodm) = (reqwest::Client::new(), reqwest::Client::new());
        let mut p = Plain {
            base,
            tapis,
            webodm,
            tapis_token: String::new(),
            jwt: String::new(),
        };
        let tok: Value = ok_json(
            p.tapis
                .post(p.url(&["v3", "oauth2", "tokens"], false))
                .json(&json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password})),
        )
        .await?;
        p.tapis_token = tok["result"]["access_token"]["access_token"]
            .as_str()
            .ok_or("no Tapis token")?
            .to_string();
        let tok: Value = ok_json(
            p.webodm
                .post(p.url(&["api", "token-auth"], true))
                .json(&json!({"username": c.webodm_username, "password": c.webodm_password})),
        )
        .await?;
        p.jwt = format!("JWT {}", tok["token"].as_str().ok_or("no WebODM token")?);
        Ok(p)
    }

    /// The base URL with `segments` (each percent-encoded), and a trailing slash if asked.
    fn url(&self, segments: &[&str], slash: bool) -> Url {
        let mut u = self.base.clone();
        {
            let mut p = u.path_segments_mut().expect("http URL");
            p.clear().extend(segments);
            if slash {
                p.push("");
            }
        }
        u
    }

    fn tapis_get(&self, u: Url) -> reqwest::RequestBuilder {
        self.tapis.get(u).header("X-Tapis-Token", &self.tapis_token)
    }

    fn webodm_req(&self, method: reqwest::Method, u: Url) -> reqwest::RequestBuilder {
        self.webodm
            .request(method, u)
            .header("Authorization", &self.jwt)
    }

    /// A project and a partial task in WebODM: (project id, task id).
    async fn partial_task(&self, name: &str) -> R<(String, String)> {
        let project: Value = ok_json(
            self.webodm_req(reqwest::Method::POST, self.url(&["api", "projects"], true))
                .json(&json!({ "name": name })),
        )
        .await?;
        let pid = project["id"].as_i64().ok_or("no project id")?.to_string();
        let task: Value = ok_json(
            self.webodm_req(
                reqwest::Method::POST,
                self.url(&["api", "projects", &pid, "tasks"], true),
            )
            .json(&json!({"name": name, "partial": true})),
        )
        .await?;
        let tid = task["id"].as_str().ok_or("no task id")?.to_string();
        Ok((pid, tid))
    }

    /// Uploads one file into the task; an error unless WebODM confirms its byte count.
    async fn upload_one(&self, upload: &Url, name: &str, part: Part, size: u64) -> R<u64> {
        let part = part
            .file_name(name.to_string())
            .mime_str("application/octet-stream")
            .map_err(err)?;
        let reply: Value = ok_json(
            self.webodm_req(reqwest::Method::POST, upload.clone())
                .multipart(Form::new().part("images", part)),
        )
        .await?;
        match reply["uploaded"][name].as_u64() {
            Some(n) if n == size => Ok(n),
            other => Err(format!("{name}: stored {other:?}, expected {size}")),
        }
    }
}

/// Sends `req`; its JSON answer, or an error for a non-2xx status.
async fn ok_json(req: reqwest::RequestBuilder) -> R<Value> {
    req.send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(err)?
        .json()
        .await
        .map_err(err)
}

/// Runs `jobs` `concurrency` at once; the bytes of each, and the time of them all.
async fn timed<F>(jobs: Vec<F>, concurrency: usize) -> R<Done>
where
    F: std::future::Future<Output = R<u64>>,
{
    let t = Instant::now();
    let done: Vec<R<u64>> = stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let time = t.elapsed();
    let sizes = done.into_iter().collect::<R<Vec<u64>>>()?;
    Ok(Done {
        files: sizes.len() as u64,
        bytes: sizes.iter().sum(),
        time,
    })
}

/// Section 2's limit: the single flight's images downloaded from the simulated Tapis and
/// streamed into WebODM uploads, `concurrency` at once, nothing else.
async fn copy_loop(base: &str, concurrency: usize) -> R<Done> {
    let p = Plain::login(base).await?;
    let (pid, tid) = p.partial_task("limit").await?;
    // The flight's images (the single system's single flight).
    let systems: Value = ok_json(p.tapis_get(p.url(&["v3", "systems"], false)).query(&[
        ("listType", "ALL"),
        ("search", "(id.like.ptdatax.project.*)"),
        ("select", "id"),
    ]))
    .await?;
    let sys = systems["result"][0]["id"]
        .as_str()
        .ok_or("no system")?
        .to_string();
    let listing: Value = ok_json(p.tapis_get(p.url(
        &["v3", "files", "ops", &sys, "Flight001", "code", "images"],
        false,
    )))
    .await?;
    let images: Vec<(String, String, u64)> = listing["result"]
        .as_array()
        .ok_or("no listing")?
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["path"].as_str().unwrap_or_default().to_string(),
                e["size"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let upload = p.url(&["api", "projects", &pid, "tasks", &tid, "upload"], true);
    let jobs: Vec<_> = images
        .iter()
        .map(|(name, path, size)| {
            let mut segs = vec!["v3", "files", "content", sys.as_str()];
            segs.extend(path.split('/').filter(|s| !s.is_empty()));
            let download = p.url(&segs, false);
            let (p, upload) = (&p, &upload);
            async move {
                let body = p
                    .tapis_get(download)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(err)?
                    .bytes_stream();
                let part = Part::stream_with_length(reqwest::Body::wrap_stream(body), *size);
                p.upload_one(upload, name, part, *size).await
            }
        })
        .collect();
    timed(jobs, concurrency).await
}

/// Section 5's reference: WebODM's web UI, uploading the images of `dir` (local files, read
/// as the browser reads them) into a new partial task, one file per request, `concurrency`
/// at once. Timed: the uploads.
async fn web_ui(base: &str, dir: &Path, concurrency: usize) -> R<Done> {
    let p = Plain::login(base).await?;
    let (pid, tid) = p.partial_task("web UI").await?;
    let upload = p.url(&["api", "projects", &pid, "tasks", &tid, "upload"], true);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()).map_err(err))
        .collect::<R<_>>()?;
    files.sort();
    let jobs: Vec<_> = files
        .iter()
        .map(|path| {
            let (p, upload) = (&p, &upload);
            async move {
                let bytes = tokio::fs::read(path).await.map_err(err)?;
                let size = bytes.len() as u64;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or("a file without a name")?;
                p.upload_one(upload, &name, Part::bytes(bytes), size).await
            }
        })
        .collect();
    timed(jobs, concurrency).await
}

/// Section 6's reference: for every processed task in WebODM (project `<Flight> (<System>)`),
/// each of `assets` downloaded whole into memory, then uploaded to
/// `<Flight>/code/odm_results_loop/<asset>` on Tapis (folder made first), `concurrency` at
/// once. Timed: the folders and the copies.
async fn results_loop(base: &str, assets: &[String], concurrency: usize) -> R<Done> {
    let p = Plain::login(base).await?;
    let projects: Value =
        ok_json(p.webodm_req(reqwest::Method::GET, p.url(&["api", "projects"], true))).await?;
    // (system, flight, project id, task id)
    let mut tasks = Vec::new();
    for project in projects.as_array().ok_or("no project list")? {
        let name = project["name"].as_str().unwrap_or_default();
        let Some((flight, system)) = name.strip_suffix(')').and_then(|n| n.rsplit_once(" ("))
        else {
            continue;
        };
        let pid = project["id"].as_i64().ok_or("no project id")?.to_string();
        let list: Value = ok_json(p.webodm_req(
            reqwest::Method::GET,
            p.url(&["api", "projects", &pid, "tasks"], true),
        ))
        .await?;
        for task in list.as_array().ok_or("no task list")? {
            if task["status"] == 40 {
                let tid = task["id"].as_str().ok_or("no task id")?.to_string();
                tasks.push((system.to_string(), flight.to_string(), pid.clone(), tid));
            }
        }
    }
    if tasks.is_empty() {
        return Err("no processed task in WebODM".into());
    }
    let t = Instant::now();
    for (system, flight, ..) in &tasks {
        let dir = format!("{flight}/{RESULTS_DIR}");
        ok_json(
            p.tapis
                .post(p.url(&["v3", "files", "ops", system], false))
                .header("X-Tapis-Token", &p.tapis_token)
                .json(&json!({ "path": dir })),
        )
        .await?;
    }
    let folders = t.elapsed();
    let jobs: Vec<_> = tasks
        .iter()
        .flat_map(|task| assets.iter().map(move |a| (task, a)))
        .map(|((system, flight, pid, tid), asset)| {
            let p = &p;
            async move {
                let bytes = p
                    .webodm_req(
                        reqwest::Method::GET,
                        p.url(
                            &["api", "projects", pid, "tasks", tid, "download", asset],
                            false,
                        ),
                    )
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(err)?
                    .bytes()
                    .await
                    .map_err(err)?;
                let size = bytes.len() as u64;
                let mut segs = vec!["v3", "files", "ops", system.as_str(), flight.as_str()];
                segs.extend(RESULTS_DIR.split('/'));
                segs.push(asset);
                let part = Part::stream_with_length(bytes, size)
                    .file_name(asset.clone())
                    .mime_str("application/octet-stream")
                    .map_err(err)?;
                p.tapis
                    .post(p.url(&segs, false))
                    .header("X-Tapis-Token", &p.tapis_token)
                    .multipart(Form::new().part("file", part))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(err)?;
                Ok(size)
            }
        })
        .collect();
    let mut done = timed(jobs, concurrency).await?;
    done.time += folders;
    Ok(done)
}
