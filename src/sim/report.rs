//! What the simulator observed: the report (WebODM's contents checked against the source) and
//! request statistics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dataset::{is_companion, is_image, Dataset, Expected, File};
use super::files::Written;
use super::processing;
use super::webodm::{Project, Task};

/// `GET /__sim/report`: what should be in WebODM and what is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Totals the daemon should reach.
    pub expected: Expected,
    /// What WebODM holds, checked byte for byte against the source.
    pub webodm: WebodmReport,
    /// Who may see each WebODM project, in creation order.
    #[serde(default)]
    pub projects: Vec<ProjectAccess>,
    /// Each expected flight: its task's processing, companion files and results on Tapis.
    #[serde(default)]
    pub flights: Vec<FlightReport>,
}

/// Who may see one WebODM project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectAccess {
    /// Project id.
    pub id: i64,
    /// Project name.
    pub name: String,
    /// System of the flight it belongs to (by key tag, else by name), if any.
    pub system_id: Option<String>,
    /// That flight.
    pub flight: Option<String>,
    /// The account that created it (it has every permission).
    pub owner: String,
    /// Other users: username → permissions (`add`, `change`, `delete`, `view`).
    pub users: BTreeMap<String, Vec<String>>,
    /// Groups: name → permissions.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// One expected flight, as far as processing and results go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightReport {
    /// Tapis system id.
    pub system_id: String,
    /// Flight folder name.
    pub flight: String,
    /// Its WebODM projects (more than one are duplicates).
    pub projects: Vec<i64>,
    /// Its newest task, if any.
    pub task: Option<TaskReport>,
    /// Its companion files on Tapis, and whether the newest task holds each byte for byte.
    pub companions: Vec<CompanionReport>,
    /// Files written on Tapis under the flight folder (by the daemon or by hand), each checked
    /// against the asset of that name of the newest task offering it.
    pub results: Vec<ResultReport>,
}

/// A task's processing as WebODM reports it now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task id.
    pub id: String,
    /// Not committed yet.
    pub partial: bool,
    /// `None` (not picked up), 10 queued, 20 running, 30 failed, 40 completed, 50 canceled.
    pub status: Option<i64>,
    /// The error of a failed attempt (may be `None` even then).
    pub last_error: Option<String>,
    /// Processing attempts started (commits and restarts).
    pub attempts: u32,
    /// `restart/` requests.
    pub restarts: u32,
    /// Assets offered for download.
    pub available_assets: Vec<String>,
}

/// A companion file of a flight on Tapis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanionReport {
    /// File name on Tapis.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The flight's newest task holds it under this name, byte for byte.
    pub held: bool,
}

/// A file written on Tapis under a flight folder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultReport {
    /// Path relative to the flight folder, e.g. `code/odm_results/orthophoto.tif`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Size of the WebODM asset with the same file name, when a task of the flight offers one.
    pub asset_size: Option<u64>,
    /// The file equals that asset byte for byte.
    pub matches_asset: bool,
}

/// The WebODM side of a [`Report`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebodmReport {
    /// Projects in WebODM.
    pub projects: u64,
    /// Tasks in WebODM.
    pub tasks: u64,
    /// Tasks committed (no longer partial).
    pub committed_tasks: u64,
    /// Images stored (`.jpg`/`.jpeg` names, any case), over all tasks; companion and other
    /// files are counted apart.
    pub images: u64,
    /// Bytes of those images.
    pub bytes: u64,
    /// Projects beyond the first for one flight.
    pub duplicate_projects: u64,
    /// Projects that belong to no expected flight.
    pub unknown_projects: u64,
    /// Stored images (in a flight's projects) whose name, size or SHA-256 matches no source image.
    pub corrupt_images: u64,
    /// Expected images whose name is absent from every task of the flight's projects.
    pub missing_images: u64,
    /// Companion files stored (names like `geo.txt`, `gcp_list.txt`, `image_groups.txt`, any
    /// case; not counted in `images`).
    #[serde(default)]
    pub companions: u64,
    /// Bytes of those companion files.
    #[serde(default)]
    pub companion_bytes: u64,
    /// Stored companion files (in a flight's projects) that match no source companion file by
    /// name, size and SHA-256.
    #[serde(default)]
    pub corrupt_companions: u64,
    /// Expected companion files absent from every task of the flight's projects.
    #[serde(default)]
    pub missing_companions: u64,
    /// Stored files that are neither images nor companion files (e.g. a `notes.txt`).
    #[serde(default)]
    pub stray_files: u64,
}

