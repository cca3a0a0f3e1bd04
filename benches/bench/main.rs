//! Benchmark harness: the real daemon against the simulator, each figure compared with a
//! reference measured in the same run, written into BENCHMARKS.md (see its top for the
//! commands).
//!
//! ```text
//! cargo bench --bench bench                        # every section, full scale, writes BENCHMARKS.md
//! cargo bench --bench bench -- --quick             # scaled down (a smoke run; writes nothing)
//! cargo bench --bench bench -- unchanged upload    # only these sections
//! ```
//!
//! Flags: `--quick` (smaller datasets, fewer rounds, shorter idle window), `--write` /
//! `--no-write` (update the generated blocks of BENCHMARKS.md; default: write on a full run
//! only), `--out FILE` (write the generated blocks into FILE instead, starting from a copy of
//! BENCHMARKS.md), `--perf DIR`, `--serve-lab DIR`. Sections:
//!
//! 1. **unchanged** — a synced store of 50 systems × 40 flights × 300 images (plus the
//!    simulator's decoys), 20 ms per request: a pass where nothing changed at the shipped
//!    defaults (each flight last checked one interval ago) and with `--full` and the rate
//!    limits lifted, against the original integration's sequential listing loop.
//! 2. **transfer** — 1 flight × 250 images × 8 MiB: `once` (the real binary, in a child
//!    process, so its peak RSS is its own) against a plain download→upload loop at the same
//!    concurrency.
//! 3. **state** — stores of 1k/5k/10k flights × 300 images: in-process `observed` + `plan`,
//!    a whole pass, and the `status`, `plan` and `once` commands on the 10k store.
//! 4. **idle** — `run` between passes: RSS and CPU time over 60 s.
//! 5. **upload** — a new 1 000-image flight (20 KB and 4 MB images) at the shipped defaults
//!    against WebODM's web UI strategy (4 single-file uploads at once from local files), into
//!    a simulated WebODM that charges each upload request what the real one spent.
//! 6. **results** — processed flights' assets streamed WebODM → Tapis by the daemon against a
//!    download-then-upload loop at the same concurrency, and the daemon's peak RSS.
//!
//! Each section's checks (measure, figure, target, verdict) end its block and also make its
//! table in the summary at the top of BENCHMARKS.md, and its headline sentence README.md's
//! benchmark lines (printed at the end of every run; written into README.md by a full run):
//! all from the same run, so no figure there is typed by hand.
//!
//! The synced state of sections 1, 3 and 4 is written directly with the store's API and the
//! simulated WebODM's HTTP API (a project and a task per flight), not by uploading millions
//! of images, then the daemon's own pass gives access; the measured passes prove it is what
//! the daemon considers synced (their plans are empty and they write nothing).

mod child;
mod idle;
mod plain;
mod report;
mod results;
mod setup;
mod state;
mod transfer;
mod unchanged;
mod upload;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::PathBuf;
use std::time::Instant;

use report::{machine, readme_snippet, secs, write_benchmarks, Check};
use setup::Limits;

/// The daemon binary built with this bench (release profile).
const BIN: &str = env!("CARGO_BIN_EXE_tapis-webodm-sync");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const MIB: f64 = 1024.0 * 1024.0;

type R<T> = Result<T, String>;

fn err<E: Display>(e: E) -> String {
    e.to_string()
}

// ------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Unchanged,
    Transfer,
    State,
    Idle,
    Upload,
    Results,
}

impl Section {
    const ALL: [Section; 6] = [
        Section::Unchanged,
        Section::Transfer,
        Section::State,
        Section::Idle,
        Section::Upload,
        Section::Results,
    ];
    fn key(self) -> &'static str {
        match self {
            Section::Unchanged => "unchanged",
            Section::Transfer => "transfer",
            Section::State => "state",
            Section::Idle => "idle",
            Section::Upload => "upload",
            Section::Results => "results",
        }
    }
}

struct Opts {
    quick: bool,
    write: bool,
    /// Where the generated blocks go (default: BENCHMARKS.md).
    out: Option<PathBuf>,
    sections: Vec<Section>,
    /// Record the idle daemons with `perf record -g` into this directory.
    perf: Option<PathBuf>,
    /// Instead of measuring: seed the lab of section 1, write `config.toml` and a state dir
    /// here, and serve the simulator until Ctrl-C (for profiling the daemon by hand).
    serve_lab: Option<PathBuf>,
}

