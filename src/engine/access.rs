//! Who sees a flight's project in WebODM: the people who can see the flight on Tapis.
//!
//! The daemon's own WebODM account owns every project. Per system and pass, [`Resolver`] works
//! out who else should see its flights' projects ([`Access`]): the Tapis owner
//! (`access.tapis_owner`), the users the system is shared with (`access.tapis_shares`; from
//! the systems listing, else one share-info call per system), each mapped through
//! `access.usernames`, plus the fixed
//! `access.users` and `access.groups` — each looked up in WebODM (`/api/users/?search=`,
//! compared exactly, cached for the pass). A name without a WebODM account waits, shown in
//! `status`, and is granted on a later pass once the account exists.
//!
//! [`grant`] adds what a project is missing and never removes or changes a permission: it reads
//! the project's permissions, adds an entry (with `access.permissions`) for each grantee that
//! has none, and sends the whole list back with the project's current name, description and
//! tags (WebODM's edit replaces them all). What the daemon granted is recorded per flight, so a
//! pass with nothing new makes no WebODM write.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{info, warn};

use crate::clients::tapis::{System, TapisClient};
use crate::clients::webodm::{Grantee, PermissionEntry, ProjectEdit, WebodmClient};
use crate::clients::ApiError;
use crate::config::AccessConfig;

/// Who should see the projects of one system's flights, as resolved this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// WebODM users (with an account, or unverified when the site's users API is off) and
    /// groups (that exist) to grant.
    pub grantees: BTreeSet<Grantee>,
    /// WebODM usernames that should see the projects but have no account yet.
    pub waiting: BTreeSet<String>,
}

/// What granting did for one project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// Grantees now holding a permission on the project: added now, or already there (set by
    /// a person or an earlier pass, and left as they were).
    pub present: BTreeSet<Grantee>,
    /// How many entries this call added in WebODM.
    pub added: usize,
    /// Users WebODM did not know ("Invalid user"): they wait for an account.
    pub unknown_users: BTreeSet<String>,
}

/// Whether a WebODM user or group exists, as looked up this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exists {
    Yes,
    No,
    /// The site turned its users API off: tried when granting.
    Unknown,
}

/// Resolves [`Access`] per system for one pass, caching WebODM lookups.
pub struct Resolver<'a> {
    config: &'a AccessConfig,
    tapis: &'a TapisClient,
    webodm: &'a WebodmClient,
    /// The daemon's own accounts: never granted (its WebODM account owns the projects).
    own_tapis: &'a str,
    own_webodm: &'a str,
    users: tokio::sync::Mutex<BTreeMap<String, Exists>>,
    groups: tokio::sync::Mutex<BTreeMap<String, bool>>,
    users_api_off: AtomicBool,
}

impl<'a> Resolver<'a> {
    /// A resolver for one pass; `own_tapis` / `own_webodm` are the daemon's usernames.
    pub fn new(
        config: &'a AccessConfig,
        tapis: &'a TapisClient,
        webodm: &'a WebodmClient,
        own_tapis: &'a str,
        own_webodm: &'a str,
    ) -> Self {
        Resolver {
            config,
            tapis,
            webodm,
            own_tapis,
            own_webodm,
            users: Default::default(),
            groups: Default::default(),
            users_api_off: AtomicBool::new(false),
        }
    }

    /// Whether any grant can follow from the config (else nothing is looked up).
    pub fn enabled(&self) -> bool {
        let c = self.config;
        c.tapis_owner || c.tapis_shares || !c.users.is_empty() || !c.groups.is_empty()
    }

