//! Section 5: a new flight at the shipped defaults — images streamed from Tapis and batched
//! into WebODM uploads — against WebODM's own web UI strategy: the same images from local
//! files, one file per upload request, 4 at once. Both into the simulated WebODM, which
//! charges each upload request what the real one spent.

use std::time::Duration;

use tapis_webodm_sync::sim::{DatasetSpec, Faults, Sim};

use crate::child::{run_loop, LoopRun};
use crate::plain::{CONCURRENCY_ENV, UI_DIR_ENV, UI_ENV};
use crate::report::{mib_k, secs, Out, Table};
use crate::setup::{median, Limits, Tweaks};
use crate::transfer::{daemon_once, DaemonOnce};
use crate::{err, Opts, Scale, Section, R};

/// What a real WebODM 3.2.4 (2 cores, gunicorn, `../shared/realstack`) spent per upload
/// request, in ms (issue 13: 4 single-file uploads at once of 20 KB images ran at 66 images/s,
/// so about 4 / 66 s = 60 ms each)…
const UPLOAD_REQUEST_MS: u64 = 60;
/// …per file of a request (20 files per request ran at 988 images/s: 81 ms a request)…
const UPLOAD_FILE_MS: u64 = 1;
/// …and per byte: single 4 MB files 4 at once ran at 121 MB/s (132 ms a request, 71 ms of
/// it for the 4 MB), 5 × 4 MB per request at 218 MB/s (367 ms, 302 ms for 20 MB): about
/// 60 MB/s per request.
const UPLOAD_BYTES_PER_SEC: u64 = 60_000_000;
/// Stats route of WebODM's image uploads.
const UPLOAD_ROUTE: &str = "POST /api/projects/{project}/tasks/{task}/upload/";
/// WebODM's web UI uploads this many files at once.
const UI_CONCURRENCY: usize = 4;

/// The simulator's faults in this section: WebODM's cost per upload request, nothing else.
fn faults() -> Faults {
    Faults {
        upload_request_ms: UPLOAD_REQUEST_MS,
        upload_file_ms: UPLOAD_FILE_MS,
        upload_bytes_per_sec: UPLOAD_BYTES_PER_SEC,
        ..Faults::default()
    }
}

/// One image size.
struct Case {
    label: &'static str,
    size: u64,
    images: usize,
    /// Daemon / web UI, images per second.
    target: f64,
}

/// Writes the flight's images into local files (what a person uploading through the web UI
/// has on disk); returns their folder.
async fn local_files(spec: &DatasetSpec) -> R<tempfile::TempDir> {
    let sim = Sim::start(spec, "127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    for f in sim.dataset().expected_flights() {
        for i in &f.images {
            let path = format!("{}/code/images/{}", f.flight, i.name);
            let bytes = sim
                .tapis_file(&f.system_id, &path)
                .ok_or_else(|| format!("no {path} on the simulated Tapis"))?;
            std::fs::write(dir.path().join(&i.name), bytes).map_err(err)?;
        }
    }
    sim.shutdown().await;
    Ok(dir)
}

/// The web UI's uploads of `dir` into a fresh simulator: (loop run, its peak RSS in KiB).
async fn web_ui(spec: &DatasetSpec, dir: &std::path::Path, tag: &str) -> R<(LoopRun, u64)> {
    let sim = Sim::start_with(spec, "127.0.0.1:0".parse().expect("addr"), faults())
        .await
        .map_err(err)?;
    let env = vec![
        (UI_ENV, sim.base_url()),
        (UI_DIR_ENV, dir.to_string_lossy().into_owned()),
        (CONCURRENCY_ENV, UI_CONCURRENCY.to_string()),
    ];
    let r = run_loop(env, tag).await;
    sim.shutdown().await;
    let (run, l) = r?;
    Ok((l, run.peak_kib()))
}

/// `once` at the shipped defaults against a fresh simulator.
async fn daemon(spec: &DatasetSpec, tag: &str) -> R<DaemonOnce> {
    let sim = Sim::start_with(spec, "127.0.0.1:0".parse().expect("addr"), faults())
        .await
        .map_err(err)?;
    let dir = tempfile::tempdir().map_err(err)?;
    let d = daemon_once(&sim, dir.path(), &Tweaks::default(), tag, &[]).await;
    sim.shutdown().await;
    d
}

