//! Token issuing and checking for both simulated services. Tokens look like real JWTs but are
//! validated by looking them up in a table.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use super::util::unix;

/// Which service issued a token, and for what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    TapisAccess,
    TapisRefresh,
    Webodm,
}

/// A token issued by the simulator.
#[derive(Clone, Debug)]
pub(crate) struct Issued {
    pub token: String,
    pub jti: String,
    pub expires: SystemTime,
}

/// Outcome of checking a presented token.
pub(crate) enum Check {
    /// Valid; the username.
    Valid(String),
    /// Known but past its expiry.
    Expired(SystemTime),
    /// Known but revoked.
    Revoked,
    /// Not issued by us (or of another kind).
    Unknown,
}

#[derive(Debug)]
struct Record {
    kind: Kind,
    username: String,
    expires: SystemTime,
    revoked: bool,
}

/// Issued tokens and their lifetimes.
#[derive(Debug)]
pub(crate) struct Tokens {
    pub tapis_ttl: Duration,
    pub webodm_ttl: Duration,
    /// Lifetime of Tapis access tokens and WebODM tokens when set (`Faults::token_ttl`).
    pub ttl_override: Option<Duration>,
    refresh_ttl: Duration,
    table: HashMap<String, Record>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            tapis_ttl: Duration::from_secs(4 * 3600),
            webodm_ttl: Duration::from_secs(6 * 3600),
            ttl_override: None,
            refresh_ttl: Duration::from_secs(365 * 86_400),
            table: HashMap::new(),
        }
    }
}

impl Tokens {
    /// Issues a token of `kind` for `username`.
    pub fn issue(&mut self, kind: Kind, username: &str) -> Issued {
        let ttl = match kind {
            Kind::TapisAccess => self.ttl_override.unwrap_or(self.tapis_ttl),
            Kind::TapisRefresh => self.refresh_ttl,
            Kind::Webodm => self.ttl_override.unwrap_or(self.webodm_ttl),
        };
        let now = SystemTime::now();
        let expires = now + ttl;
        let exp = unix(expires).as_secs();
        let jti = super::util::uuid4();
        let (header, payload) = match kind {
            Kind::Webodm => (
                json!({"typ": "JWT", "alg": "HS256"}),
                json!({"user_id": 1, "email": format!("{username}@example.org"), "username": username, "exp": exp}),
            ),
            Kind::TapisAccess | Kind::TapisRefresh => (
                json!({"typ": "JWT", "alg": "RS256"}),
                json!({
                    "jti": jti,
                    "iss": "https://sim.tapis.io/v3/tokens",
                    "sub": format!("{username}@sim"),
                    "tapis/tenant_id": "sim",
                    "tapis/token_type": if kind == Kind::TapisAccess { "access" } else { "refresh" },
                    "tapis/delegation": false,
                    "tapis/username": username,
                    "tapis/account_type": "user",
                    "iat": unix(now).as_secs(),
                    "exp": exp,
                }),
            ),
        };
        let sig: [u8; 32] = rand::random();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        );
        self.table.insert(
            token.clone(),
            Record {
                kind,
                username: username.to_owned(),
                expires,
                revoked: false,
            },
        );
        Issued {
            token,
            jti,
            expires,
        }
    }

    /// Checks a presented token of `kind`.
    pub fn check(&self, kind: Kind, token: &str) -> Check {
        match self.table.get(token) {
            Some(r) if r.kind == kind => {
                if r.revoked {
                    Check::Revoked
                } else if SystemTime::now() >= r.expires {
                    Check::Expired(r.expires)
                } else {
                    Check::Valid(r.username.clone())
                }
            }
            _ => Check::Unknown,
        }
    }

    /// Revokes one token (unknown tokens are ignored).
    pub fn revoke(&mut self, token: &str) {
        if let Some(r) = self.table.get_mut(token) {
            r.revoked = true;
        }
    }

    /// Revokes every token of `kind` issued so far.
    pub fn revoke_all(&mut self, kind: Kind) {
        for r in self.table.values_mut().filter(|r| r.kind == kind) {
            r.revoked = true;
        }
    }
}
