//! Section 2: a flight of big images copied Tapis → WebODM by `once` against a plain copy
//! loop at the same concurrency; and `once` of the real binary as the later sections run it.

use std::time::Duration;

use serde_json::Value;
use tapis_webodm_sync::sim::{DatasetSpec, Report, Sim, Stats};

use crate::child::{run_daemon, run_loop, ChildRun, LoopRun};
use crate::plain::{CONCURRENCY_ENV, COPY_ENV};
use crate::report::{mib, mib_k, secs, Out, Table};
use crate::setup::{config_file, median, Limits, Tweaks};
use crate::{err, Opts, Scale, Section, MIB, R};

/// One `once --json` of the daemon binary and what the simulator held afterwards.
pub struct DaemonOnce {
    pub run: ChildRun,
    /// The pass summary it printed.
    pub summary: Value,
    /// The simulator's report after it.
    pub report: Report,
    /// The simulator's request statistics after it.
    pub stats: Stats,
}

impl DaemonOnce {
    pub fn bytes(&self) -> u64 {
        self.summary["bytes_uploaded"].as_u64().unwrap_or(0)
    }
    pub fn images(&self) -> u64 {
        self.summary["images_uploaded"].as_u64().unwrap_or(0)
    }
    /// The pass's own duration (`duration_ms`).
    pub fn pass(&self) -> Duration {
        Duration::from_millis(self.summary["duration_ms"].as_u64().unwrap_or(0))
    }
    /// Requests the simulator answered on `route` (`"POST /api/…"`), all statuses.
    pub fn requests(&self, route: &str) -> u64 {
        self.stats
            .requests
            .get(route)
            .map_or(0, |s| s.values().sum())
    }
    /// Whether it exited 0 with no error in its summary.
    pub fn clean(&self) -> bool {
        self.run.code == 0 && self.summary["errors"].as_array().is_some_and(Vec::is_empty)
    }
    /// Whether WebODM holds every image of the dataset byte for byte.
    pub fn images_ok(&self) -> bool {
        let (w, e) = (&self.report.webodm, &self.report.expected);
        w.images == e.images && w.bytes == e.bytes && w.corrupt_images == 0 && w.missing_images == 0
    }
}

