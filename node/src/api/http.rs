//! HTTP/JSON surface (axum). Routes mirror the gRPC service one to one;
//! errors are `{"code","message","details"}` with the status from the code.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use billdb_api::error::{ApiError, ErrorCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::ops::{self, Endpoint};
use super::status;
use crate::app::{AdminOp, App};
use crate::auth::{Caller, Role};
use crate::types::{NodeId, NodeInfo};

/// Cloned for every request (each middleware and the handler take a
/// copy), so it holds the node's `App` behind one `Arc` rather than
/// cloning its dozen handles each time.
#[derive(Clone)]
pub struct HttpState {
    pub app: Arc<App>,
    pub prometheus: PrometheusHandle,
}

pub struct HttpError(pub ApiError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.0)).into_response()
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

type HttpResult = Result<Response, HttpError>;

/// Parse a JSON body strictly (unknown fields refused) into `T`. Its size
/// was bounded before the handler ran ([`bounded_body`]).
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    ops::parse_body(&body_bytes(body)?)
}

/// The body, read whole within its bound ([`bounded_body`]).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(ErrorCode::MalformedRequest, e.body_text()))
}

fn ok(v: serde_json::Value) -> HttpResult {
    Ok((StatusCode::OK, Json(v)).into_response())
}

/// The one route with its own body limit (`limits.import_body_bytes_max`).
const IMPORT_PATH: &str = "/v1/import";

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_route))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/digest", get(cluster_digest))
        .route("/v1/cluster/init", post(cluster_init))
        .route("/v1/cluster/learners", post(cluster_add_learner))
        .route("/v1/cluster/membership", post(cluster_membership))
        .route("/v1/cluster/remove", post(cluster_remove))
        .route("/v1/cluster/transfer-leader", post(cluster_transfer))
        .route("/v1/cluster/snapshot", post(cluster_snapshot))
        .route("/v1/cluster/scrub", post(cluster_scrub))
        .route("/v1/cluster/fingerprints", get(cluster_fingerprints))
        .route("/v1/node/repair", post(node_repair))
        .route("/v1/backup/holds", post(backup_hold))
        .route("/v1/backup/holds/{hold_id}", delete(backup_release))
        .route("/v1/backup/holds/{hold_id}/files/{name}", get(backup_file))
        .route("/v1/backup/log", get(backup_log))
        .route("/v1/accounts", post(open_account))
        .route(
            "/v1/accounts/{account_id}",
            get(get_account).patch(update_contact),
        )
        .route("/v1/accounts/{account_id}/close", post(close_account))
        .route("/v1/accounts/{account_id}/suspend", post(suspend_account))
        .route("/v1/accounts/{account_id}/resume", post(resume_account))
        .route("/v1/accounts/{account_id}/records", get(list_records))
        .route(
            "/v1/accounts/{account_id}/statement",
            get(account_statement),
        )
        .route("/v1/cards", post(issue_card))
        .route("/v1/cards/verify", post(verify_card))
        .route("/v1/cards/{card_no}/replace", post(replace_card))
        .route("/v1/purchases", post(purchase))
        .route("/v1/purchases/{record_id}/reissue", post(reissue))
        .route("/v1/purchases/{record_id}/loaded", post(confirm_loaded))
        .route("/v1/payments", post(payment))
        .route("/v1/records/{record_id}/reverse", post(reverse))
        .route("/v1/adjustments", post(adjust))
        .route("/v1/charges", post(post_charge))
        .route("/v1/invoices/{invoice_no}/print", post(print_invoice))
        .route("/v1/reports/monthly", get(monthly_report))
        .route("/v1/reports/bank-daily", get(bank_daily_report))
        .route("/v1/reports/balances", get(balance_report))
        .route("/v1/segments/boundary", put(set_boundary))
        .route("/v1/seasons", post(open_season))
        .route(
            "/v1/seasons/{season_id}/bill",
            post(season_bill).get(season_bill_report),
        )
        .route("/v1/seasons/{season_id}/bill/lines", get(season_bill_lines))
        .route("/v1/tariffs/{tariff_id}", put(define_tariff))
        .route(IMPORT_PATH, post(import))
        .route("/v1/requests/{request_id}", get(get_request))
        .route("/v1/drills", post(record_drill).get(list_drills))
        .route("/v1/banks/{bank_code}/payments", get(bank_payments))
        .route(
            "/v1/banks/{bank_code}/reconciliations",
            post(bank_reconcile).get(bank_reconciliations),
        )
        .route(
            "/v1/banks/{bank_code}/reconciliations/{request_id}",
            get(bank_reconciliation),
        )
        .route("/v1/bank-index/backfill", post(bank_index_backfill))
        .fallback(|| async { HttpError(ApiError::new(ErrorCode::NotFound, "no such route")) })
        // Bodies are bounded once, by `bounded_body`, per route: axum's own
        // limit (2 MB by default) would refuse a larger configured import
        // limit and answer without reading the body.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bounded_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            leader_header,
        ))
        .layer(axum::middleware::from_fn(record_latency))
        .with_state(state)
}

