//! The desired state: which flights Tapis holds now, and their images, as plain data — found
//! item by item as listings come in, so a pass can plan and apply a flight as soon as its own
//! listing is in and one slow or failing listing delays nobody else.
//!
//! Per pass it costs one systems listing (paged), one root listing per system (paged) and one
//! listing of `<Flight>/<images_dir>` per candidate folder, except the folders the caller names
//! as settled ([`Scope::settled`]: committed flights whose recheck is not due). A folder whose
//! images dir is missing (404) is not a flight. Nothing here knows about WebODM or the store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::{future, stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::clients::http::ApiError;
use crate::clients::tapis::{FileKind, System, TapisClient};
use crate::config::{LayoutConfig, Shard, TapisConfig};
use crate::engine::access::{Access, Resolver};
use crate::engine::state::{Fingerprint, FlightKey};

/// Longest file name WebODM stores unchanged (characters), and the longest a Linux file system
/// holds (bytes).
const MAX_NAME: usize = 255;
/// Largest image size believed (1 TiB): a bigger `size` in a listing is a broken listing.
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;

/// What to scan: systems and layout.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Tapis `like` pattern for system ids.
    pub pattern: String,
    /// Allow-list (empty = all matching).
    pub allow: Vec<String>,
    /// Never these.
    pub exclude: Vec<String>,
    /// Only the systems of this shard (`tapis.shard`).
    pub shard: Option<Shard>,
    /// Images folder inside a flight folder.
    pub images_dir: String,
    /// Lower-case extensions that count as images.
    pub extensions: Vec<String>,
    /// Lower-case names of companion files (`geo.txt`, …) uploaded with the images.
    pub companions: Vec<String>,
    /// Listings in flight at once.
    pub concurrency: usize,
    /// Systems on which the store records flights that are not vanished. A systems listing
    /// that comes back empty, or a root listing of one of these that holds no folder at all, is
    /// not believed ("all flights gone"): it is an error and nothing there is scanned.
    pub known_systems: BTreeSet<String>,
    /// Folders whose images are not listed this pass: settled flights whose recheck is not
    /// due. They are still looked for in their system's root listing.
    pub settled: HashSet<FlightKey>,
}

impl Scope {
    /// The scope a config describes; `only` (from `--systems`) narrows the allow-list.
    pub fn new(tapis: &TapisConfig, layout: &LayoutConfig, only: &[String]) -> Scope {
        Scope {
            pattern: tapis.system_pattern.clone(),
            allow: if only.is_empty() {
                tapis.systems.clone()
            } else {
                only.to_vec()
            },
            exclude: tapis.exclude_systems.clone(),
            shard: tapis.shard,
            images_dir: layout.images_dir.trim_matches('/').to_string(),
            extensions: layout
                .extensions
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            companions: layout.companions.iter().map(|c| c.to_lowercase()).collect(),
            concurrency: tapis.max_concurrent_requests.max(1),
            known_systems: BTreeSet::new(),
            settled: HashSet::new(),
        }
    }

    /// Records which systems the store holds (not vanished) flights on, so that a listing
    /// claiming they are all gone is not believed (see [`Scope::known_systems`]).
    pub fn expect_flights_on(mut self, store: Option<&crate::engine::state::Store>) -> Scope {
        let records = store.and_then(|s| s.flights().ok()).unwrap_or_default();
        self.known_systems = records
            .into_iter()
            .filter(|r| r.vanished_ms.is_none())
            .map(|r| r.key.system)
            .collect();
        self
    }

    /// Why a listed system is not scanned, or `None` when it is.
    pub fn skip_reason(&self, s: &System) -> Option<String> {
        if !s.enabled {
            Some("disabled on Tapis".into())
        } else if self.exclude.contains(&s.id) {
            Some("in exclude_systems".into())
        } else if !self.allow.is_empty() && !self.allow.contains(&s.id) {
            Some("not in the systems allow-list".into())
        } else {
            match self.shard {
                Some(shard) if !shard.serves(&s.id) => Some(format!(
                    "in shard {}/{}; this instance serves shard {}/{}",
                    Shard::of(&s.id, shard.count),
                    shard.count,
                    shard.index,
                    shard.count
                )),
                _ => None,
            }
        }
    }

