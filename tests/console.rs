//! The operator console in a real browser: the daemon (real binary, `run` with the admin
//! endpoint) against the simulator, its status page loaded in headless Chromium through
//! chromedriver (WebDriver), checked from the rendered DOM with JavaScript on and off; and
//! `POST /pass`: 405 for GET, 403 without the token or from another origin, a pass with it.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). With
//! `TWS_STATUS_SCREENSHOT=<path>` set, the JavaScript-on screenshot is also written there
//! (that is how `docs/status-page.png` is made).

mod service_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use service_support::*;
use tapis_webodm_sync::sim::{DatasetSpec, ExpectedFlight, Faults, Sim, HOSTILE_FLIGHT};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn dataset(flights_per_system: usize) -> DatasetSpec {
    DatasetSpec {
        seed: 14,
        systems: 2,
        flights_per_system,
        images_per_flight: 3,
        image_size: 2_000,
        big_flight_images: None,
        decoys: true,
        companions: false,
    }
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's browser with `apt-get install -y chromium chromium-driver` (.ci/run does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    /// A fresh headless Chromium session (own profile dir), JavaScript on or off.
    async fn session(&self, js: bool, profile: &Path) -> Client {
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if !js {
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": { "profile.managed_default_content_settings.javascript": if js { 1 } else { 2 } },
            }
        });
        let caps = caps.as_object().unwrap().clone();
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromedriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One table row as the browser renders it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    system: String,
    flight: String,
    phase: String,
    count: String,
    link: String,
}

