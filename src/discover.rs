//! The desired state: which flights Tapis holds now, and their images, as plain data.
//!
//! Per pass it costs one systems listing (paged), one root listing per system (paged) and one
//! listing of `<Flight>/<images_dir>` per candidate folder: a folder whose images dir is missing
//! (404) is not a flight. Nothing here knows about WebODM or the store.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{stream, StreamExt};

use crate::config::{LayoutConfig, TapisConfig};
use crate::http::ApiError;
use crate::state::{Fingerprint, FlightKey};
use crate::tapis::{FileKind, System, TapisClient};

/// Longest file name WebODM stores unchanged.
const MAX_NAME: usize = 255;

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
        }
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
    /// Path relative to the system root.
    pub path: String,
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
                .map(crate::state::to_ms)
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
    let systems: Vec<System> = systems(tapis, scope)
        .await?
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
            Ok(entries) => {
                desired.scanned.insert(system.clone());
                candidates.extend(
                    entries
                        .into_iter()
                        .filter(|e| e.kind == FileKind::Dir)
                        .map(|e| FlightKey::new(system.clone(), e.name)),
                );
            }
            Err(e) => desired
                .errors
                .push(format!("{system}: listing the system root failed: {e}")),
        }
    }

    let listings: Vec<_> = stream::iter(candidates)
        .map(|key| async move {
            let path = format!("{}/{}", key.flight, scope.images_dir);
            let listing = tapis.list_dir(&key.system, &path).await;
            (key, path, listing)
        })
        .buffer_unordered(scope.concurrency)
        .collect()
        .await;
    let mut flights = BTreeMap::new();
    for (key, images_path, listing) in listings {
        match listing {
            Ok(entries) => {
                let mut flight = Flight {
                    key: key.clone(),
                    images_path,
                    images: vec![],
                    rejected: vec![],
                };
                for e in entries {
                    if e.kind != FileKind::File || !scope.is_image(&e.name) {
                        continue;
                    }
                    match unsafe_name(&e.name) {
                        Some(why) => flight
                            .rejected
                            .push(format!("{key}: image {:?} skipped: {why}", e.name)),
                        None => flight.images.push(Image {
                            name: e.name,
                            path: e.path,
                            size: e.size,
                            last_modified: e.last_modified,
                        }),
                    }
                }
                flight.images.sort_by(|a, b| a.name.cmp(&b.name));
                desired.errors.extend(flight.rejected.iter().cloned());
                if !flight.images.is_empty() {
                    flights.insert(key, flight);
                }
            }
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

/// Why WebODM would store this file under another name (so it cannot be tracked), if it would.
fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.contains(['/', '\\']) {
        Some(
            "WebODM keeps only the part after a `/` or `\\`, so it would collide with another file",
        )
    } else if name.chars().count() > MAX_NAME {
        Some("longer than the 255 characters WebODM keeps")
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
    fn fingerprint_sums_and_takes_newest() {
        let img = |n: &str, size, t: &str| Image {
            name: n.into(),
            path: n.into(),
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
