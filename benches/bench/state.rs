//! Section 3: the scale of state — stores of growing size, the state side of a plan, a whole
//! pass, and the commands (`status`, `plan`, `once`) on the largest store, with their peak RSS.

use std::time::{Duration, Instant};

use tapis_webodm_sync::clients::Clients;
use tapis_webodm_sync::engine::discover::{self, Desired, Scope};
use tapis_webodm_sync::engine::pass;
use tapis_webodm_sync::engine::plan::{self, Observed, Settings};
use tapis_webodm_sync::engine::state::{self, Store};
use tapis_webodm_sync::sim::{DatasetSpec, Sim};

use crate::child::run_daemon;
use crate::report::{mib_k, secs, Out, Table};
use crate::setup::{
    config_file, lib_config, measured_pass, seed, set_last_checked, warm_up, Limits, Tweaks,
};
use crate::{err, Opts, Scale, Section, R};

/// Peak RSS target of `once` and `plan --full` at 10 000 flights (issue 13).
const RSS_TARGET_MIB: f64 = 64.0;

/// One command run on the largest store.
struct Command {
    args: &'static [&'static str],
    /// Every record last checked one interval ago first (else as the last command left it).
    steady: bool,
    what: &'static str,
}

const COMMANDS: [Command; 6] = [
    Command {
        args: &["status"],
        steady: false,
        what: "reads every record, prints a table",
    },
    Command {
        args: &["status", "--json"],
        steady: false,
        what: "reads every record, prints JSON",
    },
    Command {
        args: &["plan"],
        steady: true,
        what: "steady state: lists systems, roots and the flights whose recheck is due, plans",
    },
    Command {
        args: &["plan", "--full"],
        steady: false,
        what: "lists every flight's images folder (one request each), plans",
    },
    Command {
        args: &["once"],
        steady: true,
        what: "steady state: a pass (lists what is due, records it checked)",
    },
    Command {
        args: &["once", "--full"],
        steady: false,
        what: "a pass listing every flight's images folder",
    },
];

