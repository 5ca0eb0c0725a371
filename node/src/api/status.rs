//! The node status document (`GET /v1/cluster/status`, gRPC `Status`),
//! built from openraft's metrics.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::app::App;
use crate::types::{NodeId, NodeInfo};

#[derive(Debug, Clone, Serialize)]
pub struct Replication {
    pub matched_index: Option<u64>,
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node_id: NodeId,
    /// The node's build version (as `billdb_build_info{version}`).
    pub version: &'static str,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Leader only: per follower, matched index and lag in entries.
    pub replication: BTreeMap<NodeId, Replication>,
    /// Every peer this node's Raft client has tried to reach: reachable or
    /// not, since when (Unix ms), consecutive and total failed attempts,
    /// the last error.
    pub peers: BTreeMap<NodeId, crate::peer_health::PeerReport>,
    pub db_size_bytes: u64,
    /// How this node confirms leadership for linearizable reads
    /// (`read_index` or `lease`, from `raft.read_policy`; the same value as
    /// `raft.read_policy` below, kept here for clients that read it here).
    pub read_policy: crate::config::ReadPolicyName,
    /// Under `lease`: whether this node may answer a linearizable read from
    /// its own state right now (`ok`), or why not (`not_leader`,
    /// `term_blank_not_applied`, `transferring`, `lease_expired`,
    /// `behind_granted`: such reads take the Raft path). Absent under
    /// `read_index`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_read: Option<&'static str>,
    /// Every `[raft]` setting this node runs with (timings, snapshots,
    /// group commit, read policy), so a benchmark or an on-call engineer
    /// sees the effective values.
    pub raft: crate::config::RaftTuning,
    /// How each listener is protected (`mtls`, `tls`, or `plaintext` when
    /// explicitly configured insecure) and the TLS material in use: paths,
    /// fingerprint and expiry, never key material.
    pub security: serde_json::Value,
    /// `{"state": "ok"}`, or `"failed"` with the kind (`disk_full`,
    /// `io_error`, `corruption`), the storage error, since when (Unix ms),
    /// the recovery probes made or where a repair from peers stands
    /// (`storage_guard`, `repair`); always the checksum scrub's progress
    /// and, while rejoining after a repair, the vote fence; the repair this
    /// start finished (`last_repair`: reason, granting leader, when).
    pub storage: serde_json::Value,
    /// Scheduled backups (`[backup]`): `configured`, and when they are the
    /// destination, interval, retention, the newest scheduled backup (by
    /// any node: when, which, size, duration), this node's successes and
    /// failures, the slot it is writing now, its last prune.
    pub backup: crate::backup::schedule::State,
    /// The data directory's filesystem: `free_bytes`, `capacity_bytes`
    /// (absent when it cannot be read).
    pub disk: serde_json::Value,
    /// The last failover drill of each scenario (`billdb drill run`), as
    /// this node has applied it: summary, when and by whom recorded; or
    /// `{"error": …}` when it cannot be read.
    pub drills: serde_json::Value,
    /// Op levels (`domain::levels`): `cluster` (what the cluster may log),
    /// `build` (what this node applies) and, on the leader while the level
    /// can still rise, `members`: each member's build level or why it is
    /// not known (`cluster_level`).
    pub op_level: serde_json::Value,
}

fn security(app: &App) -> serde_json::Value {
    use crate::listen::Port;
    let mode = |port: Port| {
        if app.config.insecure.of(port) || app.tls.is_none() {
            "plaintext"
        } else if port == Port::Raft {
            "mtls"
        } else {
            "tls"
        }
    };
    serde_json::json!({
        "raft": mode(Port::Raft),
        "grpc": mode(Port::Grpc),
        "http": mode(Port::Http),
        "tls": app.tls.as_ref().map(|t| t.status()),
        "auth": if app.auth.enabled() { "tokens" } else { "off" },
    })
}