/// Every answer (refusals too) names the leader as
/// `billdb-leader: <id> <http addr>`, so an HTTP client can send its next
/// request there and skip the forwarding hop, as the gRPC client does.
async fn leader_header(
    State(state): State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    if let Some(value) = state
        .app
        .leader_hint_http()
        .and_then(|h| axum::http::HeaderValue::from_str(&h).ok())
    {
        resp.headers_mut()
            .insert(billdb_api::LEADER_METADATA, value);
    }
    resp
}

/// Bytes of an over-limit body still read (and dropped) so that the
/// client, which is still sending, gets the 413 answer instead of a reset
/// connection. A body larger than its limit plus this is refused at once.
const BODY_DRAIN_BYTES_MAX: usize = 8 << 20;

/// Read the request body whole, bounded by the route's limit
/// (`limits.import_body_bytes_max` for [`IMPORT_PATH`],
/// `limits.request_body_bytes_max` otherwise), before any handler runs.
/// This is the only body limit.
///
/// Refusing a large body without reading it makes the server close a
/// connection that still holds unread bytes: the kernel resets it, and a
/// client still writing sees a broken pipe rather than PAYLOAD_TOO_LARGE.
/// So an over-limit body is drained (up to [`BODY_DRAIN_BYTES_MAX`] more,
/// within `limits.request_timeout_ms`) and then answered with the code. A
/// client that announced an over-limit length and waits for
/// `100 Continue` is answered at once: it has sent nothing.
async fn bounded_body(
    State(state): State<HttpState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limits = &state.app.config.limits;
    let size_bytes_max =
        if req.uri().path() == IMPORT_PATH || super::bank::is_statement_path(req.uri().path()) {
            limits.import_body_bytes_max
        } else {
            limits.request_body_bytes_max
        };
    let timeout = std::time::Duration::from_millis(limits.request_timeout_ms);
    let (parts, body) = req.into_parts();
    let declared_bytes = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that waits for `100 Continue` before sending has sent
    // nothing yet: refuse at once rather than ask for a body to drop.
    let waits_to_send = parts
        .headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_to_send && declared_bytes.is_some_and(|n| n > size_bytes_max as u64) {
        return HttpError(too_large(size_bytes_max)).into_response();
    }
    match read_bounded(body, declared_bytes, size_bytes_max, timeout).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(e) => HttpError(e).into_response(),
    }
}

fn too_large(size_bytes_max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {size_bytes_max} bytes"),
    )
}

/// The body if it is at most `size_bytes_max` long; PAYLOAD_TOO_LARGE
/// (after draining, see [`bounded_body`]) if longer; MALFORMED_REQUEST if
/// the client breaks off or stalls past `timeout`.
async fn read_bounded(
    body: axum::body::Body,
    declared_bytes: Option<u64>,
    size_bytes_max: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let too_large = || too_large(size_bytes_max);
    let drain_bytes_max = size_bytes_max.saturating_add(BODY_DRAIN_BYTES_MAX);
    if declared_bytes.is_some_and(|n| n > drain_bytes_max as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut seen_bytes: usize = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    ErrorCode::MalformedRequest,
                    format!("reading the request body: {e}"),
                )
            })?;
            seen_bytes = seen_bytes.saturating_add(chunk.len());
            if seen_bytes <= size_bytes_max {
                chunks.push(chunk);
            } else if seen_bytes > drain_bytes_max {
                return Err(too_large());
            }
        }
        if seen_bytes > size_bytes_max {
            return Err(too_large());
        }
        // One chunk (the usual case) is passed on without a copy.
        Ok(match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::MalformedRequest,
                "the request body did not arrive in time",
            ))
        })
}

/// Request latency per route template and status (Prometheus histogram).
async fn record_latency(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!(
        "billdb_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => resp.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    resp
}

impl axum::extract::FromRequestParts<HttpState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::listen::PeerInfo>>()
            .map(|c| &c.0);
        let cert = state.app.client_cert_name(peer);
        state
            .app
            .auth
            .authenticate_with(header, cert.as_deref())
            .map_err(HttpError)
    }
}

async fn healthz(State(s): State<HttpState>) -> HttpResult {
    ok(serde_json::json!({"status": "ok", "node_id": s.app.id}))
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match status::ready(&s.app) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response(),
        Err(why) => HttpError(ApiError::new(ErrorCode::Unavailable, why)).into_response(),
    }
}

