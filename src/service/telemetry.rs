//! Logging setup and terminal progress.
//!
//! Logs go to stderr (stdout carries `--json` output and tables): human-readable text or one
//! JSON object per line, filtered by `RUST_LOG` or the config's `[log] level`; under journald
//! each line carries its syslog priority prefix and no timestamp. A progress bar
//! for transfers appears only when stderr is a terminal; under systemd or a pipe it stays quiet.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides `level`. Under journald (stderr is the
/// stream named by `JOURNAL_STREAM`) every line starts with its syslog priority `<N>`, which
/// journald turns into the record's PRIORITY (`journalctl -p err` works), and carries no
/// timestamp of its own (journald stamps every record).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let journald = stderr_is_journal();
    let _ = match (format, journald) {
        (LogFormat::Text, false) => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Text, true) => builder
            .with_ansi(false)
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format().json().without_time(),
            ))
            .try_init(),
    };
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (`<device>:<inode>`, set by
/// systemd) names stderr's own file, as systemd.exec(5) recommends checking.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Formats with the inner formatter and starts every line with `<N>` (a record with line
/// breaks stays at its priority on every line).
struct SyslogPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut buf = String::new();
        self.0.format_event(ctx, Writer::new(&mut buf), event)?;
        let prio = syslog_priority(event.metadata().level());
        for line in buf.trim_end_matches('\n').split('\n') {
            writeln!(writer, "<{prio}>{line}")?;
        }
        Ok(())
    }
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
