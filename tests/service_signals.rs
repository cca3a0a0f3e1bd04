//! The daemon under signals, as systemd drives it: SIGTERM mid-upload, the shutdown timeout,
//! a second signal, SIGHUP with a valid and an invalid config, SIGUSR1, and the sd_notify
//! messages on a test NOTIFY_SOCKET.
//!
//! The daemon's uploads are throttled (`bwlimit` of 600 kB/s, one image per request, one at a
//! time: about four 150 kB images a second) so a pass over a dozen images takes a few seconds
//! and a signal lands mid-upload.

mod service_support;

use std::time::Duration;

use service_support::*;

const SLOW: &[(&str, &str)] = &[
    ("webodm", "bwlimit = \"600kB\""),
    ("webodm", "upload_batch_files = 1"),
    ("webodm", "max_concurrent_uploads = 1"),
    ("sync", "interval = \"1h\""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_upload_finishes_in_flight_and_exits_0_then_once_completes() {
    let sim = start_sim(&spec(16, 150_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut keys = SLOW.to_vec();
    keys.push(("sync", "shutdown_timeout = \"10s\""));
    let (config, state) = write_config(&sim, dir.path(), &keys, "");
    let mut d = Daemon::start(&config, true, &[]);
    d.wait_notify(|m| m.contains("READY=1"), Duration::from_secs(10));
    // Wait until some images are in WebODM, then stop.
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while sim.report().webodm.images < 2 {
        assert!(std::time::Instant::now() < end, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(libc::SIGTERM);
    let (status, took) = d.wait_exit(Duration::from_secs(12));
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let log = d.log_text();
    assert!(log.contains("stop signal"), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");
    let notes = d.notes();
    assert!(notes.iter().any(|n| n.contains("STOPPING=1")), "{notes:#?}");
    let partial = sim.report().webodm.images;
    let expected = sim.dataset().expected();
    assert!(
        partial < expected.images,
        "the stop landed mid-upload ({partial} of {} images)",
        expected.images
    );
    // The snapshot and the store agree on what was uploaded.
    let snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap();
    let recorded = snap["flights"][0]["images_uploaded"].as_u64().unwrap();
    assert_eq!(recorded, partial, "{snap}");

    // The next run finishes the flight: no image is uploaded twice, nothing is duplicated.
    let before = upload_requests(&sim);
    let once = run_async(&config, &["once", "--json"], &[]).await;
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&once.stdout).unwrap();
    assert_eq!(v["projects_created"], 0, "{v}");
    assert_eq!(v["tasks_created"], 0, "{v}");
    assert_eq!(
        v["images_uploaded"].as_u64(),
        Some(expected.images - partial)
    );
    assert_eq!(upload_requests(&sim) - before, expected.images - partial);
    assert_eq!(
        upload_requests(&sim),
        expected.images,
        "zero duplicate uploads"
    );
    assert_converged(&sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_timeout_abandons_in_flight_images_cleanly() {
    let sim = start_sim(&spec(12, 150_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut keys = SLOW.to_vec();
    keys.push(("sync", "shutdown_timeout = \"0s\""));
    let (config, _) = write_config(&sim, dir.path(), &keys, "");
    let mut d = Daemon::start(&config, false, &[]);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while sim.report().webodm.images < 1 {
        assert!(std::time::Instant::now() < end, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    d.signal(libc::SIGTERM);
    let (status, took) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        d.log_text().contains("abandoning") || d.log_text().contains("daemon stopped"),
        "{}",
        d.log_text()
    );
    let once = run_async(&config, &["once", "--json"], &[]).await;
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert_converged(&sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_signal_exits_at_once_and_the_store_stays_consistent() {
    let sim = start_sim(&spec(16, 150_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut keys = SLOW.to_vec();
    keys.push(("sync", "shutdown_timeout = \"30s\""));
    let (config, _) = write_config(&sim, dir.path(), &keys, "");
    let mut d = Daemon::start(&config, false, &[]);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while sim.report().webodm.images < 1 {
        assert!(std::time::Instant::now() < end, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Back to back: the graceful stop of the first one takes longer than this.
    d.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(2));
    d.signal(libc::SIGTERM);
    let (status, took) = d.wait_exit(Duration::from_secs(3));
    assert_eq!(status.code(), Some(130), "{}", d.log_text());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(d.log_text().contains("second stop signal"));
    let once = run_async(&config, &["once", "--json"], &[]).await;
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert_converged(&sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_messages_sighup_reload_and_sigusr1_pass() {
    let sim = start_sim(&spec(3, 2_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = [("sync", "interval = \"1h\"")];
    let (config, state) = write_config(&sim, dir.path(), &keys, "");
    let mut d = Daemon::start(&config, true, &[("WATCHDOG_USEC", "300000")]);

    d.wait_notify(|m| m.contains("READY=1"), Duration::from_secs(10));
    let status = d.wait_notify(|m| m.contains("STATUS=last pass"), Duration::from_secs(10));
    assert!(
        status.contains("1 projects created, 3 images, 0 errors"),
        "{status}"
    );
    d.wait_notify(|m| m.trim() == "WATCHDOG=1", Duration::from_secs(3));
    d.wait_log("pass finished", 1, Duration::from_secs(5));

    // SIGHUP with a valid config: RELOADING=1 + MONOTONIC_USEC, then READY=1.
    std::fs::write(
        &config,
        config_text(&sim, &state, &[("sync", "interval = \"2h\"")], ""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let reloading = d.wait_notify(|m| m.contains("RELOADING=1"), Duration::from_secs(5));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = d.wait_notify(
        |m| m.contains("READY=1") && m.contains("config reloaded"),
        Duration::from_secs(5),
    );
    assert!(ready.contains("last pass"), "{ready}");
    d.wait_log("config reloaded", 1, Duration::from_secs(5));
    assert!(d.log_text().contains("interval=2h"), "{}", d.log_text());

    // SIGHUP with an invalid config: an error naming the problem; the old config stays.
    std::fs::write(
        &config,
        config_text(&sim, &state, &[("webodm", "requests_per_second = 0")], ""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("config reload failed", 1, Duration::from_secs(5));
    assert!(
        d.log_text().contains("webodm.requests_per_second"),
        "{}",
        d.log_text()
    );
    d.wait_notify(|m| m.contains("reload FAILED"), Duration::from_secs(5));
    assert_eq!(d.child.try_wait().unwrap(), None, "still running");

    // SIGUSR1: a pass now (the interval is 2 h).
    let tapis_before = sim.stats().tapis_requests;
    d.signal(libc::SIGUSR1);
    d.wait_log("pass finished", 2, Duration::from_secs(10));
    assert!(sim.stats().tapis_requests > tapis_before);
    assert!(d.log_text().contains("SIGUSR1"), "{}", d.log_text());

    d.signal(libc::SIGTERM);
    let (status, _) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    let notes = d.notes();
    assert!(notes.iter().any(|n| n.contains("STOPPING=1")), "{notes:#?}");
    let watchdog = notes.iter().filter(|n| n.trim() == "WATCHDOG=1").count();
    assert!(watchdog >= 2, "{notes:#?}");
    assert_converged(&sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_watchdog_pings_without_watchdog_usec() {
    let sim = start_sim(&spec(1, 1_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(&sim, dir.path(), &[], "");
    let mut d = Daemon::start(&config, true, &[]);
    d.wait_notify(|m| m.contains("STATUS=last pass"), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(5));
    assert!(!d.notes().iter().any(|n| n.contains("WATCHDOG=1")));
    sim.shutdown().await;
}
