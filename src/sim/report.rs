//! What the simulator observed: the report (WebODM's contents checked against the source) and
//! request statistics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dataset::{Dataset, Expected, File};
use super::webodm::Project;

/// `GET /__sim/report`: what should be in WebODM and what is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Totals the daemon should reach.
    pub expected: Expected,
    /// What WebODM holds, checked byte for byte against the source.
    pub webodm: WebodmReport,
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
    /// Images stored, over all tasks.
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
}

impl WebodmReport {
    /// How WebODM differs from every expected flight synced exactly once, byte for byte
    /// (one project and one committed task per flight, nothing else): one line per
    /// difference; empty when there is none.
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
    commits: BTreeMap<String, u64>,
}

/// Live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    tally: Mutex<Tally>,
    pub bytes_downloaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub leaked_credentials: AtomicU64,
}

impl Counters {
    /// Counts one request as it arrives (for the per-second peak).
    pub fn started(&self, service: Service) {
        let now = Instant::now();
        let mut t = self.tally.lock().expect("stats lock");
        match service {
            Service::Tapis => {
                t.tapis += 1;
                t.rps.entry("tapis").or_default().hit(now);
            }
            Service::Webodm => {
                t.webodm += 1;
                t.rps.entry("webodm").or_default().hit(now);
            }
            Service::Other => {}
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
            peak_rps: PeakRps {
                tapis: peak("tapis"),
                webodm: peak("webodm"),
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

/// Checks WebODM's projects (a snapshot) against the dataset.
pub(crate) fn build(dataset: &Dataset, projects: &[Project]) -> Report {
    let flights = dataset.flights();
    let mut by_tag: HashMap<String, usize> = HashMap::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, (sys, flight, _)) in flights.iter().enumerate() {
        by_tag.insert(key_tag(&sys.id, flight), i);
        by_name.insert(format!("{flight} ({})", sys.id), i);
    }
    let mut w = WebodmReport::default();
    let mut owners: Vec<Vec<&Project>> = vec![Vec::new(); flights.len()];
    for p in projects {
        w.projects += 1;
        for t in &p.tasks {
            w.tasks += 1;
            w.committed_tasks += u64::from(!t.partial);
            w.images += t.images.len() as u64;
            w.bytes += t.images.values().map(|(size, _)| size).sum::<u64>();
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
    }
    for ((_, _, files), projects) in flights.iter().zip(owners) {
        w.duplicate_projects += projects.len().saturating_sub(1) as u64;
        let source: HashMap<&str, &File> = files.iter().map(|f| (f.name.as_str(), *f)).collect();
        let mut present = std::collections::HashSet::new();
        for t in projects.iter().flat_map(|p| &p.tasks) {
            for (name, (size, sha)) in &t.images {
                present.insert(name.as_str());
                let ok = source
                    .get(name.as_str())
                    .is_some_and(|f| f.size == *size && f.sha256() == sha);
                w.corrupt_images += u64::from(!ok);
            }
        }
        w.missing_images += files
            .iter()
            .filter(|f| !present.contains(f.name.as_str()))
            .count() as u64;
    }
    Report {
        expected: dataset.expected(),
        webodm: w,
    }
}
