//! Simulated WebODM accounts and project sharing (`contracts/webodm.md`, "Who sees a
//! project"): users and groups searched by prefix (`/api/users/`, `/api/groups/`, both gone
//! when the site turns its users API off), a project's permissions (`…/permissions/`, owner
//! first), and `…/edit/`, which replaces name, description and tags (a missing key becomes
//! empty) and, when `permissions` is sent, the whole permission list, in one transaction: an
//! unknown user or group changes nothing.
// An edit's refusal is a ready `Response`, made once per request: its size is no concern.
#![allow(clippy::result_large_err)]

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::util::{json, param};

/// WebODM accounts besides the daemon's: (username, email). `dave` of Tapis is `dave.lab`
/// here; `carol` and `frank` have none; `robert`'s email and `alice.smith`'s name share a
/// prefix with other users, as a search by prefix finds them.
const WEBODM_USERS: [(&str, &str); 8] = [
    ("AnonymousUser", ""),
    ("admin", "admin@example.org"),
    ("alice", "alice@lab.example.org"),
    ("alice.smith", "asmith@example.org"),
    ("bob", "bob@lab.example.org"),
    ("robert", "bob.r@example.org"),
    ("erin", "erin@lab.example.org"),
    ("dave.lab", "dave@lab.example.org"),
];
/// WebODM groups (`Default` exists on every stock install).
const WEBODM_GROUPS: [&str; 4] = ["Default", "drone-team", "lab-x", "lab-xray"];
/// Permission names in the order WebODM lists them.
const PERMS: [&str; 4] = ["add", "change", "delete", "view"];

/// A user or group a project is shared with (for `Sim::grant`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SimGrantee {
    /// A WebODM user, by username.
    User(String),
    /// A WebODM group, by name.
    Group(String),
}

/// WebODM's users and groups.
#[derive(Debug)]
pub(crate) struct Accounts {
    /// (username, email), in creation order.
    users: Vec<(String, String)>,
    /// (name, id).
    groups: Vec<(String, i64)>,
    /// Whether `/api/users/` and `/api/groups/` exist (WebODM's `ENABLE_USERS_API`).
    pub api: bool,
}

impl Accounts {
    /// The stock accounts plus the daemon's (`daemon`).
    pub fn new(daemon: &str) -> Accounts {
        let mut users: Vec<(String, String)> = WEBODM_USERS
            .iter()
            .map(|(u, e)| (u.to_string(), e.to_string()))
            .collect();
        users.insert(2, (daemon.to_owned(), format!("{daemon}@example.org")));
        Accounts {
            users,
            groups: WEBODM_GROUPS
                .iter()
                .zip(1..)
                .map(|(g, id)| (g.to_string(), id))
                .collect(),
            api: true,
        }
    }

    /// Adds a user (email `<name>@example.org`); false when the name is taken.
    pub fn add_user(&mut self, name: &str) -> bool {
        if self.has_user(name) {
            return false;
        }
        self.users
            .push((name.to_owned(), format!("{name}@example.org")));
        true
    }

    /// Adds a group; its id (the existing one when the name is taken).
    pub fn add_group(&mut self, name: &str) -> i64 {
        if let Some((_, id)) = self.groups.iter().find(|(g, _)| g == name) {
            return *id;
        }
        let id = self.groups.iter().map(|(_, id)| id).max().unwrap_or(&0) + 1;
        self.groups.push((name.to_owned(), id));
        id
    }

    /// Whether a user of that exact (case-sensitive) name exists.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.iter().any(|(u, _)| u == name)
    }

    /// Whether a group of that exact name exists.
    pub fn has_group(&self, name: &str) -> bool {
        self.groups.iter().any(|(g, _)| g == name)
    }

    /// Every username, in creation order.
    pub fn usernames(&self) -> Vec<String> {
        self.users.iter().map(|(u, _)| u.clone()).collect()
    }

    /// `GET /api/users/?search=&limit=`: username or email starting with `search`, any case.
    pub fn search_users(&self, q: &[(String, String)]) -> Response {
        let found = self
            .users
            .iter()
            .filter(|(u, e)| {
                param(q, "search").is_none_or(|s| starts_with(u, s) || starts_with(e, s))
            })
            .map(|(u, e)| json!({"username": u, "email": e}));
        limited(found, q)
    }

    /// `GET /api/groups/?search=&limit=`: names starting with `search`, any case, by name.
    pub fn search_groups(&self, q: &[(String, String)]) -> Response {
        let mut groups: Vec<&(String, i64)> = self.groups.iter().collect();
        groups.sort();
        let found = groups
            .into_iter()
            .filter(|(g, _)| param(q, "search").is_none_or(|s| starts_with(g, s)))
            .map(|(g, id)| json!({"name": g, "id": id}));
        limited(found, q)
    }
}

/// Case-insensitive prefix (Django's `istartswith`).
fn starts_with(text: &str, prefix: &str) -> bool {
    text.to_lowercase().starts_with(&prefix.to_lowercase())
}

