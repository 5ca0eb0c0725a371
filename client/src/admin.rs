//! Blocking client for the billdb-node HTTP admin API (`/healthz`, `/readyz`,
//! `/v1/cluster/*`).
//!
//! Scope: this module only talks HTTP to an endpoint it is given; it touches no
//! files and no processes. It is used by [`crate::local`] and by the `billdb
//! cluster ...` CLI commands.
//!
//! HTTP is done with `ureq` (small, synchronous, no async runtime of its own), so
//! every call here is a plain blocking call that is safe to make from any thread,
//! including a thread that is inside a tokio runtime (unlike `reqwest::blocking`,
//! which panics there). From async code prefer `tokio::task::spawn_blocking` so the
//! executor thread is not blocked for the length of a request. Every request has a
//! bounded timeout (default [`DEFAULT_TIMEOUT`]); proxies from the environment are
//! ignored because the admin API is always reached directly.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default bound on one admin request (connect + send + receive).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of a snapshot request: above the node's own wait for the build
/// (`SNAPSHOT_WAIT_MS_MAX`, two minutes), so the node answers first.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(130);

/// Addresses of one cluster member, as sent in `init` / `add learner` bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub id: u64,
    pub raft_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
}

/// Failure of an admin call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// The request never got an HTTP answer (connection refused, timeout, ...).
    #[error("cannot reach {url}: {message}{}", tls_hint(.url))]
    Transport { url: String, message: String },
    /// The node answered with a 4xx/5xx status. `code` is the `code` field of the
    /// error body, or `HTTP_<status>` when the body was not a billdb error.
    #[error("{code} (HTTP {status}): {message}{}", fmt_details(.details))]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    /// The node answered 2xx but the body was not JSON.
    #[error("invalid response from {url}: {message}")]
    Decode { url: String, message: String },
}

/// A plaintext URL that failed: nodes speak TLS unless configured not to.
fn tls_hint(url: &str) -> &'static str {
    if url.starts_with("http://") {
        " (billdb nodes speak TLS by default: give the cluster's CA certificate \
         with --ca or BILLDB_CA, and the endpoint becomes https://)"
    } else {
        ""
    }
}

fn fmt_details(details: &Value) -> String {
    match details {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        other => format!(" (details: {other})"),
    }
}

impl AdminError {
    /// The billdb error code, if the node answered with an error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            AdminError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// HTTP status, if the node answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for `409 ALREADY_INITIALIZED` from `POST /v1/cluster/init`.
    pub fn is_already_initialized(&self) -> bool {
        self.code() == Some("ALREADY_INITIALIZED")
    }
}

/// Blocking client of one node's admin endpoint.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    agent: ureq::Agent,
    /// Bearer token sent with every request (never printed).
    token: Option<String>,
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .finish()
    }
}

/// Turns `127.0.0.1:7001`, `http://127.0.0.1:7001` or `http://h:1/` into
/// `http://host:port` (no trailing slash).
pub fn normalize_endpoint(endpoint: &str) -> String {
    normalize_endpoint_for(endpoint, false)
}

