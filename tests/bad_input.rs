//! Bad input, table-driven: hostile responses from Tapis and WebODM (through a tampering proxy
//! in front of the simulator) and broken or risky config files. Every response case asserts the
//! class of error, that it names the service, route and flight, and that the other flights
//! still synced. The config cases are in `bad_input_config.rs`.

mod bad_input_support;

use std::sync::Arc;

use axum::http::Method;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use bad_input_support::{spec, synced, target_of, Action, Renames, Rig, Rule};
use tapis_webodm_sync::engine::state::{FlightKey, Store};
use tapis_webodm_sync::sim::ExpectedFlight;

/// What a case expects of the pass.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The target flight fails with an error holding every fragment; the others sync.
    Flight(&'static [&'static str]),
    /// The target's whole system fails with an error holding every fragment; the others sync.
    System(&'static [&'static str]),
    /// Nothing fails; everything syncs.
    Synced,
    /// Nothing fails; the target syncs without this image (skipped with a warning).
    SyncedWithout(&'static str),
}

struct Case {
    name: &'static str,
    rule: fn(&ExpectedFlight) -> Rule,
    expect: Expect,
}

const HTML: &str = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad Gateway</h1><p>nginx</p></body></html>";

fn html(status: u16) -> Action {
    Action::Reply {
        status,
        content_type: "text/html; charset=utf-8",
        body: HTML.as_bytes().to_vec(),
    }
}

fn text(status: u16, body: &str) -> Action {
    Action::Reply {
        status,
        content_type: "text/plain",
        body: body.as_bytes().to_vec(),
    }
}

fn json_reply(status: u16, v: Value) -> Action {
    Action::Reply {
        status,
        content_type: "application/json",
        body: v.to_string().into_bytes(),
    }
}

fn raw(status: u16, body: &'static str) -> Action {
    Action::Reply {
        status,
        content_type: "application/json",
        body: body.as_bytes().to_vec(),
    }
}

/// Rewrites the first entry of a listing.
fn first_entry(f: impl Fn(&mut Value) + Send + Sync + 'static) -> Action {
    Action::Json(Box::new(move |mut v| {
        f(&mut v["result"][0]);
        v
    }))
}

type Act = Arc<dyn Fn() -> Action + Send + Sync>;

/// The target flight's images listing.
fn on_listing(t: &ExpectedFlight, act: Act) -> Rule {
    let (sys, path) = (t.system_id.clone(), format!("{}/code/images", t.flight));
    Arc::new(move |r| {
        if r.is(Method::GET) && r.tapis_list(&sys).as_deref() == Some(path.as_str()) {
            act()
        } else {
            Action::Forward
        }
    })
}

/// The root listing of the target's system.
fn on_root(t: &ExpectedFlight, act: Act) -> Rule {
    let sys = t.system_id.clone();
    Arc::new(move |r| {
        if r.is(Method::GET) && r.tapis_list(&sys).as_deref() == Some("") {
            act()
        } else {
            Action::Forward
        }
    })
}

/// The download of the target's first image.
fn on_download(t: &ExpectedFlight, act: Act) -> Rule {
    let sys = t.system_id.clone();
    let path = format!("{}/code/images/{}", t.flight, t.images[0].name);
    Arc::new(move |r| {
        if r.is(Method::GET) && r.tapis_content(&sys).as_deref() == Some(path.as_str()) {
            act()
        } else {
            Action::Forward
        }
    })
}

fn project_name(t: &ExpectedFlight) -> String {
    format!("{} ({})", t.flight, t.system_id)
}

/// `POST /api/projects/` creating the target's project.
fn on_create_project(t: &ExpectedFlight, act: Act) -> Rule {
    let needle = format!("\"name\":{}", json!(project_name(t)));
    Arc::new(move |r| {
        if r.is(Method::POST)
            && r.raw_path == "/api/projects/"
            && String::from_utf8_lossy(r.body).contains(&needle)
        {
            act()
        } else {
            Action::Forward
        }
    })
}

