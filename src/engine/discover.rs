//! The desired state: which flights Tapis holds now, and their images, as plain data.
//!
//! Per pass it costs one systems listing (paged), one root listing per system (paged) and one
//! listing of `<Flight>/<images_dir>` per candidate folder: a folder whose images dir is missing
//! (404) is not a flight. Nothing here knows about WebODM or the store.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{stream, StreamExt};

use crate::clients::http::ApiError;
use crate::clients::tapis::{FileKind, System, TapisClient};
use crate::config::{LayoutConfig, TapisConfig};
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
    /// Images folder inside a flight folder.
    pub images_dir: String,
    /// Lower-case extensions that count as images.
    pub extensions: Vec<String>,
    /// Listings in flight at once.
    pub concurrency: usize,
    /// Systems on which the store records flights that are not vanished. A systems listing
    /// that comes back empty, or a root listing of one of these that holds no folder at all, is
    /// not believed ("all flights gone"): it is an error and nothing there is scanned.
    pub known_systems: BTreeSet<String>,
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
            images_dir: layout.images_dir.trim_matches('/').to_string(),
            extensions: layout
                .extensions
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            concurrency: tapis.max_concurrent_requests.max(1),
            known_systems: BTreeSet::new(),
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
    pub fn skip_reason(&self, s: &System) -> Option<&'static str> {
        if !s.enabled {
            Some("disabled on Tapis")
        } else if self.exclude.contains(&s.id) {
            Some("in exclude_systems")
        } else if !self.allow.is_empty() && !self.allow.contains(&s.id) {
            Some("not in the systems allow-list")
        } else {
            None
        }
    }

    fn is_image(&self, name: &str) -> bool {
        name.rsplit_once('.').is_some_and(|(stem, ext)| {
            !stem.is_empty() && self.extensions.contains(&ext.to_ascii_lowercase())
        })
    }
}

/// One image of a flight, as listed on Tapis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// File name (also its name in WebODM).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// `lastModified` as Tapis sent it.
    pub last_modified: String,
}

/// A flight found on Tapis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// System and folder.
    pub key: FlightKey,
    /// `<Flight>/<images_dir>`.
    pub images_path: String,
    /// Its images, by name.
    pub images: Vec<Image>,
    /// Files that look like images but cannot be synced, with the reason.
    pub rejected: Vec<String>,
}

impl Flight {
    /// Count, total bytes and newest modification of the images.
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

/// Everything one scan found.
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
) -> Result<Vec<(System, Option<&'static str>)>, ApiError> {
    let listed = tapis.list_systems(&scope.pattern).await?;
    Ok(listed
        .into_iter()
        .map(|s| {
            let why = scope.skip_reason(&s);
            (s, why)
        })
        .collect())
}

/// Scans every system in scope for flights and their images.
pub async fn discover(tapis: &TapisClient, scope: &Scope) -> Result<Desired, ApiError> {
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
    let systems: Vec<System> = listed
        .into_iter()
        .filter_map(|(s, why)| why.is_none().then_some(s))
        .collect();
    let mut desired = Desired::default();

    let roots: Vec<_> = stream::iter(systems.iter())
        .map(|s| async move { (s.id.clone(), tapis.list_dir(&s.id, "").await) })
        .buffer_unordered(scope.concurrency)
        .collect()
        .await;
    let mut candidates = Vec::new();
    for (system, root) in roots {
        match root {
            Ok(entries)
                if scope.known_systems.contains(&system)
                    && !entries.iter().any(|e| e.kind == FileKind::Dir) =>
            {
                desired.errors.push(format!(
                    "{system}: the system root lists no folder at all although flights are \
                     recorded there: not believed; the system is not scanned this pass"
                ));
            }
            Ok(entries) => {
                desired.scanned.insert(system.clone());
                for e in entries.into_iter().filter(|e| e.kind == FileKind::Dir) {
                    let key = FlightKey::new(system.clone(), e.name);
                    match unsafe_flight_name(&key.flight) {
                        Some(why) => desired
                            .errors
                            .push(format!("{key}: folder {:?} skipped: {why}", key.flight)),
                        None => candidates.push(key),
                    }
                }
            }
            Err(e) => desired
                .errors
                .push(format!("{system}: listing the system root failed: {e}")),
        }
    }

    // Each listing becomes its `Flight` as soon as it arrives, so the raw entries of at most
    // `concurrency` listings are alive at once.
    let listings: Vec<_> = stream::iter(candidates)
        .map(|key| async move {
            let path = format!("{}/{}", key.flight, scope.images_dir);
            let listing = tapis
                .list_dir(&key.system, &path)
                .await
                .map(|entries| flight_from_listing(scope, key.clone(), path.clone(), entries));
            (key, path, listing)
        })
        .buffer_unordered(scope.concurrency)
        .collect()
        .await;
    let mut flights = BTreeMap::new();
    for (key, images_path, listing) in listings {
        match listing {
            Ok(converted) => match converted {
                Ok((flight, warnings)) => {
                    for w in &warnings {
                        tracing::warn!(system = %key.system, flight = %key.flight, "{w}");
                    }
                    desired.warnings.extend(warnings);
                    desired.errors.extend(flight.rejected.iter().cloned());
                    if !flight.images.is_empty() {
                        flights.insert(key, flight);
                    }
                }
                Err(why) => {
                    desired.errors.push(why);
                    desired.unknown.insert(key);
                }
            },
            // No images folder: not a flight.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                desired
                    .errors
                    .push(format!("{key}: listing {images_path} failed: {e}"));
                desired.unknown.insert(key);
            }
        }
    }
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
    let listed: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.kind == FileKind::File && scope.is_image(&e.name))
        .map(|e| e.name.clone())
        .collect();
    for e in entries {
        if e.kind != FileKind::File || !scope.is_image(&e.name) {
            continue;
        }
        let expected_path = format!("{}/{}", flight.images_path, e.name);
        if e.path.trim_start_matches('/') != expected_path {
            return Err(format!(
                "{key}: listing {} is not believed: image {:?} is listed with path {:?}, \
                 not {expected_path:?}",
                flight.images_path, e.name, e.path
            ));
        }
        if e.size > MAX_IMAGE_BYTES {
            return Err(format!(
                "{key}: listing {} is not believed: image {:?} is listed with an absurd size \
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
                .push(format!("{key}: image {:?} skipped: {why}{other}", e.name));
            continue;
        }
        if e.size == 0 {
            warnings.push(format!(
                "{key}: image {:?} skipped for now: it is empty (0 bytes; still being written?)",
                e.name
            ));
            continue;
        }
        flight.images.push(Image {
            name: e.name,
            size: e.size,
            last_modified: e.last_modified,
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
            concurrency: 4,
            known_systems: BTreeSet::new(),
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
    fn fingerprint_sums_and_takes_newest() {
        let img = |n: &str, size, t: &str| Image {
            name: n.into(),
            size,
            last_modified: t.into(),
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
