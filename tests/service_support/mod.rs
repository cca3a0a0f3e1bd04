//! Shared by the `service_*` tests: the real binary as a daemon against the simulator, with
//! its stderr collected and a `NOTIFY_SOCKET` datagram socket standing in for systemd.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tapis_webodm_sync::sim::{DatasetSpec, Sim};

pub const BIN: &str = env!("CARGO_BIN_EXE_tapis-webodm-sync");

/// Credentials and tokens that must never appear anywhere.
pub const SECRETS: [&str; 4] = ["tapis-secret", "sim-client-key", "webodm-secret", "eyJ"];

pub fn spec(images: usize, image_size: u64) -> DatasetSpec {
    DatasetSpec {
        seed: 5,
        systems: 1,
        flights_per_system: 1,
        images_per_flight: images,
        image_size,
        big_flight_images: None,
        decoys: false,
        companions: false,
    }
}

pub async fn start_sim(spec: &DatasetSpec) -> Sim {
    Sim::start(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Writes `sim.config_toml(state)` into `dir/config.toml`, with extra keys put into existing
/// sections (`("webodm", "max_concurrent_uploads = 1")`) and `tail` appended.
pub fn write_config(
    sim: &Sim,
    dir: &Path,
    keys: &[(&str, &str)],
    tail: &str,
) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let path = dir.join("config.toml");
    std::fs::write(&path, config_text(sim, &state, keys, tail)).unwrap();
    (path, state)
}

pub fn config_text(sim: &Sim, state: &Path, keys: &[(&str, &str)], tail: &str) -> String {
    let mut text = sim.config_toml(state);
    for (section, line) in keys {
        let header = format!("[{section}]\n");
        let key = line.split('=').next().unwrap().trim();
        // Replace a key the simulator already wrote, else add it under the header.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let start = lines.iter().position(|l| *l == header.trim()).unwrap();
        let mut replaced = false;
        for l in lines.iter_mut().skip(start + 1) {
            if l.starts_with('[') {
                break;
            }
            if l.split('=').next().map(str::trim) == Some(key) {
                *l = line.to_string();
                replaced = true;
                break;
            }
        }
        if !replaced {
            lines.insert(start + 1, line.to_string());
        }
        text = lines.join("\n") + "\n";
    }
    text.push_str(tail);
    text
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).args(args);
    clean_env(&mut cmd);
    cmd.envs(envs.iter().copied());
    cmd.output().unwrap()
}

pub async fn run_async(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&config, &args, &envs)
    })
    .await
    .unwrap()
}

fn clean_env(cmd: &mut Command) {
    for k in [
        "RUST_LOG",
        "TAPIS_WEBODM_SYNC_CONFIG",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        cmd.env_remove(k);
    }
}

/// `tapis-webodm-sync run` in the background.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    notify: Option<UnixDatagram>,
    notes: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts the daemon; `watchdog_usec` also sets up a notify socket.
    pub fn start(config: &Path, notify: bool, envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).arg("run");
        clean_env(&mut cmd);
        cmd.envs(envs.iter().copied());
        let (sock, dir) = if notify {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            cmd.env("NOTIFY_SOCKET", &path);
            (Some(sock), Some(dir))
        } else {
            (None, None)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Daemon {
            child,
            log,
            notify: sock,
            notes: Vec::new(),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill failed");
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// How many stderr lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` stderr lines contain `needle`.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                Instant::now() < end,
                "no {n}× {needle:?} in the log within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads notify datagrams until one satisfies `pred` (each datagram is kept in `notes`).
    pub fn wait_notify(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        if let Some(found) = self.notes.iter().find(|n| pred(n)) {
            return found.clone();
        }
        let sock = self.notify.as_ref().expect("started with a notify socket");
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            assert!(
                Instant::now() < end,
                "no matching notify message within {timeout:?}; got {:#?}\nlog:\n{}",
                self.notes,
                self.log_text()
            );
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.notes.push(msg.clone());
                if pred(&msg) {
                    return msg;
                }
            }
        }
    }

    /// Every notify message received so far (after draining the socket).
    pub fn notes(&mut self) -> Vec<String> {
        if let Some(sock) = &self.notify {
            let mut buf = vec![0u8; 4096];
            sock.set_nonblocking(true).unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                self.notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            sock.set_nonblocking(false).unwrap();
        }
        self.notes.clone()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "daemon still running after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upload requests the simulator answered (all statuses).
pub fn upload_requests(sim: &Sim) -> u64 {
    sim.stats()
        .requests
        .iter()
        .filter(|(route, _)| route.ends_with("/upload/"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum()
}

/// Asserts WebODM holds exactly the dataset: one project and one committed task per flight,
/// every image byte for byte, nothing twice.
pub fn assert_converged(sim: &Sim) {
    let r = sim.report();
    let mismatches = r.webodm.mismatches(&r.expected);
    assert!(mismatches.is_empty(), "{mismatches:#?}\n{r:?}");
}
