//! The request core shared by the gRPC and HTTP front-ends: writes through
//! Raft (forwarded to the leader from any node), linearizable reads
//! (ReadIndex), and cluster administration. It may touch the Raft handle,
//! the local RocksDB for reads, and peers through the forwarding RPC.
//!
//! Every call is bounded by `limits.request_timeout_ms`: with no leader or
//! no quorum the caller gets UNAVAILABLE with a retry hint, never a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::raftpb::RaftMsg;
use openraft::errors::{ClientWriteError, InitializeError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::{Op, Outcome};
use crate::proposer::{self, ProposeError, Proposer};
use crate::raft_net::{Channels, decode, encode};
use crate::read_fence::{self, ReadFence};
use crate::types::{Command, NodeId, NodeInfo, Raft};

/// How long a node without a known leader waits for one inside a request
/// before it gives up (bounded by the request deadline too).
const LEADER_POLL_INTERVAL_MS: u64 = 20;
/// A request attempt older than this starts checking that its leader still
/// leads (most writes finish well before).
const LEADERSHIP_CHECK_AFTER_MS: u64 = 100;
const LEADERSHIP_CHECK_INTERVAL_MS: u64 = 50;

/// A request one node hands to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forward {
    Write {
        request_id: String,
        operator: String,
        /// The caller's branch (counter tokens); empty: the account's.
        branch: String,
        /// counter | bank | import; empty: the op's natural channel.
        channel: String,
        op: Op,
    },
    ReadIndex,
    Admin(AdminOp),
    /// Which op level the answering node's build applies (any node
    /// answers; `cluster_level`). A build from before the op levels cannot
    /// decode this and answers an error: level 1.
    OpLevel,
}