    /// Who should see the projects of `system`'s flights; an error (naming the system) when
    /// its share list cannot be read — its flights then get no grant this pass.
    pub async fn system(&self, system: &System) -> Result<Access, String> {
        let c = self.config;
        let mut tapis_users: BTreeSet<String> = BTreeSet::new();
        if c.tapis_owner {
            tapis_users.extend(system.owner.clone());
        }
        if c.tapis_shares {
            // The systems listing carries the share list; the share endpoint is the fallback
            // for a server that leaves it out.
            let (public, users) = match &system.shared_with_users {
                Some(users) => (system.is_public.unwrap_or(false), users.clone()),
                None => {
                    let share = self.tapis.share_info(&system.id).await.map_err(|e| {
                        format!(
                            "{}: reading who the system is shared with failed: {e}; its \
                             projects get no new grant this pass",
                            system.id
                        )
                    })?;
                    (share.public, share.users)
                }
            };
            if public {
                log_public_once(&system.id);
            }
            tapis_users.extend(users);
        }
        tapis_users.remove(self.own_tapis);
        let mut names: BTreeSet<String> = tapis_users
            .iter()
            .map(|u| c.usernames.get(u).cloned().unwrap_or_else(|| u.clone()))
            .collect();
        names.extend(c.users.iter().cloned());
        names.remove(self.own_webodm);
        names.remove("AnonymousUser");
        let mut access = Access::default();
        for name in names {
            match self.user(&name).await.map_err(|e| {
                format!("{}: looking up WebODM user {name:?} failed: {e}", system.id)
            })? {
                Exists::Yes | Exists::Unknown => {
                    access.grantees.insert(Grantee::User(name));
                }
                Exists::No => {
                    access.waiting.insert(name);
                }
            }
        }
        for group in &c.groups {
            if self.group(group).await.map_err(|e| {
                format!(
                    "{}: looking up WebODM group {group:?} failed: {e}",
                    system.id
                )
            })? {
                access.grantees.insert(Grantee::Group(group.clone()));
            }
        }
        Ok(access)
    }

    /// Whether a WebODM user exists (looked up once per pass).
    async fn user(&self, name: &str) -> Result<Exists, ApiError> {
        let mut users = self.users.lock().await;
        if let Some(&known) = users.get(name) {
            return Ok(known);
        }
        let found = if self.users_api_off.load(Ordering::SeqCst) {
            Exists::Unknown
        } else {
            match self.webodm.find_users(name).await {
                Ok(list) if list.iter().any(|u| u.username == name) => Exists::Yes,
                Ok(_) => Exists::No,
                Err(e) if e.is_not_found() => {
                    self.users_api_off.store(true, Ordering::SeqCst);
                    log_users_api_off_once();
                    Exists::Unknown
                }
                Err(e) => return Err(e),
            }
        };
        users.insert(name.to_string(), found);
        Ok(found)
    }

    /// Whether a WebODM group exists (looked up once per pass; assumed to when the users API is
    /// off: the edit says otherwise).
    async fn group(&self, name: &str) -> Result<bool, ApiError> {
        let mut groups = self.groups.lock().await;
        if let Some(&known) = groups.get(name) {
            return Ok(known);
        }
        let exists = match self.webodm.find_groups(name).await {
            Ok(list) => list.iter().any(|g| g.name == name),
            Err(e) if e.is_not_found() => true,
            Err(e) => return Err(e),
        };
        if !exists {
            warn!(
                group = name,
                "WebODM group in access.groups does not exist; `check-config` reports it"
            );
        }
        groups.insert(name.to_string(), exists);
        Ok(exists)
    }
}

/// Logs once per process that a system is public on Tapis (nobody extra is granted for it).
fn log_public_once(system: &str) {
    static LOGGED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut logged = LOGGED
        .get_or_init(Default::default)
        .lock()
        .expect("logged lock");
    if logged.insert(system.to_string()) {
        info!(
            system,
            "system is public on Tapis: every user of the tenant may read it; only its owner and \
             the users it is shared with by name get its projects in WebODM"
        );
    }
}

/// Logs once per process that the site's users API is off.
fn log_users_api_off_once() {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::SeqCst) {
        warn!(
            "WebODM answers 404 for /api/users/ (its users API is turned off): names are not \
             checked first; a grant naming an unknown user is retried one name at a time"
        );
    }
}