/// `GET /openapi.json`: the API's description (`openapi.rs`), no token.
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(super::openapi::document_json);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

async fn metrics_route(State(s): State<HttpState>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(&s.app, &s.prometheus),
    )
        .into_response()
}

async fn cluster_status(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops, Role::Auditor])?;
    ok(serde_json::to_value(status::status(&s.app))
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?)
}

async fn cluster_digest(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops, Role::Auditor])?;
    s.app.refuse_if_fenced()?;
    let db = s.app.db.clone();
    let digest =
        tokio::task::spawn_blocking(move || crate::store::state_machine::state_digest(&db))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()));
    let (applied, digest) = crate::api::ops::fence_on_corruption(&s.app, digest)?;
    ok(serde_json::json!({"applied_index": applied.map(|l| l.index), "digest": digest}))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeJson {
    id: NodeId,
    raft_addr: String,
    grpc_addr: String,
    http_addr: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InitJson {
    nodes: Vec<NodeJson>,
}

fn node_map(nodes: Vec<NodeJson>) -> Result<BTreeMap<NodeId, NodeInfo>, ApiError> {
    let mut map = BTreeMap::new();
    for n in nodes {
        let info = NodeInfo {
            raft_addr: n.raft_addr,
            grpc_addr: n.grpc_addr,
            http_addr: n.http_addr,
        };
        if map.insert(n.id, info).is_some() {
            return Err(ApiError::new(
                ErrorCode::DuplicateNode,
                format!("node id {} is listed twice", n.id),
            ));
        }
    }
    Ok(map)
}

fn admin_json(r: crate::app::AdminReply) -> HttpResult {
    ok(serde_json::json!({"message": r.message, "log_index": r.log_index}))
}

async fn cluster_init(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let req: InitJson = parse(body)?;
    admin_json(s.app.initialize(node_map(req.nodes)?).await?)
}

async fn cluster_add_learner(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let n: NodeJson = parse(body)?;
    let node = NodeInfo {
        raft_addr: n.raft_addr,
        grpc_addr: n.grpc_addr,
        http_addr: n.http_addr,
    };
    admin_json(s.app.admin(AdminOp::AddLearner { id: n.id, node }).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MembershipJson {
    voters: Vec<NodeId>,
}

async fn cluster_membership(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let req: MembershipJson = parse(body)?;
    let voters = req.voters.into_iter().collect();
    admin_json(s.app.admin(AdminOp::ChangeMembership { voters }).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveJson {
    id: NodeId,
}

async fn cluster_remove(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let req: RemoveJson = parse(body)?;
    admin_json(s.app.admin(AdminOp::Remove { id: req.id }).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferJson {
    to: NodeId,
}

async fn cluster_transfer(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let req: TransferJson = parse(body)?;
    admin_json(s.app.admin(AdminOp::TransferLeader { to: req.to }).await?)
}

/// Longest `POST /v1/cluster/snapshot` waits for the build.
const SNAPSHOT_WAIT_MS_MAX: u64 = 120_000;

/// Build a snapshot on THIS node now (e.g. before a backup or a planned
/// node replacement) and answer when it covers everything applied when
/// asked. A build is a checkpoint (flush + hard links), so it is quick at
/// any size.
async fn cluster_snapshot(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let started = std::time::Instant::now();
    let unavailable = |e: String| ApiError::new(ErrorCode::Unavailable, e);
    let applied = s.app.metrics().last_applied.map(|l| l.index);
    s.app
        .raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let m = s
        .app
        .raft
        .wait(Some(std::time::Duration::from_millis(SNAPSHOT_WAIT_MS_MAX)))
        .metrics(
            |m| m.snapshot.map(|l| l.index) >= applied,
            "snapshot covers what was applied",
        )
        .await
        .map_err(|e| unavailable(format!("snapshot not built in time: {e}")))?;
    ok(serde_json::json!({
        "snapshot_index": m.snapshot.map(|l| l.index),
        "applied_index_when_asked": applied,
        "ms": started.elapsed().as_millis() as u64,
    }))
}

/// Verify every block of THIS node's database against its checksum now,
/// at full speed (e.g. after a disk incident), besides the paced
/// background scrub. A checksum failure fences the node and starts its
/// repair from peers; the answer is then UNAVAILABLE naming the damage.
async fn cluster_scrub(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops])?;
    s.app.refuse_if_fenced()?;
    let started = std::time::Instant::now();
    let (db, guard) = (s.app.db.clone(), s.app.storage.clone());
    let read = tokio::task::spawn_blocking(move || crate::scrub::pass(&db, &guard, u64::MAX))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    match read {
        Ok(bytes) => ok(serde_json::json!({
            "bytes_verified": bytes,
            "ms": started.elapsed().as_millis() as u64,
        })),
        Err(e) => {
            if s.app.storage.check_corruption(&e) {
                s.app.refuse_if_fenced()?;
            }
            Err(ApiError::new(ErrorCode::Internal, e).into())
        }
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepairJson {
    /// Why (kept with the moved-aside database and in the log).
    #[serde(default)]
    reason: Option<String>,
}

/// Longest reason an operator may give for a repair.
const REPAIR_REASON_CHARS_MAX: usize = 200;

/// Rebuild THIS node from its peers (`repair`), as if its data had failed
/// a checksum: for a disk an operator no longer trusts (a replaced
/// controller, a filesystem check that found errors, a node that diverged).
/// Refused, with nothing changed, unless the leader would agree now (a
/// leader known and a quorum answering it without this node). Accepted
/// (202): the node is fenced at once, hands leadership over if it leads,
/// moves its database aside into `damaged/` and rejoins with a snapshot;
/// `/readyz` answers 200 again when it has caught up.
async fn node_repair(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let req: RepairJson = match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => RepairJson::default(),
        _ => parse(body)?,
    };
    let reason = req.reason.unwrap_or_default();
    if reason.chars().count() > REPAIR_REASON_CHARS_MAX || reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("reason: at most {REPAIR_REASON_CHARS_MAX} characters, no control characters"),
        )
        .with_details(serde_json::json!({"field": "reason"}))
        .into());
    }
    let accepted = |leader_id: Option<NodeId>, state: Option<String>| {
        Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "node_id": s.app.id,
                "state": "repairing",
                "leader_id": leader_id,
                "repair": state,
                "next": "the node is fenced, moves its database aside into damaged/ and rebuilds \
                         from a snapshot of the leader; GET /v1/cluster/status shows \
                         storage.failure.repair, and /readyz answers 200 once it caught up",
            })),
        )
            .into_response())
    };
    if let Some(f) = s.app.storage.failure() {
        if f.kind.repairs_from_peers() {
            return accepted(None, f.repair);
        }
        s.app.refuse_if_fenced()?;
    }
    let leader_id = crate::repair::preflight(
        &s.app.raft,
        s.app.id,
        &s.app.channels,
        &s.app.config.data_dir,
        s.app.config.raft.election_timeout_max_ms,
    )
    .await
    .map_err(|e| match e {
        crate::repair::AskError::Refused(why) => ApiError::new(
            ErrorCode::NoQuorum,
            format!("repair refused, nothing changed: {why}"),
        ),
        crate::repair::AskError::NoLeader(why) => ApiError::new(
            ErrorCode::Unavailable,
            format!("repair not possible now, nothing changed: {why}"),
        )
        .with_details(serde_json::json!({"retry_after_ms": 2000})),
    })?;
    let text = if reason.is_empty() {
        crate::storage_guard::OPERATOR_REPAIR_TEXT.to_string()
    } else {
        format!("{}: {reason}", crate::storage_guard::OPERATOR_REPAIR_TEXT)
    };
    tracing::warn!(
        leader_id,
        reason = %reason,
        "an operator asked for this node's repair from its peers"
    );
    if !s.app.storage.request_repair(&text) {
        s.app.refuse_if_fenced()?;
    }
    accepted(Some(leader_id), Some("starting".into()))
}