pub fn status(app: &App) -> Status {
    let m = app.metrics();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let learners: Vec<NodeId> = membership.learner_ids().collect();
    let role = match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Follower if learners.contains(&app.id) => "learner",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    };
    let last = m.last_log_index.unwrap_or(0);
    let replication = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, matched)| {
                    let mi = matched.as_ref().map(|l| l.index);
                    (
                        *id,
                        Replication {
                            matched_index: mi,
                            lag: last.saturating_sub(mi.unwrap_or(0)),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Status {
        node_id: app.id,
        version: crate::metrics::VERSION,
        role: role.to_string(),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index,
        committed_index: m.local_committed.as_ref().map(|l| l.index),
        applied_index: m.last_applied.as_ref().map(|l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        voters,
        learners,
        nodes: membership.nodes().map(|(k, v)| (*k, v.clone())).collect(),
        replication,
        peers: app.channels.health().report(),
        db_size_bytes: app.db_size_bytes(),
        read_policy: app.config.raft.read_policy,
        lease_read: app
            .lease_read_verdict()
            .map(|v| v.map_or_else(|why| why.name(), |()| "ok")),
        raft: app.config.raft.clone(),
        security: security(app),
        storage: {
            let mut v = match app.storage.failure() {
                None => serde_json::json!({"state": "ok"}),
                Some(f) => serde_json::json!({
                    "state": "failed",
                    "kind": f.kind,
                    "error": f.error,
                    "since_unix_ms": f.since_unix_ms,
                    "probes": f.probes,
                    "last_probe_error": f.last_probe_error,
                    "repair": f.repair,
                }),
            };
            v["scrub"] = serde_json::json!(app.storage.scrub());
            v["degraded_fsync_ms"] = serde_json::json!(app.storage.degraded());
            let fence = app.storage.vote_fence();
            v["vote_fence_index"] = serde_json::json!((fence > 0).then_some(fence));
            v["log_truncation"] = serde_json::json!(app.storage.log_truncation());
            v["last_repair"] = serde_json::json!(app.storage.last_repair());
            v
        },
        backup: match app.backup.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        },
        disk: match crate::storage_guard::fs_space(&app.config.data_dir) {
            Ok((free, capacity)) => {
                serde_json::json!({"free_bytes": free, "capacity_bytes": capacity})
            }
            Err(e) => serde_json::json!({ "error": e }),
        },
        op_level: {
            let members: BTreeMap<String, serde_json::Value> = match app.op_levels.lock() {
                Ok(h) => h.members.clone(),
                Err(p) => p.into_inner().members.clone(),
            }
            .into_iter()
            .map(|(id, r)| {
                let v = match r {
                    Ok(level) => serde_json::json!(level),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                (id.to_string(), v)
            })
            .collect();
            serde_json::json!({
                "cluster": app.cluster_level().ok(),
                "build": app.config.build_op_level(),
                "members": members,
            })
        },
        drills: {
            let view = crate::store::state_machine::RocksRead::new(&app.db);
            match crate::domain::drills::list(&view) {
                Ok(d) => serde_json::json!(d),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        },
    }
}

/// A leader whose majority has not answered for this many election
/// timeouts is not ready (`ready`).
pub const LEADER_QUORUM_SILENCE_ELECTION_TIMEOUTS: u64 = 2;

/// Ready: a member that knows a leader and has applied what it knows is
/// committed; a leader also needs a majority that answered recently.
pub fn ready(app: &App) -> Result<(), String> {
    if let Some(f) = app.storage.failure() {
        return Err(format!(
            "storage failed ({}): {}; {}",
            f.kind.name(),
            f.error,
            crate::storage_guard::recovery_note(&f)
        ));
    }
    // Raft's metrics only (no status document: this runs every
    // `HEALTH_REFRESH_MS` for the gRPC health service).
    let m = app.metrics();
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().count();
    let member = membership.voter_ids().any(|id| id == app.id)
        || membership.learner_ids().any(|id| id == app.id);
    if !member {
        return Err("not a member of any cluster yet".into());
    }
    let Some(leader_id) = m.current_leader else {
        return Err("no leader known".into());
    };
    if leader_id == app.id && voters > 1 {
        // A leader cut off from its quorum does not know it has lost
        // leadership until it hears a higher term; it must not say ready
        // (writes sent to it wait and time out).
        use openraft::async_runtime::Instant as _;
        let heard_ms = m
            .last_quorum_acked
            .as_ref()
            .map(|t| t.elapsed().as_millis() as u64);
        let limit_ms =
            LEADER_QUORUM_SILENCE_ELECTION_TIMEOUTS * app.config.raft.election_timeout_max_ms;
        match heard_ms {
            Some(ms) if ms <= limit_ms => {}
            Some(ms) => {
                return Err(format!(
                    "leader without a quorum: a majority last answered {ms} ms ago \
                     (limit {limit_ms} ms)"
                ));
            }
            None => return Err("leader without a quorum: no majority has answered yet".into()),
        }
    }
    let applied = m.last_applied.as_ref().map(|l| l.index);
    let committed = m.local_committed.as_ref().map(|l| l.index);
    if applied < committed {
        return Err(format!("applying: {applied:?} of {committed:?}"));
    }
    Ok(())
}
