//! Blocking HTTP/JSON client for set-up calls, the bulk load and the card
//! check (the timed closed loops use [`crate::ahttp`]): one keep-alive
//! connection pool per thread, raw string bodies (serialised once), answers
//! decoded with the same error shape as the `billdb` CLI. Touches only the
//! network.

use std::time::Duration;

use billdb_client::admin::{AdminError, handle_response};
use serde_json::Value;

/// Bound on one request (connect + send + answer).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// One node's HTTP endpoint with a bearer token and pooled connections.
#[derive(Clone)]
pub struct Http {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

/// A failed call: the billdb error code, or `TRANSPORT` when no answer came.
pub fn code_of(e: &AdminError) -> String {
    match e {
        AdminError::Api { code, .. } => code.clone(),
        AdminError::Transport { .. } => "TRANSPORT".into(),
        AdminError::Decode { .. } => "DECODE".into(),
    }
}

/// Whether a failed write may be retried with the same request id on
/// another node (no answer, or the cluster was between leaders).
pub fn retryable(e: &AdminError) -> bool {
    match e {
        AdminError::Transport { .. } => true,
        AdminError::Api { code, status, .. } => {
            *status >= 500 || matches!(code.as_str(), "UNAVAILABLE" | "NOT_LEADER" | "TIMEOUT")
        }
        AdminError::Decode { .. } => false,
    }
}

impl Http {
    pub fn new(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<&billdb_client::tls::ClientTls>,
    ) -> Http {
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(Duration::from_secs(2)))
            .max_idle_connections(4)
            .max_idle_connections_per_host(4);
        if let Some(tls) = tls {
            config = config.tls_config(tls.ureq_config());
        }
        let config = config.build();
        Http {
            base: billdb_client::admin::normalize_endpoint_for(endpoint, tls.is_some()),
            agent: config.into(),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.get(&url);
        if let Some(h) = &self.auth {
            req = req.header("authorization", h);
        }
        let resp = req.call();
        handle_response(&url, resp)
    }

    /// `POST` (or `PUT` with `put`) a JSON body given as text.
    pub fn send(&self, put: bool, path: &str, body: &str) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = if put {
            self.agent.put(&url)
        } else {
            self.agent.post(&url)
        }
        .header("content-type", "application/json");
        if let Some(h) = &self.auth {
            req = req.header("authorization", h);
        }
        let resp = req.send(body);
        handle_response(&url, resp)
    }

    pub fn post(&self, path: &str, body: &str) -> Result<Value, AdminError> {
        self.send(false, path, body)
    }
}