fn parse_args() -> R<Opts> {
    let mut quick = false;
    let mut write = None;
    let mut out = None;
    let mut sections = BTreeSet::new();
    let mut perf = None;
    let mut serve_lab = None;
    let mut args = std::env::args().skip(1);
    let keys: Vec<&str> = Section::ALL.iter().map(|s| s.key()).collect();
    while let Some(a) = args.next() {
        match a.as_str() {
            // `cargo bench` passes `--bench` to harness = false targets.
            "--bench" => {}
            "--quick" => quick = true,
            "--write" => write = Some(true),
            "--no-write" => write = Some(false),
            "--out" => out = Some(PathBuf::from(args.next().ok_or("--out needs a file")?)),
            "--perf" => {
                perf = Some(PathBuf::from(
                    args.next().ok_or("--perf needs a directory")?,
                ))
            }
            "--serve-lab" => {
                serve_lab = Some(PathBuf::from(
                    args.next().ok_or("--serve-lab needs a directory")?,
                ))
            }
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench --bench bench -- [--quick] [--write|--no-write] [--out FILE] [--perf DIR] [{}]...\n       cargo bench --bench bench -- [--quick] --serve-lab DIR",
                    keys.join("|")
                );
                std::process::exit(0);
            }
            s => match Section::ALL.iter().find(|x| x.key() == s) {
                Some(x) => {
                    sections.insert(*x);
                }
                None => return Err(format!("unknown argument {s:?} (try --help)")),
            },
        }
    }
    if sections.is_empty() {
        sections.extend(Section::ALL);
    }
    Ok(Opts {
        quick,
        write: write.unwrap_or(!quick),
        out,
        sections: sections.into_iter().collect(),
        perf,
        serve_lab,
    })
}

/// Dataset sizes, rounds and durations of a run.
struct Scale {
    unchanged_systems: usize,
    unchanged_flights: usize,
    unchanged_images: usize,
    transfer_images: usize,
    transfer_size: u64,
    state_steps: Vec<usize>,
    state_flights_per_system: usize,
    state_images: usize,
    idle_secs: u64,
    /// Images of the new flight of section 5: (20 KB images, 4 MB images).
    upload_images: (usize, usize),
    /// Flights whose results section 6 copies, and the size of each asset.
    result_flights: usize,
    result_asset_size: u64,
    /// Rounds of (reference, daemon) in sections 2, 5 and 6 (medians compared).
    rounds: usize,
}

impl Scale {
    fn new(quick: bool) -> Scale {
        if quick {
            Scale {
                unchanged_systems: 10,
                unchanged_flights: 40,
                unchanged_images: 300,
                transfer_images: 40,
                transfer_size: 8 << 20,
                state_steps: vec![200, 1000, 2000],
                state_flights_per_system: 100,
                state_images: 300,
                idle_secs: 15,
                upload_images: (200, 60),
                result_flights: 4,
                result_asset_size: 8 << 20,
                rounds: 1,
            }
        } else {
            Scale {
                unchanged_systems: 50,
                unchanged_flights: 40,
                unchanged_images: 300,
                transfer_images: 250,
                transfer_size: 8 << 20,
                state_steps: vec![1000, 5000, 10000],
                state_flights_per_system: 200,
                state_images: 300,
                idle_secs: 60,
                upload_images: (1000, 1000),
                result_flights: 4,
                result_asset_size: 64 << 20,
                rounds: 3,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    if let Ok(report) = std::env::var(child::WRAP_ENV) {
        return child::wrapper(&report);
    }
    if let Some(code) = plain::main_if_asked() {
        return code;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let scale = Scale::new(opts.quick);
    let machine = machine();
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(dir) = &opts.serve_lab {
        return match runtime.block_on(idle::serve_lab(dir, &scale)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let t = Instant::now();
    let mut outs = Vec::new();
    let mut failed = false;
    runtime.block_on(async {
        let prod = match Limits::production() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
                return;
            }
        };
        for &s in &opts.sections {
            let st = Instant::now();
            let r = match s {
                Section::Unchanged => unchanged::section(&opts, &scale, prod).await,
                Section::Transfer => transfer::section(&opts, &scale, prod).await,
                Section::State => state::section(&opts, &scale, prod).await,
                Section::Idle => idle::section(&opts, &scale).await,
                Section::Upload => upload::section(&opts, &scale, prod).await,
                Section::Results => results::section(&opts, &scale, prod).await,
            };
            match r {
                Ok(mut o) => {
                    o.md += &format!("\n_Section time: {}._\n", secs(st.elapsed()));
                    println!("\n{}", o.md);
                    outs.push(o);
                }
                Err(e) => {
                    eprintln!("error in section {}: {e}", s.key());
                    failed = true;
                }
            }
        }
    });
    println!("Machine: {machine}");
    println!("Total time: {}", secs(t.elapsed()));
    let missed: Vec<&Check> = outs
        .iter()
        .flat_map(|o| o.checks.iter())
        .filter(|c| c.met == Some(false))
        .collect();
    println!("Targets missed: {}", missed.len());
    for c in &missed {
        println!("  - {}: {} (target {})", c.measure, c.figure, c.target);
    }
    if let Some(snippet) = readme_snippet(&outs, &started, &opts) {
        println!(
            "\nREADME.md benchmark lines (a full run writes them into README.md):\n\n{snippet}\n"
        );
    }
    if (opts.write || opts.out.is_some()) && !outs.is_empty() {
        match write_benchmarks(&outs, &machine, &started, &opts) {
            Ok(p) => println!("Wrote {}", p.display()),
            Err(e) => {
                eprintln!("error: cannot write BENCHMARKS.md: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
