//! gRPC surface (`billdb.v1.Cluster`, `billdb.v2.Billing` and, for one
//! release, `billdb.v1.Billing`): the same operations and error codes as
//! the HTTP routes.
//!
//! A billing RPC's fields become the arguments object its HTTP route
//! takes, `ops::call` answers it as JSON, and the v2 reply is that JSON
//! read through the reply's descriptor (`billdb_api::v2json`, unknown
//! fields refused); v1 sends the JSON itself. v1 requests are re-read as
//! their v2 twins (same fields, same numbers), so one set of argument
//! builders serves both.

use std::collections::BTreeMap;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::pb;
use billdb_api::pb2;
use billdb_api::v2json;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::ops::{self, Endpoint};
use super::{bank, season, status, validate};
use crate::app::{AdminOp, App};
use crate::auth::{Caller, Role};
use crate::domain::Outcome;
use crate::types::NodeInfo;

pub struct GrpcApi {
    pub app: App,
}

impl GrpcApi {
    /// Authenticate from the `authorization` metadata and check the role.
    fn caller<T>(&self, req: &Request<T>, allowed: &[Role]) -> Result<Caller, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let cert = self
            .app
            .client_cert_name(req.extensions().get::<crate::listen::PeerInfo>());
        let caller = self
            .app
            .auth
            .authenticate_with(header, cert.as_deref())
            .map_err(|e| e.to_status())?;
        caller.require(allowed).map_err(|e| e.to_status())?;
        Ok(caller)
    }
}

const ALL_ROLES: &[Role] = &[Role::Counter, Role::Bank, Role::Ops, Role::Auditor];

fn node_info(n: &pb::NodeAddr) -> NodeInfo {
    NodeInfo {
        raft_addr: n.raft_addr.clone(),
        grpc_addr: n.grpc_addr.clone(),
        http_addr: n.http_addr.clone(),
    }
}

fn admin(r: Result<crate::app::AdminReply, ApiError>) -> Result<Response<pb::AdminReply>, Status> {
    let r = r.map_err(|e| e.to_status())?;
    Ok(Response::new(pb::AdminReply {
        message: r.message,
        log_index: r.log_index,
    }))
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for GrpcApi {
    async fn initialize(
        &self,
        req: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.caller(&req, &[Role::Ops])?;
        let mut nodes = BTreeMap::new();
        for n in &req.get_ref().nodes {
            if nodes.insert(n.id, node_info(n)).is_some() {
                return Err(ApiError::new(
                    ErrorCode::DuplicateNode,
                    format!("node id {} is listed twice", n.id),
                )
                .to_status());
            }
        }
        admin(self.app.initialize(nodes).await)
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.caller(&req, &[Role::Ops])?;
        let n = req.get_ref().node.as_ref().ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidArgument, "node is required").to_status()
        })?;
        admin(
            self.app
                .admin(AdminOp::AddLearner {
                    id: n.id,
                    node: node_info(n),
                })
                .await,
        )
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.caller(&req, &[Role::Ops])?;
        let voters = req.get_ref().voters.iter().copied().collect();
        admin(self.app.admin(AdminOp::ChangeMembership { voters }).await)
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.caller(&req, &[Role::Ops])?;
        admin(
            self.app
                .admin(AdminOp::Remove {
                    id: req.get_ref().id,
                })
                .await,
        )
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.caller(&req, &[Role::Ops])?;
        admin(
            self.app
                .admin(AdminOp::TransferLeader {
                    to: req.get_ref().to,
                })
                .await,
        )
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.caller(&req, &[Role::Ops, Role::Auditor])?;
        let s = status::status(&self.app);
        Ok(Response::new(pb::StatusReply {
            node_id: s.node_id,
            role: s.role,
            term: s.term,
            leader_id: s.leader_id,
            last_log_index: s.last_log_index,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            voters: s.voters,
            learners: s.learners,
            nodes: s
                .nodes
                .iter()
                .map(|(id, n)| pb::NodeAddr {
                    id: *id,
                    raft_addr: n.raft_addr.clone(),
                    grpc_addr: n.grpc_addr.clone(),
                    http_addr: n.http_addr.clone(),
                })
                .collect(),
            replication: s
                .replication
                .iter()
                .map(|(id, r)| pb::ReplicationProgress {
                    node_id: *id,
                    matched_index: r.matched_index,
                    lag: r.lag,
                })
                .collect(),
            db_size_bytes: s.db_size_bytes,
        }))
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestReply>, Status> {
        self.caller(&req, &[Role::Ops, Role::Auditor])?;
        let db = self.app.db.clone();
        let (applied, digest) =
            tokio::task::spawn_blocking(move || crate::store::state_machine::state_digest(&db))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DigestReply {
            applied_index: applied.map(|l| l.index),
            digest,
        }))
    }
}

