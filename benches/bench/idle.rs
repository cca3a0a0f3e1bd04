//! Section 4: the daemon (`run`) between passes — RSS and CPU time — and `--serve-lab`, the
//! lab of section 1 served for profiling by hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapis_webodm_sync::engine::state::{Store, COMMITTED_IMAGES_DROPPED};
use tapis_webodm_sync::sim::{DatasetSpec, Sim};

use crate::child::{proc_cpu_secs, proc_status_kib, spawn_daemon, wait4};
use crate::report::{mib_k, secs, Out, Table};
use crate::setup::{config_file, lib_config, seed, set_last_checked, warm_up, Limits, Tweaks};
use crate::{err, unchanged, Opts, Scale, Section, BIN, R};

struct Idle {
    label: String,
    flights: u64,
    image_records: u64,
    first_pass: Duration,
    cpu: f64,
    window: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    /// RSS after `malloc_trim(0)` was called in the daemon with gdb (what-if), KiB.
    trimmed_kib: Option<u64>,
    code: i32,
}

/// Calls `malloc_trim(0)` inside process `pid` with gdb (if gdb is installed) and returns its
/// RSS a second later: how much of the RSS is freed heap the allocator keeps.
fn rss_after_malloc_trim(pid: u32) -> Option<u64> {
    let ok = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "call (int)malloc_trim(0)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    std::thread::sleep(Duration::from_secs(1));
    proc_status_kib(pid, "VmRSS")
}

