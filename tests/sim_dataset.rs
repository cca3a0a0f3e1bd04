//! The generated dataset is deterministic and its expected set follows the design's "Words".

use std::net::SocketAddr;

use tapis_webodm_sync::sim::{Dataset, DatasetSpec, Sim};

#[test]
fn demo_dataset_expected_flights() {
    let spec = DatasetSpec::demo();
    let d = Dataset::generate(&spec);
    let flights = d.expected_flights();
    let keys: Vec<(&str, &str)> = flights
        .iter()
        .map(|f| (f.system_id.as_str(), f.flight.as_str()))
        .collect();
    assert_eq!(keys.len(), 11, "{keys:?}");
    let e = d.expected();
    assert_eq!(e.flights, 11);
    assert_eq!(
        e.images,
        flights.iter().map(|f| f.images.len() as u64).sum::<u64>()
    );
    assert_eq!(
        e.bytes,
        flights
            .iter()
            .flat_map(|f| &f.images)
            .map(|i| i.size)
            .sum::<u64>()
    );

    // Shared-but-not-owned flights count; hidden, disabled and non-matching systems do not.
    assert!(keys.iter().any(|(s, _)| *s == "ptdatax.project.shared-lab"));
    for s in [
        "ptdatax.project.hidden",
        "ptdatax.project.disabled",
        "ptdatax.other.x",
        "something.ptdatax.project.y",
        "PTDATAX.PROJECT.UPPER",
    ] {
        assert!(!keys.iter().any(|(k, _)| *k == s), "{s}");
    }
    // Decoy folders are not flights.
    for f in [
        "NoCodeFolder",
        "NoImagesDir",
        "OnlyPngAndTxt",
        "EmptyImages",
        "README.txt",
    ] {
        assert!(!keys.iter().any(|(_, k)| *k == f), "{f}");
    }
    // Special flights: upper-case extensions count; sub-folders and other files do not.
    let vuelo = flights.iter().find(|f| f.flight == "Vuelo Año 2").unwrap();
    let names: Vec<&str> = vuelo.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "IMG_0001.JPG",
            "IMG_0002.JPEG",
            "IMG_0003.jpg",
            "IMG_0004.Jpg"
        ]
    );
    let hostile = flights
        .iter()
        .find(|f| f.flight == tapis_webodm_sync::sim::HOSTILE_FLIGHT)
        .unwrap();
    assert_eq!(hostile.images.len(), 2);
    let extras = flights
        .iter()
        .find(|f| f.flight == "Flight Extras")
        .unwrap();
    assert_eq!(extras.images.len(), 3);

    let regular = flights.iter().find(|f| f.flight == "Flight001").unwrap();
    assert_eq!(regular.images.len(), 40);
    for img in &regular.images {
        assert!((15_000..=25_000).contains(&img.size), "{}", img.size);
        assert_eq!(img.sha256.len(), 64);
    }
    assert!(
        regular.images.windows(2).any(|w| w[0].size != w[1].size),
        "sizes vary"
    );
}

#[test]
fn generation_is_deterministic() {
    let spec = DatasetSpec {
        big_flight_images: Some(20),
        ..DatasetSpec::demo()
    };
    let a = Dataset::generate(&spec).expected_flights();
    assert_eq!(a, Dataset::generate(&spec).expected_flights());
    assert!(a
        .iter()
        .any(|f| f.flight == "BigFlight" && f.images.len() == 20));
    let other = Dataset::generate(&DatasetSpec { seed: 43, ..spec }).expected_flights();
    assert_ne!(a, other);

    let plain = DatasetSpec {
        decoys: false,
        companions: false,
        systems: 2,
        flights_per_system: 3,
        images_per_flight: 5,
        ..DatasetSpec::demo()
    };
    let e = Dataset::generate(&plain).expected();
    assert_eq!((e.flights, e.images), (6, 30));
}

#[tokio::test]
async fn config_points_at_the_sim() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = Sim::start(&DatasetSpec::demo(), listen).await.unwrap();
    let url = sim.base_url();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with('/'));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("we\"ird \\ state");
    let text = sim.config_toml(&state);
    let v: toml::Table = toml::from_str(&text).unwrap();
    let c = sim.credentials();
    assert_eq!(v["tapis"]["base_url"].as_str(), Some(url.as_str()));
    assert_eq!(
        v["tapis"]["username"].as_str(),
        Some(c.tapis_username.as_str())
    );
    assert_eq!(v["tapis"]["password"].as_str(), Some("tapis-secret"));
    assert_eq!(v["tapis"]["client_id"].as_str(), Some("tws-sim-client"));
    assert_eq!(v["tapis"]["client_key"].as_str(), Some("sim-client-key"));
    assert_eq!(
        v["tapis"]["system_pattern"].as_str(),
        Some("ptdatax.project.*")
    );
    assert_eq!(v["webodm"]["base_url"].as_str(), Some(url.as_str()));
    assert_eq!(v["webodm"]["username"].as_str(), Some("tapis-sync"));
    assert_eq!(v["webodm"]["password"].as_str(), Some("webodm-secret"));
    assert_eq!(v["sync"]["interval"].as_str(), Some("2s"));
    assert_eq!(v["sync"]["settle"].as_str(), Some("0s"));
    assert_eq!(v["sync"]["state_dir"].as_str(), state.to_str());
    sim.shutdown().await;
}

#[test]
fn companions_are_generated_apart_from_images() {
    let on = DatasetSpec {
        companions: true,
        ..DatasetSpec::demo()
    };
    let with = Dataset::generate(&on).expected_flights();
    let without = Dataset::generate(&DatasetSpec::demo()).expected_flights();
    // Images are the same files either way; companions are listed apart.
    assert_eq!(with.len(), without.len());
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(a.images, b.images);
        assert!(b.companions.is_empty());
    }
    // Generated system number n has an id ending in `-00n`.
    let names = |system: usize, flight: &str| -> Vec<String> {
        let suffix = format!("-{:03}", system + 1);
        with.iter()
            .find(|f| f.system_id.ends_with(&suffix) && f.flight == flight)
            .unwrap()
            .companions
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    // Mixed case in the first system's Flight001; odd flights only; never notes.txt.
    assert_eq!(names(0, "Flight001"), ["GCP_List.txt", "Geo.TXT"]);
    assert_eq!(names(1, "Flight001"), ["gcp_list.txt", "geo.txt"]);
    assert!(names(0, "Flight002").is_empty());
    let e = Dataset::generate(&on).expected();
    let plain = Dataset::generate(&DatasetSpec::demo()).expected();
    assert_eq!(
        (e.flights, e.images, e.bytes),
        (plain.flights, plain.images, plain.bytes)
    );
    assert_eq!(
        e.companions,
        with.iter().map(|f| f.companions.len() as u64).sum::<u64>()
    );
    assert!(e.companions >= 6, "{}", e.companions);
    assert_eq!(
        e.companion_bytes,
        with.iter()
            .flat_map(|f| &f.companions)
            .map(|c| c.size)
            .sum::<u64>()
    );
    // image_groups.txt comes with every third flight.
    let more = DatasetSpec {
        companions: true,
        decoys: false,
        flights_per_system: 3,
        ..DatasetSpec::demo()
    };
    let flights = Dataset::generate(&more).expected_flights();
    let third = flights.iter().find(|f| f.flight == "Flight003").unwrap();
    let names: Vec<&str> = third.companions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["gcp_list.txt", "geo.txt", "image_groups.txt"]);
}
