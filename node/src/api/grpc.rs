//! gRPC surface (`billdb.v1.Cluster`, `billdb.v1.Billing`): the same
//! operations and error codes as the HTTP routes.

use std::collections::BTreeMap;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::pb;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::ops::{self, Endpoint};
use super::{status, validate};
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
    /// Run a typed request through the code path HTTP uses: its fields
    /// become the same arguments object, then `ops::call`.
    async fn typed<T: prost::Message>(
        &self,
        req: Request<T>,
        ep: Endpoint,
        to_args: impl FnOnce(T) -> serde_json::Value,
    ) -> JsonResult {
        self.hint(self.typed_unhinted(req, ep, to_args).await)
    }

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

    async fn typed_unhinted<T: prost::Message>(
        &self,
        req: Request<T>,
        ep: Endpoint,
        to_args: impl FnOnce(T) -> serde_json::Value,
    ) -> JsonResult {
        let caller = self.caller(&req, ep.roles())?;
        if req.get_ref().encoded_len() > self.app.config.limits.request_body_bytes_max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request too large").to_status());
        }
        let args = to_args(req.into_inner());
        let v = ops::call(&self.app, &caller, ep, args)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::JsonReply {
            json: v.to_string(),
        }))
    }

    /// Run a JSON request (bulk import) through `ops::call`.
    async fn json(&self, req: Request<pb::JsonRequest>, ep: Endpoint) -> JsonResult {
        self.hint(self.json_unhinted(req, ep).await)
    }

    async fn json_unhinted(&self, req: Request<pb::JsonRequest>, ep: Endpoint) -> JsonResult {
        let caller = self.caller(&req, ep.roles())?;
        let raw = &req.get_ref().args_json;
        let limits = &self.app.config.limits;
        let bytes_max = if ep == Endpoint::Import {
            limits.import_body_bytes_max
        } else {
            limits.request_body_bytes_max
        };
        if raw.len() > bytes_max {
            return Err(ApiError::new(ErrorCode::PayloadTooLarge, "request too large").to_status());
        }
        let args: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            ApiError::new(ErrorCode::MalformedRequest, format!("malformed JSON: {e}")).to_status()
        })?;
        let v = ops::call(&self.app, &caller, ep, args)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::JsonReply {
            json: v.to_string(),
        }))
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