/// The state's applied log id, digest and business fingerprints (per
/// branch and utility: accounts, records, Σ amounts by kind, Σ balances)
/// from one consistent view of THIS node: what a restored cluster is
/// checked against its backup's manifest with.
async fn cluster_fingerprints(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops, Role::Auditor])?;
    s.app.refuse_if_fenced()?;
    let db = s.app.db.clone();
    let summary = tokio::task::spawn_blocking(move || crate::backup::summarize(&db))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    ok(serde_json::to_value(summary)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?)
}

/// Make a backup hold on THIS node (`crate::backup`): first a
/// linearizable read barrier, so the hold holds every write acknowledged
/// before the request; then a checkpoint at one applied index, described
/// (files with SHA-256, digest, fingerprints). The caller downloads the
/// files and releases the hold.
async fn backup_hold(State(s): State<HttpState>, caller: Caller) -> HttpResult {
    caller.require(&[Role::Ops])?;
    s.app.linearize().await?;
    let started = std::time::Instant::now();
    let (db, data_dir) = (s.app.db.clone(), s.app.config.data_dir.clone());
    let hold = tokio::task::spawn_blocking(move || crate::backup::create_hold(&db, &data_dir))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let hold = match hold {
        Ok(h) => h,
        Err(e) => {
            if s.app.storage.check_corruption(&e.to_string()) {
                s.app.refuse_if_fenced()?;
            }
            return Err(ApiError::new(ErrorCode::Internal, format!("backup hold: {e}")).into());
        }
    };
    let bytes: u64 = hold.files.iter().map(|f| f.size).sum();
    tracing::info!(hold = %hold.hold_id, applied = ?hold.summary.applied.map(|l| l.index), files = hold.files.len(), bytes, ms = started.elapsed().as_millis() as u64, "backup hold made");
    let mut v = serde_json::to_value(&hold)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    v["node_id"] = serde_json::json!(s.app.id);
    v["cluster_id"] = serde_json::json!(s.app.config.tls.as_ref().map(|t| t.cluster_id.clone()));
    ok(v)
}

