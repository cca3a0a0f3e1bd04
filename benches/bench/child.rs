//! Child processes: the daemon binary and this harness's own reference loops, with their
//! wall time, exit code and peak RSS (taken by a small wrapper process).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{err, BIN, R};

/// What a child run gave.
pub struct ChildRun {
    pub wall: Duration,
    pub code: i32,
    pub stdout: Vec<u8>,
    /// `getrusage` of the child after it was reaped (`wait4`), KiB.
    pub maxrss_kib: u64,
    /// Highest `VmHWM` polled from /proc, KiB.
    pub hwm_kib: u64,
    /// The wrapper's own peak RSS (a floor of `maxrss_kib`), KiB.
    pub wrapper_kib: u64,
}

impl ChildRun {
    /// The higher of the two peak RSS readings, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.maxrss_kib.max(self.hwm_kib)
    }

    /// Numbers printed on stdout (the reference loops print `files bytes nanos`).
    pub fn numbers(&self) -> Vec<u128> {
        String::from_utf8_lossy(&self.stdout)
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    }
}

/// `VmHWM`/`VmRSS` etc. of a process, KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| {
        v.trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// utime + stime of a process, seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let (u, st): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((u + st) as f64 / tck)
}

/// Reaps `pid` with `wait4`: exit code and the child's max RSS (KiB).
pub fn wait4(pid: u32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and ru are valid for writes.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
    let code = if r < 0 {
        -1
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, ru.ru_maxrss.max(0) as u64)
}

/// Starts the daemon binary; stderr goes to `log`.
pub fn spawn_daemon(args: &[&str], log: &Path) -> R<std::process::Child> {
    let log = std::fs::File::create(log).map_err(err)?;
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(err)
}

/// Set (to a file path) in the environment of the wrapper process: see [`wrapper`].
pub const WRAP_ENV: &str = "TWS_BENCH_RUSAGE_TO";

/// Wrapper mode of this binary: runs `argv[1..]` (stdio inherited), polls its `VmHWM`, reaps
/// it with `wait4`, writes `exit maxrss_kib hwm_kib own_hwm_kib` to the file named by
/// [`WRAP_ENV`] and exits with the child's code.
///
/// Why a wrapper: `Command` starts children with `vfork`/`posix_spawn`, and at `exec` Linux
/// folds the parent's high-water RSS into the child's `ru_maxrss`. Spawned straight from the
/// harness (which holds the simulator), the daemon's `ru_maxrss` would be the harness's. The
/// wrapper is a small, fresh process, so its child's `ru_maxrss` is the daemon's own (at
/// least the wrapper's few MiB, reported as `own_hwm_kib`).
pub fn wrapper(report: &str) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let own = proc_status_kib(std::process::id(), "VmHWM").unwrap_or(0);
    let child = match Command::new(&args[0])
        .args(&args[1..])
        .env_remove(WRAP_ENV)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wrapper: cannot start {}: {e}", args[0]);
            return std::process::ExitCode::from(127);
        }
    };
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut hwm = 0;
            while !done.load(Ordering::SeqCst) {
                match proc_status_kib(pid, "VmHWM") {
                    Some(v) => hwm = hwm.max(v),
                    None if hwm > 0 => break,
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            hwm
        })
    };
    let (code, maxrss) = wait4(pid);
    done.store(true, Ordering::SeqCst);
    let hwm = poller.join().unwrap_or(0);
    std::mem::forget(child); // reaped by wait4
    let _ = std::fs::write(report, format!("{code} {maxrss} {hwm} {own}\n"));
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}

/// Runs `program` to completion through [`wrapper`] (off the async runtime, which keeps
/// serving the simulator) with `env` added; stdout is captured, stderr goes to `log`.
pub async fn run_wrapped(
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
) -> R<ChildRun> {
    tokio::task::spawn_blocking(move || {
        let report = tempfile::NamedTempFile::new().map_err(err)?;
        let me = std::env::current_exe().map_err(err)?;
        let t = Instant::now();
        let out = Command::new(me)
            .arg(&program)
            .args(&args)
            .envs(env)
            .env(WRAP_ENV, report.path())
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(err)?)
            .output()
            .map_err(err)?;
        let wall = t.elapsed();
        let text = std::fs::read_to_string(report.path()).map_err(err)?;
        let f: Vec<i64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() != 4 {
            return Err(format!("wrapper report {text:?}; log {}", log.display()));
        }
        Ok(ChildRun {
            wall,
            code: f[0] as i32,
            stdout: out.stdout,
            maxrss_kib: f[1] as u64,
            hwm_kib: f[2] as u64,
            wrapper_kib: f[3] as u64,
        })
    })
    .await
    .map_err(err)?
}

/// Runs the daemon binary with `args` through [`wrapper`].
pub async fn run_daemon(args: Vec<String>, log: PathBuf) -> R<ChildRun> {
    run_wrapped(PathBuf::from(BIN), args, vec![], log).await
}

/// Runs this harness binary in one of its reference-loop modes (`env` selects it) through
/// [`wrapper`]; an error unless it exits 0 printing `files bytes nanos`.
pub async fn run_loop(env: Vec<(&'static str, String)>, tag: &str) -> R<(ChildRun, LoopRun)> {
    let me = std::env::current_exe().map_err(err)?;
    let log = std::env::temp_dir().join(format!("bench-{tag}.log"));
    let run = run_wrapped(me, vec![], env, log.clone()).await?;
    match (run.code, run.numbers().as_slice()) {
        (0, [files, bytes, nanos]) => {
            let l = LoopRun {
                files: *files as u64,
                bytes: *bytes as u64,
                time: Duration::from_nanos(*nanos as u64),
            };
            Ok((run, l))
        }
        _ => Err(format!(
            "{tag}: exit {}, printed {:?}; see {}",
            run.code,
            String::from_utf8_lossy(&run.stdout),
            log.display()
        )),
    }
}

/// What a reference loop did: files, bytes, and the time of the transfers.
#[derive(Clone, Copy, Debug)]
pub struct LoopRun {
    pub files: u64,
    pub bytes: u64,
    pub time: Duration,
}