type JsonResult = Result<Response<pb::JsonReply>, Status>;

pub use billdb_api::LEADER_METADATA;

impl GrpcApi {
    /// Tell the client which node leads (`billdb-leader: <id> <grpc addr>`,
    /// on answers and refusals alike) so it can send its next request there
    /// and skip the forwarding hop.
    fn hint<T>(&self, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        let Some(value) = self.app.leader_hint().and_then(|h| h.parse().ok()) else {
            return r;
        };
        match r {
            Ok(mut resp) => {
                resp.metadata_mut().insert(LEADER_METADATA, value);
                Ok(resp)
            }
            Err(mut status) => {
                status.metadata_mut().insert(LEADER_METADATA, value);
                Err(status)
            }
        }
    }

    /// The JSON answer of `ep` (what its HTTP route returns) for a request
    /// whose fields `to_args` turns into the route's arguments object.
    async fn answer<T: prost::Message>(
        &self,
        req: Request<T>,
        ep: Endpoint,
        to_args: impl FnOnce(T) -> Result<serde_json::Value, Status>,
    ) -> Result<serde_json::Value, Status> {
        let caller = self.caller(&req, ep.roles())?;
        let limits = &self.app.config.limits;
        let bytes_max = if ep == Endpoint::Import {
            limits.import_body_bytes_max
        } else {
            limits.request_body_bytes_max
        };
        if req.get_ref().encoded_len() > bytes_max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request too large").to_status());
        }
        let args = to_args(req.into_inner())?;
        ops::call(&self.app, &caller, ep, args.into())
            .await
            .map_err(|e| e.to_status())
    }

    /// The caller of a request to a route function that checks its own
    /// roles (season bill, bank day), and the request's fields, once its
    /// size is within `bytes_max`.
    fn open<T: prost::Message>(
        &self,
        req: Request<T>,
        bytes_max: usize,
    ) -> Result<(Caller, T), Status> {
        let caller = self.caller(&req, ALL_ROLES)?;
        if req.get_ref().encoded_len() > bytes_max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request too large").to_status());
        }
        Ok((caller, req.into_inner()))
    }

    /// A `billdb.v2` reply from a route function that checks its own roles
    /// (season bill, bank day): `f` gets the caller and the request.
    async fn v2_route<T, R, F, Fut>(&self, req: Request<T>, bytes_max: usize, f: F) -> V2<R>
    where
        T: prost::Message,
        R: prost::Message + prost::Name + Default,
        F: FnOnce(Caller, T) -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
    {
        let r = match self.open(req, bytes_max) {
            Ok((caller, r)) => f(caller, r)
                .await
                .map_err(|e| e.to_status())
                .and_then(|v| typed(&v)),
            Err(e) => Err(e),
        };
        self.hint(r.map(Response::new))
    }

    /// A `billdb.v2` reply: the answer read as `R`.
    async fn v2<T: prost::Message, R: prost::Message + prost::Name + Default>(
        &self,
        req: Request<T>,
        ep: Endpoint,
        to_args: impl FnOnce(T) -> serde_json::Value,
    ) -> Result<Response<R>, Status> {
        let r = match self.answer(req, ep, |r| Ok(to_args(r))).await {
            Ok(v) => typed::<R>(&v).map(Response::new),
            Err(e) => Err(e),
        };
        self.hint(r)
    }

    /// A `billdb.v1` reply: the answer as a JSON string, the request re-read
    /// as its v2 twin `B`.
    async fn v1<A: prost::Message, B: prost::Message + Default>(
        &self,
        req: Request<A>,
        ep: Endpoint,
        to_args: impl FnOnce(B) -> serde_json::Value,
    ) -> JsonResult {
        let r = self
            .answer(req, ep, |a| {
                let b = v2json::same_wire::<A, B>(&a)
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e).to_status())?;
                Ok(to_args(b))
            })
            .await
            .map(|v| {
                Response::new(pb::JsonReply {
                    json: v.to_string(),
                })
            });
        self.hint(r)
    }
}