/// Release a backup hold (its checkpoint is removed).
async fn backup_release(
    State(s): State<HttpState>,
    caller: Caller,
    hold_id: Result<Path<String>, PathRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let Path(hold_id) =
        hold_id.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let data_dir = s.app.config.data_dir.clone();
    let released =
        tokio::task::spawn_blocking(move || crate::backup::release_hold(&data_dir, &hold_id))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    ok(serde_json::json!({"released": released}))
}

/// Most entries one `GET /v1/backup/log` answers, by default and at most.
const LOG_READ_ENTRIES_DEFAULT: usize = 10_000;
const LOG_READ_ENTRIES_MAX: usize = 50_000;
/// About the most entry bytes one answer carries.
const LOG_READ_BYTES_MAX: usize = 32 << 20;

/// `GET /v1/backup/log`'s query (`billdb backup archive`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogArgs {
    /// The first log index wanted.
    pub from: u64,
    /// At most this many entries (default 10,000, at most 50,000).
    pub max_entries: Option<u32>,
}

fn log_args(pairs: Vec<(String, String)>) -> Result<LogArgs, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidArgument, m);
    let mut from = None;
    let mut max_entries = None;
    for (k, v) in pairs {
        let n: u64 = v
            .parse()
            .map_err(|_| bad(format!("{k}: {v:?} is not a whole number")))?;
        match k.as_str() {
            "from" => from = Some(n),
            "max_entries" if (1..=LOG_READ_ENTRIES_MAX as u64).contains(&n) => {
                max_entries = Some(n as u32)
            }
            "max_entries" => {
                return Err(bad(format!(
                    "max_entries: {n} is not within 1..={LOG_READ_ENTRIES_MAX}"
                )));
            }
            other => return Err(bad(format!("unknown query parameter {other}"))),
        }
    }
    Ok(LogArgs {
        from: from.ok_or_else(|| bad("from: the first log index wanted is required".into()))?,
        max_entries,
    })
}

/// Committed log entries from THIS node, for the log archive (`billdb
/// backup archive`, `backup::archive`): a JSON header line (node, cluster,
/// the range answered, the applied index, the first entry still held), then
/// the entries as archive frames, each verified before it is sent. Only
/// applied (so committed) entries. A `from` no longer held is NOT_FOUND
/// with `details.reason` `log_purged` and the first index held. The read
/// holds this node's log from `from` for a while (`log_purge::ArchiveReads`).
async fn backup_log(State(s): State<HttpState>, caller: Caller, q: QueryArgs) -> HttpResult {
    caller.require(&[Role::Ops])?;
    s.app.refuse_if_fenced()?;
    let a = log_args(query(q)?)?;
    let applied = s.app.metrics().last_applied.map_or(0, |l| l.index);
    let max = a
        .max_entries
        .map_or(LOG_READ_ENTRIES_DEFAULT, |m| m as usize);
    let db = s.app.db.clone();
    let from = a.from;
    let read = tokio::task::spawn_blocking(move || {
        let first = crate::store::log_store::first_held_index(&db)?;
        let entries =
            crate::store::log_store::read_stored(&db, from, applied, max, LOG_READ_BYTES_MAX)?;
        Ok::<_, std::io::Error>((first, entries))
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let (first, entries) = match read {
        Ok(r) => r,
        Err(e) => {
            if s.app.storage.check_corruption(&e.to_string()) {
                s.app.refuse_if_fenced()?;
            }
            return Err(ApiError::new(ErrorCode::Internal, format!("reading the log: {e}")).into());
        }
    };
    let Some(entries) = entries else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "log entry {from} is no longer held by node {} (first held: {first:?}); archive from a node that holds it, or take a new backup and archive from its applied index",
                s.app.id
            ),
        )
        .with_details(serde_json::json!({"reason": "log_purged", "first_held_index": first, "applied_index": applied}))
        .into());
    };
    s.app.archive_reads.read_from(from);
    let header = serde_json::json!({
        "node_id": s.app.id,
        "cluster_id": s.app.config.tls.as_ref().map(|t| t.cluster_id.clone()),
        "from": from,
        "entries": entries.len(),
        "last_index": entries.last().map(|((i, _), _)| *i),
        "applied_index": applied,
        "first_held_index": first,
    });
    let mut body = serde_json::to_vec(&header)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    body.push(b'\n');
    body.extend_from_slice(&crate::backup::archive::encode_frames(
        entries.iter().map(|((i, raw), _)| (*i, raw.as_slice())),
    ));
    Ok((
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        body,
    )
        .into_response())
}

