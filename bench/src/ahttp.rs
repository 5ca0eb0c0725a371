//! Async HTTP/JSON client for the timed workloads: each closed-loop client
//! is a task holding one keep-alive HTTP/1.1 connection (hyper) per node it
//! has talked to, so 64 clients cost one thread instead of 64 and the load
//! generator takes less of the CPU it shares with the cluster. Answers are
//! decoded with the same error shape as the `billdb` CLI
//! ([`billdb_client::admin::decode_body`]). Touches only the network.

use std::sync::Arc;
use std::time::Duration;

use billdb_client::admin::{AdminError, RESPONSE_BYTES_MAX, decode_body, normalize_endpoint_for};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::http::REQUEST_TIMEOUT_MS;

/// Bound on opening a connection.
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// One node's HTTP endpoint with a bearer token and (at most) one open
/// connection.
pub struct AsyncHttp {
    /// `http(s)://host:port`, as [`normalize_endpoint_for`] writes it.
    base: String,
    /// `host:port`.
    authority: String,
    auth: Option<String>,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// TLS to the node (`None`: plaintext).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The leader's endpoint named by the last answer
    /// (`billdb-leader: <id> <http addr>`), normalised like `base`.
    leader: Option<String>,
}

impl AsyncHttp {
    pub fn new(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> AsyncHttp {
        let base = normalize_endpoint_for(endpoint, tls.is_some());
        let authority = base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        AsyncHttp {
            base,
            authority,
            auth: token.map(|t| format!("Bearer {t}")),
            conn: None,
            tls,
            leader: None,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    pub fn leader_hint(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    fn transport(&self, path: &str, message: impl ToString) -> AdminError {
        AdminError::Transport {
            url: format!("{}{path}", self.base),
            message: message.to_string(),
        }
    }

    async fn connection(
        &mut self,
        path: &str,
    ) -> Result<&mut SendRequest<Full<Bytes>>, AdminError> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let connect = tokio::net::TcpStream::connect(&self.authority);
            let stream = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
                .await
                .map_err(|_| self.transport(path, "connect timed out"))?
                .map_err(|e| self.transport(path, e))?;
            let _ = stream.set_nodelay(true);
            let sender = match self.tls.clone() {
                None => self.handshake(path, stream).await?,
                Some(config) => {
                    let host = self
                        .authority
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or(&self.authority)
                        .to_string();
                    let name = rustls::pki_types::ServerName::try_from(host)
                        .map_err(|e| self.transport(path, e))?;
                    let tls = tokio::time::timeout(
                        Duration::from_millis(CONNECT_TIMEOUT_MS),
                        tokio_rustls::TlsConnector::from(config).connect(name, stream),
                    )
                    .await
                    .map_err(|_| self.transport(path, "TLS handshake timed out"))?
                    .map_err(|e| self.transport(path, e))?;
                    self.handshake(path, tls).await?
                }
            };
            self.conn = Some(sender);
        }
        self.conn.as_mut().ok_or_else(|| AdminError::Transport {
            url: path.to_string(),
            message: "no connection".into(),
        })
    }

    /// HTTP/1.1 over `io`; the connection task ends when the sender is
    /// dropped or the peer closes.
    async fn handshake<I>(&self, path: &str, io: I) -> Result<SendRequest<Full<Bytes>>, AdminError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport(path, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request: `GET`, or `POST` of the JSON text `body`.
    pub async fn call(&mut self, path: &str, body: Option<&str>) -> Result<Value, AdminError> {
        let r = tokio::time::timeout(
            Duration::from_millis(REQUEST_TIMEOUT_MS),
            self.exchange(path, body),
        )
        .await;
        match r {
            Ok(Ok((status, text))) => decode_body(&format!("{}{path}", self.base), status, &text),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                // A late answer would arrive on this connection: drop it.
                self.conn = None;
                Err(self.transport(path, "request timed out"))
            }
        }
    }

    async fn exchange(
        &mut self,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), AdminError> {
        let method = match body {
            None => hyper::Method::GET,
            Some(_) => hyper::Method::POST,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority.as_str());
        if let Some(a) = &self.auth {
            req = req.header(hyper::header::AUTHORIZATION, a.as_str());
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
            .map_err(|e| self.transport(path, e))?;
        let conn = self.connection(path).await?;
        conn.ready().await.map_err(|e| AdminError::Transport {
            url: path.to_string(),
            message: e.to_string(),
        })?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| AdminError::Transport {
                url: path.to_string(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if let Some(hint) = resp
            .headers()
            .get(billdb_api::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(_, addr)| normalize_endpoint_for(addr, self.tls.is_some()))
        {
            self.leader = Some(hint);
        }
        let limit = usize::try_from(RESPONSE_BYTES_MAX).unwrap_or(usize::MAX);
        let bytes = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| self.transport(path, format!("reading response body: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}
