//! Section 1: an unchanged pass over the lab against the original integration's sequential
//! listing loop, at the shipped defaults (steady state: each flight last checked one
//! interval ago) and with every folder listed and the rate limits lifted.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tapis_webodm_sync::engine::plan::{recheck_due, unlisted};
use tapis_webodm_sync::engine::state::{now_ms, FlightRecord, Store};
use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

use crate::report::{secs, Out, Table};
use crate::setup::{
    lib_config, measured_pass, seed, set_last_checked, warm_up, Counts, Limits, Measured, Tweaks,
};
use crate::{err, Opts, Scale, Section, R};

/// Simulator latency of this section, before every response.
const LATENCY_MS: u64 = 20;

/// What the original integration's loop saw.
struct Baseline {
    wall: Duration,
    system_pages: u64,
    systems: usize,
    folders: usize,
    flights: usize,
    images: u64,
}

/// The original integration, re-implemented: a password-grant token, then sequentially: the
/// systems listing, the root of each system, and for each folder `<Flight>/code` and (when it
/// holds `images`) `<Flight>/code/images`. Plain reqwest, one request at a time.
async fn baseline(sim: &Sim) -> R<Baseline> {
    let http = reqwest::Client::new();
    let base: url::Url = sim.base_url().parse().map_err(err)?;
    let c = sim.credentials();
    let t = Instant::now();
    let tok: Value = http
        .post(base.join("/v3/oauth2/tokens").map_err(err)?)
        .json(&json!({"grant_type": "password", "username": c.tapis_username, "password": c.tapis_password}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(err)?
        .json()
        .await
        .map_err(err)?;
    let token = tok["result"]["access_token"]["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_string();
    let url = |segments: &[&str]| {
        let mut u = base.clone();
        u.path_segments_mut()
            .expect("http URL")
            .clear()
            .extend(segments);
        u
    };
    // Ok(None) on 404.
    let get = |u: url::Url, query: Vec<(&'static str, String)>| {
        let http = &http;
        let token = &token;
        async move {
            let r = http
                .get(u)
                .query(&query)
                .header("X-Tapis-Token", token)
                .send()
                .await
                .map_err(err)?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok::<_, String>(None);
            }
            let v: Value = r
                .error_for_status()
                .map_err(err)?
                .json()
                .await
                .map_err(err)?;
            Ok(Some(v["result"].as_array().cloned().unwrap_or_default()))
        }
    };
    let mut systems = Vec::new();
    let mut system_pages = 0;
    loop {
        let page = get(
            url(&["v3", "systems"]),
            vec![
                ("listType", "ALL".into()),
                ("search", "(id.like.ptdatax.project.*)".into()),
                ("select", "id,enabled".into()),
                ("limit", "100".into()),
                ("skip", systems.len().to_string()),
            ],
        )
        .await?
        .unwrap_or_default();
        system_pages += 1;
        let n = page.len();
        systems.extend(page);
        if n < 100 {
            break;
        }
    }
    let ids: Vec<String> = systems
        .iter()
        .filter(|s| s["enabled"].as_bool() != Some(false))
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    let names = |entries: &[Value], kind: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["type"] == kind)
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (mut folders, mut flights, mut images) = (0, 0, 0u64);
    for sys in &ids {
        let root = get(url(&["v3", "files", "ops", sys, ""]), vec![])
            .await?
            .unwrap_or_default();
        for folder in names(&root, "dir") {
            folders += 1;
            let code = get(url(&["v3", "files", "ops", sys, &folder, "code"]), vec![]).await?;
            let Some(code) = code else { continue };
            if !names(&code, "dir").iter().any(|n| n == "images") {
                continue;
            }
            let listing = get(
                url(&["v3", "files", "ops", sys, &folder, "code", "images"]),
                vec![],
            )
            .await?
            .unwrap_or_default();
            let n = names(&listing, "file")
                .iter()
                .filter(|n| {
                    let l = n.to_lowercase();
                    l.ends_with(".jpg") || l.ends_with(".jpeg")
                })
                .count() as u64;
            if n > 0 {
                flights += 1;
                images += n;
            }
        }
    }
    Ok(Baseline {
        wall: t.elapsed(),
        system_pages,
        systems: ids.len(),
        folders,
        flights,
        images,
    })
}

/// The lab: 50 systems × 40 flights × 300 images of 16 bytes, plus the simulator's decoys.
pub fn spec(scale: &Scale) -> DatasetSpec {
    DatasetSpec {
        seed: 6,
        systems: scale.unchanged_systems,
        flights_per_system: scale.unchanged_flights,
        images_per_flight: scale.unchanged_images,
        image_size: 16,
        big_flight_images: None,
        decoys: true,
        companions: false,
    }
}

/// `Tapis total (token/systems/roots/folders)` of a table row.
fn tapis_cell(c: &Counts) -> String {
    format!(
        "{} ({}/{}/{}/{})",
        c.tapis(),
        c.tapis_tokens(),
        c.system_pages(),
        c.root_listings(),
        c.folder_listings()
    )
}

/// How many of `records`, last checked one `interval` before `now`, a pass at `now` lists.
fn due(records: &[FlightRecord], now: i64, interval: Duration, rule: &Recheck) -> usize {
    records
        .iter()
        .filter(|r| {
            let mut r = (*r).clone();
            r.last_checked_ms = Some(now - interval.as_millis() as i64);
            recheck_due(&r, now, rule.recheck, rule.on_change)
        })
        .count()
}

/// Runs `2 × windows` passes one `interval` apart with the pass's rule ([`unlisted`]) from
/// `records`; returns how many flights each pass of the second period lists, and the longest
/// wait between two listings of a flight (ms).
fn listed_per_pass(
    records: &[FlightRecord],
    windows: i64,
    interval: Duration,
    rule: &Recheck,
) -> (Vec<usize>, i64) {
    let mut recs = records.to_vec();
    let step = interval.as_millis() as i64;
    let t0 = recs
        .iter()
        .filter_map(|r| r.last_checked_ms)
        .max()
        .unwrap_or_else(now_ms);
    let (mut per_pass, mut longest) = (Vec::new(), 0);
    for k in 1..=2 * windows {
        let now = t0 + k * step;
        let skip = unlisted(&recs, now, rule.recheck, interval, rule.on_change);
        let mut listed = 0;
        for r in recs.iter_mut().filter(|r| !skip.contains(&r.key)) {
            if k > windows {
                longest = longest.max(now - r.last_checked_ms.unwrap_or(now));
            }
            r.last_checked_ms = Some(now);
            listed += 1;
        }
        if k > windows {
            per_pass.push(listed);
        }
    }
    (per_pass, longest)
}

/// The recheck settings of a config.
struct Recheck {
    recheck: Duration,
    on_change: tapis_webodm_sync::config::OnChange,
}

pub async fn section(opts: &Opts, scale: &Scale, prod: Limits) -> R<Out> {
    let spec = spec(scale);
    let mut out = Out::new(Section::Unchanged, "1. Unchanged pass", opts);
    let sim = Sim::start(&spec, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let state_dir = dir.path().join("state");
    let store = Store::open(&state_dir).map_err(err)?;
    let lifted = prod.lifted();
    let cfg_lifted = lib_config(&sim, &state_dir, &Tweaks::limits(lifted))?;
    let cfg_shipped = lib_config(&sim, &state_dir, &Tweaks::default())?;
    let interval = cfg_shipped.sync.interval;
    let shipped = Recheck {
        recheck: cfg_shipped.sync.recheck_committed,
        on_change: cfg_shipped.sync.on_change_after_commit,
    };
    eprintln!("[unchanged] seeding the synced state…");
    let seeded = seed(&cfg_lifted, &store, &[], false).await?;
    let t = Instant::now();
    let warm = warm_up(&sim, &cfg_lifted, &store, &[]).await?;
    let warm_time = t.elapsed();
    let expected = sim.dataset().expected();
    let flights = seeded.desired.flights.len();
    eprintln!(
        "[unchanged] seeded {flights} flights in {}; warm-up pass {} ({} grants)",
        secs(seeded.time),
        secs(warm_time),
        warm.report.summary.grants_added
    );
    sim.set_faults(Faults {
        latency_ms: LATENCY_MS,
        ..Faults::default()
    });

    // The baseline first, then the daemon listing everything with the rate limits lifted
    // (3 passes), then at the shipped defaults (3 passes, each from the steady state).
    eprintln!("[unchanged] baseline (sequential, original integration)…");
    let before = sim.stats();
    let base = baseline(&sim).await?;
    let base_counts = Counts::between(&before, &sim.stats());
    eprintln!("[unchanged] baseline {}", secs(base.wall));

    let mut full_runs = Vec::new();
    for i in 0..3 {
        let m = measured_pass(&sim, &cfg_lifted, &store, &[], true).await?;
        eprintln!(
            "[unchanged] daemon --full, limits lifted, run {}: {}",
            i + 1,
            secs(m.wall)
        );
        full_runs.push(m);
    }
    full_runs.sort_by_key(|m| m.wall);
    let mut shipped_runs: Vec<(Measured, usize)> = Vec::new();
    let mut records = Vec::new();
    for i in 0..3 {
        let at = now_ms() - interval.as_millis() as i64;
        records = set_last_checked(&store, Some(at)).await?;
        let due_now = due(
            &records,
            at + interval.as_millis() as i64,
            interval,
            &shipped,
        );
        let m = measured_pass(&sim, &cfg_shipped, &store, &[], false).await?;
        eprintln!(
            "[unchanged] daemon at the shipped defaults, run {}: {} ({} folders due)",
            i + 1,
            secs(m.wall),
            due_now
        );
        shipped_runs.push((m, due_now));
    }
    shipped_runs.sort_by_key(|(m, _)| m.wall);
    let (median_full, (median_shipped, median_due)) = (&full_runs[1], &shipped_runs[1]);

    // Flights listed per pass over recheck periods (pure: the pass's own rule, `unlisted`,
    // applied pass after pass to these records; the second period is reported, once the
    // start's synchronized check times have spread out).
    let windows = (shipped.recheck.as_millis() / interval.as_millis()).max(1) as i64;
    let (per_window, longest_gap) = listed_per_pass(&records, windows, interval, &shipped);
    let share = flights as f64 * interval.as_secs_f64() / shipped.recheck.as_secs_f64();
    let expected_due = share.ceil() as u64;
    let decoy_folders = base.folders as u64 - base.flights as u64;
    let bound = base.system_pages + base.systems as u64 + decoy_folders + expected_due;
    let over = per_window
        .iter()
        .filter(|&&n| n as u64 > expected_due)
        .count();
    let max_window = per_window.iter().copied().max().unwrap_or(0);

    out.para(format!(
        "Dataset: {} systems × {} flights × {} images of 16 bytes, plus the simulator's decoys \
         (a shared system, a disabled one, systems the account cannot see or that do not match, \
         and in the first system two special flights and {decoy_folders} folders that are not \
         flights). The daemon finds {} flights (the generator expects {}; the baseline finds \
         {}). The store and WebODM hold every flight synced and processed: projects, tasks and \
         records seeded in {}, then one pass of the daemon's own with every folder listed gave \
         access as the shipped `[access]` says ({} grants, {}). Simulator latency: {LATENCY_MS} \
         ms before every response. Daemon passes run in-process (`engine::pass::pass`) with \
         clients already logged in, as in a daemon whose token lives for hours; request counts \
         are the simulator's.",
        spec.systems,
        spec.flights_per_system,
        spec.images_per_flight,
        median_full.report.summary.flights_discovered,
        expected.flights,
        base.flights,
        secs(seeded.time),
        warm.report.summary.grants_added,
        secs(warm_time),
    ));
    out.para(format!(
        "At the shipped defaults (a config with only URLs, credentials and state dir: Tapis {} \
         requests/s, WebODM {}, `interval` {}, `recheck_committed` {}, access on) a pass lists \
         the systems, every system's root, every folder that is not a flight yet, and the \
         committed flights whose recheck is due. The steady state is modelled before each of \
         its 3 passes: every record last checked one interval ago, as after the previous pass \
         of a daemon that has run for a while, so the flights due are those whose point of the \
         period (sha256 of the key) fell in the last interval.",
        prod.tapis_rps,
        prod.webodm_rps,
        humantime::format_duration(interval),
        humantime::format_duration(shipped.recheck),
    ));
    let mut t = Table::new(&[
        "run",
        "limits",
        "wall",
        "vs baseline",
        "Tapis req (token/systems/roots/folders)",
        "WebODM req (writes)",
        "plan",
    ]);
    t.row(vec![
        "baseline: original integration, sequential".into(),
        "none".into(),
        secs(base.wall),
        "1.0×".into(),
        tapis_cell(&base_counts),
        "0".into(),
        format!("{} flights found", base.flights),
    ]);
    let row = |label: String, m: &Measured, limits: String| {
        let c = &m.counts;
        vec![
            label,
            limits,
            secs(m.wall),
            format!(
                "**{:.1}×** faster",
                base.wall.as_secs_f64() / m.wall.as_secs_f64()
            ),
            tapis_cell(c),
            format!("{} ({})", c.webodm(), c.webodm_writes()),
            m.plan_cell(),
        ]
    };
    let which = ["fastest of 3", "**median of 3**", "slowest of 3"];
    for (i, (m, due_now)) in shipped_runs.iter().enumerate() {
        t.row(row(
            format!(
                "daemon, shipped defaults, steady state ({}; {due_now} folders due)",
                which[i]
            ),
            m,
            format!(
                "{}; recheck {}",
                prod.describe(),
                humantime::format_duration(shipped.recheck)
            ),
        ));
    }
    for (i, m) in full_runs.iter().enumerate() {
        t.row(row(
            format!("daemon `--full`, limits lifted ({})", which[i]),
            m,
            lifted.describe(),
        ));
    }
    out.table(&t);
    let c = &median_shipped.counts;
    let reads: Vec<String> = c
        .webodm_reads()
        .iter()
        .map(|(r, n)| format!("{n} × `{r}`"))
        .collect();
    out.para(format!(
        "Request bound at the shipped defaults: system pages ({}) + root pages ({}) + folders \
         that are not flights ({decoy_folders}) + ⌈flights × interval / recheck⌉ = ⌈{flights} \
         × {} / {}⌉ = {expected_due}: **{bound}**. The median pass sent **{}** Tapis requests \
         ({} folder listings; {median_due} flights were due when the pass started; no login: \
         the token was cached) and to WebODM {} ({} writes). Over a whole recheck period \
         ({windows} passes of one interval, the second period of passes computed with the \
         pass's own rule from these records) a pass lists {:.1} flights on average, {} at \
         most, more than {expected_due} in {over} of the {windows} passes; no flight waited \
         longer than {} between two listings. The points of the period are hashes of the \
         keys: when more come due than the cap, the ones due last wait for the next pass.",
        base.system_pages,
        base.systems,
        humantime::format_duration(interval),
        humantime::format_duration(shipped.recheck),
        c.tapis(),
        c.folder_listings(),
        if reads.is_empty() {
            "no reads".into()
        } else {
            reads.join(", ")
        },
        c.webodm_writes(),
        per_window.iter().sum::<usize>() as f64 / windows as f64,
        max_window,
        humantime::format_duration(Duration::from_secs((longest_gap / 1000) as u64)),
    ));
    let ratio_shipped = base.wall.as_secs_f64() / median_shipped.wall.as_secs_f64();
    let ratio_full = base.wall.as_secs_f64() / median_full.wall.as_secs_f64();
    out.check(
        format!(
            "unchanged pass vs the original integration at the shipped defaults ({}; recheck {}), steady state, median of 3",
            prod.describe(),
            humantime::format_duration(shipped.recheck)
        ),
        format!(
            "**{ratio_shipped:.1}×** faster ({} vs {})",
            secs(median_shipped.wall),
            secs(base.wall)
        ),
        "≥ 10×",
        ratio_shipped >= 10.0,
    );
    out.check(
        "Tapis requests of that pass (median run)",
        format!("**{}**", c.tapis()),
        format!(
            "≤ {bound} (system pages + root pages + non-flight folders + ⌈flights × interval / recheck⌉)"
        ),
        c.tapis() <= bound,
    );
    out.report(
        "flights listed per pass over a recheck period (the pass's rule, these records)",
        format!(
            "mean {:.1}, max {max_window}; above {expected_due} in {over} of {windows} passes; \
             longest wait between listings {}",
            per_window.iter().sum::<usize>() as f64 / windows as f64,
            humantime::format_duration(Duration::from_secs((longest_gap / 1000) as u64))
        ),
    );
    out.check(
        format!(
            "the same with `--full` and the rate limits lifted ({}), median of 3",
            lifted.describe()
        ),
        format!(
            "**{ratio_full:.1}×** faster ({} vs {})",
            secs(median_full.wall),
            secs(base.wall)
        ),
        "≥ 12×",
        ratio_full >= 12.0,
    );
    let measured: Vec<&Measured> = shipped_runs
        .iter()
        .map(|(m, _)| m)
        .chain(full_runs.iter())
        .collect();
    let writes: u64 = measured.iter().map(|m| m.counts.webodm_writes()).sum();
    out.check(
        format!("WebODM writes of the {} measured passes", measured.len()),
        writes.to_string(),
        "0",
        writes == 0,
    );
    let noops = measured.iter().filter(|m| m.is_noop()).count();
    out.check(
        "measured passes that were no-ops (empty plan, no grant, no errors)",
        format!("{noops} of {}", measured.len()),
        "all",
        noops == measured.len(),
    );
    let found = median_full.report.summary.flights_discovered;
    out.check(
        "flights (and images) the daemon finds vs the baseline",
        format!("{found} vs {}", base.flights),
        "the same",
        found == base.flights
            && median_shipped.report.summary.flights_discovered == base.flights
            && base.images
                == seeded
                    .desired
                    .flights
                    .iter()
                    .map(|f| f.images.len() as u64)
                    .sum::<u64>(),
    );
    out.headline = Some(format!(
        "an unchanged pass over the {flights}-flight lab ({LATENCY_MS} ms per request) is \
         **{ratio_shipped:.1}×** faster than the original integration's sequential loop at the \
         shipped defaults ({} Tapis requests/s, committed flights rechecked every {}: {} Tapis \
         requests instead of {}), and **{ratio_full:.1}×** with every folder listed (`--full`) \
         and the rate limits lifted",
        prod.tapis_rps,
        humantime::format_duration(shipped.recheck),
        c.tapis(),
        base_counts.tapis(),
    ));
    drop(store);
    sim.shutdown().await;
    out.finish();
    Ok(out)
}