/// One file of a backup hold, streamed in 1 MiB pieces with its length.
async fn backup_file(
    State(s): State<HttpState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> HttpResult {
    caller.require(&[Role::Ops])?;
    let Path((hold_id, name)) =
        path.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let Some(file_path) = crate::backup::hold_file(&s.app.config.data_dir, &hold_id, &name) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no file {name:?} in backup hold {hold_id:?}"),
        )
        .into());
    };
    let io = |e: std::io::Error| ApiError::new(ErrorCode::Internal, e.to_string());
    let file = tokio::fs::File::open(&file_path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    let stream = futures::stream::unfold(Some(file), |state| async move {
        use tokio::io::AsyncReadExt;
        let mut f = state?;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        StatusCode::OK,
        [
            ("content-type", "application/octet-stream".to_string()),
            ("content-length", len.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

// ---- billing: every route goes through `ops::call` (shared with gRPC) ----

/// Parse a body into a JSON value: unreadable or oversized bodies and
/// syntax errors are refused here; types and fields are checked by `ops`.
fn parse_value(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, ApiError> {
    parse::<serde_json::Value>(body)
}

/// Merge path and query parameters into the arguments object. A body
/// field that contradicts the path is refused.
fn merge(
    mut args: serde_json::Value,
    extra: Vec<(String, String)>,
) -> Result<serde_json::Value, ApiError> {
    let Some(obj) = args.as_object_mut() else {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "the request body must be a JSON object",
        ));
    };
    for (k, v) in extra {
        if let Some(prev) = obj.get(&k)
            && prev.as_str() != Some(v.as_str())
        {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("{k}: the body disagrees with the URL"),
            ));
        }
        obj.insert(k, serde_json::Value::String(v));
    }
    Ok(args)
}

async fn run(
    s: &HttpState,
    caller: &Caller,
    ep: Endpoint,
    body: Option<Result<Bytes, BytesRejection>>,
    extra: Vec<(String, String)>,
) -> HttpResult {
    caller.require(ep.roles())?;
    let args = match body {
        // The common case (purchases, payments, card checks): the body
        // is parsed once, into the endpoint's typed arguments.
        Some(b) if extra.is_empty() => ops::Args::Body(body_bytes(b)?),
        Some(b) => ops::Args::Json(merge(parse_value(b)?, extra)?),
        None => ops::Args::Json(merge(serde_json::json!({}), extra)?),
    };
    ok(ops::call(&s.app, caller, ep, args).await?)
}

type QueryArgs = Result<Query<Vec<(String, String)>>, QueryRejection>;
type PathArg = Result<Path<String>, PathRejection>;

/// A path parameter that does not decode (bad percent-encoding, not
/// UTF-8) is refused with the JSON error body like any other bad input.
fn path(p: PathArg) -> Result<String, ApiError> {
    p.map(|Path(v)| v).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("path parameter: {}", e.body_text()),
        )
    })
}

/// Query parameters as (name, value); a name given twice is refused.
fn query(q: QueryArgs) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = q.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in &pairs {
        if !seen.insert(k.clone()) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("query parameter {k} given twice"),
            ));
        }
    }
    Ok(pairs)
}

macro_rules! body_route {
    ($name:ident, $ep:expr) => {
        async fn $name(
            State(s): State<HttpState>,
            caller: Caller,
            body: Result<Bytes, BytesRejection>,
        ) -> HttpResult {
            run(&s, &caller, $ep, Some(body), Vec::new()).await
        }
    };
    ($name:ident, $ep:expr, $key:literal) => {
        async fn $name(
            State(s): State<HttpState>,
            caller: Caller,
            p: PathArg,
            body: Result<Bytes, BytesRejection>,
        ) -> HttpResult {
            let p = path(p)?;
            run(&s, &caller, $ep, Some(body), vec![($key.to_string(), p)]).await
        }
    };
}