/// Starts `run` (interval 1 h) against `sim`, waits for its first pass, then measures its CPU
/// time and RSS over `window`; afterwards (outside the window) the `malloc_trim` what-if.
async fn idle_daemon(
    label: &str,
    sim: &Sim,
    state_dir: &Path,
    window: Duration,
    (flights, image_records): (u64, u64),
    perf: Option<&Path>,
) -> R<Idle> {
    let cfg = state_dir.with_extension("toml");
    config_file(sim, state_dir, &idle_tweaks()?, &cfg)?;
    let log = std::env::temp_dir().join(format!("bench-idle-{label}.log"));
    let args = ["run", "--config", &cfg.to_string_lossy()].map(str::to_owned);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn_daemon(&argv, &log)?;
    let pid = child.id();
    let t = Instant::now();
    // The first pass is over when the snapshot records it.
    loop {
        if let Ok(snap) = tapis_webodm_sync::service::status::read_snapshot(state_dir) {
            if snap.last_pass.is_some() {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(300) || proc_cpu_secs(pid).is_none() {
            // SAFETY: our child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = tokio::task::spawn_blocking(move || wait4(pid)).await;
            return Err(format!("{label}: no first pass; see {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_pass = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = proc_cpu_secs(pid).ok_or("daemon gone")?;
    let t0 = Instant::now();
    let recorder = match perf {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(err)?;
            let out = dir.join(format!("idle-{label}.data"));
            let child = Command::new("perf")
                .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
                .arg(&out)
                .args(["--", "sleep", &window.as_secs().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("perf: {e}"))?;
            Some(child)
        }
        None => None,
    };
    tokio::time::sleep(window).await;
    if let Some(mut r) = recorder {
        let _ = tokio::task::spawn_blocking(move || r.wait()).await;
    }
    let cpu1 = proc_cpu_secs(pid).ok_or("daemon gone")?;
    let window = t0.elapsed();
    let rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let hwm_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let trimmed_kib = tokio::task::spawn_blocking(move || rss_after_malloc_trim(pid))
        .await
        .map_err(err)?;
    // SAFETY: our child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let (code, _) = tokio::task::spawn_blocking(move || wait4(pid))
        .await
        .map_err(err)?;
    std::mem::forget(child);
    Ok(Idle {
        label: label.into(),
        flights,
        image_records,
        first_pass,
        cpu: cpu1 - cpu0,
        window,
        rss_kib,
        hwm_kib,
        trimmed_kib,
        code,
    })
}

/// The idle daemons' config: rate limits lifted, a pass an hour.
fn idle_tweaks() -> R<Tweaks> {
    Ok(Tweaks {
        interval: Some("1h"),
        ..Tweaks::limits(Limits::production()?.lifted()).no_settle()
    })
}

/// Seeds the lab of section 1 into `state_dir` and runs the daemon's warm-up pass (access
/// given), then marks every flight unchecked, so the next pass lists every folder; returns
/// (flights, image records).
async fn lab_store(
    sim: &Sim,
    state_dir: &Path,
    tweaks: &Tweaks,
    image_records: bool,
) -> R<(u64, u64)> {
    let store = Store::open(state_dir).map_err(err)?;
    let config = lib_config(sim, state_dir, tweaks)?;
    let s = seed(&config, &store, &[], image_records).await?;
    warm_up(sim, &config, &store, &[]).await?;
    set_last_checked(&store, None).await?;
    drop(store);
    if image_records {
        // As a version from before commits dropped image records left it: without the mark
        // of the one-time clean-up that `Store::open` now makes.
        let db = sled::open(state_dir.join("db")).map_err(err)?;
        db.open_tree("meta")
            .and_then(|m| m.remove(COMMITTED_IMAGES_DROPPED))
            .map_err(err)?;
        db.flush().map_err(err)?;
    }
    Ok((s.desired.flights.len() as u64, s.images))
}

pub async fn section(opts: &Opts, scale: &Scale) -> R<Out> {
    let mut out = Out::new(Section::Idle, "4. Idle", opts);
    let tweaks = idle_tweaks()?;
    let window = Duration::from_secs(scale.idle_secs);
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let dir = tempfile::tempdir().map_err(err)?;
    // (a) the demo dataset, synced by the daemon's own first pass;
    let demo_sim = Sim::start(&DatasetSpec::demo(), addr).await.map_err(err)?;
    let demo_state = dir.path().join("demo");
    let demo = demo_sim.dataset().expected();
    // (b) the lab of section 1 (seeded, access given) in a store as older versions left it,
    //     with every committed image recorded (dropped by `Store::open` at start), whose
    //     first pass lists every folder and changes nothing;
    // (c) the same lab in the store the engine leaves now (committing drops image records).
    let lab_spec = unchanged::spec(scale);
    let mut labs = Vec::new();
    for (label, image_records) in [("lab-older-store", true), ("lab", false)] {
        eprintln!("[idle] seeding the {label} store…");
        let sim = Sim::start(&lab_spec, addr).await.map_err(err)?;
        let state_dir = dir.path().join(label);
        let counts = lab_store(&sim, &state_dir, &tweaks, image_records).await?;
        labs.push((label, sim, state_dir, counts));
    }
    eprintln!("[idle] three daemons idle for {} s…", window.as_secs());
    let perf = opts.perf.as_deref();
    let (a, b, c) = tokio::join!(
        idle_daemon(
            "demo",
            &demo_sim,
            &demo_state,
            window,
            (demo.flights, demo.images),
            perf
        ),
        idle_daemon(labs[0].0, &labs[0].1, &labs[0].2, window, labs[0].3, perf),
        idle_daemon(labs[1].0, &labs[1].1, &labs[1].2, window, labs[1].3, perf),
    );
    let demo_converged = {
        let r = demo_sim.report();
        r.webodm.images == r.expected.images && r.webodm.committed_tasks == r.expected.flights
    };
    demo_sim.shutdown().await;
    for (_, sim, _, _) in labs {
        sim.shutdown().await;
    }
    let runs = [a?, b?, c?];
    out.para(format!(
        "The release binary runs `run` with `interval = \"1h\"` against a simulator in the \
         harness process. Once its first pass is recorded in the status snapshot, and 2 s \
         later, its utime + stime (`/proc/<pid>/stat`) and RSS (`/proc/<pid>/status`) are \
         read, and again {} s later (rate limits lifted, `settle = \"0s\"`, everything else \
         shipped). Three daemons idle side by side: `demo`, whose first pass synced the demo \
         dataset ({} flights, {} images, uploaded and committed by that pass: {}); \
         `lab-older-store`, whose first pass was an unchanged pass over the lab of section 1 listing every folder \
         ({} flights × {} images, access already given by a warm-up pass) in a store as versions \
         before commits dropped image records left it, every image recorded (the daemon drops \
         them once, when it opens the store: the first pass includes that); and `lab`, the \
         same lab in the store the engine leaves now (committing a flight drops its image \
         records). The daemon returns freed \
         heap to the kernel after each pass (`malloc_trim(0)`); after the window, `malloc_trim(0)` \
         is also called inside each daemon with gdb and its RSS read again, as a check that \
         nothing more is left to return.",
        window.as_secs(),
        demo.flights,
        demo.images,
        if demo_converged {
            "complete"
        } else {
            "INCOMPLETE"
        },
        lab_spec.systems * lab_spec.flights_per_system,
        lab_spec.images_per_flight,
    ));
    let mut t = Table::new(&[
        "daemon",
        "flights / image records",
        "first pass (start → snapshot)",
        "CPU over window",
        "CPU per 60 s",
        "RSS idle",
        "peak RSS (VmHWM)",
        "RSS after malloc_trim(0) (what-if)",
        "exit on SIGTERM",
    ]);
    for r in &runs {
        t.row(vec![
            format!("`{}`", r.label),
            format!("{} / {}", r.flights, r.image_records),
            secs(r.first_pass),
            format!("{:.3} s / {:.0} s", r.cpu, r.window.as_secs_f64()),
            format!("{:.3} s", r.cpu * 60.0 / r.window.as_secs_f64()),
            mib_k(r.rss_kib),
            mib_k(r.hwm_kib),
            r.trimmed_kib.map_or("(no gdb)".into(), mib_k),
            r.code.to_string(),
        ]);
    }
    out.table(&t);
    for r in &runs {
        let per60 = r.cpu * 60.0 / r.window.as_secs_f64();
        out.check(
            format!("`{}` ({} flights): RSS between passes", r.label, r.flights),
            format!("**{}**", mib_k(r.rss_kib)),
            "≤ 30 MiB",
            r.rss_kib as f64 <= 30.0 * 1024.0,
        );
        out.check(
            format!(
                "`{}` ({} flights): CPU time per 60 s idle",
                r.label, r.flights
            ),
            format!("**{per60:.3} s**"),
            "≤ 0.1 s",
            per60 <= 0.1,
        );
    }
    let clean_exits = runs.iter().filter(|r| r.code == 0).count();
    out.check(
        "the demo daemon's first pass synced everything; daemons that exit 0 on SIGTERM",
        format!(
            "{}; {clean_exits} of {}",
            if demo_converged {
                "synced"
            } else {
                "NOT synced"
            },
            runs.len()
        ),
        "synced; all",
        demo_converged && clean_exits == runs.len(),
    );
    out.headline = Some(format!(
        "between passes the daemon holds {} of RSS with the demo's {} flights and {} with the \
         lab's {}, and uses {:.3} s / {:.3} s of CPU per minute",
        mib_k(runs[0].rss_kib),
        runs[0].flights,
        mib_k(runs[2].rss_kib),
        runs[2].flights,
        runs[0].cpu * 60.0 / runs[0].window.as_secs_f64(),
        runs[2].cpu * 60.0 / runs[2].window.as_secs_f64(),
    ));
    out.finish();
    Ok(out)
}

/// `--serve-lab DIR`: the lab of section 1, seeded (access given, every flight unchecked),
/// served until Ctrl-C, with a config for the daemon in `DIR/config.toml` (rate limits
/// lifted, `settle = "0s"`, interval 1 h) and its store in `DIR/state` (replaced).
pub async fn serve_lab(dir: &Path, scale: &Scale) -> R<()> {
    let state_dir = dir.join("state");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).map_err(err)?;
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let sim = Sim::start(
        &unchanged::spec(scale),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .map_err(err)?;
    let tweaks = idle_tweaks()?;
    let (flights, images) = lab_store(&sim, &state_dir, &tweaks, false).await?;
    eprintln!("seeded {flights} flights, {images} image records");
    let cfg = dir.join("config.toml");
    config_file(&sim, &state_dir, &tweaks, &cfg)?;
    println!("SIM {}\nconfig {}", sim.base_url(), cfg.display());
    println!("e.g. {BIN} once --config {}", cfg.display());
    tokio::signal::ctrl_c().await.map_err(err)?;
    sim.shutdown().await;
    Ok(())
}