    fn is_image(&self, name: &str) -> bool {
        name.rsplit_once('.').is_some_and(|(stem, ext)| {
            !stem.is_empty() && self.extensions.contains(&ext.to_ascii_lowercase())
        })
    }

    /// Whether a file of the images folder is a companion file (name matched
    /// case-insensitively).
    fn is_companion(&self, name: &str) -> bool {
        self.companions.contains(&name.to_lowercase())
    }
}

/// One file of a flight's images folder that goes into its task, as listed on Tapis: an
/// image, or a companion file (`geo.txt`, `gcp_list.txt`, …) that travels with the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// File name (also its name in WebODM).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// `lastModified` as Tapis sent it.
    pub last_modified: String,
    /// A companion file named in `layout.companions`, not an image.
    pub companion: bool,
}

/// A flight found on Tapis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// System and folder.
    pub key: FlightKey,
    /// `<Flight>/<images_dir>`.
    pub images_path: String,
    /// Its images and companion files, by name (empty when its folder was not listed this
    /// pass).
    pub images: Vec<Image>,
    /// Files that look like images but cannot be synced, with the reason.
    pub rejected: Vec<String>,
}

impl Flight {
    /// A flight whose images folder is not listed this pass.
    pub fn unlisted(key: FlightKey, images_dir: &str) -> Flight {
        Flight {
            images_path: format!("{}/{images_dir}", key.flight),
            key,
            images: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// How many of its files are images (companion files left out).
    pub fn image_count(&self) -> usize {
        self.images.iter().filter(|i| !i.companion).count()
    }

    /// Count, total bytes and newest modification of the images and companion files (a
    /// companion file arriving late delays the commit like an image).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            count: self.images.len() as u64,
            bytes: self.images.iter().map(|i| i.size).sum(),
            newest_ms: self
                .images
                .iter()
                .filter_map(|i| humantime::parse_rfc3339_weak(&i.last_modified).ok())
                .map(crate::engine::state::to_ms)
                .max()
                .unwrap_or(0),
        }
    }
}

/// One thing discovery found, as soon as its listing is in.
#[derive(Debug, Clone)]
pub enum Found {
    /// A system's root was listed completely: every folder there (flight or not) is named.
    Root {
        /// The system.
        system: String,
        /// Its folders.
        folders: BTreeSet<String>,
    },
    /// A system's root listing failed or was not believed: its flights are left as they are.
    RootFailed {
        /// The system.
        system: String,
        /// Why, naming the system.
        error: String,
    },
    /// A flight, with its images listed now.
    Flight {
        /// The flight.
        flight: Flight,
        /// What was skipped without being an error (e.g. zero-byte images).
        warnings: Vec<String>,
    },
    /// A settled flight whose images were not listed ([`Scope::settled`]); its folder is there.
    Settled(FlightKey),
    /// A folder without an images folder, or without images: not a flight now.
    NotAFlight(FlightKey),
    /// A folder whose listing failed or was not believed: its state is unknown, not gone.
    ListingFailed {
        /// The folder.
        key: FlightKey,
        /// Why, naming the system and flight.
        error: String,
    },
    /// Who should see the projects of a system's flights (sent before any of its flights when
    /// access is resolved), or why that could not be read.
    Access {
        /// The system.
        system: String,
        /// Who, or the error naming the system.
        access: Result<Access, String>,
    },
    /// A folder refused for its name.
    Refused {
        /// The folder.
        key: FlightKey,
        /// Why, naming the system and folder.
        error: String,
    },
}