body_route!(open_account, Endpoint::OpenAccount);
body_route!(update_contact, Endpoint::UpdateContact, "account_id");
body_route!(close_account, Endpoint::Close, "account_id");
body_route!(suspend_account, Endpoint::Suspend, "account_id");
body_route!(resume_account, Endpoint::Resume, "account_id");
body_route!(issue_card, Endpoint::IssueCard);
body_route!(replace_card, Endpoint::ReplaceCard, "card_no");
body_route!(verify_card, Endpoint::VerifyCard);
body_route!(purchase, Endpoint::Purchase);
body_route!(reissue, Endpoint::Reissue, "record_id");
body_route!(confirm_loaded, Endpoint::ConfirmLoaded, "record_id");
body_route!(payment, Endpoint::Payment);
body_route!(reverse, Endpoint::Reverse, "record_id");
body_route!(adjust, Endpoint::Adjust);
body_route!(post_charge, Endpoint::PostCharge);
body_route!(print_invoice, Endpoint::PrintInvoice, "invoice_no");
body_route!(set_boundary, Endpoint::SetBoundary);
body_route!(open_season, Endpoint::OpenSeason);
body_route!(define_tariff, Endpoint::DefineTariff, "tariff_id");
body_route!(import, Endpoint::Import);
body_route!(record_drill, Endpoint::RecordDrill);

async fn list_drills(State(s): State<HttpState>, caller: Caller, q: QueryArgs) -> HttpResult {
    let extra = query(q)?;
    run(&s, &caller, Endpoint::ListDrills, None, extra).await
}