/// Who a write comes from, taken from the caller's credentials (never the
/// body): the operator, branch and channel the records will name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub operator: String,
    pub branch: String,
    pub channel: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    Write { outcome: Outcome, log_index: u64 },
    ReadIndex(u64),
    Admin(AdminReply),
    OpLevel(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminOp {
    AddLearner { id: NodeId, node: NodeInfo },
    ChangeMembership { voters: BTreeSet<NodeId> },
    Remove { id: NodeId },
    TransferLeader { to: NodeId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminReply {
    pub message: String,
    pub log_index: u64,
}

fn proposer_limits(config: &Config) -> proposer::Limits {
    proposer::Limits {
        commands_max: config.raft.batch_commands_max,
        bytes_max: config.raft.batch_bytes_max,
        in_flight_max: config.raft.batch_in_flight_max,
        entry_timeout_ms: config.limits.request_timeout_ms,
    }
}

/// Floor of the silence after which the leader counts a peer as down.
const LIVE_PEER_SILENCE_MS_MIN: u64 = 2_000;

/// `details.reason` of the UNAVAILABLE a leader answers when it has not
/// heard from a quorum: a node that forwarded the request to it gives up at
/// once instead of asking the same leader again (it may still hear that
/// leader, being on its side of a partition), so the client tries another.
const REASON_LEADER_WITHOUT_QUORUM: &str = "leader_without_quorum";

fn unavailable(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
        .with_details(serde_json::json!({"retry_after_ms": 500}))
}

fn leader_lost_quorum(e: &ApiError) -> bool {
    e.details["reason"] == REASON_LEADER_WITHOUT_QUORUM
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, msg.to_string())
}

/// What a node trusts callers by: the tokens file and its TLS material.
pub struct Trust {
    pub auth: Arc<crate::auth::Auth>,
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// Why a call to a peer's Raft port gave no answer (`App::call_peer`).
enum PeerCall {
    Unreachable(String),
    Timeout,
    Status(tonic::Status),
    /// The request or the answer could not be (de)coded.
    Codec(String),
}

/// How long `initialize` waits for the new cluster's op level to be set.
const INIT_LEVEL_WAIT: Duration = Duration::from_secs(8);

#[derive(Clone)]
pub struct App {
    pub id: NodeId,
    pub raft: Raft,
    pub db: Arc<DB>,
    pub config: Arc<Config>,
    pub channels: Channels,
    pub auth: Arc<crate::auth::Auth>,
    /// TLS material (`None`: no `[tls]`, every listener plaintext).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Set when this node's storage failed: the node is fenced.
    pub storage: Arc<crate::storage_guard::StorageGuard>,
    /// Where the scheduled backups stand, as this node sees them
    /// (`backup::schedule`; empty when `[backup]` is not configured).
    pub backup: crate::backup::schedule::Shared,
    /// Each member's build op level as the leader last asked
    /// (`cluster_level`).
    pub op_levels: crate::cluster_level::Shared,
    /// Where `billdb backup archive` last read this node's log from: the
    /// purger keeps the log from there (`log_purge::ArchiveReads`).
    pub archive_reads: crate::log_purge::ArchiveReads,
    /// Batches this node's proposals (group commit) and stamps their time.
    proposer: Proposer,
    /// What the state machine has applied: lease reads on the leader.
    fence: Arc<ReadFence>,
    /// When an AppendEntries (heartbeat or entries) last arrived, in ms
    /// since `started`; 0 = never.
    leader_contact_ms: Arc<AtomicU64>,
    started: Instant,
}

impl App {
    pub fn new(
        id: NodeId,
        raft: Raft,
        db: Arc<DB>,
        config: Arc<Config>,
        channels: Channels,
        trust: Trust,
        fence: Arc<ReadFence>,
    ) -> Self {
        let Trust { auth, tls } = trust;
        App {
            id,
            proposer: Proposer::start(
                crate::leader_exec::LeaderExec::new(
                    raft.clone(),
                    db.clone(),
                    fence.clone(),
                    config.raft.replicate == crate::config::Replicate::Results,
                    config.raft.batch_bytes_max,
                ),
                proposer_limits(&config),
            ),
            fence,
            raft,
            db,
            config,
            channels,
            auth,
            tls,
            storage: Arc::default(),
            backup: Arc::default(),
            op_levels: Arc::default(),
            archive_reads: Default::default(),
            leader_contact_ms: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        }
    }

    /// The client-certificate name a client connection presented, when the
    /// certificate is one of this cluster's client certificates.
    pub fn client_cert_name(&self, info: Option<&crate::listen::PeerInfo>) -> Option<String> {
        let tls = self.tls.as_ref()?;
        match info?.identity.as_ref()? {
            billdb_api::identity::Identity::Client { cluster, name }
                if cluster == tls.cluster_id() =>
            {
                Some(name.clone())
            }
            _ => None,
        }
    }

    /// UNAVAILABLE, with the reason, when this node's storage failed: its
    /// Raft core stopped, so it can neither make a write durable nor
    /// vouch for a read; clients go to another node.
    pub fn refuse_if_fenced(&self) -> Result<(), ApiError> {
        match self.storage.failure() {
            None => Ok(()),
            Some(f) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "{STORAGE_FAILED_PREFIX} ({}): {}; {}; retry on another node with the \
                     same request_id",
                    f.kind.name(),
                    f.error,
                    crate::storage_guard::recovery_note(&f)
                ),
            )
            .with_details(serde_json::json!({"reason": f.kind.name(), "retry_after_ms": 500}))),
        }
    }

    /// Called by the Raft service for every AppendEntries received.
    pub fn note_leader_contact(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.leader_contact_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// A follower that has not heard from any leader for twice the maximum
    /// election timeout: it is cut off, forwarding from here will not work.
    fn leader_silent(&self, leader: NodeId) -> bool {
        if leader == self.id {
            return false;
        }
        let last = self.leader_contact_ms.load(Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last == 0 || now.saturating_sub(last) > self.config.raft.election_timeout_max_ms * 2
    }

    /// This node cannot serve writes or linearizable reads now: it leads
    /// without a quorum, or follows a leader it cannot hear. Clients should
    /// try another node at once rather than wait out the deadline here.
    pub fn cut_off(&self) -> bool {
        let m = self.metrics();
        match m.current_leader {
            Some(l) if l == self.id => !self.quorum_heard(&m),
            Some(l) => self.leader_silent(l),
            None => false,
        }
    }

    /// The latest Raft metrics of this node.
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::types::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// The leader as this node knows it, with its addresses.
    /// Borrows the metrics (no clone): every gRPC answer asks, for its hint.
    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        use openraft::async_runtime::WatchReceiver;
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, info))
    }

    /// `"<leader id> <leader grpc addr>"` when a leader is known: the hint
    /// client surfaces send so clients can go to the leader directly.
    pub fn leader_hint(&self) -> Option<String> {
        self.leader()
            .map(|(id, info)| format!("{id} {}", info.grpc_addr))
    }

    /// `"<leader id> <leader http addr>"`: the same hint for HTTP answers.
    pub fn leader_hint_http(&self) -> Option<String> {
        self.leader()
            .map(|(id, info)| format!("{id} {}", info.http_addr))
    }

    /// Resolves (with the UNAVAILABLE to answer) once `leader` no longer
    /// leads as this node sees it: another or no leader is known, or — when
    /// this node is `leader` — it has not heard from a quorum for the
    /// maximum election timeout. Checks start after
    /// `LEADERSHIP_CHECK_AFTER_MS`, so quick requests never pay for them.
    async fn leadership_moved(&self, leader: NodeId) -> ApiError {
        tokio::time::sleep(Duration::from_millis(LEADERSHIP_CHECK_AFTER_MS)).await;
        loop {
            let m = self.metrics();
            if m.current_leader != Some(leader) {
                metrics::counter!("billdb_attempts_rerouted_total").increment(1);
                return unavailable(format!(
                    "node {leader} no longer leads; retry with the same request_id"
                ));
            }
            if leader == self.id && !self.quorum_heard(&m) {
                metrics::counter!("billdb_attempts_rerouted_total").increment(1);
                return ApiError::new(
                    ErrorCode::Unavailable,
                    "this leader cannot reach a quorum; retry with the same request_id on another node",
                )
                .with_details(serde_json::json!({
                    "reason": REASON_LEADER_WITHOUT_QUORUM,
                    "retry_after_ms": 0,
                }));
            }
            if self.leader_silent(leader) {
                metrics::counter!("billdb_attempts_rerouted_total").increment(1);
                return unavailable(format!(
                    "this node cannot hear leader {leader}; retry with the same request_id on another node"
                ));
            }
            tokio::time::sleep(Duration::from_millis(LEADERSHIP_CHECK_INTERVAL_MS)).await;
        }
    }

    /// As leader: a majority of voters (this node included) acknowledged a
    /// heartbeat or append within the maximum election timeout (eight
    /// heartbeats): longer, and the followers on the other side of a
    /// partition are already campaigning (they do once the leader lease, the
    /// same span, plus their own timeout passed), so requests held here
    /// should go to them.
    fn quorum_heard(&self, m: &openraft::RaftMetrics<crate::types::TypeConfig>) -> bool {
        use openraft::async_runtime::Instant as _;
        let fresh_ms = u128::from(self.config.raft.election_timeout_max_ms);
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let majority = voters.len() / 2 + 1;
        let Some(hb) = &m.heartbeat else {
            // Not the leader's view (no heartbeat table): nothing to judge.
            return true;
        };
        let heard = voters
            .iter()
            .filter(|id| {
                **id == self.id
                    || hb
                        .get(*id)
                        .cloned()
                        .flatten()
                        .is_some_and(|t| t.elapsed().as_millis() <= fresh_ms)
            })
            .count();
        heard >= majority
    }

    /// Wait (bounded) until some leader is known.
    async fn wait_leader(&self, deadline: Instant) -> Result<(NodeId, NodeInfo), ApiError> {
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(unavailable(
                    "no leader is known (no quorum?); retry with the same request_id",
                ));
            }
            tokio::time::sleep(Duration::from_millis(LEADER_POLL_INTERVAL_MS)).await;
        }
    }

    /// Send `req` to node `id`'s Raft port and wait at most `left`: its
    /// answer, or why there is none.
    async fn call_peer(
        &self,
        id: NodeId,
        raft_addr: &str,
        req: &Forward,
        left: Duration,
    ) -> Result<Result<ForwardReply, ApiError>, PeerCall> {
        let mut client = self
            .channels
            .get(id, raft_addr)
            .map_err(|e| PeerCall::Unreachable(e.to_string()))?;
        let data = encode(req).map_err(|e| PeerCall::Codec(e.to_string()))?;
        let resp = tokio::time::timeout(left, client.forward(RaftMsg { data }))
            .await
            .map_err(|_| PeerCall::Timeout)?
            .map_err(PeerCall::Status)?;
        decode(&resp.into_inner().data).map_err(|e| PeerCall::Codec(e.to_string()))
    }

    /// Send a request to the leader's Raft port and wait (bounded).
    async fn forward(
        &self,
        leader_id: NodeId,
        leader: &NodeInfo,
        req: &Forward,
        deadline: Instant,
    ) -> Result<ForwardReply, ApiError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = self
            .call_peer(leader_id, &leader.raft_addr, req, left)
            .await
            .map_err(|e| match e {
                PeerCall::Unreachable(e) => unavailable(format!("leader unreachable: {e}")),
                PeerCall::Timeout => {
                    unavailable("the leader did not answer in time; retry with the same request_id")
                }
                PeerCall::Status(s) => {
                    unavailable(format!("forwarding to the leader failed: {}", s.message()))
                }
                PeerCall::Codec(e) => internal(e),
            })?;
        metrics::counter!("billdb_forwarded_requests_total").increment(1);
        reply.map_err(|e| leader_failure(leader_id, e))
    }

    /// A storage error that is a checksum failure fences this node (the
    /// guard repairs it from its peers, a leader hands over first) and is
    /// answered as UNAVAILABLE with the reason, like every later request,
    /// never as data or as INTERNAL.
    pub fn fence_on_corruption<T>(&self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        match r {
            Err(e)
                if e.code == ErrorCode::Internal && self.storage.check_corruption(&e.message) =>
            {
                self.refuse_if_fenced()?;
                Err(e)
            }
            r => r,
        }
    }

    /// Handle a request forwarded by another node: only the leader serves.
    /// A checksum failure met while serving it fences this node as one met
    /// serving its own clients does (the follower only passes it on).
    pub async fn serve_forwarded(&self, req: Forward) -> Result<ForwardReply, ApiError> {
        let r = self.serve_forwarded_here(req).await;
        self.fence_on_corruption(r)
    }

    async fn serve_forwarded_here(&self, req: Forward) -> Result<ForwardReply, ApiError> {
        if let Forward::OpLevel = req {
            return Ok(ForwardReply::OpLevel(self.config.build_op_level()));
        }
        self.refuse_if_fenced()?;
        let deadline = self.deadline();
        match req {
            Forward::Write {
                request_id,
                operator,
                branch,
                channel,
                op,
            } => {
                // The forwarding node had not applied it; this one may have.
                if let Some((outcome, log_index)) = self.replayed_here(&request_id, &op)? {
                    metrics::counter!("billdb_write_replays_answered_locally_total").increment(1);
                    return Ok(ForwardReply::Write { outcome, log_index });
                }
                let origin = Origin {
                    operator,
                    branch,
                    channel,
                };
                let (outcome, log_index) = tokio::select! {
                    r = self.propose_local(request_id, origin, op, deadline) => r?,
                    moved = self.leadership_moved(self.id) => return Err(moved),
                };
                Ok(ForwardReply::Write { outcome, log_index })
            }
            Forward::ReadIndex => {
                let index = self.read_index_local(deadline).await?;
                // Before the follower can read at `index`: this node's
                // own lease reads must not see less from now on.
                self.fence.granted(index);
                Ok(ForwardReply::ReadIndex(index))
            }
            Forward::Admin(op) => Ok(ForwardReply::Admin(self.admin_local(op, deadline).await?)),
            Forward::OpLevel => Ok(ForwardReply::OpLevel(self.config.build_op_level())),
        }
    }

    // ---- writes ----

    /// Replicate a client command; from any node. Returns the outcome and
    /// the log index it was applied at.
    pub async fn write(
        &self,
        request_id: String,
        origin: Origin,
        op: Op,
    ) -> Result<(Outcome, u64), ApiError> {
        self.refuse_if_fenced()?;
        let started = Instant::now();
        if let Some(answer) = self.replayed_here(&request_id, &op)? {
            metrics::counter!("billdb_write_replays_answered_locally_total").increment(1);
            return Ok(answer);
        }
        let deadline = self.deadline();
        let result = loop {
            let (leader_id, info) = self.wait_leader(deadline).await?;
            let attempt = async {
                if leader_id == self.id {
                    self.propose_local(request_id.clone(), origin.clone(), op.clone(), deadline)
                        .await
                } else {
                    let req = Forward::Write {
                        request_id: request_id.clone(),
                        operator: origin.operator.clone(),
                        branch: origin.branch.clone(),
                        channel: origin.channel.clone(),
                        op: op.clone(),
                    };
                    self.forward(leader_id, &info, &req, deadline)
                        .await
                        .and_then(|r| match r {
                            ForwardReply::Write { outcome, log_index } => Ok((outcome, log_index)),
                            other => Err(internal(format!("unexpected forward reply {other:?}"))),
                        })
                }
            };
            // Do not wait out the deadline on a leader that is gone: when
            // another node leads (or this leader lost its quorum) the attempt
            // is dropped and the same request_id goes to the new leader —
            // the exactly-once table makes a double proposal harmless.
            let r = tokio::select! {
                r = attempt => r,
                moved = self.leadership_moved(leader_id) => Err(moved),
            };
            match r {
                // This node leads without a quorum or cannot hear its leader,
                // or the leader it forwarded to said it has no quorum:
                // retrying here is pointless; tell the client now so it tries
                // another node.
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && (self.cut_off() || leader_lost_quorum(&e)) =>
                {
                    break Err(e);
                }
                // Leadership moved under us: try the new leader while time is left.
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && Instant::now() + Duration::from_millis(50) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(LEADER_POLL_INTERVAL_MS)).await;
                    continue;
                }
                other => break other,
            }
        };
        metrics::histogram!("billdb_write_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// A redelivery of a request_id this node has already applied, answered
    /// from its own state with no Raft round and no hop to the leader: the
    /// exactly-once table never changes an entry once written, so the
    /// answer is the one a replay through the log would give (see
    /// `domain::replayed`). A resumed bulk load or a bank's retry storm
    /// then costs one point read per request instead of a log entry on
    /// five replicas. A request not applied here yet goes through the log.
    /// The cluster's op level in this node's applied state.
    pub fn cluster_level(&self) -> Result<u32, ApiError> {
        let view = crate::store::state_machine::RocksTxn::new(&self.db);
        crate::domain::levels::cluster_level(&view).map_err(internal)
    }

    /// The op level node `id` (at `info`) applies, asked over the Raft
    /// port; an error from a build before the op levels means level 1.
    pub async fn member_op_level(&self, id: NodeId, info: &NodeInfo) -> Result<u32, String> {
        if id == self.id {
            return Ok(self.config.build_op_level());
        }
        let left = Duration::from_secs(2);
        match self
            .call_peer(id, &info.raft_addr, &Forward::OpLevel, left)
            .await
        {
            Ok(Ok(ForwardReply::OpLevel(n))) => Ok(n),
            // It could not decode the question: a build from before the
            // op levels.
            Err(PeerCall::Status(s)) if s.code() == tonic::Code::InvalidArgument => {
                Ok(crate::domain::levels::BASE_OP_LEVEL)
            }
            Err(PeerCall::Unreachable(e)) => Err(format!("unreachable: {e}")),
            Err(PeerCall::Timeout) => Err("no answer within 2 s".into()),
            Err(PeerCall::Status(s)) => Err(s.message().to_string()),
            Err(PeerCall::Codec(e)) => Err(e),
            Ok(Err(e)) => Err(e.message),
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
        }
    }

    fn replayed_here(&self, request_id: &str, op: &Op) -> Result<Option<(Outcome, u64)>, ApiError> {
        // One point read of committed state: no RocksDB snapshot needed.
        let view = crate::store::state_machine::RocksTxn::new(&self.db);
        Ok(
            match crate::domain::replayed(&view, request_id, op).map_err(internal)? {
                Some(crate::domain::Replay::Original { outcome, log_index }) => {
                    Some((outcome, log_index))
                }
                // No entry is written for a conflicting payload: like a
                // refusal by `precheck`, it names no log index.
                Some(crate::domain::Replay::Conflict(e)) => Some((Outcome::Refused(e), 0)),
                None => None,
            },
        )
    }

    /// Refuse a command naming an unknown account or card without writing
    /// anything. A miss is confirmed after a ReadIndex round (this leader
    /// may not have applied everything committed yet) before refusing.
    async fn precheck(&self, op: &Op, deadline: Instant) -> Result<Option<ApiError>, ApiError> {
        let check = |db: &DB| {
            let view = crate::store::state_machine::RocksRead::new(db);
            crate::domain::precheck(&view, op).map_err(internal)
        };
        if check(&self.db)?.is_none() {
            return Ok(None);
        }
        let index = self.read_index_local(deadline).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "precheck")
            .await
            .map_err(|_| unavailable("this node did not catch up in time"))?;
        check(&self.db)
    }

    async fn propose_local(
        &self,
        request_id: String,
        origin: Origin,
        op: Op,
        deadline: Instant,
    ) -> Result<(Outcome, u64), ApiError> {
        if let Some(refusal) = self.precheck(&op, deadline).await? {
            return Ok((Outcome::Refused(refusal), 0));
        }
        let cmd = Command {
            request_id,
            // Stamped by the proposer, in log order.
            ts_ms: 0,
            operator: origin.operator,
            branch: origin.branch,
            channel: origin.channel,
            op,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let r = tokio::time::timeout(left, self.proposer.propose(cmd)).await.map_err(|_| {
            unavailable("not committed in time (no quorum?); the outcome is unknown: retry with the same request_id")
        })?;
        match r {
            Ok(reply) => {
                metrics::histogram!("billdb_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                // A replayed request answers with its original entry's index.
                Ok((reply.outcome, reply.decided_at))
            }
            Err(ProposeError::NotLeader) => Err(unavailable(
                "leadership changed; retry with the same request_id",
            )),
            Err(ProposeError::Stopped) => Err(unavailable("this node is shutting down")),
            Err(ProposeError::TimedOut) => Err(unavailable(
                "not committed in time (no quorum?); the outcome is unknown: retry with the same request_id",
            )),
            Err(ProposeError::TooLarge {
                size_bytes,
                bytes_max,
            }) => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the command encodes to {size_bytes} bytes; one log entry holds at most {bytes_max} (raft.batch_bytes_max): send fewer items"
                ),
            )),
            Err(ProposeError::Internal(e)) => Err(internal(e)),
        }
    }

    // ---- reads ----

    async fn read_index_local(&self, deadline: Instant) -> Result<u64, ApiError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let policy = match self.config.raft.read_policy {
            crate::config::ReadPolicyName::ReadIndex => ReadPolicy::ReadIndex,
            crate::config::ReadPolicyName::Lease => ReadPolicy::LeaseRead,
        };
        let r = tokio::time::timeout(left, self.raft.get_read_linearizer(policy))
            .await
            .map_err(|_| unavailable("leadership not confirmed in time (no quorum?)"))?;
        match r {
            Ok(lin) => Ok(lin.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(unavailable("not the leader"))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(unavailable(e.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Make this node's state machine current for a linearizable read:
    /// get a read index from the leader (ReadIndex) and wait until the local
    /// state machine has applied it.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        self.refuse_if_fenced()?;
        if self.lease_read_here() {
            metrics::counter!("billdb_reads_total", "path" => "leader_lease").increment(1);
            return Ok(());
        }
        metrics::counter!("billdb_reads_total", "path" => "read_index").increment(1);
        let started = Instant::now();
        let deadline = self.deadline();
        let index = loop {
            let (leader_id, info) = self.wait_leader(deadline).await?;
            let attempt = async {
                if leader_id == self.id {
                    self.read_index_local(deadline).await
                } else {
                    match self
                        .forward(leader_id, &info, &Forward::ReadIndex, deadline)
                        .await
                    {
                        Ok(ForwardReply::ReadIndex(i)) => Ok(i),
                        Ok(other) => Err(internal(format!("unexpected forward reply {other:?}"))),
                        Err(e) => Err(e),
                    }
                }
            };
            let r = tokio::select! {
                r = attempt => r,
                moved = self.leadership_moved(leader_id) => Err(moved),
            };
            match r {
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && (self.cut_off() || leader_lost_quorum(&e)) =>
                {
                    return Err(e);
                }
                // Leadership moved (or the leader died): ask the next one
                // while time is left, as writes do.
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && Instant::now() + Duration::from_millis(50) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(LEADER_POLL_INTERVAL_MS)).await;
                }
                other => break other?,
            }
        };
        metrics::histogram!("billdb_read_index_obtain_seconds")
            .record(started.elapsed().as_secs_f64());
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| unavailable("this node did not catch up in time"))?;
        metrics::histogram!("billdb_read_index_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// With `read_policy = "lease"`: this node leads, holds a lease and
    /// may answer a linearizable read from its state as it is now, with no
    /// Raft round and no wait for apply (the rule: `read_fence`).
    fn lease_read_here(&self) -> bool {
        self.lease_read_verdict() == Some(Ok(()))
    }

    /// The lease rule's verdict right now (`None` under `read_index`), also
    /// shown in the status document so an operator sees why reads take the
    /// Raft path.
    pub fn lease_read_verdict(&self) -> Option<Result<(), read_fence::NotNow>> {
        use openraft::async_runtime::Instant as _;
        use openraft::async_runtime::WatchReceiver;
        if self.config.raft.read_policy != crate::config::ReadPolicyName::Lease {
            return None;
        }
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let is_leader =
            m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id);
        let age = m.last_quorum_acked.as_ref().map(|t| t.elapsed());
        let lease = Duration::from_millis(self.config.raft.election_timeout_max_ms);
        let view = self.fence.view(is_leader, m.current_term, age, lease);
        drop(m);
        Some(read_fence::lease_read(&view))
    }

    // ---- administration ----

    pub async fn initialize(
        &self,
        nodes: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<AdminReply, ApiError> {
        if nodes.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "nodes must not be empty",
            ));
        }
        validate_nodes(&nodes)?;
        if self.raft.is_initialized().await.map_err(internal)? {
            return Err(ApiError::new(
                ErrorCode::AlreadyInitialized,
                "this node already belongs to an initialised cluster",
            ));
        }
        if !nodes.contains_key(&self.id) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "initialise on a node that is one of the members (this is node {})",
                    self.id
                ),
            ));
        }
        match self.raft.initialize(nodes.clone()).await {
            Ok(()) => {
                // The new cluster's op level: the leader raises it as soon
                // as every member answers (`cluster_level`). Wait for that
                // (bounded), so that the first requests after init find
                // the level the members' builds allow.
                let want = self.config.build_op_level();
                let deadline = Instant::now() + INIT_LEVEL_WAIT;
                let mut level = self.cluster_level().unwrap_or(0);
                while level < want && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    level = self.cluster_level().unwrap_or(0);
                }
                Ok(AdminReply {
                    message: format!(
                        "initialised with voters {:?}; cluster op level {level}{}",
                        nodes.keys().collect::<Vec<_>>(),
                        if level < want {
                            format!(
                                " (this build applies {want}: the level rises once every member answers)"
                            )
                        } else {
                            String::new()
                        }
                    ),
                    log_index: 0,
                })
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => Err(ApiError::new(
                ErrorCode::AlreadyInitialized,
                format!("cluster is already initialised: {e}"),
            )),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Membership administration; from any node (forwarded to the leader).
    pub async fn admin(&self, op: AdminOp) -> Result<AdminReply, ApiError> {
        let deadline = self.deadline();
        let (leader_id, info) = self.wait_leader(deadline).await?;
        if leader_id == self.id {
            return self.admin_local(op, deadline).await;
        }
        match self
            .forward(leader_id, &info, &Forward::Admin(op), deadline)
            .await?
        {
            ForwardReply::Admin(r) => Ok(r),
            other => Err(internal(format!("unexpected forward reply {other:?}"))),
        }
    }

    async fn admin_local(&self, op: AdminOp, deadline: Instant) -> Result<AdminReply, ApiError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(unavailable("not the leader"));
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known: BTreeMap<NodeId, NodeInfo> =
            membership.nodes().map(|(k, v)| (*k, v.clone())).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let timed = |e| unavailable(format!("membership change not committed in time: {e}"));
        match op {
            AdminOp::AddLearner { id, node } => {
                if id == 0 {
                    return Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        "node id must be > 0",
                    ));
                }
                let mut one = BTreeMap::new();
                one.insert(id, node.clone());
                validate_nodes(&one)?;
                if known.contains_key(&id) {
                    return Err(ApiError::new(
                        ErrorCode::DuplicateNode,
                        format!("node {id} is already a member"),
                    ));
                }
                if let Some((other, _)) = known.iter().find(|(_, n)| n.raft_addr == node.raft_addr)
                {
                    return Err(ApiError::new(
                        ErrorCode::DuplicateNode,
                        format!(
                            "raft address {} already belongs to node {other}",
                            node.raft_addr
                        ),
                    ));
                }
                // A build that cannot apply what the cluster logs is
                // refused (one that cannot be reached yet is let in: it
                // refuses the data itself when it starts).
                let level = self.cluster_level()?;
                if let Ok(has) = self.member_op_level(id, &node).await
                    && has < level
                {
                    return Err(ApiError::new(
                        ErrorCode::FeatureNotEnabled,
                        format!(
                            "node {id} runs a build of op level {has}; the cluster is at op level \
                             {level}: install a build of op level {level} or later on it first"
                        ),
                    )
                    .with_details(serde_json::json!({"node_level": has, "cluster_level": level})));
                }
                let r = tokio::time::timeout(left, self.raft.add_learner(id, node, false))
                    .await
                    .map_err(|_| timed("timeout"))?
                    .map_err(admin_err)?;
                Ok(AdminReply {
                    message: format!("node {id} added as learner"),
                    log_index: r.log_id.index,
                })
            }
            AdminOp::ChangeMembership { voters: new_voters } => {
                self.check_new_voters(&new_voters, &known, &m)?;
                let r = tokio::time::timeout(
                    left,
                    self.raft.change_membership(new_voters.clone(), false),
                )
                .await
                .map_err(|_| timed("timeout"))?
                .map_err(admin_err)?;
                Ok(AdminReply {
                    message: format!("voters are now {new_voters:?}"),
                    log_index: r.log_id.index,
                })
            }
            AdminOp::Remove { id } => {
                if !known.contains_key(&id) {
                    return Err(ApiError::new(
                        ErrorCode::UnknownNode,
                        format!("node {id} is not a member"),
                    ));
                }
                let new_voters: BTreeSet<NodeId> =
                    voters.iter().copied().filter(|v| *v != id).collect();
                if voters.contains(&id) {
                    self.check_new_voters(&new_voters, &known, &m)?;
                }
                let mut remove = BTreeSet::new();
                remove.insert(id);
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(remove)
                } else {
                    ChangeMembers::RemoveNodes(remove)
                };
                let r = tokio::time::timeout(left, self.raft.change_membership(change, false))
                    .await
                    .map_err(|_| timed("timeout"))?
                    .map_err(admin_err)?;
                Ok(AdminReply {
                    message: format!("node {id} removed"),
                    log_index: r.log_id.index,
                })
            }
            AdminOp::TransferLeader { to } => {
                if !voters.contains(&to) {
                    return Err(ApiError::new(
                        ErrorCode::UnknownNode,
                        format!("node {to} is not a voter"),
                    ));
                }
                if to == self.id {
                    return Ok(AdminReply {
                        message: format!("node {to} is already the leader"),
                        log_index: 0,
                    });
                }
                // Voters drop their lease for the transfer: stop reading
                // under it for the rest of this term first.
                self.fence.transferring(self.metrics().current_term);
                self.raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(internal)?;
                let waited = self
                    .raft
                    .wait(Some(left))
                    .current_leader(to, "transfer leader")
                    .await;
                match waited {
                    Ok(_) => Ok(AdminReply {
                        message: format!("leadership transferred to node {to}"),
                        log_index: 0,
                    }),
                    Err(_) => Err(unavailable(format!("node {to} did not take over in time"))),
                }
            }
        }
    }

    /// A leadership transfer from this node begins in `term`: no lease
    /// read under this term's lease from here on.
    pub fn note_leader_transfer(&self, term: u64) {
        self.fence.transferring(term);
    }

    /// Refuse voter sets that are empty, name unknown nodes, or could not
    /// reach a quorum from the nodes the leader hears from now.
    fn check_new_voters(
        &self,
        new_voters: &BTreeSet<NodeId>,
        known: &BTreeMap<NodeId, NodeInfo>,
        m: &openraft::RaftMetrics<crate::types::TypeConfig>,
    ) -> Result<(), ApiError> {
        if new_voters.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NoQuorum,
                "a cluster needs at least one voter",
            ));
        }
        if let Some(unknown) = new_voters.iter().find(|v| !known.contains_key(v)) {
            return Err(ApiError::new(
                ErrorCode::UnknownNode,
                format!("node {unknown} is not a member; add it as a learner first"),
            ));
        }
        let live = self.live_nodes(m);
        let live_voters = new_voters.iter().filter(|v| live.contains(v)).count();
        if live_voters * 2 <= new_voters.len() {
            return Err(ApiError::new(
                ErrorCode::NoQuorum,
                format!(
                    "only {live_voters} of the {} proposed voters are reachable and caught up; the change would leave no quorum",
                    new_voters.len()
                ),
            )
            .with_details(serde_json::json!({"live": live, "proposed": new_voters})));
        }
        Ok(())
    }

    /// Nodes the leader has heard from recently and that are within the
    /// replication lag threshold, plus the leader itself.
    fn live_nodes(&self, m: &openraft::RaftMetrics<crate::types::TypeConfig>) -> BTreeSet<NodeId> {
        let mut live = BTreeSet::new();
        live.insert(self.id);
        // A peer silent for this long counts as down (at least 2 s, so a
        // loaded machine's scheduling stalls do not refuse a healthy change).
        let fresh_ms = u128::from(
            (self.config.raft.election_timeout_max_ms * 2).max(LIVE_PEER_SILENCE_MS_MIN),
        );
        let last_index = m.last_log_index.unwrap_or(0);
        let lag_max = self.config.raft.logs_to_keep_after_snapshot.max(1000);
        if let (Some(hb), Some(repl)) = (&m.heartbeat, &m.replication) {
            for (id, acked) in hb {
                let recent = acked.as_ref().is_some_and(|t| {
                    use openraft::async_runtime::Instant as _;
                    t.elapsed().as_millis() <= fresh_ms
                });
                let matched = repl
                    .get(id)
                    .cloned()
                    .flatten()
                    .map(|l| l.index)
                    .unwrap_or(0);
                if recent && last_index.saturating_sub(matched) <= lag_max {
                    live.insert(*id);
                }
            }
        }
        live
    }

    pub fn family_sst_bytes(&self) -> Vec<(String, u64)> {
        crate::store::family_sst_bytes(&self.db)
    }

    pub fn family_memtables(&self) -> Vec<(String, u64, u64)> {
        crate::store::family_memtables(&self.db)
    }

    pub fn db_size_bytes(&self) -> u64 {
        crate::store::db_size_bytes(&self.db)
    }
}