/// Everything one scan found (the whole listing at once: for `flights`, tests, benchmarks).
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Systems whose root was listed completely.
    pub scanned: BTreeSet<String>,
    /// Flights found, ordered by key.
    pub flights: Vec<Flight>,
    /// Folders whose listing failed this time: their state is unknown, not gone.
    pub unknown: BTreeSet<FlightKey>,
    /// What failed, one line each.
    pub errors: Vec<String>,
    /// What was skipped without being an error (e.g. zero-byte images), one line each.
    pub warnings: Vec<String>,
}

/// The matching systems Tapis shows, each with the reason it is skipped (if it is).
pub async fn systems(
    tapis: &TapisClient,
    scope: &Scope,
) -> Result<Vec<(System, Option<String>)>, ApiError> {
    let listed = tapis.list_systems(&scope.pattern).await?;
    Ok(listed
        .into_iter()
        .map(|s| {
            let why = scope.skip_reason(&s);
            (s, why)
        })
        .collect())
}

/// The systems to scan: those in scope. A listing that comes back empty while the store knows
/// flights is not believed ("every flight is gone") and is an error.
pub async fn systems_in_scope(tapis: &TapisClient, scope: &Scope) -> Result<Vec<System>, ApiError> {
    let listed = systems(tapis, scope).await?;
    if listed.is_empty() && !scope.known_systems.is_empty() {
        let known: Vec<&str> = scope.known_systems.iter().map(String::as_str).collect();
        return Err(ApiError::Decode {
            service: "Tapis",
            op: "GET /v3/systems".into(),
            detail: format!(
                "no system matches `{}` although flights are recorded on {} system(s) ({}): \
                 not believed as \"every flight is gone\"; nothing is scanned this pass",
                scope.pattern,
                known.len(),
                known.join(", ")
            ),
        });
    }
    Ok(listed
        .into_iter()
        .filter_map(|(s, why)| why.is_none().then_some(s))
        .collect())
}

/// Work found in a root listing: something already known, or a folder still to list.
enum Work {
    Done(Found),
    List(FlightKey),
}

/// What [`scan`] yields: what was found, and for a listed flight the slot it holds until the
/// receiver is done with it (see `slots`).
pub type Scanned = (Found, Option<OwnedSemaphorePermit>);

/// Lists the roots of `systems` and then each candidate folder, sending what was found into
/// `out` as each listing comes in (at most `scope.concurrency` root and folder listings at
/// once). Folders in [`Scope::settled`] are not listed. With `access`, a system whose root
/// holds folders also gets a [`Found::Access`], sent before any of its flights. Returns when
/// everything is listed, or early once `stop` is set or `out` is closed (nothing new is listed
/// then).
///
/// Every listing under way is always driven to its end (sends never wait), so none sits
/// half-done holding a Tapis connection while the receiver is busy. With `slots`, a folder is
/// listed only once it holds a slot, which travels with its item until the receiver drops it
/// (when its flight has been applied): listed flights waiting for the receiver stay bounded.
pub async fn scan(
    tapis: &TapisClient,
    scope: &Scope,
    systems: Vec<System>,
    slots: Option<Arc<Semaphore>>,
    access: Option<&Resolver<'_>>,
    stop: &AtomicBool,
    out: mpsc::UnboundedSender<Scanned>,
) {
    let out = &out;
    let halted = || stop.load(Ordering::SeqCst) || out.is_closed();
    let (work_tx, mut work_rx) = mpsc::unbounded_channel::<Work>();
    // The sender lives in the stream's closure: dropped when every root is listed, which ends
    // the folder stage once its queue is empty.
    let roots = stream::iter(systems)
        .map(move |s| {
            let work_tx = work_tx.clone();
            async move {
                if halted() {
                    return;
                }
                let root = tapis.list_dir(&s.id, "").await;
                let has_folders = root
                    .as_ref()
                    .is_ok_and(|entries| entries.iter().any(|e| e.kind == FileKind::Dir));
                if let (true, Some(resolver)) = (has_folders, access) {
                    let access = resolver.system(&s).await;
                    let _ = out.send((
                        Found::Access {
                            system: s.id.clone(),
                            access,
                        },
                        None,
                    ));
                }
                for w in root_work(scope, s.id, root) {
                    let _ = work_tx.send(w);
                }
            }
        })
        .buffer_unordered(scope.concurrency)
        .for_each(|()| future::ready(()));
    let folders = stream::poll_fn(|cx| work_rx.poll_recv(cx))
        .map(|work| {
            let slots = slots.clone();
            async move {
                let item = match work {
                    Work::Done(found) => (found, None),
                    Work::List(_) if halted() => return,
                    Work::List(key) => {
                        let slot = match slots {
                            Some(s) => Some(s.acquire_owned().await.expect("never closed")),
                            None => None,
                        };
                        if halted() {
                            return;
                        }
                        (list_flight(tapis, scope, key).await, slot)
                    }
                };
                let _ = out.send(item);
            }
        })
        .buffer_unordered(scope.concurrency)
        .for_each(|()| future::ready(()));
    tokio::join!(roots, folders);
}