/// `GET /`: the status page (`status_page.html`). A static shell without
/// any data, the same bytes for everyone, so it answers without a
/// credential like `/healthz`: it holds no cluster data. Its script asks
/// `/v1/cluster/status` (ops or auditor) with a token the user pastes (kept
/// in the tab's sessionStorage) and renders that. The headers forbid any
/// other origin, framing and caching.
async fn status_page() -> Response {
    (
        StatusCode::OK,
        [
            ("content-type", "text/html; charset=utf-8"),
            (
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

const STATUS_PAGE: &str = include_str!("status_page.html");

async fn get_account(
    State(s): State<HttpState>,
    caller: Caller,
    account_id: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let account_id = path(account_id)?;
    let mut extra = query(q)?;
    extra.push(("account_id".into(), account_id));
    run(&s, &caller, Endpoint::GetAccount, None, extra).await
}

async fn list_records(
    State(s): State<HttpState>,
    caller: Caller,
    account_id: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let account_id = path(account_id)?;
    let mut extra = query(q)?;
    extra.push(("account_id".into(), account_id));
    run(&s, &caller, Endpoint::ListRecords, None, extra).await
}

async fn account_statement(
    State(s): State<HttpState>,
    caller: Caller,
    account_id: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let account_id = path(account_id)?;
    let mut extra = query(q)?;
    extra.push(("account_id".into(), account_id));
    run(&s, &caller, Endpoint::Statement, None, extra).await
}

async fn get_request(
    State(s): State<HttpState>,
    caller: Caller,
    request_id: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let request_id = path(request_id)?;
    let mut extra = query(q)?;
    extra.push(("request_id".into(), request_id));
    run(&s, &caller, Endpoint::GetRequest, None, extra).await
}

async fn season_bill(
    State(s): State<HttpState>,
    caller: Caller,
    season_id: PathArg,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let season_id = path(season_id)?;
    let body = parse_value(body)?;
    let r = super::season::bill(&s.app, &caller, &season_id, body).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn season_bill_report(
    State(s): State<HttpState>,
    caller: Caller,
    season_id: PathArg,
) -> HttpResult {
    let season_id = path(season_id)?;
    let r = super::season::report(&s.app, &caller, &season_id).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn season_bill_lines(
    State(s): State<HttpState>,
    caller: Caller,
    season_id: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let season_id = path(season_id)?;
    let q = query(q)?;
    let r = super::season::lines(&s.app, &caller, &season_id, q).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn bank_payments(
    State(s): State<HttpState>,
    caller: Caller,
    bank_code: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let (bank_code, q) = (path(bank_code)?, query(q)?);
    let r = super::bank::payments(&s.app, &caller, &bank_code, q).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn bank_reconcile(
    State(s): State<HttpState>,
    caller: Caller,
    bank_code: PathArg,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let (bank_code, body) = (path(bank_code)?, parse_value(body)?);
    let r = super::bank::reconcile(&s.app, &caller, &bank_code, body).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn bank_index_backfill(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let body = parse_value(body)?;
    let r = super::bank::index_backfill(&s.app, &caller, body).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn bank_reconciliations(
    State(s): State<HttpState>,
    caller: Caller,
    bank_code: PathArg,
    q: QueryArgs,
) -> HttpResult {
    let (bank_code, q) = (path(bank_code)?, query(q)?);
    let r = super::bank::list(&s.app, &caller, &bank_code, q).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn bank_reconciliation(
    State(s): State<HttpState>,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> HttpResult {
    let Path((bank_code, request_id)) = p.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("path parameter: {}", e.body_text()),
        )
    })?;
    let r = super::bank::get(&s.app, &caller, &bank_code, &request_id).await;
    ok(ops::fence_on_corruption(&s.app, r)?)
}

async fn monthly_report(State(s): State<HttpState>, caller: Caller, q: QueryArgs) -> HttpResult {
    let extra = query(q)?;
    run(&s, &caller, Endpoint::MonthlyReport, None, extra).await
}

async fn balance_report(State(s): State<HttpState>, caller: Caller, q: QueryArgs) -> HttpResult {
    let extra = query(q)?;
    run(&s, &caller, Endpoint::BalanceReport, None, extra).await
}

async fn bank_daily_report(State(s): State<HttpState>, caller: Caller, q: QueryArgs) -> HttpResult {
    let extra = query(q)?;
    run(&s, &caller, Endpoint::BankDailyReport, None, extra).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A streamed body of `chunks` chunks of `chunk_bytes` each, counting
    /// the chunks the reader pulled.
    fn counted_body(chunks: usize, chunk_bytes: usize) -> (axum::body::Body, Arc<AtomicUsize>) {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let stream = futures::stream::iter(0..chunks).map(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; chunk_bytes]))
        });
        (axum::body::Body::from_stream(stream), pulled)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The code `read_bounded` refuses a counted body with, and how many
    /// of its chunks it pulled.
    async fn refused(
        chunks: usize,
        chunk_bytes: usize,
        declared_bytes: Option<u64>,
        size_bytes_max: usize,
    ) -> (ErrorCode, usize) {
        let (body, pulled) = counted_body(chunks, chunk_bytes);
        let e = read_bounded(body, declared_bytes, size_bytes_max, TIMEOUT)
            .await
            .expect_err("refused");
        (e.code, pulled.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_passed_on_whole() {
        let (body, pulled) = counted_body(4, 1000);
        let bytes = read_bounded(body, None, 4000, TIMEOUT).await.expect("fits");
        assert_eq!(bytes.len(), 4000);
        assert_eq!(pulled.load(Ordering::SeqCst), 4);

        let (body, _) = counted_body(1, 4000);
        let bytes = read_bounded(body, Some(4000), 4000, TIMEOUT)
            .await
            .expect("fits");
        assert_eq!(bytes.as_ref(), vec![b'x'; 4000].as_slice());
    }

    #[tokio::test]
    async fn an_over_limit_body_is_drained_then_refused() {
        // 2 MB against a 64 KiB limit: every chunk is read, so the client's
        // writes complete and it reads the answer.
        assert_eq!(
            refused(200, 10_000, Some(2_000_000), 64 * 1024).await,
            (ErrorCode::PayloadTooLarge, 200)
        );
    }

    #[tokio::test]
    async fn a_body_past_the_drain_bound_is_refused_without_reading_it_all() {
        let chunk_bytes = 1 << 20;
        let chunks = BODY_DRAIN_BYTES_MAX / chunk_bytes + 10;
        let (code, read) = refused(chunks, chunk_bytes, None, 1000).await;
        assert_eq!(code, ErrorCode::PayloadTooLarge);
        assert!(
            read < chunks,
            "stopped reading after {read} of {chunks} chunks"
        );

        // A declared length past the bound is refused before any read.
        let declared = (1000 + BODY_DRAIN_BYTES_MAX + 1) as u64;
        assert_eq!(
            refused(1, 10, Some(declared), 1000).await,
            (ErrorCode::PayloadTooLarge, 0)
        );
    }

    #[tokio::test]
    async fn a_stalled_or_broken_body_is_malformed() {
        let stalled = axum::body::Body::from_stream(futures::stream::pending::<
            Result<Bytes, std::io::Error>,
        >());
        let e = read_bounded(stalled, Some(10), 1000, Duration::from_millis(50))
            .await
            .expect_err("stalled");
        assert_eq!(e.code, ErrorCode::MalformedRequest);

        let broken = axum::body::Body::from_stream(futures::stream::iter([
            Ok(Bytes::from_static(b"{\"a\":")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        ]));
        let e = read_bounded(broken, None, 1000, TIMEOUT)
            .await
            .expect_err("broken");
        assert_eq!(e.code, ErrorCode::MalformedRequest);
    }
}