fn admin_err(
    e: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>,
) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            unavailable("leadership changed; retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(ErrorCode::InvalidArgument, e.to_string())
        }
        other => internal(other),
    }
}

fn validate_nodes(nodes: &BTreeMap<NodeId, NodeInfo>) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for (id, n) in nodes {
        if *id == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "node ids must be > 0",
            ));
        }
        for (field, addr) in [
            ("raft_addr", &n.raft_addr),
            ("grpc_addr", &n.grpc_addr),
            ("http_addr", &n.http_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("node {id}: {field} {addr:?} is not host:port"),
                ));
            }
        }
        if !seen.insert(n.raft_addr.clone()) {
            return Err(ApiError::new(
                ErrorCode::DuplicateNode,
                format!("raft address {} is listed twice", n.raft_addr),
            ));
        }
    }
    Ok(())
}

/// How a fenced node's refusal begins (`App::refuse_if_fenced`).
const STORAGE_FAILED_PREFIX: &str = "this node's storage failed";

/// The leader's own failure (INTERNAL: its storage, its Raft core) as this
/// node passes it on: UNAVAILABLE, naming the leader, so the client retries
/// (another leader is elected when this one cannot go on) and this node
/// never takes the leader's storage error for its own (a checksum failure
/// in the leader's message fences only the leader, `ops::fence_on_corruption`).
fn leader_failure(leader_id: NodeId, mut e: ApiError) -> ApiError {
    if e.code == ErrorCode::Unavailable
        && let Some(rest) = e.message.strip_prefix(STORAGE_FAILED_PREFIX)
    {
        // The leader fenced itself: its storage, not this node's.
        e.message = format!("the leader's (node {leader_id}) storage failed{rest}");
        return e;
    }
    if e.code != ErrorCode::Internal {
        return e;
    }
    metrics::counter!("billdb_forwarded_leader_failures_total").increment(1);
    unavailable(format!(
        "the leader (node {leader_id}) failed: {}; retry with the same request_id",
        e.message
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_failure_is_passed_on_as_unavailable_never_as_this_nodes_corruption() {
        let leader = ApiError::new(
            ErrorCode::Internal,
            "the leader's Raft core stopped: Corruption: block checksum mismatch in 000846.sst",
        );
        let here = leader_failure(1, leader);
        assert_eq!(here.code, ErrorCode::Unavailable);
        assert!(
            here.message.contains("the leader (node 1) failed"),
            "{}",
            here.message
        );
        // A leader that fenced itself: its storage is named, not this node's.
        let fenced = ApiError::new(
            ErrorCode::Unavailable,
            format!("{STORAGE_FAILED_PREFIX} (corruption): block checksum mismatch"),
        );
        let here = leader_failure(3, fenced);
        assert_eq!(here.code, ErrorCode::Unavailable);
        assert_eq!(
            here.message,
            "the leader's (node 3) storage failed (corruption): block checksum mismatch"
        );
        // A refusal is the leader's answer, passed on as it is.
        let refused = ApiError::new(ErrorCode::AccountClosed, "x");
        assert_eq!(leader_failure(1, refused).code, ErrorCode::AccountClosed);
    }
}