impl WebodmReport {
    /// How WebODM differs from every expected flight synced exactly once, byte for byte
    /// (one project and one committed task per flight holding its images and companion
    /// files, nothing else): one line per difference; empty when there is none.
    pub fn mismatches(&self, expected: &Expected) -> Vec<String> {
        let mut out = Vec::new();
        let mut want = |what: &str, got: u64, want: u64| {
            if got != want {
                out.push(format!("{what}: {got}, expected {want}"));
            }
        };
        want("projects", self.projects, expected.flights);
        want("tasks", self.tasks, expected.flights);
        want("committed tasks", self.committed_tasks, expected.flights);
        want("images", self.images, expected.images);
        want("bytes", self.bytes, expected.bytes);
        want("duplicate projects", self.duplicate_projects, 0);
        want("projects of no expected flight", self.unknown_projects, 0);
        want("corrupt images", self.corrupt_images, 0);
        want("missing images", self.missing_images, 0);
        want("companion files", self.companions, expected.companions);
        want(
            "companion bytes",
            self.companion_bytes,
            expected.companion_bytes,
        );
        want("corrupt companion files", self.corrupt_companions, 0);
        want("missing companion files", self.missing_companions, 0);
        want("stray files", self.stray_files, 0);
        out
    }
}

/// `GET /__sim/stats`: requests and bytes seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Count per `"<METHOD> <route template>"`, then per status code.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests under `/v3/`.
    pub tapis_requests: u64,
    /// Requests under `/api/`.
    pub webodm_requests: u64,
    /// File content bytes sent by Tapis.
    pub bytes_downloaded: u64,
    /// File bytes received by WebODM uploads.
    pub bytes_uploaded: u64,
    /// Files stored by WebODM uploads answered 200 (a request may carry several).
    #[serde(default)]
    pub files_uploaded: u64,
    /// Asset bytes sent by WebODM (`…/download/{asset}`).
    #[serde(default)]
    pub asset_bytes_downloaded: u64,
    /// File bytes received by Tapis uploads (`POST /v3/files/ops/{system}/{path}`), cut-short
    /// ones included.
    #[serde(default)]
    pub tapis_bytes_uploaded: u64,
    /// `POST /api/projects/{id}/edit/` requests per project id, whatever their answer.
    #[serde(default)]
    pub project_edits: BTreeMap<i64, u64>,
    /// Highest number of requests that arrived within any one second (a sliding window), per
    /// service; every request counts, token requests and faulted ones included.
    pub peak_rps: PeakRps,
    /// Credentials sent to the wrong service (should stay 0).
    pub leaked_credentials: u64,
    /// Commits answered 200, per task id. Real WebODM re-queues processing on every commit,
    /// also of a task already committed: the daemon must commit each task once.
    pub commits: BTreeMap<String, u64>,
    /// Faults injected, by kind: `error` (5xx before handling), `error_after` (502 after
    /// handling), `429`, `reset`, `truncate`, `revoked` (answers "Token is revoked."),
    /// `refresh` (refresh grants refused).
    pub faults_injected: BTreeMap<String, u64>,
}

/// Peak requests per second per service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeakRps {
    /// Tapis.
    pub tapis: u64,
    /// WebODM.
    pub webodm: u64,
    /// Tapis, file content downloads left out (what a client's request-rate limit governs).
    #[serde(default)]
    pub tapis_metadata: u64,
    /// WebODM, image uploads left out.
    #[serde(default)]
    pub webodm_metadata: u64,
}

/// Which simulated service a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Tapis,
    Webodm,
    Other,
}

/// Arrivals of the last second, and the most ever seen in one second.
#[derive(Debug, Default)]
struct Rps {
    window: VecDeque<Instant>,
    peak: u64,
}

impl Rps {
    /// Counts an arrival at `now`. The busiest one-second window always ends at an arrival, so
    /// checking the window ending at each arrival finds it.
    fn hit(&mut self, now: Instant) {
        while self
            .window
            .front()
            .is_some_and(|&t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.window.pop_front();
        }
        self.window.push_back(now);
        self.peak = self.peak.max(self.window.len() as u64);
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: BTreeMap<String, BTreeMap<String, u64>>,
    tapis: u64,
    webodm: u64,
    rps: HashMap<&'static str, Rps>,
    faults: BTreeMap<String, u64>,
    edits: BTreeMap<i64, u64>,
    commits: BTreeMap<String, u64>,
}

/// Live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    tally: Mutex<Tally>,
    pub bytes_downloaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub files_uploaded: AtomicU64,
    pub asset_bytes_downloaded: AtomicU64,
    pub tapis_bytes_uploaded: AtomicU64,
    pub leaked_credentials: AtomicU64,
}

