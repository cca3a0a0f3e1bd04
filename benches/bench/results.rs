//! Section 6: results back to Tapis — each processed flight's assets streamed from WebODM
//! into Tapis uploads by `once` — against a download-then-upload loop at the same
//! concurrency, and the daemon's peak RSS while it copies.

use std::time::{Duration, Instant};

use tapis_webodm_sync::sim::{DatasetSpec, Faults, Report, Sim};

use crate::child::run_loop;
use crate::plain::{CONCURRENCY_ENV, RESULTS_ASSETS_ENV, RESULTS_DIR, RESULTS_ENV};
use crate::report::{mib, mib_k, secs, Out, Table};
use crate::setup::{median, Limits, Tweaks};
use crate::transfer::daemon_once;
use crate::{err, Opts, Scale, Section, MIB, R};

/// The assets copied (each of the size `Scale::result_asset_size`, ±25 %).
const ASSETS: [&str; 4] = [
    "orthophoto.tif",
    "dsm.tif",
    "georeferenced_model.laz",
    "all.zip",
];
/// Where the daemon writes them (the shipped `results.dir`).
const DAEMON_DIR: &str = "code/odm_results";

fn spec(scale: &Scale) -> DatasetSpec {
    DatasetSpec {
        seed: 14,
        systems: 1,
        flights_per_system: scale.result_flights,
        images_per_flight: 2,
        image_size: 2_000,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

/// Processing takes 200 ms; assets are big.
fn faults(scale: &Scale) -> Faults {
    Faults {
        process_ms: 200,
        asset_size: Some(scale.result_asset_size),
        ..Faults::default()
    }
}

/// Waits until every task in the simulated WebODM is processed (status 40), 60 s at most.
async fn processed(sim: &Sim) -> R<()> {
    let t = Instant::now();
    loop {
        let tasks: Vec<Option<i64>> = sim
            .webodm_projects()
            .into_iter()
            .flat_map(|p| p.tasks.into_iter().map(|t| t.status))
            .collect();
        if !tasks.is_empty() && tasks.iter().all(|s| *s == Some(40)) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("tasks not processed after 60 s: {tasks:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Result files under `dir` that match their WebODM asset byte for byte, over all flights.
fn matching(report: &Report, dir: &str) -> usize {
    report
        .flights
        .iter()
        .flat_map(|f| &f.results)
        .filter(|r| r.path.starts_with(&format!("{dir}/")) && r.matches_asset)
        .count()
}

/// One run of the loop or the daemon.
struct Run {
    label: String,
    limits: String,
    files: u64,
    bytes: u64,
    time: Duration,
    peak_kib: u64,
    /// Every asset written once, byte for byte, no error.
    ok: bool,
}

/// Syncs a fresh simulator's flights with the daemon (results off, so nothing is copied)
/// and waits for their processing; the simulator and the daemon's dir.
async fn prepared(scale: &Scale, tweaks: &Tweaks, tag: &str) -> R<(Sim, tempfile::TempDir)> {
    let sim = Sim::start_with(
        &spec(scale),
        "127.0.0.1:0".parse().expect("addr"),
        faults(scale),
    )
    .await
    .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let first = daemon_once(&sim, dir.path(), tweaks, &format!("{tag}-sync"), &[]).await?;
    if !first.clean() || first.report.webodm.committed_tasks != scale.result_flights as u64 {
        return Err(format!("{tag}: the first pass did not commit every flight"));
    }
    processed(&sim).await?;
    Ok((sim, dir))
}

/// The download-then-upload loop, `concurrency` at once.
async fn loop_run(scale: &Scale, concurrency: usize, round: usize) -> R<Run> {
    let tag = format!("results-loop-{round}");
    let (sim, _dir) = prepared(scale, &Tweaks::default().no_settle(), &tag).await?;
    let env = vec![
        (RESULTS_ENV, sim.base_url()),
        (RESULTS_ASSETS_ENV, ASSETS.join(",")),
        (CONCURRENCY_ENV, concurrency.to_string()),
    ];
    let r = run_loop(env, &tag).await;
    let report = sim.report();
    sim.shutdown().await;
    let (run, l) = r?;
    let want = scale.result_flights * ASSETS.len();
    Ok(Run {
        label: format!("download-then-upload loop #{round}"),
        limits: format!("{concurrency} at once"),
        files: l.files,
        bytes: l.bytes,
        time: l.time,
        peak_kib: run.peak_kib(),
        ok: l.files as usize == want && matching(&report, RESULTS_DIR) == want,
    })
}

/// The daemon: a pass that syncs and commits, one that reads the processed tasks, then the
/// measured pass, which copies the results.
async fn daemon_run(scale: &Scale, limits: Limits, label: String, tag: &str) -> R<Run> {
    let tweaks = Tweaks {
        results: ASSETS.to_vec(),
        ..Tweaks::limits(limits).no_settle()
    };
    let (sim, dir) = prepared(scale, &tweaks, tag).await?;
    let poll = daemon_once(&sim, dir.path(), &tweaks, &format!("{tag}-poll"), &[]).await?;
    let copy = daemon_once(&sim, dir.path(), &tweaks, tag, &[]).await?;
    sim.shutdown().await;
    let want = scale.result_flights * ASSETS.len();
    let written = |d: &crate::transfer::DaemonOnce| {
        d.summary["results_written"].as_u64().unwrap_or(0) as usize
    };
    Ok(Run {
        label,
        limits: limits.describe(),
        files: written(&copy) as u64,
        bytes: copy.summary["result_bytes"].as_u64().unwrap_or(0),
        time: copy.pass(),
        peak_kib: copy.run.peak_kib(),
        ok: poll.clean()
            && written(&poll) == 0
            && copy.clean()
            && written(&copy) == want
            && matching(&copy.report, DAEMON_DIR) == want,
    })
}

pub async fn section(opts: &Opts, scale: &Scale, prod: Limits) -> R<Out> {
    let mut out = Out::new(Section::Results, "6. Results back to Tapis", opts);
    let lifted = prod.lifted();
    let mbps = |r: &Run| r.bytes as f64 / MIB / r.time.as_secs_f64();
    let mut loops = Vec::new();
    let mut daemons = Vec::new();
    for round in 1..=scale.rounds {
        let l = loop_run(scale, prod.uploads, round).await?;
        eprintln!("[results] loop #{round}: {:.0} MiB/s", mbps(&l));
        loops.push(l);
        let d = daemon_run(
            scale,
            lifted,
            format!("daemon `once` #{round}, rate limits lifted"),
            &format!("results-lifted-{round}"),
        )
        .await?;
        eprintln!(
            "[results] daemon #{round} (lifted): {:.0} MiB/s over the pass, peak RSS {}",
            mbps(&d),
            mib_k(d.peak_kib)
        );
        daemons.push(d);
    }
    let shipped = daemon_run(
        scale,
        prod,
        "daemon `once`, shipped limits".into(),
        "results-shipped",
    )
    .await?;
    eprintln!(
        "[results] daemon (shipped limits): {:.0} MiB/s over the pass",
        mbps(&shipped)
    );
    let total = scale.result_flights as f64 * ASSETS.len() as f64 * scale.result_asset_size as f64;
    out.para(format!(
        "Dataset: 1 system × {} flights, each processed by the simulated WebODM with the \
         assets {} of about {} each (±25 %; `Faults::asset_size`), about {} in all. The \
         reference is a plain download-then-upload loop (this harness in a child process): \
         for each asset, the whole WebODM download into memory, then one Tapis upload \
         (`POST /v3/files/ops/…`, folder made first), {} at once — the daemon's concurrency \
         for results (one asset at a time per flight, `max_concurrent_uploads` flights at \
         once); timed: the folders and the copies. The daemon is the release binary, `once \
         --json` with `[results] assets` set (and `settle = \"0s\"`): a first pass syncs and \
         commits, a second reads the processed tasks, the measured third streams each asset \
         from WebODM into Tapis and lists it to check its size; its time is that pass's \
         `duration_ms`. Both write to a fresh simulator each run, checked against its report \
         (every result on Tapis byte for byte). {} round(s), medians compared; peak RSS as in \
         section 2 (wait4 through a wrapper, and VmHWM).",
        scale.result_flights,
        ASSETS.map(|a| format!("`{a}`")).join(", "),
        mib(scale.result_asset_size as f64),
        mib(total),
        prod.uploads,
        scale.rounds,
    ));
    let mut t = Table::new(&[
        "run",
        "limits",
        "files",
        "bytes",
        "time",
        "throughput",
        "peak RSS",
        "every asset once, byte for byte",
    ]);
    for r in loops.iter().chain(&daemons).chain([&shipped]) {
        t.row(vec![
            r.label.clone(),
            r.limits.clone(),
            r.files.to_string(),
            mib(r.bytes as f64),
            secs(r.time),
            format!("{:.0} MiB/s", mbps(r)),
            mib_k(r.peak_kib),
            if r.ok { "yes" } else { "NO" }.into(),
        ]);
    }
    out.table(&t);
    let loop_median = median(loops.iter().map(mbps).collect());
    let daemon_median = median(daemons.iter().map(mbps).collect());
    let ratio = daemon_median / loop_median;
    let shipped_ratio = mbps(&shipped) / loop_median;
    out.report(
        format!(
            "result transfer throughput (WebODM → Tapis, streamed) / download-then-upload loop at the same concurrency, rate limits lifted ({}), medians",
            lifted.describe()
        ),
        format!("**{ratio:.2}** ({daemon_median:.0} vs {loop_median:.0} MiB/s)"),
    );
    out.report(
        format!(
            "the same at the shipped limits ({}; the folder, the size checks and the Tapis uploads count against `tapis.requests_per_second`)",
            prod.describe()
        ),
        format!("**{shipped_ratio:.2}** ({:.0} MiB/s)", mbps(&shipped)),
    );
    let peak = daemons
        .iter()
        .chain([&shipped])
        .map(|r| r.peak_kib)
        .max()
        .unwrap_or(0);
    let loop_peak = loops.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    out.check(
        format!(
            "peak RSS of the daemon copying {} of results (all {} runs; the loop: {})",
            mib(total),
            daemons.len() + 1,
            mib_k(loop_peak)
        ),
        format!("**{}**", mib_k(peak)),
        "≤ 64 MiB",
        peak as f64 <= 64.0 * 1024.0,
    );
    let runs = daemons.len() + 1 + loops.len();
    let ok = loops
        .iter()
        .chain(&daemons)
        .chain([&shipped])
        .filter(|r| r.ok)
        .count();
    out.check(
        "runs that wrote every asset once, byte for byte (simulator report), without error",
        format!("{ok} of {runs}"),
        "all",
        ok == runs,
    );
    out.headline = Some(format!(
        "results stream back from WebODM to Tapis at **{ratio:.2}×** the throughput of a \
         download-then-upload loop at the same concurrency with the rate limits lifted \
         (**{shipped_ratio:.2}×** at the shipped limits), peak RSS **{}** while copying {}",
        mib_k(peak),
        mib(total),
    ));
    out.finish();
    Ok(out)
}