/// Runs `once --json` (plus `args`) of the daemon binary against `sim` with the config of
/// `tweaks` and its store in `dir/state` (kept between calls); `tag` names its log.
pub async fn daemon_once(
    sim: &Sim,
    dir: &std::path::Path,
    tweaks: &Tweaks,
    tag: &str,
    args: &[&str],
) -> R<DaemonOnce> {
    let cfg = dir.join("config.toml");
    config_file(sim, &dir.join("state"), tweaks, &cfg)?;
    let log = std::env::temp_dir().join(format!("bench-{tag}.log"));
    let mut argv: Vec<String> = vec!["once".into(), "--json".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend(["--config".into(), cfg.to_string_lossy().into_owned()]);
    let run = run_daemon(argv, log.clone()).await?;
    let summary: Value = serde_json::from_slice(&run.stdout).map_err(|e| {
        format!(
            "once --json printed no summary ({e}); exit {}; log {}",
            run.code,
            log.display()
        )
    })?;
    Ok(DaemonOnce {
        run,
        summary,
        report: sim.report(),
        stats: sim.stats(),
    })
}

/// The limit of section 2 against a fresh simulator.
async fn limit_run(spec: &DatasetSpec, concurrency: usize, round: usize) -> R<LoopRun> {
    let sim = Sim::start(spec, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(err)?;
    let env = vec![
        (COPY_ENV, sim.base_url()),
        (CONCURRENCY_ENV, concurrency.to_string()),
    ];
    let r = run_loop(env, &format!("copy-loop-{round}")).await;
    sim.shutdown().await;
    Ok(r?.1)
}

/// The daemon of section 2 against a fresh simulator.
async fn daemon_run(spec: &DatasetSpec, tweaks: &Tweaks, tag: &str) -> R<DaemonOnce> {
    let sim = Sim::start(spec, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let d = daemon_once(&sim, dir.path(), tweaks, tag, &[]).await;
    sim.shutdown().await;
    d
}

pub async fn section(opts: &Opts, scale: &Scale, prod: Limits) -> R<Out> {
    let spec = DatasetSpec {
        seed: 8,
        systems: 1,
        flights_per_system: 1,
        images_per_flight: scale.transfer_images,
        image_size: scale.transfer_size,
        big_flight_images: None,
        decoys: false,
        companions: false,
    };
    let mut out = Out::new(Section::Transfer, "2. Transfer", opts);
    let lifted = prod.lifted();
    let mbps = |bytes: u64, d: Duration| bytes as f64 / MIB / d.as_secs_f64();

    // Rounds of (limit, daemon with the rate limits lifted), then one daemon run at the
    // shipped limits; the ratio is median against median (the machine is shared and noisy).
    let mut limits = Vec::new();
    let mut daemons = Vec::new();
    for round in 1..=scale.rounds {
        let r = limit_run(&spec, prod.uploads, round).await?;
        eprintln!(
            "[transfer] limit #{round}: {:.0} MiB/s",
            mbps(r.bytes, r.time)
        );
        limits.push(r);
        let tweaks = Tweaks::limits(lifted).no_settle();
        let d = daemon_run(&spec, &tweaks, &format!("transfer-lifted-{round}")).await?;
        eprintln!(
            "[transfer] daemon #{round} (lifted): {:.0} MiB/s over the pass, peak RSS {}",
            mbps(d.bytes(), d.pass()),
            mib_k(d.run.peak_kib())
        );
        daemons.push((
            format!("daemon `once` #{round}, rate limits lifted"),
            lifted,
            d,
        ));
    }
    let d = daemon_run(&spec, &Tweaks::default().no_settle(), "transfer-shipped").await?;
    eprintln!(
        "[transfer] daemon (shipped limits): {:.0} MiB/s over the pass",
        mbps(d.bytes(), d.pass())
    );
    daemons.push(("daemon `once`, shipped limits".into(), prod, d));

    let total = limits[0].bytes;
    out.para(format!(
        "Dataset: 1 flight × {} images × {} (±25 %), {} in all, no added latency. The limit \
         is a plain loop (reqwest): download each image from the simulated Tapis and stream \
         it into a WebODM upload, one image per request, {} at once (`max_concurrent_uploads`), \
         one connection pool per service as in the daemon, nothing else. Both the loop and the \
         daemon run in a child process (the loop: this harness binary in copy-loop mode, on a \
         default tokio runtime like the daemon's) against a fresh simulator in the harness \
         process, so they compete for the cores the same way. The daemon is the release binary \
         (`once --json`, the shipped config but `settle = \"0s\"`, so the pass also commits); \
         its throughput is the summary's `bytes_uploaded` over `duration_ms` (the whole pass: \
         discovery, project, task, access, uploads, commit); the loop's is its bytes over the \
         copies alone. {} round(s) of (limit, daemon), compared median to median. Peak RSS: \
         `ru_maxrss` from `wait4`, taken by a small wrapper process that starts the daemon \
         (started straight from the harness, the child's `ru_maxrss` would include the \
         harness's own high-water mark, folded in at `exec`; the wrapper's own is {}), \
         cross-checked with `VmHWM` polled every 10 ms.",
        spec.images_per_flight,
        mib(spec.image_size as f64),
        mib(total as f64),
        prod.uploads,
        scale.rounds,
        mib_k(daemons[0].2.run.wrapper_kib),
    ));
    let mut t = Table::new(&[
        "run",
        "limits",
        "bytes",
        "time",
        "throughput",
        "peak RSS (wait4 / VmHWM)",
        "process wall",
    ]);
    for (i, l) in limits.iter().enumerate() {
        t.row(vec![
            format!("limit: plain copy loop #{}", i + 1),
            format!("{} at once", prod.uploads),
            mib(l.bytes as f64),
            secs(l.time),
            format!("{:.0} MiB/s", mbps(l.bytes, l.time)),
            "–".into(),
            "–".into(),
        ]);
    }
    for (label, l, d) in &daemons {
        t.row(vec![
            label.clone(),
            l.describe(),
            mib(d.bytes() as f64),
            secs(d.pass()),
            format!("{:.0} MiB/s", mbps(d.bytes(), d.pass())),
            format!("{} / {}", mib_k(d.run.maxrss_kib), mib_k(d.run.hwm_kib)),
            secs(d.run.wall),
        ]);
    }
    out.table(&t);
    let limit_median = median(limits.iter().map(|l| mbps(l.bytes, l.time)).collect());
    let lifted_runs = &daemons[..daemons.len() - 1];
    let daemon_median = median(
        lifted_runs
            .iter()
            .map(|(_, _, d)| mbps(d.bytes(), d.pass()))
            .collect(),
    );
    let ratio = daemon_median / limit_median;
    let shipped = &daemons[daemons.len() - 1].2;
    let shipped_mbps = mbps(shipped.bytes(), shipped.pass());
    let shipped_ratio = shipped_mbps / limit_median;
    out.para(format!(
        "Median throughput: limit {limit_median:.0} MiB/s, daemon {daemon_median:.0} MiB/s: \
         **{ratio:.2}** of the limit with the rate limits lifted (the limit has none). At the \
         shipped limits ({}) the daemon reaches {shipped_mbps:.0} MiB/s ({shipped_ratio:.2} of \
         the limit): downloads and uploads have slots of their own \
         (`tapis.max_concurrent_downloads`, `webodm.max_concurrent_uploads`) and do not wait \
         on the request-rate limiters, which pace the listings, the creates, the access \
         grants and the commit.",
        prod.describe(),
    ));
    out.check(
        "streamed transfer throughput / plain copy loop, rate limits lifted, medians",
        format!("**{ratio:.2}** ({daemon_median:.0} vs {limit_median:.0} MiB/s)"),
        "≥ 0.8",
        ratio >= 0.8,
    );
    out.report(
        format!(
            "streamed transfer throughput / plain copy loop at the shipped limits ({})",
            prod.describe()
        ),
        format!("**{shipped_ratio:.2}** ({shipped_mbps:.0} MiB/s)"),
    );
    let peak = daemons
        .iter()
        .map(|(_, _, d)| d.run.peak_kib())
        .max()
        .unwrap_or(0);
    out.check(
        format!(
            "peak RSS of the daemon copying {} (all {} runs)",
            mib(spec.images_per_flight as f64 * spec.image_size as f64),
            daemons.len()
        ),
        format!("**{}**", mib_k(peak)),
        "≤ 64 MiB",
        peak as f64 <= 64.0 * 1024.0,
    );
    let ok_runs = daemons
        .iter()
        .filter(|(_, _, d)| {
            d.clean()
                && d.images_ok()
                && d.report.webodm.committed_tasks == d.report.expected.flights
                && d.images() == spec.images_per_flight as u64
        })
        .count();
    out.check(
        "daemon runs that uploaded every image byte for byte (simulator report) and committed",
        format!("{ok_runs} of {}", daemons.len()),
        "all",
        ok_runs == daemons.len(),
    );
    out.headline = Some(format!(
        "a flight of {} images × {} streams from Tapis into WebODM at **{ratio:.2}** of a plain \
         copy loop's throughput with the rate limits lifted (**{shipped_ratio:.2}** at the \
         shipped limits), peak RSS **{}**",
        spec.images_per_flight,
        mib(spec.image_size as f64),
        mib_k(peak),
    ));
    out.finish();
    Ok(out)
}