/// A search answer cut to `limit` (its absolute value) when given.
fn limited(items: impl Iterator<Item = Value>, q: &[(String, String)]) -> Response {
    let limit = match param(q, "limit").map(|l| l.trim().parse::<i64>()) {
        None => usize::MAX,
        Some(Ok(n)) => n.unsigned_abs() as usize,
        Some(Err(_)) => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!(["Invalid query parameters"]),
            )
        }
    };
    json(StatusCode::OK, &Value::Array(items.take(limit).collect()))
}

/// Who may see a project besides its owner (who always has every permission).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Perms {
    pub owner: String,
    /// (username, permissions in WebODM's order), in the order they were first granted.
    pub users: Vec<(String, Vec<String>)>,
    /// (group name, permissions).
    pub groups: Vec<(String, Vec<String>)>,
}

/// The permission names of `given` that WebODM knows, in its order.
fn normalized(given: impl Fn(&str) -> bool) -> Vec<String> {
    PERMS
        .iter()
        .filter(|p| given(p))
        .map(|p| p.to_string())
        .collect()
}

/// Sets `name`'s permissions in `list` (none removes it).
fn set(list: &mut Vec<(String, Vec<String>)>, name: &str, perms: Vec<String>) {
    match list.iter().position(|(n, _)| n == name) {
        Some(i) if perms.is_empty() => {
            list.remove(i);
        }
        Some(i) => list[i].1 = perms,
        None if perms.is_empty() => {}
        None => list.push((name.to_owned(), perms)),
    }
}

impl Perms {
    /// A new project's: only its owner.
    pub fn owned_by(owner: &str) -> Perms {
        Perms {
            owner: owner.to_owned(),
            ..Perms::default()
        }
    }

    /// Sets what `who` may do (a person's change in WebODM's UI); the owner is never changed.
    pub fn grant(&mut self, who: &SimGrantee, perms: &[&str]) {
        let perms = normalized(|p| perms.contains(&p));
        match who {
            SimGrantee::User(u) if *u == self.owner => {}
            SimGrantee::User(u) => set(&mut self.users, u, perms),
            SimGrantee::Group(g) => set(&mut self.groups, g, perms),
        }
    }

    /// `GET …/permissions/`: the owner first, then users, then groups.
    pub fn answer(&self, accounts: &Accounts) -> Response {
        let mut items = vec![json!({"username": self.owner, "owner": true, "permissions": PERMS})];
        items.extend(
            self.users
                .iter()
                .map(|(u, p)| json!({"username": u, "owner": false, "permissions": p})),
        );
        items.extend(
            self.groups
                .iter()
                .map(|(g, p)| json!({"groupname": g, "permissions": p})),
        );
        let mut r = json(StatusCode::OK, &Value::Array(items));
        r.headers_mut()
            .insert("x-groups-count", HeaderValue::from(accounts.groups.len()));
        r
    }
}

/// What a valid edit sets.
#[derive(Debug)]
pub(crate) struct Edit {
    pub name: String,
    pub description: String,
    /// Space-joined, as stored.
    pub tags: String,
    /// The new permission list, when `permissions` was sent.
    pub perms: Option<Perms>,
}

/// Why an edit is refused: the answer to send (nothing of the edit is applied).
pub(crate) type Refusal = Response;

