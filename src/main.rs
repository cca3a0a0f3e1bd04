//! Command line of `tapis-webodm-sync`: parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tapis_webodm_sync::cli;

/// Keeps WebODM in step with drone flights stored on Tapis: one project per flight
/// folder `<Flight>/code/images` on every `ptdatax.project.*` system, with its images streamed
/// into a task committed for processing.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Config file [default: $TAPIS_WEBODM_SYNC_CONFIG, else /etc/tapis-webodm-sync/config.toml]
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: a pass every `sync.interval` until SIGTERM/SIGINT (SIGHUP reloads the
    /// config, SIGUSR1 starts a pass now)
    Run,
    /// Run one pass and exit (exit 1 if anything failed)
    Once {
        /// Plan only: show what a pass would do, change nothing
        #[arg(long)]
        dry_run: bool,
        /// List every flight's images folder, also committed flights whose recheck
        /// (`sync.recheck_committed`) is not due yet
        #[arg(long)]
        full: bool,
        /// Only these system ids (overrides `tapis.systems`)
        #[arg(long, num_args = 1.., value_name = "ID")]
        systems: Vec<String>,
        /// Print the pass summary as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show what a pass would do, changing nothing (same as `once --dry-run`)
    Plan {
        /// List every flight's images folder, also committed flights whose recheck
        /// (`sync.recheck_committed`) is not due yet
        #[arg(long)]
        full: bool,
        /// Only these system ids (overrides `tapis.systems`)
        #[arg(long, num_args = 1.., value_name = "ID")]
        systems: Vec<String>,
        /// Print the plan as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show every flight in the state store: phase, project/task, images, last error
    Status {
        /// Print as JSON on stdout
        #[arg(long)]
        json: bool,
        /// Print only the running daemon's admin token (for `POST /pass` on the admin endpoint)
        #[arg(long, conflicts_with = "json")]
        admin_token: bool,
    },
    /// List the Tapis systems matching `tapis.system_pattern`, and which are skipped and why
    Systems {
        /// Print as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// List the flights Tapis holds now, with image counts and sizes
    Flights {
        /// Only these system ids (overrides `tapis.systems`)
        #[arg(long, num_args = 1.., value_name = "ID")]
        systems: Vec<String>,
        /// Print as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Drop a flight's record so the next pass treats it as new (its WebODM project is kept
    /// and adopted again if it still exists)
    Forget {
        /// Tapis system id
        system: String,
        /// Flight folder name
        flight: String,
    },
    /// Validate the config, print the effective config (secrets redacted), and make one
    /// authenticated read-only call per service
    CheckConfig,
    /// Start the simulator with a sample dataset, sync it until nothing is left to do, and
    /// print what WebODM holds (no config needed)
    Demo {
        /// Print one JSON object {expected, passes, webodm} on stdout
        #[arg(long)]
        json: bool,
    },
    /// Run only the simulated Tapis + WebODM (for manual tests and benchmarks)
    Sim(tapis_webodm_sync::sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = cli.config;
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run => cli::run(path).await,
            Command::Once {
                dry_run,
                full,
                systems,
                json,
            } => cli::once(path, dry_run, full, systems, json).await,
            Command::Plan {
                full,
                systems,
                json,
            } => cli::once(path, true, full, systems, json).await,
            Command::Status {
                admin_token: true, ..
            } => cli::admin_token(path).await,
            Command::Status { json, .. } => cli::status(path, json).await,
            Command::Systems { json } => cli::systems(path, json).await,
            Command::Flights { systems, json } => cli::flights(path, systems, json).await,
            Command::Forget { system, flight } => cli::forget(path, system, flight).await,
            Command::CheckConfig => cli::check_config(path).await,
            Command::Demo { json } => cli::demo(json).await,
            Command::Sim(args) => cli::sim(args).await,
        }
    });
    ExitCode::from(code)
}
