//! Who sees a flight's project in WebODM, over real HTTP against the simulator: exactly the
//! people who can see the flight on Tapis (owner and share list, mapped to WebODM usernames)
//! plus the fixed users and groups; nobody else; never a permission removed or changed.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::{assert_no_errors, small_spec, Rig};
use tapis_webodm_sync::engine::state::Store;
use tapis_webodm_sync::service::status;
use tapis_webodm_sync::sim::{Sim, SimGrantee};

/// The daemon's Tapis account (it owns or is shared every system it sees; never granted).
const DAEMON_TAPIS: &str = "svc-webodm";

async fn rig() -> Rig {
    let mut rig = Rig::new(&small_spec()).await;
    let a = &mut rig.config.access;
    a.tapis_owner = true;
    a.tapis_shares = true;
    a.usernames.insert("dave".into(), "dave.lab".into());
    a.users = vec!["erin".into()];
    a.groups = vec!["lab-x".into()];
    rig
}

/// Who should see the projects of `system`: its owner and share list (mapped; the daemon's own
/// account left out) that have a WebODM account, plus the fixed users; and who waits.
fn expected_users(rig: &Rig, system: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let access = rig.sim.system_access(system).unwrap();
    let accounts: BTreeSet<String> = rig.sim.webodm_usernames().into_iter().collect();
    let mut names: BTreeSet<String> = std::iter::once(access.owner)
        .chain(access.shared_with)
        .filter(|u| u != DAEMON_TAPIS)
        .map(|u| rig.config.access.usernames.get(&u).cloned().unwrap_or(u))
        .collect();
    names.extend(rig.config.access.users.iter().cloned());
    let (have, waiting) = names.into_iter().partition(|n| accounts.contains(n));
    (have, waiting)
}

/// Name → permissions.
type Perms = BTreeMap<String, Vec<String>>;

/// Per project (by flight): its users and groups with their permissions, from the simulator.
fn shares(sim: &Sim) -> BTreeMap<(String, String), (Perms, Perms)> {
    sim.report()
        .projects
        .into_iter()
        .map(|p| {
            (
                (p.system_id.unwrap(), p.flight.unwrap()),
                (p.users, p.groups),
            )
        })
        .collect()
}

fn view() -> Vec<String> {
    vec!["view".into()]
}

