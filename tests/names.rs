//! Hostile flight and image names, end to end: the proxy in front of the simulator gives real
//! folders and files names with spaces, `%`, `#`, `?`, quotes, `..`, control characters,
//! non-ASCII and overlong names. Names that can be synced are, under exactly those names;
//! the others are reported and skipped; no request ever leaves its route.

mod bad_input_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bad_input_support::{decode, spec, synced, Action, Renames, Rig};
use tapis_webodm_sync::sim::Dataset;

/// (hostile flight name, whether it can be synced)
fn flight_names() -> Vec<(String, bool)> {
    vec![
        ("Flight #1?x=1".into(), true),
        ("%2e%2e".into(), true),
        ("..%2F..%2Fapi%2Fprojects%2F".into(), true),
        ("Vuelo \"Año\" 'ñ' 東京".into(), true),
        (".hidden flight".into(), true),
        ("a\\b".into(), true),
        ("  padded  ".into(), true),
        ("100% ; rm -rf ~".into(), true),
        ("?x=1#y".into(), true),
        ("..".into(), false),
        (".".into(), false),
        ("../../api/projects/".into(), false),
        ("line\nbreak".into(), false),
        ("é".repeat(200), false),
        ("   ".into(), false),
    ]
}

/// (hostile image name, whether it can be synced); the flight's 8th image keeps its real name
/// `IMG_0008.jpg`, which `dir\IMG_0008.jpg` would collide with in WebODM.
fn image_names() -> Vec<(String, bool)> {
    vec![
        ("?x=1#y.jpg".into(), true),
        ("%2e%2e.jpg".into(), true),
        ("..jpg".into(), true),
        (".hidden.jpg".into(), true),
        ("a b 'q' ñ 東.jpg".into(), true),
        ("..%2F..%2Fapi%2Fprojects.jpg".into(), true),
        ("dir\\IMG_0008.jpg".into(), false),
        ("ctl\u{7}.jpg".into(), false),
        (format!("{}.jpg", "x".repeat(300)), false),
        (format!("{}.jpg", "ü".repeat(130)), false),
        ("100%25 \"quoted\".jpg".into(), true),
    ]
}

const IMAGES: usize = 12;