/// As [`normalize_endpoint`]; an address without a scheme gets `https://`
/// when `tls` (the client has a CA to trust).
pub fn normalize_endpoint_for(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl AdminClient {
    /// Client with the [`DEFAULT_TIMEOUT`].
    pub fn new(endpoint: &str) -> Self {
        Self::with_timeout(endpoint, DEFAULT_TIMEOUT)
    }

    /// Client whose every request is bounded by `timeout`.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Self {
        Self::with_tls(endpoint, timeout, None)
    }

    /// Client whose every request is bounded by `timeout`, trusting only the
    /// CA of `tls` (and presenting its client certificate) when given; an
    /// endpoint without a scheme is then `https://`.
    pub fn with_tls(
        endpoint: &str,
        timeout: Duration,
        tls: Option<&crate::tls::ClientTls>,
    ) -> Self {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(2))))
            // No pooling: nodes are killed and restarted under us all the time, and
            // a stale pooled connection would turn into a spurious error.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0);
        if let Some(tls) = tls {
            config = config.tls_config(tls.ureq_config());
        }
        let config = config.build();
        AdminClient {
            base: normalize_endpoint_for(endpoint, tls.is_some()),
            agent: config.into(),
            token: None,
        }
    }

    /// The same client, authenticating with `token` (a bearer token).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    fn auth_header(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// The normalized base URL, e.g. `http://127.0.0.1:7001`.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: Ok when the process answers 200.
    pub fn healthz(&self) -> Result<(), AdminError> {
        self.get("/healthz").map(|_| ())
    }

    /// `GET /readyz`: Ok(true) on 200, Ok(false) on 503, error otherwise.
    pub fn readyz(&self) -> Result<bool, AdminError> {
        match self.get("/readyz") {
            Ok(_) => Ok(true),
            Err(AdminError::Api { status: 503, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/cluster/status`.
    pub fn status(&self) -> Result<Value, AdminError> {
        self.get("/v1/cluster/status")
    }

    /// `POST /v1/cluster/init` with these voters.
    pub fn init(&self, nodes: &[NodeAddrs]) -> Result<Value, AdminError> {
        self.post("/v1/cluster/init", &serde_json::json!({ "nodes": nodes }))
    }

    /// `POST /v1/cluster/learners`.
    pub fn add_learner(&self, node: &NodeAddrs) -> Result<Value, AdminError> {
        self.post("/v1/cluster/learners", &serde_json::json!(node))
    }

    /// `POST /v1/cluster/membership` with the new voter set.
    pub fn change_membership(&self, voters: &[u64]) -> Result<Value, AdminError> {
        self.post(
            "/v1/cluster/membership",
            &serde_json::json!({ "voters": voters }),
        )
    }

    /// `POST /v1/cluster/remove`.
    pub fn remove(&self, id: u64) -> Result<Value, AdminError> {
        self.post("/v1/cluster/remove", &serde_json::json!({ "id": id }))
    }

    /// `POST /v1/cluster/transfer-leader`.
    pub fn transfer_leader(&self, to: u64) -> Result<Value, AdminError> {
        self.post(
            "/v1/cluster/transfer-leader",
            &serde_json::json!({ "to": to }),
        )
    }

    /// `POST /v1/cluster/snapshot`: build a snapshot on this node now. The
    /// node may take up to two minutes (it waits for the build), so this
    /// request waits for [`SNAPSHOT_TIMEOUT`] whatever the client's own
    /// bound: a shorter one would give up on a build still under way.
    pub fn snapshot(&self) -> Result<Value, AdminError> {
        self.post_within(
            "/v1/cluster/snapshot",
            &serde_json::json!({}),
            Some(SNAPSHOT_TIMEOUT),
        )
    }

    /// `GET path`; returns the JSON body (`Value::Null` for an empty body, a JSON
    /// string for a non-JSON 2xx body such as `ok`).
    pub fn get(&self, path: &str) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.get(&url);
        if let Some(h) = self.auth_header() {
            req = req.header("authorization", h);
        }
        let resp = req.call();
        handle_response(&url, resp)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.delete(&url);
        if let Some(h) = self.auth_header() {
            req = req.header("authorization", h);
        }
        handle_response(&url, req.call())
    }

    /// `GET path`, its 2xx body copied into `out` as it arrives (`progress`
    /// is told each piece's length); returns the bytes copied. A refusal is
    /// decoded like any answer. The connection ending before the announced
    /// length is an error.
    pub fn download(
        &self,
        path: &str,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, AdminError> {
        use std::io::Read;
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.get(&url);
        if let Some(h) = self.auth_header() {
            req = req.header("authorization", h);
        }
        let resp = req.call().map_err(|e| AdminError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if !(200..300).contains(&resp.status().as_u16()) {
            return handle_response(&url, Ok(resp)).map(|_| 0);
        }
        let transport = |message: String| AdminError::Transport {
            url: url.clone(),
            message,
        };
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| transport(format!("reading the body: {e}")))?;
            if n == 0 {
                return Ok(total);
            }
            out.write_all(&buf[..n])
                .map_err(|e| transport(format!("writing what was read: {e}")))?;
            total += n as u64;
            progress(n as u64);
        }
    }

    /// `PUT path` with a JSON body.
    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .agent
            .put(&url)
            .header("content-type", "application/json");
        if let Some(h) = self.auth_header() {
            req = req.header("authorization", h);
        }
        let resp = req.send(body.to_string());
        handle_response(&url, resp)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        self.post_within(path, body, None)
    }

    /// [`AdminClient::post`], bounded by `timeout` instead of the client's
    /// own bound when given.
    fn post_within(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(t) = timeout {
            req = req.config().timeout_global(Some(t)).build();
        }
        if let Some(h) = self.auth_header() {
            req = req.header("authorization", h);
        }
        let resp = req.send(body.to_string());
        handle_response(&url, resp)
    }
}

/// Largest response body read (record pages and reports stay far below).
pub const RESPONSE_BYTES_MAX: u64 = 64 << 20;

/// Turn a ureq result into the decoded JSON body or an [`AdminError`].
pub fn handle_response(
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, AdminError> {
    let mut resp = resp.map_err(|e| AdminError::Transport {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_string()
        .map_err(|e| AdminError::Transport {
            url: url.to_string(),
            message: format!("reading response body: {e}"),
        })?;
    decode_body(url, status, &text)
}

/// Maps an HTTP status and body to the admin result (public for tests).
pub fn decode_body(url: &str, status: u16, text: &str) -> Result<Value, AdminError> {
    let parsed: Option<Value> = if text.trim().is_empty() {
        Some(Value::Null)
    } else {
        serde_json::from_str(text).ok()
    };
    if (200..300).contains(&status) {
        return match parsed {
            Some(v) => Ok(v),
            // Plain-text 2xx bodies (e.g. "ok" from /healthz) are fine.
            None if text.len() < 1024 && !text.trim_start().starts_with(['{', '[']) => {
                Ok(Value::String(text.trim().to_string()))
            }
            None => Err(AdminError::Decode {
                url: url.to_string(),
                message: format!("body is not JSON: {}", truncate(text, 200)),
            }),
        };
    }
    let (code, message, details) = match parsed {
        Some(Value::Object(m)) if m.get("code").and_then(Value::as_str).is_some() => (
            m.get("code")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            m.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            m.get("details").cloned().unwrap_or(Value::Null),
        ),
        _ => (
            format!("HTTP_{status}"),
            truncate(text.trim(), 500),
            Value::Null,
        ),
    };
    Err(AdminError::Api {
        status,
        code,
        message,
        details,
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// From a leader's status document (`GET /v1/cluster/status`): the voter
/// other than `me` that should take over — reachable, least behind, lowest
/// id on a tie. `None` when no other voter is reachable.
pub fn successor_from_status(v: &Value, me: u64) -> Option<u64> {
    let voters = v.get("voters").and_then(Value::as_array)?;
    let reachable = |id: u64| {
        v.pointer(&format!("/peers/{id}/reachable"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    let lag = |id: u64| {
        v.pointer(&format!("/replication/{id}/lag"))
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX)
    };
    voters
        .iter()
        .filter_map(Value::as_u64)
        .filter(|id| *id != me && reachable(*id))
        .min_by_key(|id| (lag(*id), *id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_is_the_reachable_voter_least_behind() {
        let v = serde_json::json!({
            "voters": [1, 2, 3, 4],
            "peers": {"2": {"reachable": false}},
            "replication": {"2": {"lag": 0}, "3": {"lag": 5}, "4": {"lag": 5}},
        });
        assert_eq!(successor_from_status(&v, 1), Some(3));
        let alone = serde_json::json!({"voters": [1, 2], "peers": {"2": {"reachable": false}}});
        assert_eq!(successor_from_status(&alone, 1), None);
    }
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    #[test]
    fn endpoint_normalization() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7001"),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:7001/"),
            "http://127.0.0.1:7001"
        );
        assert_eq!(normalize_endpoint(" https://h:1 "), "https://h:1");
    }

    #[test]
    fn decode_error_body_with_code() {
        let body =
            r#"{"code":"ALREADY_INITIALIZED","message":"cluster exists","details":{"leader":1}}"#;
        let err = decode_body("u", 409, body).unwrap_err();
        assert!(err.is_already_initialized());
        assert_eq!(err.status(), Some(409));
        let text = err.to_string();
        assert!(text.contains("ALREADY_INITIALIZED"), "{text}");
        assert!(text.contains("cluster exists"), "{text}");
        assert!(text.contains("\"leader\":1"), "{text}");
    }

    #[test]
    fn decode_error_body_without_code() {
        let err = decode_body("u", 502, "bad gateway").unwrap_err();
        assert_eq!(err.code(), Some("HTTP_502"));
        assert!(err.to_string().contains("bad gateway"));
        assert!(!err.is_already_initialized());
    }

    #[test]
    fn decode_success_bodies() {
        assert_eq!(decode_body("u", 200, "").unwrap(), Value::Null);
        assert_eq!(decode_body("u", 200, "ok\n").unwrap(), Value::from("ok"));
        assert_eq!(
            decode_body("u", 200, r#"{"a":1}"#).unwrap()["a"],
            Value::from(1)
        );
        assert!(matches!(
            decode_body("u", 200, "{broken"),
            Err(AdminError::Decode { .. })
        ));
    }

    /// Serves exactly one HTTP request with a canned answer; returns the request
    /// line + body it received.
    fn one_shot_server(
        status: u16,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut content_length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap();
                }
            }
            let mut body_in = vec![0u8; content_length];
            reader.read_exact(&mut body_in).unwrap();
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).unwrap();
            format!(
                "{}{}",
                request_line.trim(),
                String::from_utf8(body_in).unwrap()
            )
        });
        (addr, h)
    }

    #[test]
    fn post_sends_json_and_parses_error() {
        let (addr, h) = one_shot_server(
            409,
            r#"{"code":"ALREADY_INITIALIZED","message":"nope","details":{}}"#,
        );
        let c = AdminClient::with_timeout(&addr, Duration::from_secs(5));
        let nodes = vec![NodeAddrs {
            id: 1,
            raft_addr: "r".into(),
            grpc_addr: "g".into(),
            http_addr: "h".into(),
        }];
        let err = c.init(&nodes).unwrap_err();
        assert!(err.is_already_initialized(), "{err}");
        let seen = h.join().unwrap();
        assert!(seen.starts_with("POST /v1/cluster/init HTTP/1.1"), "{seen}");
        assert!(seen.contains(r#""nodes":[{"#), "{seen}");
        assert!(seen.contains(r#""raft_addr":"r""#), "{seen}");
    }

    #[test]
    fn get_status_ok() {
        let (addr, h) = one_shot_server(200, r#"{"node_id":3,"role":"follower"}"#);
        let c = AdminClient::new(&format!("http://{addr}/"));
        let v = c.status().unwrap();
        assert_eq!(v["node_id"], 3);
        assert!(h.join().unwrap().starts_with("GET /v1/cluster/status "));
    }

    #[test]
    fn unreachable_is_transport_error_and_bounded() {
        // Bind then drop to get a port that is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = AdminClient::with_timeout(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
        let t0 = std::time::Instant::now();
        let err = c.healthz().unwrap_err();
        assert!(matches!(err, AdminError::Transport { .. }), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn silent_server_times_out() {
        // Accepts the connection but never answers: the timeout must fire.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let c = AdminClient::with_timeout(&addr, Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let err = c.status().unwrap_err();
        assert!(matches!(err, AdminError::Transport { .. }), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        drop(listener);
    }
}