/// WebODM write requests so far (every POST, PATCH, PUT, DELETE but logins).
fn webodm_writes(sim: &Sim) -> u64 {
    sim.stats()
        .requests
        .iter()
        .filter(|(route, _)| {
            let write = ["POST ", "PATCH ", "PUT ", "DELETE "]
                .iter()
                .any(|m| route.starts_with(m));
            write && route.contains("/api/") && !route.contains("token-auth")
        })
        .map(|(_, by_status)| by_status.values().sum::<u64>())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_project_is_seen_by_exactly_who_sees_the_flight_on_tapis() {
    let rig = rig().await;
    // The plan lists the grants before anything is done.
    let planned = rig.dry_run().await;
    assert!(planned.plan.grants() > 0, "{:?}", planned.plan);
    let first = rig.pass().await;
    assert_no_errors(&first);
    assert_eq!(first.grants_added, planned.plan.grants());
    support::assert_synced_exactly(&rig.sim);
    let got = shares(&rig.sim);
    assert_eq!(got.len() as u64, rig.sim.dataset().expected().flights);
    let mut waiting_somewhere = false;
    for ((system, flight), (users, groups)) in &got {
        let (want, waiting) = expected_users(&rig, system);
        waiting_somewhere |= !waiting.is_empty();
        let want: BTreeMap<String, Vec<String>> = want.into_iter().map(|u| (u, view())).collect();
        assert_eq!(users, &want, "users of {flight} ({system})");
        let want_groups: BTreeMap<String, Vec<String>> = [("lab-x".to_string(), view())].into();
        assert_eq!(groups, &want_groups, "groups of {flight} ({system})");
    }
    assert!(
        waiting_somewhere,
        "the dataset has Tapis users without a WebODM account"
    );

    // `status` shows who waits for an account, per flight.
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    for row in status::rows(&store).unwrap() {
        let (have, waiting) = expected_users(&rig, &row.system_id);
        let waiting: Vec<String> = waiting.into_iter().collect();
        assert_eq!(row.access_waiting, waiting, "{}", row.flight_name);
        assert!(row.shared_with.contains(&"group lab-x".to_string()));
        for u in have {
            assert!(row.shared_with.contains(&u), "{u} in {:?}", row.shared_with);
        }
    }
    drop(store);

    // Who sees a system came with the systems listing: no share lookup per system.
    assert!(
        !rig.sim
            .stats()
            .requests
            .contains_key("GET /v3/systems/share/{system}"),
        "{:?}",
        rig.sim.stats().requests.keys().collect::<Vec<_>>()
    );

    // Nothing new: no WebODM write at all.
    let writes = webodm_writes(&rig.sim);
    let second = rig.pass().await;
    assert_no_errors(&second);
    assert_eq!(second.grants_added, 0);
    assert_eq!(
        webodm_writes(&rig.sim),
        writes,
        "an unchanged pass writes nothing"
    );
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_accounts_and_shares_get_access_and_a_persons_permissions_stand() {
    let rig = rig().await;
    assert_no_errors(&rig.pass().await);
    let before: BTreeMap<i64, (String, String, Vec<String>)> = rig
        .sim
        .webodm_projects()
        .into_iter()
        .map(|p| (p.id, (p.name, p.description, p.tags)))
        .collect();

    // A person widens bob's permission on one project and adds robert to another.
    let projects = rig.sim.report().projects;
    let with_bob = projects
        .iter()
        .find(|p| p.users.contains_key("bob"))
        .unwrap();
    let other = projects.iter().find(|p| p.id != with_bob.id).unwrap();
    let bob_perms = ["view", "change", "delete"];
    assert!(rig
        .sim
        .grant(with_bob.id, SimGrantee::User("bob".into()), &bob_perms));
    assert!(rig.sim.grant(
        other.id,
        SimGrantee::User("robert".into()),
        &["view", "add"]
    ));

    // carol gets a WebODM account: she is given access on the next pass.
    assert!(rig.sim.add_webodm_user("carol"));
    let second = rig.pass().await;
    assert_no_errors(&second);
    let carol_systems: BTreeSet<String> = shares(&rig.sim)
        .keys()
        .map(|(s, _)| s.clone())
        .filter(|s| {
            let a = rig.sim.system_access(s).unwrap();
            a.owner == "carol" || a.shared_with.iter().any(|u| u == "carol")
        })
        .collect();
    assert!(
        !carol_systems.is_empty(),
        "carol is on some system's share list"
    );
    let carol_projects = shares(&rig.sim)
        .iter()
        .filter(|((s, _), _)| carol_systems.contains(s))
        .count();
    assert_eq!(second.grants_added, carol_projects, "only carol is new");
    for ((system, flight), (users, _)) in shares(&rig.sim) {
        assert_eq!(
            users.contains_key("carol"),
            carol_systems.contains(&system),
            "carol on {flight} ({system})"
        );
    }
    // A system is newly shared on Tapis with someone who has an account.
    let some_system = shares(&rig.sim).keys().next().unwrap().0.clone();
    assert!(rig.sim.share_system(&some_system, "alice.smith"));
    let third = rig.pass().await;
    assert_no_errors(&third);
    assert!(third.grants_added > 0);

    for _ in 0..2 {
        assert_no_errors(&rig.pass().await);
    }
    let after = shares(&rig.sim);
    let p = rig.sim.report().projects;
    let bob_now = &p.iter().find(|q| q.id == with_bob.id).unwrap().users["bob"];
    assert_eq!(
        bob_now,
        &vec!["change", "delete", "view"],
        "bob's widened permission stands"
    );
    let robert = &p.iter().find(|q| q.id == other.id).unwrap().users["robert"];
    assert_eq!(robert, &vec!["add", "view"], "a person's own grant stands");
    for ((system, flight), (users, _)) in &after {
        if system == &some_system {
            assert!(users.contains_key("alice.smith"), "{flight}");
        }
    }
    // No edit ever changed a name, description or tags.
    for p in rig.sim.webodm_projects() {
        assert_eq!(
            before.get(&p.id),
            Some(&(p.name.clone(), p.description.clone(), p.tags.clone())),
            "project {}",
            p.id
        );
    }
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshared_on_tapis_is_reported_but_not_revoked() {
    let rig = rig().await;
    assert_no_errors(&rig.pass().await);
    let (system, user) = shares(&rig.sim)
        .into_iter()
        .find_map(|((s, _), _)| {
            let a = rig.sim.system_access(&s).unwrap();
            a.shared_with
                .iter()
                .find(|u| *u == "alice" || *u == "bob")
                .map(|u| (s.clone(), u.clone()))
        })
        .unwrap();
    assert!(rig.sim.unshare_system(&system, &user));
    let writes = webodm_writes(&rig.sim);
    assert_no_errors(&rig.pass().await);
    assert_eq!(webodm_writes(&rig.sim), writes, "nothing revoked");
    for ((s, flight), (users, _)) in shares(&rig.sim) {
        if s == system {
            assert!(users.contains_key(&user), "{user} keeps {flight}");
        }
    }
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    let rows = status::rows(&store).unwrap();
    let on_system: Vec<_> = rows.iter().filter(|r| r.system_id == system).collect();
    assert!(!on_system.is_empty());
    assert!(on_system.iter().all(|r| r.unshared == vec![user.clone()]));
    rig.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_users_api_grants_are_tried_one_name_at_a_time() {
    let rig = rig().await;
    rig.sim.set_users_api(false);
    // And a Tapis whose systems listing carries no share lists: one lookup per system.
    rig.sim.set_faults(tapis_webodm_sync::sim::Faults {
        listing_without_shares: true,
        ..Default::default()
    });
    let s = rig.pass().await;
    assert_no_errors(&s);
    for ((system, flight), (users, groups)) in shares(&rig.sim) {
        let (want, _) = expected_users(&rig, &system);
        let got: BTreeSet<String> = users.keys().cloned().collect();
        assert_eq!(got, want, "{flight} ({system})");
        assert!(groups.contains_key("lab-x"));
    }
    let lookups: u64 = rig.sim.stats().requests["GET /v3/systems/share/{system}"]
        .values()
        .sum();
    assert_eq!(
        lookups as usize, s.systems_scanned,
        "one share lookup per system"
    );
    // Who has no account is known after the failed edit, and shown.
    let store = Store::open(&rig.config.sync.state_dir).unwrap();
    let rows = status::rows(&store).unwrap();
    assert!(rows.iter().any(|r| !r.access_waiting.is_empty()));
    rig.sim.shutdown().await;
}
