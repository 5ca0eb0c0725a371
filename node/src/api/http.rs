//! HTTP/JSON surface (axum). Routes mirror the gRPC service one to one;
//! errors are `{"code","message","details"}` with the status from the code.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use billdb_api::error::{ApiError, ErrorCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{status, validate};
use crate::app::{AdminOp, App};
use crate::auth::{Caller, Role};
use crate::types::{NodeId, NodeInfo};

#[derive(Clone)]
pub struct HttpState {
    pub app: App,
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

/// Parse a JSON body strictly (unknown fields refused) into `T`.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
        } else {
            ApiError::new(ErrorCode::MalformedRequest, e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidArgument, e.to_string())
        }
        _ => ApiError::new(ErrorCode::MalformedRequest, format!("malformed JSON: {e}")),
    })
}

fn ok(v: serde_json::Value) -> HttpResult {
    Ok((StatusCode::OK, Json(v)).into_response())
}

pub fn router(state: HttpState) -> Router {
    let limit = state.app.config.limits.request_body_bytes_max;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_route))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/digest", get(cluster_digest))
        .route("/v1/cluster/init", post(cluster_init))
        .route("/v1/cluster/learners", post(cluster_add_learner))
        .route("/v1/cluster/membership", post(cluster_membership))
        .route("/v1/cluster/remove", post(cluster_remove))
        .route("/v1/cluster/transfer-leader", post(cluster_transfer))
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{account_id}", get(get_account))
        .route("/v1/payments", post(payment))
        .route("/v1/requests/{request_id}", get(get_request))
        .fallback(|| async { HttpError(ApiError::new(ErrorCode::NotFound, "no such route")) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(record_latency))
        .with_state(state)
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
        "billdb_http_request_seconds",
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
        state.app.auth.authenticate(header).map_err(HttpError)
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

async fn metrics_route(State(s): State<HttpState>) -> Response {
    crate::metrics::refresh(&s.app);
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        s.prometheus.render(),
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
    let db = s.app.db.clone();
    let (applied, digest) =
        tokio::task::spawn_blocking(move || crate::store::state_machine::state_digest(&db))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    ok(serde_json::json!({"applied_index": applied.map(|l| l.index), "digest": digest}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeJson {
    id: NodeId,
    raft_addr: String,
    grpc_addr: String,
    http_addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitJson {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipJson {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveJson {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferJson {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAccountJson {
    request_id: String,
    account_id: String,
    name: String,
    #[serde(default)]
    address: String,
    branch: String,
    utility: String,
    #[serde(default)]
    meter_id: String,
    #[serde(default)]
    tariff_id: String,
}

async fn open_account(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Counter, Role::Ops])?;
    let r: OpenAccountJson = parse(body)?;
    let request_id = validate::id("request_id", &r.request_id)?;
    let op = validate::open_account(validate::OpenAccountInput {
        account_id: &r.account_id,
        name: &r.name,
        address: &r.address,
        branch: &r.branch,
        utility: &r.utility,
        meter_id: &r.meter_id,
        tariff_id: &r.tariff_id,
    })?;
    write_reply(s.app.write(request_id, caller.operator(), op).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentJson {
    request_id: String,
    account_id: String,
    amount: String,
    bank_code: String,
    bank_ref: String,
}

async fn payment(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    caller.require(&[Role::Bank, Role::Ops])?;
    let r: PaymentJson = parse(body)?;
    let request_id = validate::id("request_id", &r.request_id)?;
    caller.check_bank(&r.bank_code)?;
    let op = validate::payment(&r.account_id, &r.amount, &r.bank_code, &r.bank_ref)?;
    write_reply(s.app.write(request_id, caller.operator(), op).await?)
}

/// A refused command is an error response; its code says why.
fn write_reply((outcome, log_index): (crate::domain::Outcome, u64)) -> HttpResult {
    if let crate::domain::Outcome::Refused(e) = outcome {
        return Err(HttpError(e));
    }
    let mut v = outcome.to_json();
    v["log_index"] = serde_json::json!(log_index);
    ok(v)
}

async fn get_account(
    State(s): State<HttpState>,
    _caller: Caller,
    Path(account_id): Path<String>,
) -> HttpResult {
    let account_id = validate::id("account_id", &account_id)?;
    s.app.linearize().await?;
    let txn = crate::store::state_machine::RocksTxn::new(&s.app.db);
    let acct = crate::domain::get_account(&txn, &account_id)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::AccountNotFound,
                format!("no account {account_id:?}"),
            )
        })?;
    ok(serde_json::json!({
        "account_id": acct.account_id, "name": acct.name, "address": acct.address, "branch": acct.branch,
        "utility": acct.utility, "meter_id": acct.meter_id, "tariff_id": acct.tariff_id, "status": acct.status,
        "balance": acct.balance.to_string(), "opened_ms": acct.opened_ms, "last_seq": acct.last_seq,
    }))
}

async fn get_request(
    State(s): State<HttpState>,
    _caller: Caller,
    Path(request_id): Path<String>,
) -> HttpResult {
    let request_id = validate::id("request_id", &request_id)?;
    s.app.linearize().await?;
    let txn = crate::store::state_machine::RocksTxn::new(&s.app.db);
    match crate::domain::request_outcome(&txn, &request_id)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    {
        Some(o) => ok(serde_json::json!({"request_id": request_id, "outcome": o.to_json()})),
        None => Err(HttpError(ApiError::new(
            ErrorCode::NotFound,
            format!("no request {request_id:?} was applied"),
        ))),
    }
}