/// `GET /api/projects/?name=<target's project>`.
fn on_find_project(t: &ExpectedFlight, act: Act) -> Rule {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("name", &project_name(t))
        .finish();
    Arc::new(move |r| {
        if r.is(Method::GET) && r.raw_path == "/api/projects/" && r.query == Some(query.as_str()) {
            act()
        } else {
            Action::Forward
        }
    })
}

/// A POST below the target's project whose path ends in `tail`.
fn on_target_post(tail: &'static str, act: Act) -> Rule {
    Arc::new(move |r| {
        if r.is(Method::POST) && r.target_project(tail) {
            act()
        } else {
            Action::Forward
        }
    })
}

fn a(f: impl Fn() -> Action + Send + Sync + 'static) -> Act {
    Arc::new(f)
}

const LIST: &str = "Tapis GET /v3/files/ops/";
const NOT_JSON: &str = "unexpected response: not valid JSON";
const SHAPE: &str = "unexpected response: JSON of the wrong shape";

fn cases() -> Vec<Case> {
    vec![
        // ---- Tapis: the target flight's images listing ----
        Case {
            name: "listing: HTML page under 200",
            rule: |t| on_listing(t, a(|| html(200))),
            expect: Expect::Flight(&[
                LIST,
                NOT_JSON,
                "content-type text/html",
                "<title>502 Bad Gateway",
            ]),
        },
        Case {
            name: "listing: plain text under 200",
            rule: |t| on_listing(t, a(|| text(200, "Service temporarily unavailable"))),
            expect: Expect::Flight(&[
                LIST,
                NOT_JSON,
                "content-type text/plain",
                "Service temporarily",
            ]),
        },
        Case {
            name: "listing: truncated JSON",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        raw(
                            200,
                            r#"{"status":"success","result":[{"name":"IMG_0001.jpg","pa"#,
                        )
                    }),
                )
            },
            expect: Expect::Flight(&[LIST, NOT_JSON, "EOF"]),
        },
        Case {
            name: "listing: empty body",
            rule: |t| on_listing(t, a(|| raw(200, ""))),
            expect: Expect::Flight(&[LIST, "unexpected response: empty body"]),
        },
        Case {
            name: "listing: JSON followed by garbage",
            rule: |t| on_listing(t, a(|| raw(200, r#"{"result":[]} trailing"#))),
            expect: Expect::Flight(&[LIST, NOT_JSON, "trailing characters"]),
        },
        Case {
            name: "listing: result is null",
            rule: |t| {
                on_listing(
                    t,
                    a(|| json_reply(200, json!({"status":"success","result":null}))),
                )
            },
            expect: Expect::Flight(&[LIST, SHAPE, "at `result`", "null"]),
        },
        Case {
            name: "listing: bare array instead of the envelope",
            rule: |t| on_listing(t, a(|| json_reply(200, json!([{"name":"IMG_0001.jpg"}])))),
            expect: Expect::Flight(&[LIST, SHAPE, "expected a sequence"]),
        },
        Case {
            name: "listing: entry without a name",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        first_entry(|e| {
                            e.as_object_mut().unwrap().remove("name");
                        })
                    }),
                )
            },
            expect: Expect::Flight(&[LIST, SHAPE, "result[0]", "missing field `name`"]),
        },
        Case {
            name: "listing: entry without a size",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        first_entry(|e| {
                            e.as_object_mut().unwrap().remove("size");
                        })
                    }),
                )
            },
            expect: Expect::Flight(&[LIST, SHAPE, "result[0]", "missing field `size`"]),
        },
        Case {
            name: "listing: size is a string",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["size"] = json!("600")))),
            expect: Expect::Flight(&[LIST, SHAPE, "result[0].size", "invalid type: string"]),
        },
        Case {
            name: "listing: negative size",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["size"] = json!(-5)))),
            expect: Expect::Flight(&[LIST, SHAPE, "result[0].size", "-5"]),
        },
        Case {
            name: "listing: fractional size",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["size"] = json!(1.5)))),
            expect: Expect::Flight(&[LIST, SHAPE, "result[0].size", "1.5"]),
        },
        Case {
            name: "listing: absurd size",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["size"] = json!(1u64 << 50)))),
            expect: Expect::Flight(&["is not believed", "absurd size", "1125899906842624"]),
        },
        Case {
            name: "listing: type is a number",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["type"] = json!(3)))),
            expect: Expect::Flight(&[LIST, SHAPE, "result[0].type"]),
        },
        Case {
            name: "listing: name is an object",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["name"] = json!({"x": 1})))),
            expect: Expect::Flight(&[LIST, SHAPE, "result[0].name"]),
        },
        Case {
            name: "listing: entry's path points outside the images folder",
            rule: |t| {
                on_listing(
                    t,
                    a(|| first_entry(|e| e["path"] = json!("../../other/secret.jpg"))),
                )
            },
            expect: Expect::Flight(&[
                "is not believed",
                "listed with path \"../../other/secret.jpg\"",
            ]),
        },
        Case {
            name: "listing: one name twice with different sizes",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            let mut dup = v["result"][0].clone();
                            dup["size"] = json!(7);
                            v["result"].as_array_mut().unwrap().push(dup);
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Flight(&[LIST, "twice with different contents"]),
        },
        Case {
            name: "listing: one entry repeated unchanged (deduplicated)",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            let dup = v["result"][0].clone();
                            v["result"].as_array_mut().unwrap().push(dup);
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Synced,
        },
        Case {
            name: "listing: unknown fields everywhere (ignored)",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            v["surprise"] = json!({"nested": [1, 2]});
                            for e in v["result"].as_array_mut().unwrap() {
                                e["checksum"] = json!("abc");
                                e["extra"] = json!(null);
                            }
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Synced,
        },
        Case {
            name: "listing: zero-byte image (skipped with a warning)",
            rule: |t| on_listing(t, a(|| first_entry(|e| e["size"] = json!(0)))),
            expect: Expect::SyncedWithout("IMG_0001.jpg"),
        },
        Case {
            name: "listing: HTTP 500 with a JSON error",
            rule: |t| {
                on_listing(
                    t,
                    a(|| {
                        json_reply(
                            500,
                            json!({"status":"error","message":"FILES_CLIENT_SSH_OP_ERR","result":null}),
                        )
                    }),
                )
            },
            expect: Expect::Flight(&[LIST, "HTTP 500", "FILES_CLIENT_SSH_OP_ERR"]),
        },
        Case {
            name: "listing: HTTP 403 in plain text",
            rule: |t| on_listing(t, a(|| text(403, "FILES_PERM_DENIED no access"))),
            expect: Expect::Flight(&[LIST, "HTTP 403", "FILES_PERM_DENIED"]),
        },
        Case {
            name: "listing: HTTP 502 HTML page",
            rule: |t| on_listing(t, a(|| html(502))),
            expect: Expect::Flight(&[LIST, "HTTP 502", "<title>502 Bad Gateway"]),
        },
        // ---- Tapis: the target's system root ----
        Case {
            name: "system root: HTML page under 200",
            rule: |t| on_root(t, a(|| html(200))),
            expect: Expect::System(&["listing the system root failed", LIST, NOT_JSON]),
        },
        Case {
            name: "system root: HTTP 500",
            rule: |t| on_root(t, a(|| text(500, "boom"))),
            expect: Expect::System(&["listing the system root failed", LIST, "HTTP 500"]),
        },
        // ---- Tapis: downloads ----
        Case {
            name: "download: HTML page under 200",
            rule: |t| on_download(t, a(|| Action::ContentType("text/html; charset=UTF-8"))),
            expect: Expect::Flight(&[
                "Tapis GET /v3/files/content/",
                "got an HTML page",
                "IMG_0001.jpg",
            ]),
        },
        Case {
            name: "download: body cut short",
            rule: |t| {
                on_download(
                    t,
                    a(|| {
                        Action::Bytes(Box::new(|mut b| {
                            b.truncate(b.len() / 2);
                            b
                        }))
                    }),
                )
            },
            expect: Expect::Flight(&["uploading image IMG_0001.jpg", "truncated: expected"]),
        },
        Case {
            name: "download: body longer than listed",
            rule: |t| {
                on_download(
                    t,
                    a(|| {
                        Action::Bytes(Box::new(|mut b| {
                            b.extend_from_slice(b"tail");
                            b
                        }))
                    }),
                )
            },
            expect: Expect::Flight(&["uploading image IMG_0001.jpg", "overlong: expected"]),
        },
        Case {
            name: "download: HTTP 404",
            rule: |t| {
                on_download(
                    t,
                    a(|| {
                        json_reply(
                            404,
                            json!({"status":"Not Found","message":"FILES_CLIENT_SSH_NOT_FOUND","result":null}),
                        )
                    }),
                )
            },
            expect: Expect::Flight(&["Tapis GET /v3/files/content/", "HTTP 404"]),
        },
        // ---- WebODM ----
        Case {
            name: "create project: HTML page under 200",
            rule: |t| on_create_project(t, a(|| html(200))),
            expect: Expect::Flight(&[
                "creating the project",
                "WebODM POST /api/projects/",
                NOT_JSON,
            ]),
        },
        Case {
            name: "create project: answer without an id",
            rule: |t| on_create_project(t, a(|| json_reply(201, json!({"name":"x","tags":[]})))),
            expect: Expect::Flight(&["WebODM POST /api/projects/", SHAPE, "missing field `id`"]),
        },
        Case {
            name: "create project: id is a string",
            rule: |t| on_create_project(t, a(|| json_reply(201, json!({"id":"12","name":"x"})))),
            expect: Expect::Flight(&["WebODM POST /api/projects/", SHAPE, "at `id`"]),
        },
        Case {
            name: "create project: extra unknown fields (ignored)",
            rule: |t| {
                on_create_project(
                    t,
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            v["new_in_webodm_9"] = json!({"a": [1]});
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Synced,
        },
        Case {
            name: "find project: HTML page under 200",
            rule: |t| on_find_project(t, a(|| html(200))),
            expect: Expect::Flight(&["WebODM GET /api/projects/", NOT_JSON]),
        },
        Case {
            name: "find project: paginated object instead of an array",
            rule: |t| {
                on_find_project(
                    t,
                    a(|| json_reply(200, json!({"count":0,"next":null,"results":[]}))),
                )
            },
            expect: Expect::Flight(&["WebODM GET /api/projects/", SHAPE, "expected a sequence"]),
        },
        Case {
            name: "create task: plain text under 200",
            rule: |_| on_target_post("tasks", a(|| text(200, "ok"))),
            expect: Expect::Flight(&["creating the task", "WebODM POST /api/projects/", NOT_JSON]),
        },
        Case {
            name: "create task: answer without an id",
            rule: |_| {
                on_target_post(
                    "tasks",
                    a(|| json_reply(201, json!({"project": 1, "partial": true}))),
                )
            },
            expect: Expect::Flight(&["creating the task", SHAPE, "missing field `id`"]),
        },
        Case {
            name: "create task: answer without partial",
            rule: |_| {
                on_target_post(
                    "tasks",
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            v.as_object_mut().unwrap().remove("partial");
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Flight(&[
                "creating the task",
                "WebODM POST /api/projects/",
                SHAPE,
                "missing field `partial`",
            ]),
        },
        Case {
            name: "upload: WebODM stored nothing under the name",
            rule: |_| {
                on_target_post(
                    "upload",
                    a(|| Action::Json(Box::new(|_| json!({"success":true,"uploaded":{}})))),
                )
            },
            expect: Expect::Flight(&["WebODM POST /api/projects/", "did not store the file as"]),
        },
        Case {
            name: "upload: WebODM reports another byte count",
            rule: |_| {
                on_target_post(
                    "upload",
                    a(|| {
                        Action::Json(Box::new(|mut v| {
                            for (_, n) in v["uploaded"].as_object_mut().unwrap() {
                                *n = json!(1);
                            }
                            v
                        }))
                    }),
                )
            },
            expect: Expect::Flight(&["WebODM stored 1 bytes, Tapis lists"]),
        },
        Case {
            name: "upload: byte count is a string",
            rule: |_| {
                on_target_post(
                    "upload",
                    a(|| {
                        json_reply(
                            200,
                            json!({"success":true,"uploaded":{"IMG_0001.jpg":"600"}}),
                        )
                    }),
                )
            },
            expect: Expect::Flight(&["WebODM POST /api/projects/", SHAPE, "uploaded"]),
        },
        Case {
            name: "upload: HTTP 502 HTML page",
            rule: |_| on_target_post("upload", a(|| html(502))),
            expect: Expect::Flight(&["WebODM POST /api/projects/", "HTTP 502", "Bad Gateway"]),
        },
        Case {
            name: "commit: HTML page under 200",
            rule: |_| on_target_post("commit", a(|| html(200))),
            expect: Expect::Flight(&[
                "committing the task",
                "WebODM POST /api/projects/",
                NOT_JSON,
            ]),
        },
        Case {
            name: "commit: HTTP 400 bare array",
            rule: |_| {
                on_target_post(
                    "commit",
                    a(|| {
                        json_reply(
                            400,
                            json!(["You need to upload at least 1 file before commit"]),
                        )
                    }),
                )
            },
            expect: Expect::Flight(&["committing the task", "HTTP 400", "You need to upload"]),
        },
    ]
}

/// Runs one case; `Err` says what did not hold.
async fn run(case: &Case) -> Result<(), String> {
    let sp = spec(2, 2, 2);
    // The target is known only once the simulator generated its dataset.
    let probe = tapis_webodm_sync::sim::Dataset::generate(&sp);
    let target = probe.expected_flights().remove(0);
    let rig = Rig::new(&sp, (case.rule)(&target), Renames::default()).await;
    assert_eq!(target, target_of(&rig.sim));
    let s = rig.pass().await;
    let all = rig.sim.dataset().expected_flights();
    let key = FlightKey::new(target.system_id.clone(), target.flight.clone()).to_string();
    let same = |x: &str| x.to_string();
    let mut problems = Vec::new();
    let check_others = |skip: &dyn Fn(&ExpectedFlight) -> bool, problems: &mut Vec<String>| {
        for f in all.iter().filter(|f| !skip(f)) {
            if let Err(e) = synced(&rig.sim, f, &f.flight, &same) {
                problems.push(format!(
                    "other flight {}/{} not synced: {e}",
                    f.system_id, f.flight
                ));
            }
        }
    };
    match case.expect {
        Expect::Flight(fragments) | Expect::System(fragments) => {
            let system_wide = matches!(case.expect, Expect::System(_));
            let prefix = if system_wide {
                format!("{}:", target.system_id)
            } else {
                format!("{key}:")
            };
            let hits: Vec<&String> = s.errors.iter().filter(|e| e.starts_with(&prefix)).collect();
            match hits.as_slice() {
                [e] => {
                    for f in fragments {
                        if !e.contains(f) {
                            problems.push(format!("error lacks {f:?}: {e}"));
                        }
                    }
                }
                _ => problems.push(format!(
                    "want one error starting {prefix:?}, got {:#?}",
                    s.errors
                )),
            }
            if s.errors.len() != hits.len() {
                problems.push(format!("errors about other flights: {:#?}", s.errors));
            }
            let failed = |f: &ExpectedFlight| {
                f.system_id == target.system_id && (system_wide || f.flight == target.flight)
            };
            for f in all.iter().filter(|f| failed(f)) {
                if synced(&rig.sim, f, &f.flight, &same).is_ok() {
                    problems.push(format!(
                        "{}/{} synced despite the bad input",
                        f.system_id, f.flight
                    ));
                }
            }
            check_others(&failed, &mut problems);
        }
        Expect::Synced => {
            if !s.errors.is_empty() {
                problems.push(format!("errors: {:#?}", s.errors));
            }
            check_others(&|_| false, &mut problems);
        }
        Expect::SyncedWithout(image) => {
            if !s.errors.is_empty() {
                problems.push(format!("errors: {:#?}", s.errors));
            }
            let mut t = target.clone();
            t.images.retain(|i| i.name != image);
            if let Err(e) = synced(&rig.sim, &t, &t.flight, &same) {
                problems.push(format!("target not synced without {image}: {e}"));
            }
            check_others(
                &|f| f.system_id == target.system_id && f.flight == target.flight,
                &mut problems,
            );
        }
    }
    // No credential or token in any error.
    let creds = rig.sim.credentials().clone();
    for e in &s.errors {
        for secret in [
            &creds.tapis_password,
            &creds.webodm_password,
            &creds.tapis_client_key,
        ] {
            if e.contains(secret.as_str()) {
                problems.push(format!("error leaks a credential: {e}"));
            }
        }
        if e.contains("eyJ") {
            problems.push(format!("error leaks a token: {e}"));
        }
    }
    rig.shutdown().await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n    "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_responses_fail_one_flight_and_the_others_go_on() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} response cases", cases.len());
    let results: Vec<(&'static str, Result<(), String>)> = futures_util::stream::iter(&cases)
        .map(|c| async move { (c.name, run(c).await) })
        .buffer_unordered(6)
        .collect()
        .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}:\n    {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// A systems listing that suddenly comes back empty, or fails, or a system root that suddenly
/// lists nothing: never "every flight is gone". Nothing is marked vanished; the pass reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_failing_listings_never_mean_all_flights_gone() {
    let sp = spec(2, 2, 2);
    let probe = tapis_webodm_sync::sim::Dataset::generate(&sp);
    let target = probe.expected_flights().remove(0);
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let m = Arc::clone(&mode);
    let sys = target.system_id.clone();
    let rule: Rule = Arc::new(move |r| {
        let systems = r.is(Method::GET) && r.raw_path == "/v3/systems";
        match m.load(std::sync::atomic::Ordering::SeqCst) {
            1 if systems => json_reply(200, json!({"status":"success","result":[],"metadata":{}})),
            2 if systems => html(200),
            3 if r.tapis_list(&sys).as_deref() == Some("") => {
                json_reply(200, json!({"status":"success","result":[],"metadata":{}}))
            }
            _ => Action::Forward,
        }
    });
    let rig = Rig::new(&sp, rule, Renames::default()).await;
    let first = rig.pass().await;
    assert!(first.errors.is_empty(), "{:#?}", first.errors);
    let expected = rig.sim.dataset().expected().flights as usize;
    assert_eq!(first.projects_created, expected);
    let vanished = |rig: &Rig| {
        let store = Store::open(&rig.config.sync.state_dir).unwrap();
        store
            .flights()
            .unwrap()
            .iter()
            .filter(|r| r.vanished_ms.is_some())
            .count()
    };
    for (m, fragments) in [
        (
            1u8,
            &[
                "Tapis GET /v3/systems",
                "no system matches",
                "not believed",
                "nothing is scanned",
            ][..],
        ),
        (
            2,
            &[
                "listing Tapis systems failed",
                "Tapis GET /v3/systems",
                NOT_JSON,
            ][..],
        ),
        (
            3,
            &[
                target.system_id.as_str(),
                "lists no folder at all",
                "not believed",
            ][..],
        ),
    ] {
        mode.store(m, std::sync::atomic::Ordering::SeqCst);
        let s = rig.pass().await;
        assert_eq!(s.errors.len(), 1, "mode {m}: {:#?}", s.errors);
        for f in fragments {
            assert!(
                s.errors[0].contains(f),
                "mode {m}: {f:?} not in {}",
                s.errors[0]
            );
        }
        assert_eq!(vanished(&rig), 0, "mode {m}: flights marked vanished");
    }
    rig.shutdown().await;
}
