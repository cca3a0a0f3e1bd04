//! Who sees what, in the simulator: Tapis owners, share lists and the public flag
//! (`GET /v3/systems/share/{id}`), WebODM users and groups searched by prefix, and project
//! permissions with WebODM's replace-everything, all-or-nothing edit.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tapis_webodm_sync::sim::{DatasetSpec, Sim, SimGrantee};

mod sim_support;
use sim_support::{local, tapis_token, Webodm};

fn spec() -> DatasetSpec {
    DatasetSpec {
        seed: 5,
        systems: 4,
        flights_per_system: 1,
        images_per_flight: 2,
        image_size: 1_000,
        big_flight_images: None,
        decoys: true,
        companions: false,
    }
}

/// A logged-in client of both simulated services.
struct Api {
    webodm: Webodm,
    tapis: String,
}

impl Api {
    async fn login(sim: &Sim) -> Api {
        Api {
            webodm: Webodm::login(sim).await,
            tapis: tapis_token(sim).await,
        }
    }

    async fn share(&self, system: &str) -> (StatusCode, Value) {
        let r = self
            .webodm
            .http
            .get(format!("{}/v3/systems/share/{system}", self.webodm.base))
            .header("X-Tapis-Token", &self.tapis)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn project(&self, name: &str) -> i64 {
        let (s, v) = self
            .webodm
            .send(
                Method::POST,
                "/api/projects/",
                Some(json!({"name": name, "description": "d", "tags": ["t", ".tws-1"]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_i64().unwrap()
    }

    async fn permissions(&self, pid: i64) -> Value {
        let (s, v) = self
            .webodm
            .send(
                Method::GET,
                &format!("/api/projects/{pid}/permissions/"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }
}

fn usernames(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tapis_share_info_and_dataset_people() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let mut systems: Vec<String> = sim
        .dataset()
        .expected_flights()
        .iter()
        .map(|f| f.system_id.clone())
        .collect();
    systems.dedup();
    assert_eq!(systems.len(), 5, "{systems:?}");
    let webodm = sim.webodm_usernames();
    let mut public = 0;
    let (mut with_account, mut without_account) = (0, 0);
    let mut person_owned = 0;
    for id in &systems {
        let access = sim.system_access(id).unwrap();
        let (s, v) = api.share(id).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "success");
        assert_eq!(v["result"]["public"], access.public);
        let listed: Vec<&str> = v["result"]["userList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert_eq!(listed, access.shared_with);
        public += usize::from(access.public);
        person_owned += usize::from(access.owner != "svc-webodm");
        for u in access.shared_with.iter().chain([&access.owner]) {
            if u == "svc-webodm" {
                continue;
            }
            if webodm.contains(u) {
                with_account += 1;
            } else {
                without_account += 1;
            }
        }
    }
    assert_eq!(public, 1, "one public system");
    assert!(person_owned >= 2, "systems owned by people: {person_owned}");
    assert!(
        with_account > 0 && without_account > 0,
        "{with_account} / {without_account}"
    );
    // The public system is visible to the account only because it is public.
    let public_id = systems
        .iter()
        .find(|s| sim.system_access(s).unwrap().public)
        .unwrap();
    let access = sim.system_access(public_id).unwrap();
    assert!(!access.shared_with.contains(&"svc-webodm".to_owned()));
    assert_ne!(access.owner, "svc-webodm");

    // Gone: 404; there but not visible to the account: 403.
    let (s, v) = api.share("ptdatax.project.nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = api.share("ptdatax.project.hidden").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Share and unshare change what the endpoint says.
    let id = &systems[0];
    assert!(sim.share_system(id, "newcomer"));
    assert!(!sim.share_system(id, "newcomer"), "already shared");
    let (_, v) = api.share(id).await;
    assert!(v["result"]["userList"]
        .as_array()
        .unwrap()
        .contains(&json!("newcomer")));
    assert!(sim.unshare_system(id, "newcomer"));
    assert!(!sim.unshare_system(id, "newcomer"));
    let (_, v) = api.share(id).await;
    assert!(!v["result"]["userList"]
        .as_array()
        .unwrap()
        .contains(&json!("newcomer")));
    let stats = sim.stats();
    assert_eq!(
        stats.requests["GET /v3/systems/share/{system}"]["200"],
        5 + 2
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn users_and_groups_search_by_prefix() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    // Username or email, case-insensitive prefix: `bob` finds bob and robert (bob.r@…).
    let (s, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=BOB", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(usernames(&v), ["bob", "robert"]);
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=alice", None)
        .await;
    assert_eq!(usernames(&v), ["alice", "alice.smith"]);
    // Tapis's dave has a WebODM account under another name (found by email).
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=dave", None)
        .await;
    assert_eq!(usernames(&v), ["dave.lab"]);
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=carol", None)
        .await;
    assert_eq!(v, json!([]));
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=a", None)
        .await;
    assert!(usernames(&v).contains(&"AnonymousUser"));
    assert!(usernames(&v).contains(&"admin"));
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=a&limit=-2", None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2, "abs(limit)");
    let (s, v) = api
        .webodm
        .send(Method::GET, "/api/users/?limit=x", None)
        .await;
    assert_eq!(
        (s, v),
        (StatusCode::BAD_REQUEST, json!(["Invalid query parameters"]))
    );
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=tapis", None)
        .await;
    assert_eq!(
        v,
        json!([{"username": "tapis-sync", "email": "tapis-sync@example.org"}])
    );

    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/groups/?search=LAB-X", None)
        .await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lab-x", "lab-xray"]);
    assert!(v[0]["id"].as_i64().is_some());

    // New accounts appear.
    assert!(sim.add_webodm_user("carol"));
    assert!(!sim.add_webodm_user("carol"));
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/users/?search=carol", None)
        .await;
    assert_eq!(usernames(&v), ["carol"]);
    let id = sim.add_webodm_group("field-crew");
    assert_eq!(sim.add_webodm_group("field-crew"), id);
    let (_, v) = api
        .webodm
        .send(Method::GET, "/api/groups/?search=field", None)
        .await;
    assert_eq!(v, json!([{"name": "field-crew", "id": id}]));

    // A site with its users API off: both routes are unknown URLs (HTML 404).
    sim.set_users_api(false);
    for path in ["/api/users/?search=bob", "/api/groups/"] {
        let (s, v) = api.webodm.send(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v.as_str().unwrap().contains("<h1>Not Found</h1>"), "{v}");
    }
    sim.set_users_api(true);
    let (s, _) = api
        .webodm
        .send(Method::GET, "/api/users/?search=bob", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn edit_replaces_everything_and_keeps_the_owner() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("Flight001 (sys)").await;
    assert_eq!(
        api.permissions(pid).await,
        json!([{"username": "tapis-sync", "owner": true, "permissions": ["add", "change", "delete", "view"]}])
    );

    // A person grants bob `change` in the UI.
    assert!(sim.grant(pid, SimGrantee::User("bob".into()), &["view", "change"]));
    assert!(
        !sim.grant(pid, SimGrantee::User("carol".into()), &["view"]),
        "no such user"
    );
    assert!(!sim.grant(999, SimGrantee::Group("lab-x".into()), &["view"]));

    // An edit with only `permissions`: name, description and tags become empty, bob (left
    // out) loses access, the owner entry is ignored, alice and lab-x get what is sent.
    let (s, v) = api
        .webodm
        .send(
            Method::POST,
            &format!("/api/projects/{pid}/edit/"),
            Some(json!({"permissions": [
                {"username": "tapis-sync", "owner": true, "permissions": []},
                {"username": "alice", "permissions": ["view", "add"]},
                {"groupname": "lab-x", "permissions": ["view"]}]})),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    let (_, p) = api
        .webodm
        .send(Method::GET, &format!("/api/projects/{pid}/"), None)
        .await;
    assert_eq!(
        (&p["name"], &p["description"], &p["tags"]),
        (&json!(""), &json!(""), &json!([]))
    );
    assert_eq!(
        api.permissions(pid).await,
        json!([
            {"username": "tapis-sync", "owner": true, "permissions": ["add", "change", "delete", "view"]},
            {"username": "alice", "owner": false, "permissions": ["add", "view"]},
            {"groupname": "lab-x", "permissions": ["view"]}])
    );

    // The full round trip keeps everything: GET, add, send all back with name and tags.
    let mut perms = api.permissions(pid).await;
    perms
        .as_array_mut()
        .unwrap()
        .push(json!({"username": "erin", "permissions": ["view"]}));
    let body = json!({"name": "Flight001 (sys)", "description": "d", "tags": ["t", ".tws-1"], "permissions": perms});
    let (s, _) = api
        .webodm
        .send(
            Method::POST,
            &format!("/api/projects/{pid}/edit/"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, p) = api
        .webodm
        .send(Method::GET, &format!("/api/projects/{pid}/"), None)
        .await;
    assert_eq!(
        (&p["name"], &p["tags"]),
        (&json!("Flight001 (sys)"), &json!(["t", ".tws-1"]))
    );
    let now = api.permissions(pid).await;
    assert_eq!(now.as_array().unwrap().len(), 4, "{now}");
    assert_eq!(
        now[2],
        json!({"username": "erin", "owner": false, "permissions": ["view"]})
    );

    // Without `permissions` the list is left alone (name etc. still replaced).
    let (s, _) = api
        .webodm
        .send(
            Method::POST,
            &format!("/api/projects/{pid}/edit/"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(api.permissions(pid).await, now);

    // The report and the read-back show who may see it.
    let report = sim.report();
    let access = report.projects.iter().find(|p| p.id == pid).unwrap();
    assert_eq!(access.owner, "tapis-sync");
    assert_eq!(access.users.keys().collect::<Vec<_>>(), ["alice", "erin"]);
    assert_eq!(access.groups["lab-x"], ["view"]);
    let project = sim
        .webodm_projects()
        .into_iter()
        .find(|p| p.id == pid)
        .unwrap();
    assert_eq!(project.users["alice"], ["add", "view"]);

    // Every edit request is counted per project.
    let stats = sim.stats();
    assert_eq!(stats.project_edits[&pid], 3);
    assert_eq!(
        stats.requests["POST /api/projects/{project}/edit/"]["200"],
        3
    );
    assert_eq!(
        stats.requests["GET /api/projects/{project}/permissions/"]["200"],
        5
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn edit_is_all_or_nothing() {
    let sim = Sim::start(&spec(), local()).await.unwrap();
    let api = Api::login(&sim).await;
    let pid = api.project("P").await;
    assert!(sim.grant(pid, SimGrantee::Group("lab-x".into()), &["view"]));
    let before = api.permissions(pid).await;
    let edit = |perms: Value| json!({"name": "changed", "description": "", "tags": [], "permissions": perms});
    let cases = [
        (
            json!([{"username": "alice", "permissions": ["view"]}, {"username": "carol", "permissions": ["view"]}]),
            json!({"error": "Invalid user in permissions list"}),
        ),
        (
            json!([{"username": "alice", "permissions": ["view"]}, {"groupname": "nobody", "permissions": ["view"]}]),
            json!({"error": "Invalid group in permissions list"}),
        ),
        (json!(["alice"]), json!({"error": "Invalid permissions"})),
    ];
    for (perms, error) in cases {
        let (s, v) = api
            .webodm
            .send(
                Method::POST,
                &format!("/api/projects/{pid}/edit/"),
                Some(edit(perms)),
            )
            .await;
        assert_eq!((s, v), (StatusCode::BAD_REQUEST, error));
        assert_eq!(api.permissions(pid).await, before, "nothing applied");
        let (_, p) = api
            .webodm
            .send(Method::GET, &format!("/api/projects/{pid}/"), None)
            .await;
        assert_eq!(p["name"], "P", "name untouched");
    }
    // Usernames are case-sensitive.
    let (s, _) = api
        .webodm
        .send(
            Method::POST,
            &format!("/api/projects/{pid}/edit/"),
            Some(edit(
                json!([{"username": "Alice", "permissions": ["view"]}]),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Unknown project: 404; wrong method: 405.
    let (s, _) = api
        .webodm
        .send(
            Method::POST,
            "/api/projects/999/edit/",
            Some(edit(json!([]))),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .webodm
        .send(Method::GET, &format!("/api/projects/{pid}/edit/"), None)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = api
        .webodm
        .send(Method::GET, "/api/projects/999/permissions/", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    sim.shutdown().await;
}