/// What a system's root listing leads to.
fn root_work(
    scope: &Scope,
    system: String,
    root: Result<Vec<crate::clients::tapis::FileEntry>, ApiError>,
) -> Vec<Work> {
    let entries = match root {
        Ok(entries) => entries,
        Err(e) => {
            return vec![Work::Done(Found::RootFailed {
                error: format!(
                    "{system}: listing the system root failed: {e}; its flights are left as \
                     they are and tried again next pass"
                ),
                system,
            })]
        }
    };
    let folders: BTreeSet<String> = entries
        .into_iter()
        .filter(|e| e.kind == FileKind::Dir)
        .map(|e| e.name)
        .collect();
    if folders.is_empty() && scope.known_systems.contains(&system) {
        return vec![Work::Done(Found::RootFailed {
            error: format!(
                "{system}: the system root lists no folder at all although flights are \
                 recorded there: not believed; the system is not scanned this pass"
            ),
            system,
        })];
    }
    let mut work = Vec::with_capacity(folders.len() + 1);
    for name in &folders {
        let key = FlightKey::new(system.clone(), name.clone());
        work.push(match unsafe_flight_name(name) {
            Some(why) => Work::Done(Found::Refused {
                error: format!("{key}: folder {name:?} skipped: {why}"),
                key,
            }),
            None if scope.settled.contains(&key) => Work::Done(Found::Settled(key)),
            None => Work::List(key),
        });
    }
    work.insert(0, Work::Done(Found::Root { system, folders }));
    work
}

/// Lists one candidate folder's images folder.
async fn list_flight(tapis: &TapisClient, scope: &Scope, key: FlightKey) -> Found {
    let path = format!("{}/{}", key.flight, scope.images_dir);
    match tapis.list_dir(&key.system, &path).await {
        Ok(entries) => match flight_from_listing(scope, key.clone(), path, entries) {
            Ok((flight, warnings))
                if flight.image_count() == 0
                    && flight.rejected.is_empty()
                    && warnings.is_empty() =>
            {
                Found::NotAFlight(key)
            }
            Ok((flight, warnings)) => Found::Flight { flight, warnings },
            Err(error) => Found::ListingFailed { key, error },
        },
        // No images folder: not a flight.
        Err(e) if e.is_not_found() => Found::NotAFlight(key),
        Err(e) => Found::ListingFailed {
            error: format!(
                "{key}: listing {path} failed: {e}; the flight is left as it is and tried \
                 again next pass"
            ),
            key,
        },
    }
}