#[tonic::async_trait]
impl pb::billing_server::Billing for GrpcApi {
    async fn open_account(
        &self,
        req: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&req, Endpoint::OpenAccount.roles())?;
        let r = req.get_ref();
        let args = serde_json::json!({
            "request_id": r.request_id, "account_id": r.account_id, "name": r.name,
            "address": r.address, "branch": r.branch, "utility": r.utility,
            "meter_id": r.meter_id, "tariff_id": r.tariff_id,
        });
        let (request_id, op) =
            ops::write_op(&caller, Endpoint::OpenAccount, args).map_err(|e| e.to_status())?;
        let origin = ops::origin(&caller, &op);
        self.hint(write_reply(self.app.write(request_id, origin, op).await))
    }

    async fn post_payment(
        &self,
        req: Request<pb::PaymentRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&req, Endpoint::Payment.roles())?;
        let r = req.get_ref();
        let args = serde_json::json!({
            "request_id": r.request_id, "account_id": r.account_id, "amount": r.amount,
            "bank_code": r.bank_code, "bank_ref": r.bank_ref,
        });
        let (request_id, op) =
            ops::write_op(&caller, Endpoint::Payment, args).map_err(|e| e.to_status())?;
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
        self.typed(req, Endpoint::UpdateContact, |r| json!({"request_id": r.request_id, "account_id": r.account_id, "name": r.name, "address": r.address, "phone": r.phone, "area": r.area})).await
    }

    async fn close_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::Close,
            |r| json!({"request_id": r.request_id, "account_id": r.account_id, "reason": r.reason}),
        )
        .await
    }

    async fn suspend_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::Suspend,
            |r| json!({"request_id": r.request_id, "account_id": r.account_id, "reason": r.reason}),
        )
        .await
    }

    async fn resume_account(&self, req: Request<pb::LifecycleRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::Resume,
            |r| json!({"request_id": r.request_id, "account_id": r.account_id, "reason": r.reason}),
        )
        .await
    }

    async fn issue_card(&self, req: Request<pb::IssueCardRequest>) -> JsonResult {
        self.typed(req, Endpoint::IssueCard, |r| json!({"request_id": r.request_id, "account_id": r.account_id, "card_no": r.card_no})).await
    }

    async fn replace_card(&self, req: Request<pb::ReplaceCardRequest>) -> JsonResult {
        self.typed(req, Endpoint::ReplaceCard, |r| json!({"request_id": r.request_id, "card_no": r.card_no, "new_card_no": r.new_card_no, "reason": r.reason})).await
    }

    async fn verify_card(&self, req: Request<pb::VerifyCardRequest>) -> JsonResult {
        self.typed(req, Endpoint::VerifyCard, |r| json!({"card_no": r.card_no, "generation": r.generation, "seq_on_card": r.seq_on_card})).await
    }

    async fn purchase(&self, req: Request<pb::PurchaseRequest>) -> JsonResult {
        self.typed(req, Endpoint::Purchase, |r| json!({"request_id": r.request_id, "card_no": r.card_no, "account_id": r.account_id, "amount": r.amount, "units": r.units, "confirm_duplicate": r.confirm_duplicate})).await
    }

    async fn reissue(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::Reissue,
            |r| json!({"request_id": r.request_id, "record_id": r.record_id, "reason": r.reason}),
        )
        .await
    }

    async fn confirm_loaded(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::ConfirmLoaded,
            |r| json!({"request_id": r.request_id, "record_id": r.record_id, "reason": r.reason}),
        )
        .await
    }

    async fn reverse(&self, req: Request<pb::RecordRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::Reverse,
            |r| json!({"request_id": r.request_id, "record_id": r.record_id, "reason": r.reason}),
        )
        .await
    }

    async fn adjust(&self, req: Request<pb::AdjustRequest>) -> JsonResult {
        self.typed(req, Endpoint::Adjust, |r| json!({"request_id": r.request_id, "account_id": r.account_id, "amount": r.amount, "reason": r.reason})).await
    }

    async fn post_charge(&self, req: Request<pb::ChargeRequest>) -> JsonResult {
        self.typed(req, Endpoint::PostCharge, |r| json!({"request_id": r.request_id, "account_id": r.account_id, "amount": r.amount, "period": r.period, "reason": r.reason})).await
    }

    async fn print_invoice(&self, req: Request<pb::PrintInvoiceRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::PrintInvoice,
            |r| json!({"request_id": r.request_id, "invoice_no": r.invoice_no}),
        )
        .await
    }

    async fn set_segment_boundary(&self, req: Request<pb::SetBoundaryRequest>) -> JsonResult {
        self.typed(req, Endpoint::SetBoundary, |r| json!({"request_id": r.request_id, "boundary": r.boundary, "boundary_ms": r.boundary_ms})).await
    }

    async fn open_heating_season(&self, req: Request<pb::OpenSeasonRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::OpenSeason,
            |r| json!({"request_id": r.request_id, "season_id": r.season_id}),
        )
        .await
    }

    async fn define_tariff(&self, req: Request<pb::DefineTariffRequest>) -> JsonResult {
        self.typed(req, Endpoint::DefineTariff, |r| json!({"request_id": r.request_id, "tariff_id": r.tariff_id, "kind": r.kind, "price": r.price, "tiers": if r.tiers.is_empty() { serde_json::Value::Null } else { r.tiers.iter().map(|t| json!({"up_to": t.up_to, "price": t.price})).collect() }, "effective_from": r.effective_from, "effective_from_ms": r.effective_from_ms, "suspended_share": r.suspended_share})).await
    }

    async fn statement(&self, req: Request<pb::StatementRequest>) -> JsonResult {
        self.typed(req, Endpoint::Statement, |r| json!({"account_id": r.account_id, "from": r.from, "to": r.to, "from_ms": r.from_ms.map(|v| v.to_string()), "to_ms": r.to_ms.map(|v| v.to_string())})).await
    }

    async fn list_records(&self, req: Request<pb::ListRecordsRequest>) -> JsonResult {
        self.typed(req, Endpoint::ListRecords, |r| json!({"account_id": r.account_id, "segment": r.segment, "from": r.from, "to": r.to, "limit": r.limit.map(|l| l.to_string()), "page_token": r.page_token, "order": r.order})).await
    }

    async fn get_request(&self, req: Request<pb::GetRequestRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::GetRequest,
            |r| json!({"request_id": r.request_id}),
        )
        .await
    }

    async fn monthly_report(&self, req: Request<pb::MonthlyReportRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::MonthlyReport,
            |r| json!({"month": r.month, "group_by": r.group_by, "consistency": r.consistency, "drills": r.drills}),
        )
        .await
    }

    async fn bank_daily_report(&self, req: Request<pb::BankDailyReportRequest>) -> JsonResult {
        self.typed(
            req,
            Endpoint::BankDailyReport,
            |r| json!({"date": r.date, "bank_code": r.bank_code, "consistency": r.consistency}),
        )
        .await
    }

    async fn import(&self, req: Request<pb::JsonRequest>) -> JsonResult {
        self.json(req, Endpoint::Import).await
    }
}