impl Counters {
    /// Counts one request as it arrives (for the per-second peaks); `transfer`: a file's
    /// bytes (Tapis content download, WebODM image upload), left out of the metadata peaks.
    pub fn started(&self, service: Service, transfer: bool) {
        let now = Instant::now();
        let mut t = self.tally.lock().expect("stats lock");
        let (all, metadata) = match service {
            Service::Tapis => {
                t.tapis += 1;
                ("tapis", "tapis_metadata")
            }
            Service::Webodm => {
                t.webodm += 1;
                ("webodm", "webodm_metadata")
            }
            Service::Other => return,
        };
        t.rps.entry(all).or_default().hit(now);
        if !transfer {
            t.rps.entry(metadata).or_default().hit(now);
        }
    }

    /// Counts a request's answer: its status code, or `reset` when none was sent.
    pub fn answered(&self, route: String, status: String) {
        let mut t = self.tally.lock().expect("stats lock");
        *t.requests
            .entry(route)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// Counts an injected fault of `kind`.
    pub fn fault(&self, kind: &str) {
        let mut t = self.tally.lock().expect("stats lock");
        *t.faults.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts an edit request for project `id`.
    pub fn edited(&self, id: i64) {
        let mut t = self.tally.lock().expect("stats lock");
        *t.edits.entry(id).or_default() += 1;
    }

    /// Counts a commit of `task` answered 200.
    pub fn commit(&self, task: &str) {
        let mut t = self.tally.lock().expect("stats lock");
        *t.commits.entry(task.to_owned()).or_default() += 1;
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        let t = self.tally.lock().expect("stats lock");
        let peak = |k| t.rps.get(k).map_or(0, |r: &Rps| r.peak);
        Stats {
            requests: t.requests.clone(),
            tapis_requests: t.tapis,
            webodm_requests: t.webodm,
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            files_uploaded: self.files_uploaded.load(Ordering::Relaxed),
            asset_bytes_downloaded: self.asset_bytes_downloaded.load(Ordering::Relaxed),
            tapis_bytes_uploaded: self.tapis_bytes_uploaded.load(Ordering::Relaxed),
            project_edits: t.edits.clone(),
            peak_rps: PeakRps {
                tapis: peak("tapis"),
                webodm: peak("webodm"),
                tapis_metadata: peak("tapis_metadata"),
                webodm_metadata: peak("webodm_metadata"),
            },
            leaked_credentials: self.leaked_credentials.load(Ordering::Relaxed),
            commits: t.commits.clone(),
            faults_injected: t.faults.clone(),
        }
    }
}

/// The hidden key tag of a flight: `.tws-<16 hex of sha256("<system>/<flight>")>`.
pub fn key_tag(system_id: &str, flight: &str) -> String {
    let digest = Sha256::digest(format!("{system_id}/{flight}"));
    format!(".tws-{}", &hex::encode(digest)[..16])
}

/// Checks WebODM's projects (a snapshot) against the dataset, and what was written on Tapis
/// against WebODM's assets (their sizes as `asset_size`, the simulator's
/// [`Faults::asset_size`](super::Faults::asset_size), sets them).
pub(crate) fn build(
    dataset: &Dataset,
    projects: &[Project],
    written: &Written,
    asset_size: Option<u64>,
) -> Report {
    let flights = dataset.flights();
    let mut by_tag: HashMap<String, usize> = HashMap::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, f) in flights.iter().enumerate() {
        by_tag.insert(key_tag(&f.system.id, f.name), i);
        by_name.insert(format!("{} ({})", f.name, f.system.id), i);
    }
    let mut w = WebodmReport::default();
    let mut access = Vec::new();
    let mut owners: Vec<Vec<&Project>> = vec![Vec::new(); flights.len()];
    for p in projects {
        w.projects += 1;
        for t in &p.tasks {
            w.tasks += 1;
            w.committed_tasks += u64::from(!t.partial);
            for (name, (size, _)) in &t.images {
                if is_image(name) {
                    w.images += 1;
                    w.bytes += size;
                } else if is_companion(name) {
                    w.companions += 1;
                    w.companion_bytes += size;
                } else {
                    w.stray_files += 1;
                }
            }
        }
        let flight = p
            .tags()
            .iter()
            .find_map(|t| by_tag.get(t.as_str()))
            .or_else(|| by_name.get(&p.name));
        match flight {
            Some(&i) => owners[i].push(p),
            None => w.unknown_projects += 1,
        }
        let map = |list: &[(String, Vec<String>)]| list.iter().cloned().collect();
        access.push(ProjectAccess {
            id: p.id,
            name: p.name.clone(),
            system_id: flight.map(|&i| flights[i].system.id.clone()),
            flight: flight.map(|&i| flights[i].name.to_owned()),
            owner: p.perms.owner.clone(),
            users: map(&p.perms.users),
            groups: map(&p.perms.groups),
        });
    }
    let mut reports = Vec::new();
    for (f, projects) in flights.iter().zip(owners) {
        w.duplicate_projects += projects.len().saturating_sub(1) as u64;
        let tasks: Vec<&Task> = projects.iter().flat_map(|p| &p.tasks).collect();
        let (images, image_misses) = check(&f.images, &tasks, is_image);
        let (companions, companion_misses) = check(&f.companions, &tasks, is_companion);
        w.corrupt_images += images;
        w.missing_images += image_misses;
        w.corrupt_companions += companions;
        w.missing_companions += companion_misses;
        reports.push(flight_report(
            f.system.id.as_str(),
            f.name,
            &f.companions,
            &projects,
            written,
            asset_size,
        ));
    }
    Report {
        expected: dataset.expected(),
        webodm: w,
        projects: access,
        flights: reports,
    }
}

/// Checks the stored files whose names `kind` accepts against `source`: (stored files that
/// match no source file byte for byte, source files stored in no task).
fn check(source: &[&File], tasks: &[&Task], kind: fn(&str) -> bool) -> (u64, u64) {
    let by_name: HashMap<&str, &File> = source.iter().map(|f| (f.name.as_str(), *f)).collect();
    let mut present = std::collections::HashSet::new();
    let mut corrupt = 0;
    for t in tasks {
        for (name, (size, sha)) in t.images.iter().filter(|(n, _)| kind(n)) {
            present.insert(name.as_str());
            let ok = by_name
                .get(name.as_str())
                .is_some_and(|f| f.size == *size && f.sha256() == sha);
            corrupt += u64::from(!ok);
        }
    }
    let missing = source
        .iter()
        .filter(|f| !present.contains(f.name.as_str()))
        .count() as u64;
    (corrupt, missing)
}

/// One flight's task, companion files and result files.
fn flight_report(
    system: &str,
    flight: &str,
    companions: &[&File],
    projects: &[&Project],
    written: &Written,
    asset_size: Option<u64>,
) -> FlightReport {
    let tasks: Vec<&Task> = projects.iter().flat_map(|p| &p.tasks).collect();
    let newest = tasks.last().map(|t| t.report());
    let held = |f: &File| {
        tasks
            .last()
            .and_then(|t| t.images.get(&f.name))
            .is_some_and(|(size, sha)| *size == f.size && sha == f.sha256())
    };
    let results = written
        .files_under(system, flight)
        .into_iter()
        .map(|(path, file)| {
            let name = path.rsplit('/').next().unwrap_or(&path);
            let asset = tasks.iter().rev().find_map(|t| {
                let t = t.report();
                t.available_assets
                    .iter()
                    .any(|a| a == name)
                    .then(|| processing::asset_file(&t.id, name, asset_size))
            });
            ResultReport {
                size: file.bytes.len() as u64,
                asset_size: asset.as_ref().map(|a| a.size),
                matches_asset: asset.as_ref().is_some_and(|a| {
                    a.size == file.bytes.len() as u64 && a.sha256() == file.sha256
                }),
                sha256: file.sha256,
                path,
            }
        })
        .collect();
    FlightReport {
        system_id: system.to_owned(),
        flight: flight.to_owned(),
        projects: projects.iter().map(|p| p.id).collect(),
        task: newest,
        companions: companions
            .iter()
            .map(|f| CompanionReport {
                name: f.name.clone(),
                size: f.size,
                held: held(f),
            })
            .collect(),
        results,
    }
}