/// Scans every system in scope for flights and their images, all at once.
pub async fn discover(tapis: &TapisClient, scope: &Scope) -> Result<Desired, ApiError> {
    let systems = systems_in_scope(tapis, scope).await?;
    let mut desired = Desired::default();
    let mut flights = BTreeMap::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let never = AtomicBool::new(false);
    let scanning = scan(tapis, scope, systems, None, None, &never, tx);
    let mut collected = Vec::new();
    let collecting = async {
        while let Some((f, _)) = rx.recv().await {
            collected.push(f);
        }
    };
    tokio::join!(scanning, collecting);
    for f in collected {
        match f {
            Found::Root { system, .. } => {
                desired.scanned.insert(system);
            }
            Found::RootFailed { error, .. } | Found::Refused { error, .. } => {
                desired.errors.push(error)
            }
            Found::Flight { flight, warnings } => {
                for w in &warnings {
                    tracing::warn!(system = %flight.key.system, flight = %flight.key.flight, "{w}");
                }
                desired.warnings.extend(warnings);
                desired.errors.extend(flight.rejected.iter().cloned());
                if flight.image_count() > 0 {
                    flights.insert(flight.key.clone(), flight);
                }
            }
            Found::Settled(key) => {
                flights.insert(key.clone(), Flight::unlisted(key, &scope.images_dir));
            }
            Found::NotAFlight(_) | Found::Access { .. } => {}
            Found::ListingFailed { key, error } => {
                desired.errors.push(error);
                desired.unknown.insert(key);
            }
        }
    }
    desired.errors.sort();
    desired.flights = flights.into_values().collect();
    Ok(desired)
}

/// A flight from the listing of its images folder, with warnings for what was skipped; an
/// error (the flight's state is then unknown) when the listing cannot be believed: a path that
/// is not `<images_path>/<name>`, or an absurd size.
fn flight_from_listing(
    scope: &Scope,
    key: FlightKey,
    images_path: String,
    entries: Vec<crate::clients::tapis::FileEntry>,
) -> Result<(Flight, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut flight = Flight {
        key: key.clone(),
        images_path,
        images: Vec::with_capacity(entries.len()),
        rejected: vec![],
    };
    let wanted = |e: &crate::clients::tapis::FileEntry| {
        e.kind == FileKind::File && (scope.is_image(&e.name) || scope.is_companion(&e.name))
    };
    let listed: BTreeSet<String> = entries
        .iter()
        .filter(|e| wanted(e))
        .map(|e| e.name.clone())
        .collect();
    for e in entries {
        if !wanted(&e) {
            continue;
        }
        let companion = !scope.is_image(&e.name);
        let what = if companion { "companion file" } else { "image" };
        let expected_path = format!("{}/{}", flight.images_path, e.name);
        if e.path.trim_start_matches('/') != expected_path {
            return Err(format!(
                "{key}: listing {} is not believed: {what} {:?} is listed with path {:?}, \
                 not {expected_path:?}",
                flight.images_path, e.name, e.path
            ));
        }
        if e.size > MAX_IMAGE_BYTES {
            return Err(format!(
                "{key}: listing {} is not believed: {what} {:?} is listed with an absurd size \
                 of {} bytes",
                flight.images_path, e.name, e.size
            ));
        }
        if let Some(why) = unsafe_name(&e.name) {
            let stored = webodm_stored_name(&e.name);
            let other = if stored != e.name && listed.contains(&stored) {
                format!(" (WebODM would store it as {stored:?}, the name of another image)")
            } else {
                String::new()
            };
            flight
                .rejected
                .push(format!("{key}: {what} {:?} skipped: {why}{other}", e.name));
            continue;
        }
        if e.size == 0 {
            warnings.push(format!(
                "{key}: {what} {:?} skipped for now: it is empty (0 bytes; still being written?)",
                e.name
            ));
            continue;
        }
        flight.images.push(Image {
            name: e.name,
            size: e.size,
            last_modified: e.last_modified,
            companion,
        });
    }
    flight.images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((flight, warnings))
}

