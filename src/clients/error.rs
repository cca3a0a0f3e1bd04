//! Why a call to Tapis or WebODM failed, and the one place each failure is classified
//! (retryable or not, not found, the server's `Retry-After`).

use std::time::Duration;

/// Why a call to Tapis or WebODM failed.
///
/// Messages say which service and which request (method and path, never the query string),
/// and quote at most 300 characters of the server's answer; they never contain a token or a
/// password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request did not get a response: connection refused or reset, timeout, broken body.
    #[error("{service} {op}: {detail}")]
    Transport {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// Method and path, e.g. `GET /v3/systems`.
        op: String,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// The server answered with an unsuccessful HTTP status.
    #[error("{service} {op}: HTTP {status}{}", body_suffix(.body))]
    Status {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// Method and path.
        op: String,
        /// HTTP status code.
        status: u16,
        /// The start of the response body (plain text, JSON or HTML), whitespace collapsed.
        body: String,
        /// The server's `Retry-After` on a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// The server answered 2xx with a body that is not what the API promises.
    #[error("{service} {op}: unexpected response: {detail}")]
    Decode {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// Method and path.
        op: String,
        /// What did not match.
        detail: String,
    },
    /// Logging in was refused: the configured credentials are wrong.
    #[error("{service} login refused: {detail}")]
    Auth {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// The server's reason and what to check.
        detail: String,
    },
    /// The server rejected the session token on a request that cannot be replayed (its body
    /// was consumed). The token has been dropped: trying again logs in afresh.
    #[error("{service} {op}: HTTP {status}: session token rejected ({body}); a new one will be fetched on retry")]
    TokenRejected {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// Method and path.
        op: String,
        /// HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A Tapis download ended before the listing's number of bytes.
    #[error("{what}: truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// A Tapis download carried more than the listing's number of bytes.
    #[error("{what}: overlong: expected {expected} bytes, got at least {got}")]
    Overlong {
        /// What was being read.
        what: String,
        /// Bytes announced.
        expected: u64,
        /// Bytes received so far.
        got: u64,
    },
    /// The server refused the request for good (e.g. a permanent SMTP 5xx reply): trying
    /// again will not help.
    #[error("{service} {op}: refused: {detail}")]
    Rejected {
        /// `SMTP`, `webhook`, …
        service: &'static str,
        /// What was asked.
        op: String,
        /// The server's answer.
        detail: String,
    },
    /// The client could not be set up (bad base URL, TLS initialisation).
    #[error("{service}: cannot set up the client: {detail}")]
    Setup {
        /// `Tapis` or `WebODM`.
        service: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ApiError {
    /// Whether trying the same operation again may succeed: transport failures, 5xx, 408,
    /// 429, a rejected session token and truncated bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. }
            | ApiError::Truncated { .. }
            | ApiError::TokenRejected { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            ApiError::Decode { .. }
            | ApiError::Auth { .. }
            | ApiError::Overlong { .. }
            | ApiError::Rejected { .. }
            | ApiError::Setup { .. } => false,
        }
    }

    /// The service that failed: `Tapis` or `WebODM`. A truncated or overlong body is a Tapis
    /// download checked against its listing (the only bodies whose length is checked).
    pub fn service(&self) -> &'static str {
        match self {
            ApiError::Transport { service, .. }
            | ApiError::Status { service, .. }
            | ApiError::Decode { service, .. }
            | ApiError::Auth { service, .. }
            | ApiError::TokenRejected { service, .. }
            | ApiError::Rejected { service, .. }
            | ApiError::Setup { service, .. } => service,
            ApiError::Truncated { .. } | ApiError::Overlong { .. } => "Tapis",
        }
    }

    /// The error's class, as counted in metrics: `transport`, `5xx`, `429`, `408`, `4xx`,
    /// `token` (a session token rejected), `truncated`, `overlong`, `decode`, `auth`,
    /// `rejected` (refused for good) or `setup`.
    pub fn class(&self) -> &'static str {
        match self {
            ApiError::Transport { .. } => "transport",
            ApiError::Status { status, .. } => match status {
                429 => "429",
                408 => "408",
                s if *s >= 500 => "5xx",
                _ => "4xx",
            },
            ApiError::TokenRejected { .. } => "token",
            ApiError::Truncated { .. } => "truncated",
            ApiError::Overlong { .. } => "overlong",
            ApiError::Decode { .. } => "decode",
            ApiError::Auth { .. } => "auth",
            ApiError::Rejected { .. } => "rejected",
            ApiError::Setup { .. } => "setup",
        }
    }

    /// Whether the server said the thing asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether WebODM refused a project edit because its permission list names a user that
    /// does not exist (400 `Invalid user in permissions list`; nothing of the edit applied).
    pub fn is_invalid_user(&self) -> bool {
        self.status() == Some(400)
            && self
                .body()
                .is_some_and(|b| b.contains("Invalid user in permissions list"))
    }

    /// Whether WebODM refused a project edit because its permission list names a group that
    /// does not exist (400 `Invalid group in permissions list`; nothing of the edit applied).
    pub fn is_invalid_group(&self) -> bool {
        self.status() == Some(400)
            && self
                .body()
                .is_some_and(|b| b.contains("Invalid group in permissions list"))
    }

    /// How long the server asked us to wait (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status the server answered with, if it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } | ApiError::TokenRejected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The quoted start of the server's error body, if any.
    pub(crate) fn body(&self) -> Option<&str> {
        match self {
            ApiError::Status { body, .. } | ApiError::TokenRejected { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// An error and its causes, outermost first, joined by ": " (reqwest and lettre put the
/// useful part — refused, reset, certificate — in the causes).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> ApiError {
        ApiError::Status {
            service: "Tapis",
            op: "GET /v3/files/ops/sys/a".into(),
            status: code,
            body: body.into(),
            retry_after: None,
        }
    }

    #[test]
    fn errors_are_classified() {
        assert!(status(500, "").is_retryable());
        assert!(status(503, "").is_retryable());
        assert!(status(429, "").is_retryable());
        assert!(!status(400, "").is_retryable());
        assert!(!status(403, "").is_retryable());
        assert!(status(404, "").is_not_found());
        assert!(!status(400, "").is_not_found());
        assert_eq!(status(418, "").status(), Some(418));
        let transport = ApiError::Transport {
            service: "WebODM",
            op: "POST /api/token-auth/".into(),
            detail: "reset".into(),
        };
        assert!(transport.is_retryable());
        assert_eq!(transport.status(), None);
        let rejected = ApiError::TokenRejected {
            service: "WebODM",
            op: "POST /x/".into(),
            status: 403,
            body: String::new(),
        };
        assert!(rejected.is_retryable());
        assert_eq!(rejected.status(), Some(403));
        let short = ApiError::Truncated {
            what: "x".into(),
            expected: 2,
            got: 1,
        };
        assert!(short.is_retryable());
        let long = ApiError::Overlong {
            what: "x".into(),
            expected: 2,
            got: 3,
        };
        assert!(!long.is_retryable());
        let auth = ApiError::Auth {
            service: "Tapis",
            detail: "no".into(),
        };
        assert!(!auth.is_retryable());
        let with_wait = ApiError::Status {
            service: "WebODM",
            op: "GET /api/projects/".into(),
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(with_wait.retry_after(), Some(Duration::from_secs(3)));
        let user = status(400, r#"{"error":"Invalid user in permissions list"}"#);
        assert!(user.is_invalid_user() && !user.is_invalid_group());
        let group = status(400, r#"{"error":"Invalid group in permissions list"}"#);
        assert!(group.is_invalid_group() && !group.is_invalid_user());
        assert!(!status(500, "Invalid user in permissions list").is_invalid_user());
    }

    #[test]
    fn errors_name_their_service_and_class() {
        let classes: Vec<(&str, &str)> = [
            status(503, ""),
            status(500, ""),
            status(429, ""),
            status(408, ""),
            status(404, ""),
            ApiError::Transport {
                service: "WebODM",
                op: "GET /api/projects/".into(),
                detail: "reset".into(),
            },
            ApiError::TokenRejected {
                service: "WebODM",
                op: "POST /x/".into(),
                status: 403,
                body: String::new(),
            },
            ApiError::Truncated {
                what: "x".into(),
                expected: 2,
                got: 1,
            },
            ApiError::Overlong {
                what: "x".into(),
                expected: 2,
                got: 3,
            },
        ]
        .iter()
        .map(|e| (e.service(), e.class()))
        .collect();
        assert_eq!(
            classes,
            [
                ("Tapis", "5xx"),
                ("Tapis", "5xx"),
                ("Tapis", "429"),
                ("Tapis", "408"),
                ("Tapis", "4xx"),
                ("WebODM", "transport"),
                ("WebODM", "token"),
                ("Tapis", "truncated"),
                ("Tapis", "overlong"),
            ]
        );
    }

    #[test]
    fn messages_name_service_request_and_status() {
        let e = status(404, "FILES_CLIENT_SSH_NOT_FOUND Path not found.");
        assert_eq!(
            e.to_string(),
            "Tapis GET /v3/files/ops/sys/a: HTTP 404: FILES_CLIENT_SSH_NOT_FOUND Path not found."
        );
        assert_eq!(
            status(502, "").to_string(),
            "Tapis GET /v3/files/ops/sys/a: HTTP 502"
        );
    }
}