/// The grantees of `wanted` that `entries` has no entry for.
fn missing(entries: &[PermissionEntry], wanted: &BTreeSet<Grantee>) -> BTreeSet<Grantee> {
    wanted
        .iter()
        .filter(|g| !entries.iter().any(|e| &e.grantee == *g))
        .cloned()
        .collect()
}

/// Grants `wanted` on `project` with `permissions`, adding an entry for each grantee that has
/// none and leaving every other entry exactly as it is. A grantee that already holds any
/// permission (a person's or an earlier pass's) counts as present and is not touched.
pub async fn grant(
    webodm: &WebodmClient,
    project: i64,
    wanted: &BTreeSet<Grantee>,
    permissions: &[String],
) -> Result<Granted, ApiError> {
    let entries = webodm.project_permissions(project).await?;
    let mut out = Granted::default();
    let to_add = missing(&entries, wanted);
    out.present = wanted.difference(&to_add).cloned().collect();
    if to_add.is_empty() {
        return Ok(out);
    }
    let current = webodm.get_project(project).await?;
    let others: Vec<PermissionEntry> = entries.into_iter().filter(|e| !e.owner).collect();
    let edit = |adding: &BTreeSet<Grantee>| {
        let mut list = others.clone();
        list.extend(adding.iter().map(|g| PermissionEntry {
            grantee: g.clone(),
            owner: false,
            permissions: permissions.to_vec(),
        }));
        ProjectEdit {
            name: current.name.clone(),
            description: current.description.clone(),
            tags: current.tags.clone(),
            permissions: Some(list),
        }
    };
    match webodm.edit_project(project, &edit(&to_add)).await {
        Ok(()) => {
            out.added = to_add.len();
            out.present.extend(to_add);
            return Ok(out);
        }
        // WebODM applied nothing: some user does not exist (the users API is off, or an account
        // went away). One name at a time finds out which.
        Err(e) if e.is_invalid_user() => {}
        Err(e) => return Err(e),
    }
    let mut granted_so_far = BTreeSet::new();
    for g in to_add {
        let mut adding = granted_so_far.clone();
        adding.insert(g.clone());
        match webodm.edit_project(project, &edit(&adding)).await {
            Ok(()) => {
                granted_so_far = adding;
            }
            Err(e) if e.is_invalid_user() => {
                if let Grantee::User(name) = g {
                    out.unknown_users.insert(name);
                }
            }
            Err(e) => return Err(e),
        }
    }
    out.added = granted_so_far.len();
    out.present.extend(granted_so_far);
    Ok(out)
}

/// How a grantee is shown (`alice`, `group lab-x`).
pub fn shown(g: &Grantee) -> String {
    match g {
        Grantee::User(u) => u.clone(),
        Grantee::Group(name) => format!("group {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(g: Grantee, owner: bool, perms: &[&str]) -> PermissionEntry {
        PermissionEntry {
            grantee: g,
            owner,
            permissions: perms.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn only_grantees_without_any_entry_are_missing() {
        let entries = vec![
            entry(Grantee::User("tapis-sync".into()), true, &["view", "add"]),
            entry(Grantee::User("alice".into()), false, &["view", "change"]),
            entry(Grantee::Group("lab-x".into()), false, &["view"]),
        ];
        let wanted: BTreeSet<Grantee> = [
            Grantee::User("alice".into()),
            Grantee::User("bob".into()),
            Grantee::Group("lab-x".into()),
            Grantee::Group("drone-team".into()),
        ]
        .into();
        let m = missing(&entries, &wanted);
        assert_eq!(
            m,
            [
                Grantee::User("bob".into()),
                Grantee::Group("drone-team".into())
            ]
            .into()
        );
        assert_eq!(shown(&Grantee::Group("lab-x".into())), "group lab-x");
    }
}