/// The name WebODM 3.2 stores an uploaded file under: the part after the last `/` or `\`,
/// cut to 255 characters keeping the extension.
pub fn webodm_stored_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    if base.chars().count() <= MAX_NAME {
        return base.to_string();
    }
    let (stem, ext) = match base.rsplit_once('.') {
        Some((stem, ext)) if ext.chars().count() < MAX_NAME => (stem, format!(".{ext}")),
        _ => (base, String::new()),
    };
    let room = MAX_NAME - ext.chars().count();
    let cut: String = stem.chars().take(room).collect();
    format!("{cut}{ext}")
}

/// Why WebODM would store this file under another name (so it cannot be tracked) or could not
/// store it at all, if it would.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.contains(['/', '\\']) {
        Some(
            "WebODM keeps only the part after a `/` or `\\`, so it would collide with another file",
        )
    } else if name.chars().count() > MAX_NAME {
        Some("longer than the 255 characters WebODM keeps")
    } else if name.len() > MAX_NAME {
        Some("longer than the 255 bytes a Linux file name may have")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}

/// Why a folder name cannot be a flight (it could not name a path segment of its own on Tapis
/// or a readable project in WebODM), if it cannot.
pub fn unsafe_flight_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("the name is empty or blank")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not folder names")
    } else if name.contains('/') {
        Some("a folder name cannot contain `/`")
    } else if name.len() > MAX_NAME {
        Some("longer than the 255 bytes a Linux folder name may have")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            pattern: "ptdatax.project.*".into(),
            allow: vec![],
            exclude: vec!["ptdatax.project.x".into()],
            images_dir: "code/images".into(),
            extensions: vec!["jpg".into(), "jpeg".into()],
            companions: vec!["geo.txt".into(), "gcp_list.txt".into()],
            concurrency: 4,
            known_systems: BTreeSet::new(),
            settled: HashSet::new(),
            shard: None,
        }
    }

    #[test]
    fn extensions_match_case_insensitively_and_need_a_stem() {
        let s = scope();
        assert!(s.is_image("IMG_1.JPG"));
        assert!(s.is_image("a.JpEg"));
        assert!(!s.is_image("thumb.png"));
        assert!(!s.is_image(".jpg"));
        assert!(!s.is_image("jpg"));
    }

    #[test]
    fn hostile_names_are_refused() {
        assert!(unsafe_name("a\\b.jpg").is_some());
        assert!(unsafe_name(&format!("{}.jpg", "x".repeat(260))).is_some());
        assert!(unsafe_name("line\nbreak.jpg").is_some());
        assert!(unsafe_name("Año (1) 'x'; %20.jpg").is_none());
    }

    #[test]
    fn hostile_folder_names_are_refused() {
        for bad in [
            "",
            "  ",
            ".",
            "..",
            "a/b",
            "../../api/projects/",
            "x\u{0}y",
            "tab\there",
        ] {
            assert!(unsafe_flight_name(bad).is_some(), "{bad:?}");
        }
        assert!(unsafe_flight_name(&"é".repeat(128)).is_some(), "256 bytes");
        for ok in [
            "Flight 1",
            "..%2F..",
            "%2e%2e",
            ".hidden",
            "a\\b",
            "?x=1#y",
            "Año \"q\"",
        ] {
            assert!(unsafe_flight_name(ok).is_none(), "{ok:?}");
        }
    }

    #[test]
    fn webodm_stored_names_follow_its_normalisation() {
        assert_eq!(webodm_stored_name("a\\b.jpg"), "b.jpg");
        assert_eq!(webodm_stored_name("a/b/c.jpg"), "c.jpg");
        assert_eq!(webodm_stored_name("..jpg"), "..jpg");
        let long = format!("{}.jpg", "x".repeat(300));
        let stored = webodm_stored_name(&long);
        assert_eq!(stored.chars().count(), 255);
        assert!(stored.ends_with("x.jpg"));
        assert!(
            unsafe_name(&format!("{}.jpg", "ü".repeat(130))).is_some(),
            "264 bytes"
        );
    }

    fn entry(name: &str, path: &str, size: u64) -> crate::clients::tapis::FileEntry {
        crate::clients::tapis::FileEntry {
            name: name.into(),
            path: path.into(),
            kind: FileKind::File,
            size,
            last_modified: "2024-05-01T00:00:00Z".into(),
            mime_type: None,
        }
    }

    #[test]
    fn listings_are_believed_only_when_consistent() {
        let key = FlightKey::new("s", "F");
        let run =
            |entries| flight_from_listing(&scope(), key.clone(), "F/code/images".into(), entries);
        let (f, warnings) = run(vec![
            entry("a.jpg", "F/code/images/a.jpg", 3),
            entry("empty.jpg", "/F/code/images/empty.jpg", 0),
            entry("x\\a.jpg", "F/code/images/x\\a.jpg", 3),
        ])
        .unwrap();
        assert_eq!(f.images.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("\"empty.jpg\" skipped for now"),
            "{warnings:?}"
        );
        assert_eq!(f.rejected.len(), 1);
        assert!(
            f.rejected[0].contains("the name of another image"),
            "{:?}",
            f.rejected
        );
        let e = run(vec![entry("a.jpg", "G/code/images/a.jpg", 3)]).unwrap_err();
        assert!(e.contains("is not believed"), "{e}");
        let e = run(vec![entry(
            "a.jpg",
            "F/code/images/a.jpg",
            MAX_IMAGE_BYTES + 1,
        )])
        .unwrap_err();
        assert!(e.contains("absurd size"), "{e}");
    }

    #[test]
    fn companion_files_travel_with_the_images_and_other_text_files_do_not() {
        let key = FlightKey::new("s", "F");
        let p = |n: &str| format!("F/code/images/{n}");
        let (f, warnings) = flight_from_listing(
            &scope(),
            key.clone(),
            "F/code/images".into(),
            vec![
                entry("IMG_1.jpg", &p("IMG_1.jpg"), 3),
                entry("Geo.TXT", &p("Geo.TXT"), 5),
                entry("GCP_List.txt", &p("GCP_List.txt"), 7),
                entry("notes.txt", &p("notes.txt"), 9),
                entry("image_groups.txt", &p("image_groups.txt"), 9),
            ],
        )
        .unwrap();
        assert!(warnings.is_empty());
        let files: Vec<(&str, bool)> = f
            .images
            .iter()
            .map(|i| (i.name.as_str(), i.companion))
            .collect();
        assert_eq!(
            files,
            [
                ("GCP_List.txt", true),
                ("Geo.TXT", true),
                ("IMG_1.jpg", false)
            ],
            "`image_groups.txt` is not among this scope's companions; `notes.txt` never is"
        );
        assert_eq!(f.image_count(), 1);
        assert_eq!((f.fingerprint().count, f.fingerprint().bytes), (3, 15));
        // Companion files alone do not make a flight.
        let (only, _) = flight_from_listing(
            &scope(),
            key,
            "F/code/images".into(),
            vec![entry("geo.txt", &p("geo.txt"), 5)],
        )
        .unwrap();
        assert_eq!((only.images.len(), only.image_count()), (1, 0));
    }

    #[test]
    fn fingerprint_sums_and_takes_newest() {
        let img = |n: &str, size, t: &str| Image {
            name: n.into(),
            size,
            last_modified: t.into(),
            companion: false,
        };
        let f = Flight {
            key: FlightKey::new("s", "f"),
            images_path: "f/code/images".into(),
            images: vec![
                img("a.jpg", 3, "2024-05-01T16:55:57Z"),
                img("b.jpg", 4, "2024-05-02T00:00:00.5Z"),
            ],
            rejected: vec![],
        };
        let fp = f.fingerprint();
        assert_eq!((fp.count, fp.bytes), (2, 7));
        assert_eq!(fp.newest_ms, 1_714_608_000_500);
    }
}