/// Validates `POST …/edit/` against the project's `current` permissions, the way WebODM's
/// transaction ends: `Ok` with everything to store, or the answer of a rolled-back edit.
pub(crate) fn edit(body: &Value, current: &Perms, accounts: &Accounts) -> Result<Edit, Refusal> {
    let server_error = || super::webodm::fault_error(StatusCode::INTERNAL_SERVER_ERROR);
    let refuse = |msg: &str| json(StatusCode::BAD_REQUEST, &json!({ "error": msg }));
    // `request.data.get(key, '')`; a null name or description fails the NOT NULL column.
    let text = |key: &str| match body.get(key) {
        None => Ok(String::new()),
        Some(Value::Null) => Err(server_error()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(py_str(other)),
    };
    let name = text("name")?;
    if name.chars().count() > 255 {
        return Err(server_error());
    }
    let description = text("description")?;
    let tags = edit_tags(body.get("tags"));
    let perms = match body.get("permissions") {
        None | Some(Value::Null) => None,
        Some(form) => Some(edit_perms(form, current, accounts).map_err(|e| match e {
            PermsError::Server => server_error(),
            PermsError::Invalid => refuse("Invalid permissions"),
            PermsError::User => refuse("Invalid user in permissions list"),
            PermsError::Group => refuse("Invalid group in permissions list"),
        })?),
    };
    Ok(Edit {
        name,
        description,
        tags,
        perms,
    })
}

/// Python's `str()` of a JSON value.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// `parse_tags_input` then `TagsField`: a list (items as strings) or a string holding a JSON
/// list; anything else is no tags.
fn edit_tags(v: Option<&Value>) -> String {
    let items: Vec<String> = match v {
        Some(Value::Array(a)) => a.iter().map(py_str).collect(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => a.iter().map(py_str).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items.iter().map(|t| t.trim()).collect::<Vec<_>>().join(" ")
}

/// How WebODM's permission loop fails.
enum PermsError {
    /// A Python error outside the handled ones (HTTP 500).
    Server,
    /// An item that is not an object (`AttributeError`).
    Invalid,
    /// An unknown username.
    User,
    /// An unknown group name.
    Group,
}

/// Whether `p` is "in" a form's permission value, as Python's `in` reads it.
fn holds(value: &Value, p: &str) -> Result<bool, PermsError> {
    match value {
        Value::Array(a) => Ok(a.iter().any(|v| v.as_str() == Some(p))),
        Value::String(s) => Ok(s.contains(p)),
        Value::Object(o) => Ok(o.contains_key(p)),
        _ => Err(PermsError::Server),
    }
}

/// The permission list an edit's `permissions` makes, replacing the current one.
fn edit_perms(form: &Value, current: &Perms, accounts: &Accounts) -> Result<Perms, PermsError> {
    let items: Vec<Value> = match form {
        Value::Array(a) => a.clone(),
        // A string iterates characters and an object its keys: neither has `.get`.
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::Object(o) if o.is_empty() => Vec::new(),
        Value::String(_) | Value::Object(_) => return Err(PermsError::Invalid),
        _ => return Err(PermsError::Server),
    };
    let truthy_str = |v: Option<&Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Null | Value::Bool(false)) | None => None,
        Some(Value::String(_)) => None,
        Some(other) => Some(py_str(other)),
    };
    let mut users: Map<String, Value> = Map::new();
    let mut groups: Map<String, Value> = Map::new();
    for item in &items {
        let Value::Object(perm) = item else {
            return Err(PermsError::Invalid);
        };
        let owner = perm
            .get("owner")
            .is_some_and(|o| !matches!(o, Value::Null | Value::Bool(false)));
        if let Some(g) = truthy_str(perm.get("groupname")) {
            groups.insert(
                g,
                perm.get("permissions").cloned().ok_or(PermsError::Server)?,
            );
        } else if let (false, Some(u)) = (owner, truthy_str(perm.get("username"))) {
            users.insert(
                u,
                perm.get("permissions").cloned().ok_or(PermsError::Server)?,
            );
        }
    }
    let mut next = Perms::owned_by(&current.owner);
    // Users kept or changed stay where they were; new ones come after.
    for (u, _) in &current.users {
        if let Some(form) = users.get(u) {
            set(&mut next.users, u, normalized_form(form)?);
        }
    }
    for (u, form) in &users {
        if !accounts.has_user(u) {
            return Err(PermsError::User);
        }
        if *u != current.owner {
            set(&mut next.users, u, normalized_form(form)?);
        }
    }
    for (g, _) in &current.groups {
        if let Some(form) = groups.get(g) {
            set(&mut next.groups, g, normalized_form(form)?);
        }
    }
    for (g, form) in &groups {
        if !accounts.has_group(g) {
            return Err(PermsError::Group);
        }
        set(&mut next.groups, g, normalized_form(form)?);
    }
    Ok(next)
}

/// The known permission names a form value holds.
fn normalized_form(form: &Value) -> Result<Vec<String>, PermsError> {
    let mut out = Vec::new();
    for p in PERMS {
        if holds(form, p)? {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Accounts {
        Accounts::new("tapis-sync")
    }

    #[test]
    fn edit_replaces_the_list_but_never_the_owner() {
        let mut current = Perms::owned_by("tapis-sync");
        current.grant(&SimGrantee::User("alice".into()), &["view", "add"]);
        current.grant(&SimGrantee::User("bob".into()), &["view"]);
        let body = json!({"name": "n", "permissions": [
            {"username": "tapis-sync", "owner": true, "permissions": []},
            {"username": "bob", "permissions": ["view", "change", "fly"]},
            {"groupname": "lab-x", "permissions": "view"}]});
        let e = edit(&body, &current, &accounts()).unwrap();
        let p = e.perms.unwrap();
        assert_eq!(p.owner, "tapis-sync");
        assert_eq!(
            p.users,
            [(
                "bob".to_owned(),
                vec!["change".to_owned(), "view".to_owned()]
            )]
        );
        assert_eq!(p.groups, [("lab-x".to_owned(), vec!["view".to_owned()])]);
        assert_eq!((e.description.as_str(), e.tags.as_str()), ("", ""));
    }

    #[test]
    fn edit_refusals() {
        let current = Perms::owned_by("tapis-sync");
        let status = |body: Value| match edit(&body, &current, &accounts()) {
            Ok(_) => 200,
            Err(r) => r.status().as_u16(),
        };
        assert_eq!(
            status(json!({"permissions": [{"username": "carol", "permissions": []}]})),
            400
        );
        assert_eq!(
            status(json!({"permissions": [{"groupname": "nope", "permissions": []}]})),
            400
        );
        assert_eq!(status(json!({"permissions": ["alice"]})), 400);
        assert_eq!(status(json!({"permissions": [{"username": "alice"}]})), 500);
        assert_eq!(status(json!({"name": null})), 500);
        assert_eq!(status(json!({"permissions": null})), 200);
        assert_eq!(edit_tags(Some(&json!("[\"a\", \"b\"]"))), "a b");
        assert_eq!(edit_tags(Some(&json!("ab"))), "");
    }
}
