//! gRPC surface (`billdb.v1.Cluster`, `billdb.v1.Billing`): the same
//! operations and error codes as the HTTP routes.

use std::collections::BTreeMap;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::pb;
use tonic::{Request, Response, Status};

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
        let caller = self
            .app
            .auth
            .authenticate(header)
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
        let caller = self.caller(&req, &[Role::Counter, Role::Ops])?;
        let r = req.get_ref();
        let request_id = validate::id("request_id", &r.request_id).map_err(|e| e.to_status())?;
        let op = validate::open_account(validate::OpenAccountInput {
            account_id: &r.account_id,
            name: &r.name,
            address: &r.address,
            branch: &r.branch,
            utility: &r.utility,
            meter_id: &r.meter_id,
            tariff_id: &r.tariff_id,
        })
        .map_err(|e| e.to_status())?;
        write_reply(self.app.write(request_id, caller.operator(), op).await)
    }

    async fn post_payment(
        &self,
        req: Request<pb::PaymentRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&req, &[Role::Bank, Role::Ops])?;
        let r = req.get_ref();
        let request_id = validate::id("request_id", &r.request_id).map_err(|e| e.to_status())?;
        caller.check_bank(&r.bank_code).map_err(|e| e.to_status())?;
        let op = validate::payment(&r.account_id, &r.amount, &r.bank_code, &r.bank_ref)
            .map_err(|e| e.to_status())?;
        write_reply(self.app.write(request_id, caller.operator(), op).await)
    }

    async fn get_account(
        &self,
        req: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
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
}