/// The rendered rows. With JavaScript on, the page re-renders every few seconds, so the rows
/// are read in one script call (from the DOM's `innerText` and `href`); without it, cell by cell
/// through WebDriver.
async fn rows(c: &Client) -> Vec<Row> {
    let js_on = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("data-js")
        .await
        .unwrap()
        .is_some();
    if js_on {
        let v = c
            .execute(
                r##"return [...document.querySelectorAll("#flight-rows tr.flight")].map((tr) => {
                    const t = (s) => tr.querySelector(s).innerText.trim();
                    return { system: t("td.system"), flight: t("td.flight-name"),
                      phase: t("td.phase .badge"), count: t("td.images .count"),
                      link: tr.querySelector("td.link a").href };
                });"##,
                vec![],
            )
            .await
            .unwrap();
        let s = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap().to_string();
        return v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Row {
                system: s(r, "system"),
                flight: s(r, "flight"),
                phase: s(r, "phase"),
                count: s(r, "count"),
                link: s(r, "link"),
            })
            .collect();
    }
    let mut out = Vec::new();
    for tr in c
        .find_all(Locator::Css("#flight-rows tr.flight"))
        .await
        .unwrap()
    {
        let cell = |sel: &'static str| {
            let tr = tr.clone();
            async move {
                tr.find(Locator::Css(sel))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        let link = tr
            .find(Locator::Css("td.link a"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap_or_default();
        out.push(Row {
            system: cell("td.system").await,
            flight: cell("td.flight-name").await,
            phase: cell("td.phase .badge").await,
            count: cell("td.images .count").await,
            link,
        });
    }
    out
}

/// Waits until `check` holds for the rendered rows; returns them.
async fn rows_until(c: &Client, what: &str, check: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rows(c).await;
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < end, "{what}: rows are {r:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every expected flight once, committed with all its images, and nothing else.
fn all_committed(rows: &[Row], expected: &[ExpectedFlight]) -> bool {
    rows.len() == expected.len()
        && expected.iter().all(|f| {
            rows.iter().any(|r| {
                r.system == f.system_id
                    && r.flight == f.flight
                    && r.phase == "committed"
                    && r.count == format!("{0}/{0}", f.images.len())
            })
        })
}

fn assert_rows(rows: &[Row], expected: &[ExpectedFlight], webodm: &str) {
    assert!(
        all_committed(rows, expected),
        "{rows:#?}\nexpected {expected:#?}"
    );
    // Shown literally: `<`, `>`, `"`, `&`, `'` are text, not markup.
    assert_eq!(
        rows.iter().filter(|r| r.flight == HOSTILE_FLIGHT).count(),
        1,
        "{rows:#?}"
    );
    for r in rows {
        assert_eq!(r.link, format!("{webodm}/dashboard/"), "{r:?}");
    }
}

async fn post_pass(base: &str, token: Option<&str>, origin: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().post(format!("{base}/pass"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn screenshot(c: &Client, path: &Path) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(path, &png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_in_chromium_with_and_without_javascript_and_post_pass() {
    // No processing node: committed flights stay `committed`, so the rows are stable.
    let no_node = Faults {
        process_ms: 0,
        ..Faults::default()
    };
    let sim = Sim::start_with(&dataset(1), "127.0.0.1:0".parse().unwrap(), no_node)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = "https://odm.example.org/webodm";
    let (config, state) = write_config(
        &sim,
        dir.path(),
        &[
            ("sync", "interval = \"1h\""),
            ("webodm", &format!("public_url = \"{public}/\"")),
        ],
        &format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let d = Daemon::start(&config, false, &[]);
    d.wait_log("pass finished", 1, Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{port}");

    // The token: a file of mode 0600 in the state dir, printed by `status --admin-token`.
    let out = run_async(&config, &["status", "--admin-token"], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // POST /pass: never a GET, never without the right token, never from another origin.
    let get = reqwest::get(format!("{base}/pass")).await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(post_pass(&base, None, None).await, 403);
    assert_eq!(
        post_pass(&base, Some("0".repeat(64).as_str()), None).await,
        403
    );
    assert_eq!(
        post_pass(&base, Some(&token), Some("http://evil.example")).await,
        403
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(d.count("pass finished"), 1, "{}", d.log_text());
    assert_eq!(d.count("starting a pass now"), 0, "{}", d.log_text());

    let driver = Driver::start();
    let expected = sim.dataset().expected_flights();

    // JavaScript on: rows from the DOM the script rendered.
    let profile = tempfile::tempdir().unwrap();
    let c = driver.session(true, profile.path()).await;
    c.goto(&format!("{base}/")).await.unwrap();
    let js = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("data-js")
        .await
        .unwrap();
    assert_eq!(js.as_deref(), Some("on"), "the page script runs");
    let rendered = rows_until(&c, "all flights committed", |r| all_committed(r, &expected)).await;
    assert_rows(&rendered, &expected, public);
    // Filters, client-side: the search box and the phase and system selects.
    let q = c.find(Locator::Id("f-q")).await.unwrap();
    q.send_keys("north> &").await.unwrap();
    let one = rows_until(&c, "search", |r| r.len() == 1).await;
    assert_eq!(one[0].flight, HOSTILE_FLIGHT);
    assert!(c.current_url().await.unwrap().as_str().contains("q=north"));
    q.clear().await.unwrap();
    q.send_keys(" ").await.unwrap();
    rows_until(&c, "search cleared", |r| r.len() == expected.len()).await;
    let phase = c.find(Locator::Id("f-phase")).await.unwrap();
    phase.select_by_value("problems").await.unwrap();
    rows_until(&c, "no problems", |r| r.is_empty()).await;
    phase.select_by_value("committed").await.unwrap();
    rows_until(&c, "committed", |r| r.len() == expected.len()).await;
    let shared_lab = "ptdatax.project.shared-lab";
    let in_lab = expected
        .iter()
        .filter(|f| f.system_id == shared_lab)
        .count();
    assert!(in_lab > 0);
    c.find(Locator::Id("f-system"))
        .await
        .unwrap()
        .select_by_value(shared_lab)
        .await
        .unwrap();
    let lab = rows_until(&c, "system filter", |r| r.len() == in_lab).await;
    assert!(lab.iter().all(|r| r.system == shared_lab));
    c.find(Locator::Id("f-system"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    phase.select_by_value("").await.unwrap();

    // The page follows a pass without a reload: more flights on Tapis, a pass via POST /pass.
    sim.replace_dataset(&dataset(2));
    let more = sim.dataset().expected_flights();
    assert!(more.len() > expected.len());
    assert_eq!(post_pass(&base, Some(&token), Some(&base)).await, 202);
    d.wait_log(
        "POST /pass: starting a pass now",
        1,
        Duration::from_secs(10),
    );
    d.wait_log("pass finished", 2, Duration::from_secs(60));
    let updated = rows_until(&c, "after the pass", |r| all_committed(r, &more)).await;
    assert_rows(&updated, &more, public);
    // The pass table follows from the same refresh; give a slow machine a few more ticks.
    let mut passes = json!(0);
    for _ in 0..50 {
        passes = c
            .execute(
                "return document.querySelectorAll('#pass-rows tr.pass').length;",
                vec![],
            )
            .await
            .unwrap();
        if passes == json!(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(passes, json!(2));
    screenshot(&c, &dir.path().join("status-js.png")).await;
    if let Ok(path) = std::env::var("TWS_STATUS_SCREENSHOT") {
        screenshot(&c, Path::new(&path)).await;
    }
    c.close().await.unwrap();

    // JavaScript off: the server-rendered page, filters as GET parameters.
    let profile = tempfile::tempdir().unwrap();
    let c = driver.session(false, profile.path()).await;
    c.goto(&format!("{base}/")).await.unwrap();
    let js = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("data-js")
        .await
        .unwrap();
    assert_eq!(js, None, "JavaScript is off");
    let control = c.find(Locator::Id("control")).await.unwrap();
    assert!(
        !control.is_displayed().await.unwrap(),
        "no control without the script"
    );
    assert_rows(&rows(&c).await, &more, public);
    c.find(Locator::Id("f-q"))
        .await
        .unwrap()
        .send_keys("north> &")
        .await
        .unwrap();
    c.find(Locator::Id("f-apply"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let one = rows_until(&c, "search (server)", |r| r.len() == 1).await;
    assert_eq!(one[0].flight, HOSTILE_FLIGHT);
    assert!(c.current_url().await.unwrap().as_str().contains("q=north"));
    let lab_now = more.iter().filter(|f| f.system_id == shared_lab).count();
    c.goto(&format!("{base}/?system={shared_lab}&phase=committed"))
        .await
        .unwrap();
    let lab = rows(&c).await;
    assert_eq!(lab.len(), lab_now, "{lab:#?}");
    assert!(lab.iter().all(|r| r.system == shared_lab));
    c.goto(&format!("{base}/?phase=failed")).await.unwrap();
    assert!(rows(&c).await.is_empty());
    let shown = c
        .find(Locator::Id("shown"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, format!("0 of {} flights", more.len()));
    // After another pass, a reload shows it.
    sim.replace_dataset(&dataset(3));
    let most = sim.dataset().expected_flights();
    assert_eq!(post_pass(&base, Some(&token), None).await, 202);
    d.wait_log("pass finished", 3, Duration::from_secs(60));
    c.goto(&format!("{base}/")).await.unwrap();
    assert_rows(&rows(&c).await, &most, public);
    screenshot(&c, &dir.path().join("status-nojs.png")).await;
    c.close().await.unwrap();
    drop(d);
    sim.shutdown().await;
}