fn canonical(seg: &str) -> String {
    let mut url = url::Url::parse("http://x/").unwrap();
    url.path_segments_mut().unwrap().clear().push(seg);
    url.path()[1..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_sync_or_are_reported_and_never_leave_their_route() {
    let flights = flight_names();
    let images = image_names();
    let sp = spec(1, flights.len() + 1, IMAGES);
    let data = Dataset::generate(&sp);
    let expected = data.expected_flights();
    let system = expected[0].system_id.clone();
    let mut renames = Renames::default();
    // Flight001 … Flight015 get hostile names; Flight016 keeps its name and gets hostile images.
    for (f, (name, _)) in expected.iter().zip(&flights) {
        renames
            .flights
            .insert((system.clone(), f.flight.clone()), name.clone());
    }
    let img_flight = expected[flights.len()].clone();
    let real_images: Vec<String> = img_flight.images.iter().map(|i| i.name.clone()).collect();
    let mut image_map = BTreeMap::new();
    let mut i = 0;
    for (name, _) in &images {
        if real_images[i] == "IMG_0008.jpg" {
            i += 1;
        }
        image_map.insert(real_images[i].clone(), name.clone());
        renames.images.insert(
            (
                system.clone(),
                img_flight.flight.clone(),
                real_images[i].clone(),
            ),
            name.clone(),
        );
        i += 1;
    }
    let mut rig = Rig::new(&sp, Arc::new(|_| Action::Forward), renames).await;
    let rejected = flights.iter().filter(|f| !f.1).count() + images.iter().filter(|i| !i.1).count();
    // Upload everything but hold the commits (not settled yet)…
    rig.config.sync.settle = std::time::Duration::from_secs(3600);
    let first = rig.pass().await;
    assert_eq!(first.errors.len(), rejected, "{:#?}", first.errors);
    assert!(first.images_uploaded > 0);
    // …lose the state: the next pass finds every project by name and every image with a HEAD
    // request naming it, and uploads nothing again…
    rig.wipe_state();
    let again = rig.pass().await;
    assert_eq!(again.errors.len(), rejected, "{:#?}", again.errors);
    assert_eq!((again.projects_created, again.images_uploaded), (0, 0));
    // …then commit.
    rig.config.sync.settle = std::time::Duration::ZERO;
    let s = rig.pass().await;
    assert_eq!(
        s.tasks_committed,
        flights.iter().filter(|f| f.1).count() + 1
    );

    // Flights: synced under the hostile name, or reported by name.
    let same = |x: &str| x.to_string();
    for (f, (name, ok)) in expected.iter().zip(&flights) {
        let key = format!("{system}/{name}");
        let errors: Vec<&String> = s.errors.iter().filter(|e| e.starts_with(&key)).collect();
        if *ok {
            assert!(errors.is_empty(), "{name:?}: {errors:#?}");
            synced(&rig.sim, f, name, &same).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        } else {
            assert!(
                s.errors
                    .iter()
                    .any(|e| e.contains(&format!("folder {name:?} skipped"))),
                "{name:?} not reported: {:#?}",
                s.errors
            );
        }
    }
    // Images: synced under the hostile name, or reported by name (naming the collision).
    let shown = |real: &str| {
        image_map
            .get(real)
            .cloned()
            .unwrap_or_else(|| real.to_string())
    };
    let mut kept = img_flight.clone();
    kept.images.retain(|i| {
        let name = shown(&i.name);
        images.iter().all(|(n, ok)| *n != name || *ok)
    });
    synced(&rig.sim, &kept, &img_flight.flight, &shown).unwrap();
    for (name, ok) in &images {
        let reported = s
            .errors
            .iter()
            .any(|e| e.contains(&format!("image {name:?} skipped")));
        assert_eq!(reported, !ok, "{name:?}: {:#?}", s.errors);
    }
    assert!(
        s.errors.iter().any(|e| e.contains("dir\\\\IMG_0008.jpg")
            && e.contains("WebODM would store it as \"IMG_0008.jpg\", the name of another image")),
        "{:#?}",
        s.errors
    );
    assert_eq!(s.errors.len(), rejected, "{:#?}", s.errors);

    // Every request stayed on its route, each name in exactly one canonically encoded segment.
    let flight_shown: BTreeSet<String> = flights
        .iter()
        .filter(|f| f.1)
        .map(|f| f.0.clone())
        .chain([img_flight.flight.clone()])
        .chain(
            expected
                .iter()
                .skip(flights.len() + 1)
                .map(|f| f.flight.clone()),
        )
        .collect();
    let image_shown: BTreeSet<String> = img_flight
        .images
        .iter()
        .map(|i| shown(&i.name))
        .chain(
            expected
                .iter()
                .flat_map(|f| f.images.iter().map(|i| i.name.clone())),
        )
        .collect();
    let seen = rig.seen();
    assert!(seen.len() > 50);
    let mut heads = 0;
    for req in &seen {
        let raw: Vec<&str> = req.raw_path[1..].split('/').collect();
        for seg in &raw {
            assert_eq!(
                canonical(&decode(seg)),
                *seg,
                "{req:?}: segment not canonical"
            );
        }
        let segs: Vec<String> = raw.iter().map(|s| decode(s)).collect();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let ok = match s.as_slice() {
            ["v3", "oauth2", "tokens"] | ["v3", "systems"] => true,
            ["v3", "files", "ops", sys] | ["v3", "systems", "share", sys] => *sys == system,
            ["v3", "files", "ops", sys, f, "code", "images"] => {
                *sys == system && flight_shown.contains(*f)
            }
            ["v3", "files", "content", sys, f, "code", "images", img] => {
                *sys == system && flight_shown.contains(*f) && image_shown.contains(*img)
            }
            ["api", "token-auth", ""]
            | ["api", "projects", ""]
            | ["api", "users", ""]
            | ["api", "groups", ""] => true,
            ["api", "projects", p, ""] => p.parse::<i64>().is_ok(),
            ["api", "projects", p, action, ""] => {
                p.parse::<i64>().is_ok() && ["permissions", "edit", "tasks"].contains(action)
            }
            ["api", "projects", p, "tasks", t, action, ""] => {
                p.parse::<i64>().is_ok() && t.len() == 36 && ["upload", "commit"].contains(action)
            }
            ["api", "projects", p, "tasks", t, "images", "download", img] => {
                heads += 1;
                p.parse::<i64>().is_ok() && t.len() == 36 && image_shown.contains(*img)
            }
            _ => false,
        };
        assert!(ok, "request off its route: {req:?} → {s:?}");
        if let Some(q) = &req.query {
            for (k, _) in url::form_urlencoded::parse(q.as_bytes()) {
                assert!(
                    [
                        "listType", "search", "select", "orderBy", "limit", "skip", "offset",
                        "name"
                    ]
                    .contains(&k.as_ref()),
                    "unexpected query key in {req:?}"
                );
            }
        }
    }
    assert!(
        heads >= kept.images.len(),
        "HEAD per image after the state was lost: {heads}"
    );
    // And the simulator saw only its own routes, and no 404.
    let stats = rig.sim.stats();
    for (route, statuses) in &stats.requests {
        assert!(!route.contains("<unknown>"), "{route}");
        assert!(!statuses.contains_key("404"), "{route}: {statuses:?}");
    }
    rig.shutdown().await;
}