/// `R` read from an answer. An answer that does not fit its reply is a bug
/// of this node (a field added to the HTTP answer and not to the .proto):
/// INTERNAL, logged, never a reply with the field silently dropped.
fn typed<R: prost::Message + prost::Name + Default>(v: &serde_json::Value) -> Result<R, Status> {
    v2json::from_json::<R>(v).map_err(|e| {
        tracing::error!(reply = %R::full_name(), error = %e, "a billdb.v2 reply could not be built");
        ApiError::new(ErrorCode::Internal, e).to_status()
    })
}

/// Bulk import rows: the JSON of `POST /v1/import`.
fn import_rows(raw: &str) -> Result<serde_json::Value, Status> {
    serde_json::from_str(raw).map_err(|e| {
        ApiError::new(ErrorCode::MalformedRequest, format!("malformed JSON: {e}")).to_status()
    })
}

/// The arguments object of each billing RPC (that of its HTTP route).
mod args {
    use billdb_api::pb2;
    use serde_json::{Value, json};

    pub fn open_account(r: pb2::OpenAccountRequest) -> Value {
        json!({
            "request_id": r.request_id, "account_id": r.account_id, "name": r.name,
            "address": r.address, "branch": r.branch, "utility": r.utility,
            "meter_id": r.meter_id, "tariff_id": r.tariff_id,
        })
    }
    pub fn payment(r: pb2::PaymentRequest) -> Value {
        json!({
            "request_id": r.request_id, "account_id": r.account_id, "amount": r.amount,
            "bank_code": r.bank_code, "bank_ref": r.bank_ref,
        })
    }
    pub fn get_account(r: pb2::GetAccountRequest) -> Value {
        json!({"account_id": r.account_id})
    }
    pub fn update_contact(r: pb2::UpdateContactRequest) -> Value {
        json!({
            "request_id": r.request_id, "account_id": r.account_id, "name": r.name,
            "address": r.address, "phone": r.phone, "area": r.area,
        })
    }
    pub fn lifecycle(r: pb2::LifecycleRequest) -> Value {
        json!({"request_id": r.request_id, "account_id": r.account_id, "reason": r.reason})
    }
    pub fn issue_card(r: pb2::IssueCardRequest) -> Value {
        json!({"request_id": r.request_id, "account_id": r.account_id, "card_no": r.card_no})
    }
    pub fn replace_card(r: pb2::ReplaceCardRequest) -> Value {
        json!({
            "request_id": r.request_id, "card_no": r.card_no,
            "new_card_no": r.new_card_no, "reason": r.reason,
        })
    }
    pub fn verify_card(r: pb2::VerifyCardRequest) -> Value {
        json!({"card_no": r.card_no, "generation": r.generation, "seq_on_card": r.seq_on_card})
    }
    pub fn purchase(r: pb2::PurchaseRequest) -> Value {
        json!({
            "request_id": r.request_id, "card_no": r.card_no, "account_id": r.account_id,
            "amount": r.amount, "units": r.units, "confirm_duplicate": r.confirm_duplicate,
        })
    }
    pub fn record(r: pb2::RecordRequest) -> Value {
        json!({"request_id": r.request_id, "record_id": r.record_id, "reason": r.reason})
    }
    pub fn adjust(r: pb2::AdjustRequest) -> Value {
        json!({
            "request_id": r.request_id, "account_id": r.account_id,
            "amount": r.amount, "reason": r.reason,
        })
    }
    pub fn charge(r: pb2::ChargeRequest) -> Value {
        json!({
            "request_id": r.request_id, "account_id": r.account_id, "amount": r.amount,
            "period": r.period, "reason": r.reason,
        })
    }
    pub fn print_invoice(r: pb2::PrintInvoiceRequest) -> Value {
        json!({"request_id": r.request_id, "invoice_no": r.invoice_no})
    }
    pub fn boundary(r: pb2::SetBoundaryRequest) -> Value {
        json!({"request_id": r.request_id, "boundary": r.boundary, "boundary_ms": r.boundary_ms})
    }
    pub fn open_season(r: pb2::OpenSeasonRequest) -> Value {
        json!({"request_id": r.request_id, "season_id": r.season_id})
    }
    pub fn define_tariff(r: pb2::DefineTariffRequest) -> Value {
        let tiers = if r.tiers.is_empty() {
            Value::Null
        } else {
            r.tiers
                .iter()
                .map(|t| json!({"up_to": t.up_to, "price": t.price}))
                .collect()
        };
        json!({
            "request_id": r.request_id, "tariff_id": r.tariff_id, "kind": r.kind,
            "price": r.price, "tiers": tiers, "effective_from": r.effective_from,
            "effective_from_ms": r.effective_from_ms, "suspended_share": r.suspended_share,
        })
    }
    pub fn statement(r: pb2::StatementRequest) -> Value {
        json!({
            "account_id": r.account_id, "from": r.from, "to": r.to,
            "from_ms": r.from_ms.map(|v| v.to_string()),
            "to_ms": r.to_ms.map(|v| v.to_string()),
        })
    }
    pub fn list_records(r: pb2::ListRecordsRequest) -> Value {
        json!({
            "account_id": r.account_id, "segment": r.segment, "from": r.from, "to": r.to,
            "limit": r.limit.map(|l| l.to_string()), "page_token": r.page_token,
            "order": r.order,
        })
    }
    pub fn get_request(r: pb2::GetRequestRequest) -> Value {
        json!({"request_id": r.request_id})
    }
    pub fn monthly_report(r: pb2::MonthlyReportRequest) -> Value {
        json!({
            "month": r.month, "group_by": r.group_by,
            "consistency": r.consistency, "drills": r.drills,
        })
    }
    pub fn balance_report(r: pb2::BalanceReportRequest) -> Value {
        json!({"group_by": r.group_by, "consistency": r.consistency})
    }
    pub fn bank_daily_report(r: pb2::BankDailyReportRequest) -> Value {
        json!({"date": r.date, "bank_code": r.bank_code, "consistency": r.consistency})
    }
}