pub async fn section(opts: &Opts, scale: &Scale, prod: Limits) -> R<Out> {
    let mut out = Out::new(Section::Upload, "5. New flight", opts);
    let cases = [
        Case {
            label: "20 KB",
            size: 20_000,
            images: scale.upload_images.0,
            target: 5.0,
        },
        Case {
            label: "4 MB",
            size: 4_000_000,
            images: scale.upload_images.1,
            target: 1.5,
        },
    ];
    let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    let mb_per_sec = |b: u64, d: Duration| b as f64 / 1e6 / d.as_secs_f64();
    let mut t = Table::new(&[
        "images",
        "run",
        "images",
        "time",
        "images/s",
        "MB/s",
        "requests to WebODM's upload",
        "peak RSS",
    ]);
    let mut ratios = Vec::new();
    let (mut ok_runs, mut runs) = (0, 0);
    for case in &cases {
        let spec = DatasetSpec {
            seed: 13,
            systems: 1,
            flights_per_system: 1,
            images_per_flight: case.images,
            image_size: case.size,
            big_flight_images: None,
            decoys: false,
            companions: false,
        };
        eprintln!(
            "[upload] writing {} local files of {}…",
            case.images, case.label
        );
        let files = local_files(&spec).await?;
        let (mut ui_rates, mut daemon_rates) = (Vec::new(), Vec::new());
        for round in 1..=scale.rounds {
            let tag = format!("upload-ui-{}-{round}", case.size);
            let (ui, ui_peak) = web_ui(&spec, files.path(), &tag).await?;
            let rate = per_sec(ui.files, ui.time);
            eprintln!(
                "[upload] {} web UI #{round}: {rate:.0} images/s",
                case.label
            );
            t.row(vec![
                format!("{} × {}", case.images, case.label),
                format!("web UI strategy #{round}: local files, 1 per request, {UI_CONCURRENCY} at once"),
                ui.files.to_string(),
                secs(ui.time),
                format!("{rate:.0}"),
                format!("{:.0}", mb_per_sec(ui.bytes, ui.time)),
                ui.files.to_string(),
                mib_k(ui_peak),
            ]);
            ui_rates.push(rate);
            let d = daemon(&spec, &format!("upload-daemon-{}-{round}", case.size)).await?;
            let rate = per_sec(d.images(), d.pass());
            eprintln!(
                "[upload] {} daemon #{round}: {rate:.0} images/s over the pass",
                case.label
            );
            let requests = d.requests(UPLOAD_ROUTE);
            t.row(vec![
                String::new(),
                format!("daemon `once` #{round}, shipped defaults (whole pass)"),
                d.images().to_string(),
                secs(d.pass()),
                format!("{rate:.0}"),
                format!("{:.0}", mb_per_sec(d.bytes(), d.pass())),
                requests.to_string(),
                mib_k(d.run.peak_kib()),
            ]);
            daemon_rates.push(rate);
            ok_runs += usize::from(d.clean() && d.images_ok() && d.images() == case.images as u64);
            runs += 1;
        }
        let (ui, dm) = (median(ui_rates), median(daemon_rates));
        let ratio = dm / ui;
        out.check(
            format!(
                "new {}-image flight of {} images at the shipped defaults vs WebODM's web UI \
                 strategy (local files, 1 per request, {UI_CONCURRENCY} at once), medians",
                case.images, case.label
            ),
            format!("**{ratio:.1}×** ({dm:.0} vs {ui:.0} images/s)"),
            format!("≥ {}×", case.target),
            ratio >= case.target,
        );
        ratios.push((case.label, ratio));
    }
    out.para(format!(
        "A new flight (1 system, 1 flight, no decoys) on the simulated Tapis, uploaded into a \
         fresh simulator each run. The simulated WebODM answers each upload request {} ms \
         late, plus {} ms per file and one second per {:.0} MB it holds: what a real WebODM \
         3.2.4 on 2 cores spent (issue 13, `../shared/realstack`: 4 single-file uploads at \
         once ran at 66 images/s with 20 KB images and 121 MB/s with 4 MB images; 20 × 20 KB \
         per request at 988 images/s, 5 × 4 MB at 218 MB/s). The web UI strategy is this harness in a child process reading \
         each image from a local file (written beforehand) and uploading it alone, {} at \
         once, into a new partial task; timed: the uploads alone. The daemon is the release \
         binary, `once --json` with the shipped config (a config with only URLs, credentials \
         and state dir: `settle` 10 min, so the pass uploads but does not commit yet; access \
         on; {}; batches of up to 50 images or 32 MiB); timed: its whole pass (`duration_ms`: \
         discovery, project, task, access, uploads). Every daemon run is checked against the \
         simulator's report (every image in WebODM byte for byte). {} round(s) per size, \
         medians compared.",
        UPLOAD_REQUEST_MS,
        UPLOAD_FILE_MS,
        UPLOAD_BYTES_PER_SEC as f64 / 1e6,
        UI_CONCURRENCY,
        prod.describe(),
        scale.rounds,
    ));
    out.table(&t);
    out.check(
        "daemon runs that exited 0 with every image in WebODM byte for byte",
        format!("{ok_runs} of {runs}"),
        "all",
        ok_runs == runs,
    );
    out.headline = Some(format!(
        "a new {}-image flight reaches WebODM {} faster at the shipped defaults than WebODM's \
         own web UI strategy (4 single-file uploads at once from local files), against a \
         simulated WebODM that charges each upload request what a real WebODM 3.2.4 spent \
         ({UPLOAD_REQUEST_MS} ms, + {UPLOAD_FILE_MS} ms per file, + 1 s per {:.0} MB)",
        cases[0].images,
        ratios
            .iter()
            .map(|(label, r)| format!("**{r:.1}×** ({label} images)"))
            .collect::<Vec<_>>()
            .join(" and "),
        UPLOAD_BYTES_PER_SEC as f64 / 1e6,
    ));
    out.finish();
    Ok(out)
}
