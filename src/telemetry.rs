//! Logging setup and terminal progress.
//!
//! Logs go to stderr (stdout carries `--json` output and tables): human-readable text or one
//! JSON object per line, filtered by `RUST_LOG` or the config's `[log] level`. A progress bar
//! for transfers appears only when stderr is a terminal; under systemd or a pipe it stays quiet.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A byte progress bar for a pass's transfers, when a person is watching.
pub fn transfer_progress() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} uploading {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    Some(bar)
}