fn write_reply(r: Result<(Outcome, u64), ApiError>) -> Result<Response<pb::WriteReply>, Status> {
    let (outcome, log_index) = r.map_err(|e| e.to_status())?;
    if let Outcome::Refused(e) = outcome {
        return Err(e.to_status());
    }
    Ok(Response::new(pb::WriteReply {
        outcome_json: outcome.to_json().to_string(),
        log_index,
    }))
}

type V2<R> = Result<Response<R>, Status>;

#[tonic::async_trait]
impl pb2::billing_server::Billing for GrpcApi {
    async fn open_account(
        &self,
        req: Request<pb2::OpenAccountRequest>,
    ) -> V2<pb2::OpenAccountReply> {
        self.v2(req, Endpoint::OpenAccount, args::open_account)
            .await
    }
    async fn post_payment(&self, req: Request<pb2::PaymentRequest>) -> V2<pb2::PaymentReply> {
        self.v2(req, Endpoint::Payment, args::payment).await
    }
    async fn get_account(&self, req: Request<pb2::GetAccountRequest>) -> V2<pb2::Account> {
        self.v2(req, Endpoint::GetAccount, args::get_account).await
    }
    async fn update_contact(
        &self,
        req: Request<pb2::UpdateContactRequest>,
    ) -> V2<pb2::AccountReply> {
        self.v2(req, Endpoint::UpdateContact, args::update_contact)
            .await
    }
    async fn close_account(&self, req: Request<pb2::LifecycleRequest>) -> V2<pb2::AccountReply> {
        self.v2(req, Endpoint::Close, args::lifecycle).await
    }
    async fn suspend_account(&self, req: Request<pb2::LifecycleRequest>) -> V2<pb2::AccountReply> {
        self.v2(req, Endpoint::Suspend, args::lifecycle).await
    }
    async fn resume_account(&self, req: Request<pb2::LifecycleRequest>) -> V2<pb2::AccountReply> {
        self.v2(req, Endpoint::Resume, args::lifecycle).await
    }
    async fn issue_card(&self, req: Request<pb2::IssueCardRequest>) -> V2<pb2::CardIssuedReply> {
        self.v2(req, Endpoint::IssueCard, args::issue_card).await
    }
    async fn replace_card(
        &self,
        req: Request<pb2::ReplaceCardRequest>,
    ) -> V2<pb2::CardReplacedReply> {
        self.v2(req, Endpoint::ReplaceCard, args::replace_card)
            .await
    }
    async fn verify_card(&self, req: Request<pb2::VerifyCardRequest>) -> V2<pb2::CardCheck> {
        self.v2(req, Endpoint::VerifyCard, args::verify_card).await
    }
    async fn purchase(&self, req: Request<pb2::PurchaseRequest>) -> V2<pb2::RecordReply> {
        self.v2(req, Endpoint::Purchase, args::purchase).await
    }
    async fn reissue(&self, req: Request<pb2::RecordRequest>) -> V2<pb2::RecordReply> {
        self.v2(req, Endpoint::Reissue, args::record).await
    }
    async fn confirm_loaded(&self, req: Request<pb2::RecordRequest>) -> V2<pb2::CreditLoadedReply> {
        self.v2(req, Endpoint::ConfirmLoaded, args::record).await
    }
    async fn reverse(&self, req: Request<pb2::RecordRequest>) -> V2<pb2::RecordReply> {
        self.v2(req, Endpoint::Reverse, args::record).await
    }
    async fn adjust(&self, req: Request<pb2::AdjustRequest>) -> V2<pb2::RecordReply> {
        self.v2(req, Endpoint::Adjust, args::adjust).await
    }
    async fn post_charge(&self, req: Request<pb2::ChargeRequest>) -> V2<pb2::RecordReply> {
        self.v2(req, Endpoint::PostCharge, args::charge).await
    }
    async fn print_invoice(
        &self,
        req: Request<pb2::PrintInvoiceRequest>,
    ) -> V2<pb2::InvoicePrintedReply> {
        self.v2(req, Endpoint::PrintInvoice, args::print_invoice)
            .await
    }
    async fn set_segment_boundary(
        &self,
        req: Request<pb2::SetBoundaryRequest>,
    ) -> V2<pb2::BoundarySetReply> {
        self.v2(req, Endpoint::SetBoundary, args::boundary).await
    }
    async fn open_heating_season(
        &self,
        req: Request<pb2::OpenSeasonRequest>,
    ) -> V2<pb2::SeasonOpenedReply> {
        self.v2(req, Endpoint::OpenSeason, args::open_season).await
    }
    async fn define_tariff(
        &self,
        req: Request<pb2::DefineTariffRequest>,
    ) -> V2<pb2::TariffDefinedReply> {
        self.v2(req, Endpoint::DefineTariff, args::define_tariff)
            .await
    }
    async fn import(&self, req: Request<pb2::ImportRequest>) -> V2<pb2::ImportReply> {
        let r = match self
            .answer(req, Endpoint::Import, |r| import_rows(&r.rows_json))
            .await
        {
            Ok(v) => typed(&v).map(Response::new),
            Err(e) => Err(e),
        };
        self.hint(r)
    }
    async fn list_records(&self, req: Request<pb2::ListRecordsRequest>) -> V2<pb2::RecordsPage> {
        self.v2(req, Endpoint::ListRecords, args::list_records)
            .await
    }
    async fn statement(&self, req: Request<pb2::StatementRequest>) -> V2<pb2::Statement> {
        self.v2(req, Endpoint::Statement, args::statement).await
    }
    async fn get_request(&self, req: Request<pb2::GetRequestRequest>) -> V2<pb2::RequestOutcome> {
        let r = match self
            .answer(req, Endpoint::GetRequest, |r| Ok(args::get_request(r)))
            .await
        {
            Ok(v) => v2json::request_outcome_json(&v)
                .map_err(|e| ApiError::new(ErrorCode::Internal, e).to_status())
                .and_then(|v| typed(&v))
                .map(Response::new),
            Err(e) => Err(e),
        };
        self.hint(r)
    }
    async fn monthly_report(
        &self,
        req: Request<pb2::MonthlyReportRequest>,
    ) -> V2<pb2::MonthlyReport> {
        self.v2(req, Endpoint::MonthlyReport, args::monthly_report)
            .await
    }
    async fn bank_daily_report(
        &self,
        req: Request<pb2::BankDailyReportRequest>,
    ) -> V2<pb2::Report> {
        self.v2(req, Endpoint::BankDailyReport, args::bank_daily_report)
            .await
    }
    async fn balance_report(
        &self,
        req: Request<pb2::BalanceReportRequest>,
    ) -> V2<pb2::BalanceReport> {
        self.v2(req, Endpoint::BalanceReport, args::balance_report)
            .await
    }
    async fn bill_season(&self, req: Request<pb2::BillSeasonRequest>) -> V2<pb2::SeasonBillRun> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            let body = json!({"request_id": r.request_id, "after": r.after});
            season::bill(&self.app, &caller, &r.season_id, body).await
        })
        .await
    }
    async fn season_bill(
        &self,
        req: Request<pb2::SeasonBillReportRequest>,
    ) -> V2<pb2::SeasonBillReport> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            season::report(&self.app, &caller, &r.season_id).await
        })
        .await
    }
    async fn season_bill_lines(
        &self,
        req: Request<pb2::SeasonBillLinesRequest>,
    ) -> V2<pb2::SeasonBillLines> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            let query = query([
                ("skipped", r.skipped.map(|b| b.to_string())),
                ("after", r.after),
                ("limit", r.limit.map(|l| l.to_string())),
            ]);
            season::lines(&self.app, &caller, &r.season_id, query).await
        })
        .await
    }
    async fn bank_payments(
        &self,
        req: Request<pb2::BankPaymentsRequest>,
    ) -> V2<pb2::BankDayPayments> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            let query = query([
                ("date", Some(r.date)),
                ("after", r.after),
                ("limit", r.limit.map(|l| l.to_string())),
            ]);
            bank::payments(&self.app, &caller, &r.bank_code, query).await
        })
        .await
    }
    async fn reconcile(&self, req: Request<pb2::ReconcileRequest>) -> V2<pb2::Reconciliation> {
        // A statement file may be as large as a bulk import.
        let max = self.app.config.limits.import_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            let body = json!({
                "request_id": r.request_id, "date": r.date, "csv": r.csv, "file_name": r.file_name,
            });
            bank::reconcile(&self.app, &caller, &r.bank_code, body).await
        })
        .await
    }
    async fn list_reconciliations(
        &self,
        req: Request<pb2::ListReconciliationsRequest>,
    ) -> V2<pb2::Reconciliations> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            bank::list(&self.app, &caller, &r.bank_code, query([("date", r.date)])).await
        })
        .await
    }
    async fn get_reconciliation(
        &self,
        req: Request<pb2::GetReconciliationRequest>,
    ) -> V2<pb2::Reconciliation> {
        let max = self.app.config.limits.request_body_bytes_max;
        self.v2_route(req, max, |caller, r| async move {
            bank::get(&self.app, &caller, &r.bank_code, &r.reconciliation_id).await
        })
        .await
    }
}