pub async fn section(opts: &Opts, scale: &Scale, prod: Limits) -> R<Out> {
    let per_system = scale.state_flights_per_system;
    let max = *scale.state_steps.last().expect("steps");
    let spec = DatasetSpec {
        seed: 10,
        systems: max.div_ceil(per_system),
        flights_per_system: per_system,
        images_per_flight: scale.state_images,
        image_size: 16,
        big_flight_images: None,
        decoys: false,
        companions: false,
    };
    let mut out = Out::new(Section::State, "3. Scale of state", opts);
    eprintln!(
        "[state] generating {} systems × {} flights × {} images…",
        spec.systems, spec.flights_per_system, spec.images_per_flight
    );
    let sim = Sim::start(&spec, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let state_dir = dir.path().join("state");
    let lifted = prod.lifted();
    let tweaks = Tweaks::limits(lifted);
    let config = lib_config(&sim, &state_dir, &tweaks)?;
    let clients = Clients::new(&config).map_err(err)?;
    let scope = Scope::new(&config.tapis, &config.layout, &[]);
    let systems: Vec<String> = discover::systems(&clients.tapis, &scope)
        .await
        .map_err(err)?
        .into_iter()
        .filter(|(_, why)| why.is_none())
        .map(|(s, _)| s.id)
        .collect();
    let store = Store::open(&state_dir).map_err(err)?;
    let mut desired_all = Desired::default();
    let mut seeded_systems = 0;
    let mut seed_time = Duration::ZERO;
    let mut t = Table::new(&[
        "flights in store",
        "read store (`observed`)",
        "`plan::plan` (pure)",
        "whole pass, `--full` (discovery + plan + apply)",
        "pass per flight",
        "Tapis requests",
        "no-op",
    ]);
    let mut points = Vec::new();
    let mut all_noop = true;
    for &step in &scale.state_steps {
        let want = step.div_ceil(per_system);
        let new: Vec<String> = systems[seeded_systems..want].to_vec();
        eprintln!("[state] seeding {} more systems…", new.len());
        let s = seed(&config, &store, &new, false).await?;
        let t0 = Instant::now();
        warm_up(&sim, &config, &store, &new).await?;
        seed_time += s.time + t0.elapsed();
        eprintln!(
            "[state] seeded and warmed up in {}",
            secs(s.time + t0.elapsed())
        );
        desired_all.scanned.extend(s.desired.scanned);
        desired_all.flights.extend(s.desired.flights);
        desired_all.flights.sort_by(|a, b| a.key.cmp(&b.key));
        seeded_systems = want;
        let only: Vec<String> = systems[..want].to_vec();

        // The state side alone: read the store, plan against what Tapis holds.
        let t0 = Instant::now();
        let mut obs: Observed = pass::observed(&store).map_err(err)?;
        let read = t0.elapsed();
        obs.webodm = Some(
            sim.webodm_projects()
                .into_iter()
                .map(|p| (p.id, p.tasks.into_iter().map(|t| t.id).collect()))
                .collect(),
        );
        let settings = Settings {
            settle: config.sync.settle,
            max_new_projects: config.sync.max_new_projects_per_pass,
            on_change: config.sync.on_change_after_commit,
            restart_failed: config.processing.restart_failed,
            result_assets: config.results.assets.clone(),
        };
        let t0 = Instant::now();
        let p = plan::plan(&desired_all, &obs, state::now_ms(), &settings);
        let planned = t0.elapsed();
        let pure_noop = p.flights.is_empty() && p.vanished.is_empty();

        let m = measured_pass(&sim, &config, &store, &only, true).await?;
        let flights = m.report.summary.flights_discovered;
        all_noop &= pure_noop && m.is_noop() && flights == desired_all.flights.len();
        eprintln!(
            "[state] {flights} flights: observed {}, plan {}, pass {}",
            secs(read),
            secs(planned),
            secs(m.wall)
        );
        t.row(vec![
            format!("{}", obs.records.len()),
            format!("{:.0} ms", read.as_secs_f64() * 1e3),
            format!("{:.0} ms", planned.as_secs_f64() * 1e3),
            secs(m.wall),
            format!("{:.2} ms", m.wall.as_secs_f64() * 1e3 / flights as f64),
            format!("{}", m.counts.tapis()),
            if pure_noop && m.is_noop() {
                "yes"
            } else {
                "NO"
            }
            .into(),
        ]);
        points.push((flights, read, planned, m.wall));
    }
    let interval = config.sync.interval;
    drop(store);
    drop(clients);

    // The commands on the largest store (the daemon is not running: they open the store).
    let cfg = dir.path().join("config.toml");
    config_file(&sim, &state_dir, &tweaks, &cfg)?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    let mut cmds = Table::new(&[
        "command (largest store)",
        "wall",
        "peak RSS (wait4 / VmHWM)",
        "output",
        "what it does",
    ]);
    // (args, wall, peak KiB, exit code)
    let mut ran = Vec::new();
    for c in &COMMANDS {
        if c.steady {
            let store = Store::open(&state_dir).map_err(err)?;
            set_last_checked(&store, Some(state::now_ms() - interval.as_millis() as i64)).await?;
        }
        let mut argv: Vec<String> = c.args.iter().map(|s| s.to_string()).collect();
        argv.extend(["--config".into(), cfg_s.clone()]);
        let log = std::env::temp_dir().join(format!("bench-state-{}.log", c.args.join("")));
        let r = run_daemon(argv, log).await?;
        let text = String::from_utf8_lossy(&r.stdout);
        let shown = match c.args[0] {
            "plan" => text.lines().next().unwrap_or_default().to_string(),
            "once" => text
                .lines()
                .find(|l| l.contains("flights"))
                .unwrap_or_default()
                .to_string(),
            _ => format!("{} lines", text.lines().count()),
        };
        eprintln!(
            "[state] `{}`: {} (exit {}), peak RSS {}",
            c.args.join(" "),
            secs(r.wall),
            r.code,
            mib_k(r.peak_kib())
        );
        cmds.row(vec![
            format!("`{}`", c.args.join(" ")),
            secs(r.wall),
            format!("{} / {}", mib_k(r.maxrss_kib), mib_k(r.hwm_kib)),
            format!("exit {}; {}", r.code, shown.replace('|', "/")),
            c.what.into(),
        ]);
        ran.push((c.args, r.wall, r.peak_kib(), r.code));
    }
    sim.shutdown().await;
    let find = |args: &[&str]| {
        ran.iter()
            .find(|r| r.0 == args)
            .map(|r| (r.1, r.2, r.3))
            .expect("every command ran")
    };

    out.para(format!(
        "Dataset: {} systems × {} flights × {} images of 16 bytes (no decoys), all synced and \
         processed. Each store is built by seeding the next systems (records via \
         `Store::put_flight` without per-image records, as committing leaves a flight; a \
         project and a task per flight in the simulated WebODM), then one pass of the \
         daemon's own over them with every folder listed, which gives access ({} in all), \
         then measured: the store read and the pure plan in-process, and a whole pass \
         (`engine::pass::pass` with `--full`, no added latency, rate limits lifted, production \
         concurrency) over the systems in the store.",
        spec.systems,
        spec.flights_per_system,
        spec.images_per_flight,
        secs(seed_time)
    ));
    out.table(&t);
    out.para(format!(
        "The commands run as the release binary on the largest store ({} flights × {} \
         images), rate limits lifted, everything else at its default (`recheck_committed` \
         6 h). \"Steady state\": every record last checked one `interval` ago first, as the \
         pass of a daemon that has run for a while leaves them.",
        max, spec.images_per_flight
    ));
    out.table(&cmds);
    let (f0, _, _, p0) = points[0];
    let (f1, read1, plan1, p1) = *points.last().expect("points");
    let exponent = (p1.as_secs_f64() / p0.as_secs_f64()).ln() / (f1 as f64 / f0 as f64).ln();
    out.para(format!(
        "Growth: {f0} → {f1} flights ({:.0}×) made the `--full` pass {:.1}× longer: exponent \
         {exponent:.2} (1 = linear). `plan --full` is discovery-bound ({f1} listings over \
         HTTP); the state side of a no-op plan — reading the store and planning — is the \
         in-process figure, {:.0} ms at {f1} flights.",
        f1 as f64 / f0 as f64,
        p1.as_secs_f64() / p0.as_secs_f64(),
        (read1 + plan1).as_secs_f64() * 1e3,
    ));
    let (status_wall, _, _) = find(&["status"]);
    out.check(
        format!("`status` on the {f1}-flight store"),
        format!("**{}**", secs(status_wall)),
        "< 1 s",
        status_wall < Duration::from_secs(1),
    );
    out.check(
        format!("no-op plan at {f1} flights, state side (read store + plan)"),
        format!("**{:.0} ms**", (read1 + plan1).as_secs_f64() * 1e3),
        "< 1 s",
        read1 + plan1 < Duration::from_secs(1),
    );
    let (plan_wall, _, _) = find(&["plan"]);
    out.check(
        "no-op `plan` command end to end, steady state",
        format!("**{}**", secs(plan_wall)),
        "< 1 s",
        plan_wall < Duration::from_secs(1),
    );
    let (full_wall, _, _) = find(&["plan", "--full"]);
    out.report(
        format!("no-op `plan --full` command end to end (incl. {f1} Tapis listings)"),
        format!("**{}**", secs(full_wall)),
    );
    let mut peaks = Vec::new();
    for args in [&["once"][..], &["plan", "--full"], &["once", "--full"]] {
        let (_, peak, code) = find(args);
        peaks.push(format!("`{}` {}", args.join(" "), mib_k(peak)));
        out.check(
            format!(
                "peak RSS of `{}` at {f1} flights × {} images",
                args.join(" "),
                spec.images_per_flight
            ),
            format!("**{}** (exit {code})", mib_k(peak)),
            format!("≤ {RSS_TARGET_MIB:.0} MiB"),
            peak as f64 <= RSS_TARGET_MIB * 1024.0 && code == 0,
        );
    }
    out.check(
        format!("growth of `--full` pass time with flights ({f0} → {f1})"),
        format!("exponent **{exponent:.2}** (1 = linear)"),
        "≤ 1.15",
        exponent <= 1.15,
    );
    out.check(
        "plans and passes that were no-ops",
        if all_noop { "all" } else { "not all" },
        "all",
        all_noop,
    );
    out.headline = Some(format!(
        "at {f1} flights × {} images, peak RSS {} (release binary); `status` takes {}",
        spec.images_per_flight,
        peaks.join(", "),
        secs(status_wall),
    ));
    out.finish();
    Ok(out)
}