/// The query parameters of an HTTP route from a request's present fields.
fn query<const N: usize>(fields: [(&str, Option<String>); N]) -> Vec<(String, String)> {
    fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

/// `billdb.v1.Billing`, kept for one release: the same operations, the
/// answers as JSON strings.
#[tonic::async_trait]
impl pb::billing_server::Billing for GrpcApi {
    async fn open_account(
        &self,
        req: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&req, Endpoint::OpenAccount.roles())?;
        let args = args::open_account(
            v2json::same_wire(req.get_ref())
                .map_err(|e| ApiError::new(ErrorCode::Internal, e).to_status())?,
        );
        let (request_id, op) = ops::write_op(&caller, Endpoint::OpenAccount, args.into())
            .map_err(|e| e.to_status())?;
        let origin = ops::origin(&caller, &op);
        self.hint(write_reply(self.app.write(request_id, origin, op).await))
    }

    async fn post_payment(
        &self,
        req: Request<pb::PaymentRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&req, Endpoint::Payment.roles())?;
        let args = args::payment(
            v2json::same_wire(req.get_ref())
                .map_err(|e| ApiError::new(ErrorCode::Internal, e).to_status())?,
        );
        let (request_id, op) =
            ops::write_op(&caller, Endpoint::Payment, args.into()).map_err(|e| e.to_status())?;
        let origin = ops::origin(&caller, &op);
        self.hint(write_reply(self.app.write(request_id, origin, op).await))
    }

    async fn get_account(
        &self,
        req: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let r: Result<Response<pb::Account>, Status> = async {
            self.caller(&req, ALL_ROLES)?;
            let account_id =
                validate::id("account_id", &req.get_ref().account_id).map_err(|e| e.to_status())?;
            self.app.linearize().await.map_err(|e| e.to_status())?;
            let txn = crate::store::state_machine::RocksTxn::new(&self.app.db);
            let a = crate::domain::get_account(&txn, &account_id)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::AccountNotFound,
                        format!("no account {account_id:?}"),
                    )
                    .to_status()
                })?;
            Ok(Response::new(pb::Account {
                account_id: a.account_id,
                name: a.name,
                address: a.address,
                branch: a.branch,
                utility: a.utility,
                meter_id: a.meter_id,
                tariff_id: a.tariff_id,
                status: a.status,
                balance: a.balance.to_string(),
                opened_ms: a.opened_ms,
                last_seq: a.last_seq,
            }))
        }
        .await;
        self.hint(r)
    }

    async fn update_contact(&self, req: Request<pb::UpdateContactRequest>) -> JsonResult {
        self.v1(req, Endpoint::UpdateContact, args::update_contact)
            .await
    }
    async fn close_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.v1(req, Endpoint::Close, args::lifecycle).await
    }
    async fn suspend_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.v1(req, Endpoint::Suspend, args::lifecycle).await
    }
    async fn resume_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.v1(req, Endpoint::Resume, args::lifecycle).await
    }
    async fn issue_card(&self, req: Request<pb::IssueCardRequest>) -> JsonResult {
        self.v1(req, Endpoint::IssueCard, args::issue_card).await
    }
    async fn replace_card(&self, req: Request<pb::ReplaceCardRequest>) -> JsonResult {
        self.v1(req, Endpoint::ReplaceCard, args::replace_card)
            .await
    }
    async fn verify_card(&self, req: Request<pb::VerifyCardRequest>) -> JsonResult {
        self.v1(req, Endpoint::VerifyCard, args::verify_card).await
    }
    async fn purchase(&self, req: Request<pb::PurchaseRequest>) -> JsonResult {
        self.v1(req, Endpoint::Purchase, args::purchase).await
    }
    async fn reissue(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.v1(req, Endpoint::Reissue, args::record).await
    }
    async fn confirm_loaded(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.v1(req, Endpoint::ConfirmLoaded, args::record).await
    }
    async fn reverse(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.v1(req, Endpoint::Reverse, args::record).await
    }
    async fn adjust(&self, req: Request<pb::AdjustRequest>) -> JsonResult {
        self.v1(req, Endpoint::Adjust, args::adjust).await
    }
    async fn post_charge(&self, req: Request<pb::ChargeRequest>) -> JsonResult {
        self.v1(req, Endpoint::PostCharge, args::charge).await
    }
    async fn print_invoice(&self, req: Request<pb::PrintInvoiceRequest>) -> JsonResult {
        self.v1(req, Endpoint::PrintInvoice, args::print_invoice)
            .await
    }
    async fn set_segment_boundary(&self, req: Request<pb::SetBoundaryRequest>) -> JsonResult {
        self.v1(req, Endpoint::SetBoundary, args::boundary).await
    }
    async fn open_heating_season(&self, req: Request<pb::OpenSeasonRequest>) -> JsonResult {
        self.v1(req, Endpoint::OpenSeason, args::open_season).await
    }
    async fn define_tariff(&self, req: Request<pb::DefineTariffRequest>) -> JsonResult {
        self.v1(req, Endpoint::DefineTariff, args::define_tariff)
            .await
    }
    async fn statement(&self, req: Request<pb::StatementRequest>) -> JsonResult {
        self.v1(req, Endpoint::Statement, args::statement).await
    }
    async fn list_records(&self, req: Request<pb::ListRecordsRequest>) -> JsonResult {
        self.v1(req, Endpoint::ListRecords, args::list_records)
            .await
    }
    async fn get_request(&self, req: Request<pb::GetRequestRequest>) -> JsonResult {
        self.v1(req, Endpoint::GetRequest, args::get_request).await
    }
    async fn monthly_report(&self, req: Request<pb::MonthlyReportRequest>) -> JsonResult {
        self.v1(req, Endpoint::MonthlyReport, args::monthly_report)
            .await
    }
    async fn bank_daily_report(&self, req: Request<pb::BankDailyReportRequest>) -> JsonResult {
        self.v1(req, Endpoint::BankDailyReport, args::bank_daily_report)
            .await
    }
    async fn import(&self, req: Request<pb::JsonRequest>) -> JsonResult {
        let r = self
            .answer(req, Endpoint::Import, |r| import_rows(&r.args_json))
            .await
            .map(|v| {
                Response::new(pb::JsonReply {
                    json: v.to_string(),
                })
            });
        self.hint(r)
    }
}
