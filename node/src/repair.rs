//! Repair from peers: a node whose data failed a checksum rebuilds itself
//! from the cluster, with no operator action, without ever voting twice in
//! one term or helping elect a leader that lacks entries it acknowledged.
//!
//! The steps (ARCHITECTURE.md "A damaged replica repairs itself"):
//! 1. `storage_guard` fences the node on the first checksum failure; here
//!    a leader first hands its leadership over, then the Raft core stops:
//!    from then on the node acknowledges nothing and grants no vote.
//! 2. It asks the leader of its cluster ([`RepairRequest`], on the Raft
//!    port, mutual TLS) to accept its log going back to empty. The leader
//!    agrees only while a quorum of voters *without* this node answers it
//!    ([`serve`]); otherwise the node stays fenced and says why, since
//!    rebuilding a replica that the cluster needs could lose data. The
//!    leader answers with its last log index.
//! 3. The node writes a marker ([`MARKER_FILE`]: its vote, that index) and
//!    re-executes itself. At start ([`take_marker`]) the damaged database
//!    and snapshots move aside into `damaged/` (the newest
//!    [`DAMAGED_KEPT_MAX`] kept for inspection), a new database gets the
//!    vote back and a vote fence at that index, and only then the marker
//!    goes.
//! 4. The node rejoins as a follower with an empty log; the leader resets
//!    its replication (`allow_next_revert`) and sends a snapshot. Until the
//!    log holds the fence index the node grants no vote, pre-vote included
//!    ([`spawn_rejoin`], `raft_service`), and keeps asking whoever leads to
//!    accept the reset.
//!
//! The vote survives even when the database holding it is damaged: every
//! vote is also written, fsynced, to `vote.json` beside the database
//! (`LogStore::save_vote`), with its SHA-256.
//!
//! May touch: files directly in the data directory (marker, vote and
//! member mirrors, `damaged/`), the `db` and `snapshots` directories'
//! names (moved, never read), Raft RPCs to peers, the Raft handle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billdb_api::raftpb::RaftMsg;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use crate::raft_net::{Channels, decode, encode};
use crate::storage_guard::{StorageGuard, restart, unix_ms};
use crate::store::vote_mirror::{read_vote, write_atomically};
use crate::types::{NodeId, Raft, Vote};

/// Written when the leader agreed to a repair; read and removed at start.
pub const MARKER_FILE: &str = "repair-pending.json";
/// The members' Raft addresses, mirrored outside the database.
pub const MEMBERS_FILE: &str = "members.json";
/// Where damaged databases are kept for inspection.
pub const DAMAGED_DIR: &str = "damaged";
/// Damaged databases kept; older ones are deleted.
pub const DAMAGED_KEPT_MAX: usize = 2;
/// How often a fenced node asks for its repair, and a rejoining node for
/// its replication reset.
const ASK_INTERVAL_MS: u64 = 2_000;
/// How long one ask waits for a peer.
const ASK_TIMEOUT_MS: u64 = 2_000;
/// How long a damaged leader waits for another node to take over before it
/// stops its Raft core anyway.
const HANDOVER_WAIT_MS: u64 = 2_000;
/// How often the member mirror and the vote fence are looked at.
const WATCH_INTERVAL_MS: u64 = 1_000;

/// Asked of the leader on its Raft port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairRequest {
    /// The node to repair: the caller itself.
    pub node_id: NodeId,
    /// `true`: accept this node's log going back to empty once;
    /// `false`: withdraw that (the node has caught up).
    pub allow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RepairReply {
    Granted {
        leader_id: NodeId,
        term: u64,
        last_log_index: u64,
    },
    NotLeader {
        leader_id: Option<NodeId>,
    },
    Refused {
        reason: String,
    },
}

/// The marker a granted repair leaves for the next start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// The checksum failure that started the repair.
    pub reason: String,
    /// The newest vote this node gave (restored into the new database).
    pub vote: Option<Vote>,
    /// No vote is granted until the log holds this index.
    pub vote_fence_index: u64,
    pub leader_id: NodeId,
    pub granted_unix_ms: u64,
}

/// The members' Raft addresses as last mirrored.
pub fn read_members(dir: &Path) -> BTreeMap<NodeId, String> {
    std::fs::read(dir.join(MEMBERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The larger of two votes (a vote only grows; a larger one binds more).
fn newer(a: Option<Vote>, b: Option<Vote>) -> Option<Vote> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// At start: when a repair was granted, moves the damaged database and
/// snapshots aside and returns the marker (removed by [`finish_start`] once
/// the new database holds the vote and the fence).
pub fn take_marker(data_dir: &Path) -> anyhow::Result<Option<Marker>> {
    use anyhow::Context;
    let path = data_dir.join(MARKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let marker: Marker =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let damaged = data_dir.join(DAMAGED_DIR);
    let aside = damaged.join(format!("{}", unix_ms()));
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for name in ["db", "snapshots"] {
        let from = data_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name))
                .with_context(|| format!("moving {} aside", from.display()))?;
        }
    }
    std::fs::write(aside.join("reason.txt"), marker.reason.as_bytes())
        .with_context(|| format!("writing {}", aside.display()))?;
    prune_damaged(&damaged);
    tracing::warn!(
        kept = %aside.display(),
        vote_fence_index = marker.vote_fence_index,
        leader = marker.leader_id,
        "repair: the damaged database was moved aside; starting with an empty one, \
         rejoining from the leader"
    );
    Ok(Some(marker))
}

/// The marker's work is durable in the new database: remove it.
pub fn finish_start(data_dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(data_dir.join(MARKER_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Keeps the newest [`DAMAGED_KEPT_MAX`] damaged databases.
fn prune_damaged(damaged: &Path) {
    let Ok(rd) = std::fs::read_dir(damaged) else {
        return;
    };
    let mut dirs: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(DAMAGED_KEPT_MAX);
    for (_, d) in dirs.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "could not delete an old damaged database");
        }
    }
}

/// Leader side of [`RepairRequest`]. `caller` is the node the caller's
/// certificate names (`None` on a plaintext Raft port). `fresh_ms`: a voter
/// heard from within this long counts as answering.
pub async fn serve(
    raft: &Raft,
    self_id: NodeId,
    caller: Option<NodeId>,
    req: RepairRequest,
    fresh_ms: u64,
) -> RepairReply {
    if caller.is_some_and(|c| c != req.node_id) {
        return RepairReply::Refused {
            reason: format!(
                "node {:?} may not ask for node {}'s repair: a node asks only for its own",
                caller, req.node_id
            ),
        };
    }
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(self_id) {
        return RepairReply::NotLeader {
            leader_id: m.current_leader,
        };
    }
    let membership = m.membership_config.membership();
    if !membership.nodes().any(|(id, _)| *id == req.node_id) {
        return RepairReply::Refused {
            reason: format!("node {} is not a member of this cluster", req.node_id),
        };
    }
    if req.allow
        && let Err(reason) = quorum_without(&m, self_id, req.node_id, fresh_ms)
    {
        return RepairReply::Refused { reason };
    }
    match raft
        .trigger()
        .allow_next_revert(&req.node_id, req.allow)
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return RepairReply::Refused {
                reason: e.to_string(),
            };
        }
        Err(e) => {
            return RepairReply::Refused {
                reason: format!("the leader's Raft core stopped: {e}"),
            };
        }
    }
    if req.allow {
        tracing::warn!(
            node = req.node_id,
            "repair: node {} may rejoin with an empty log; its replication restarts from a \
             snapshot",
            req.node_id
        );
    }
    RepairReply::Granted {
        leader_id: self_id,
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
    }
}

/// On the leader `self_id`: whether a majority of voters other than `node`
/// answered it within `fresh_ms` (the leader counts itself unless it is
/// `node`): only then can `node` be rebuilt without risking what the
/// cluster needs.
fn quorum_without(
    m: &openraft::RaftMetrics<crate::types::TypeConfig>,
    self_id: NodeId,
    node: NodeId,
    fresh_ms: u64,
) -> Result<(), String> {
    use openraft::async_runtime::Instant as _;
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let majority = voters.len() / 2 + 1;
    let heard = voters
        .iter()
        .filter(|id| **id != node)
        .filter(|id| {
            **id == self_id
                || m.heartbeat.as_ref().is_some_and(|hb| {
                    hb.get(*id)
                        .cloned()
                        .flatten()
                        .is_some_and(|t| t.elapsed().as_millis() <= u128::from(fresh_ms))
                })
        })
        .count();
    if heard < majority {
        return Err(format!(
            "only {heard} of {} voters answer the leader without node {node}; a quorum of \
             {majority} is needed to rebuild it safely",
            voters.len()
        ));
    }
    Ok(())
}

/// Why an ask found no grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// The leader answered and refused (`Refused`'s reason).
    Refused(String),
    /// No member answered as the leader.
    NoLeader(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Refused(why) | AskError::NoLeader(why) => f.write_str(why),
        }
    }
}

/// Before an operator's repair (`POST /v1/node/repair`) fences this node:
/// would the leader agree to rebuild it now? On the leader itself the
/// quorum is checked here (the repair hands leadership over first); on a
/// follower the leader is asked, exactly as the repair will ask it. The
/// leader's id when it would.
pub async fn preflight(
    raft: &Raft,
    self_id: NodeId,
    channels: &Channels,
    data_dir: &Path,
    fresh_ms: u64,
) -> Result<NodeId, AskError> {
    let m = raft.metrics().borrow_watched().clone();
    if let Err(e) = &m.running_state {
        return Err(AskError::NoLeader(format!(
            "this node's Raft core stopped ({e})"
        )));
    }
    if m.current_leader == Some(self_id) {
        quorum_without(&m, self_id, self_id, fresh_ms).map_err(AskError::Refused)?;
        return Ok(self_id);
    }
    let mut members = read_members(data_dir);
    for (id, node) in m.membership_config.membership().nodes() {
        members.insert(*id, node.raft_addr.clone());
    }
    if !members.contains_key(&self_id) {
        return Err(AskError::Refused(format!(
            "node {self_id} is not a member of a cluster: there is nothing to repair it from"
        )));
    }
    ask_leader(channels, self_id, &members, m.current_leader, true)
        .await
        .map(|(leader, _)| leader)
}

/// Asks the members in turn (the hinted leader first) until the leader
/// answers; its grant, or why none was had.
async fn ask_leader(
    channels: &Channels,
    self_id: NodeId,
    members: &BTreeMap<NodeId, String>,
    hint: Option<NodeId>,
    allow: bool,
) -> Result<(NodeId, u64), AskError> {
    let mut order: Vec<NodeId> = hint.into_iter().filter(|h| *h != self_id).collect();
    order.extend(members.keys().copied().filter(|id| *id != self_id));
    let mut asked = std::collections::BTreeSet::new();
    let mut why = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let id = order[i];
        i += 1;
        if !asked.insert(id) {
            continue;
        }
        let Some(addr) = members.get(&id) else {
            continue;
        };
        let reply = async {
            let mut client = channels.get(id, addr).map_err(|e| e.to_string())?;
            let data = encode(&RepairRequest {
                node_id: self_id,
                allow,
            })
            .map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(
                Duration::from_millis(ASK_TIMEOUT_MS),
                client.repair(RaftMsg { data }),
            )
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|s| s.message().to_string())?;
            decode::<RepairReply>(&resp.into_inner().data).map_err(|e| e.to_string())
        }
        .await;
        match reply {
            Ok(RepairReply::Granted {
                leader_id,
                last_log_index,
                ..
            }) => return Ok((leader_id, last_log_index)),
            Ok(RepairReply::Refused { reason }) => {
                return Err(AskError::Refused(format!("leader {id} refused: {reason}")));
            }
            Ok(RepairReply::NotLeader { leader_id }) => {
                why.push(format!("node {id} is not the leader"));
                if let Some(l) = leader_id {
                    order.insert(i, l);
                }
            }
            Err(e) => why.push(format!("node {id}: {e}")),
        }
    }
    Err(AskError::NoLeader(format!(
        "no leader found ({})",
        why.join("; ")
    )))
}

/// Writes the marker of a granted repair and re-executes this node; returns
/// only when the marker cannot be written, with why.
fn grant_and_restart(data_dir: &Path, marker: &Marker) -> String {
    let written = serde_json::to_vec_pretty(marker)
        .map_err(std::io::Error::other)
        .and_then(|b| write_atomically(data_dir, MARKER_FILE, &b));
    match written {
        Ok(()) => {
            metrics::counter!("billdb_repairs_total").increment(1);
            tracing::warn!(
                leader = marker.leader_id,
                vote_fence_index = marker.vote_fence_index,
                "repair granted by the leader: restarting with an empty database"
            );
            restart()
        }
        Err(e) => format!("cannot write the repair marker: {e}"),
    }
}

/// What [`run`] needs.
pub struct Damaged {
    pub raft: Raft,
    pub guard: Arc<StorageGuard>,
    pub data_dir: PathBuf,
    pub self_id: NodeId,
    pub channels: Channels,
    pub error: String,
}

/// Steps 1–3 on a node that found corruption: hand leadership over, stop
/// the Raft core, ask the leader until it agrees, write the marker and
/// re-execute. Never returns.
pub async fn run(d: Damaged) -> std::convert::Infallible {
    let Damaged {
        raft,
        guard,
        data_dir,
        self_id,
        channels,
        error,
    } = d;
    let m = raft.metrics().borrow_watched().clone();
    if let Some(to) = crate::handover::successor(&raft, self_id) {
        guard.note_repair(format!("handing leadership to node {to}"));
        tracing::warn!(
            to,
            "repair: handing leadership to node {to} before stopping"
        );
        crate::handover::hand_over(
            &raft,
            self_id,
            Duration::from_millis(HANDOVER_WAIT_MS),
            |_| {},
        )
        .await;
    }
    let vote_seen = raft.metrics().borrow_watched().vote;
    let hint = raft
        .metrics()
        .borrow_watched()
        .current_leader
        .filter(|l| *l != self_id);
    let _ = raft.shutdown().await;
    let mut members = read_members(&data_dir);
    for (id, node) in m.membership_config.membership().nodes() {
        members.insert(*id, node.raft_addr.clone());
    }
    metrics::gauge!("billdb_repair_waiting").set(1.0);
    let mut last_why = String::new();
    loop {
        match ask_leader(&channels, self_id, &members, hint, true).await {
            Ok((leader_id, last_log_index)) => {
                let vote = match read_vote(&data_dir) {
                    Ok(v) => newer(v, Some(vote_seen)),
                    Err(e) => {
                        tracing::warn!(error = %e, "repair: the vote mirror is damaged; using the vote in memory");
                        Some(vote_seen)
                    }
                };
                let marker = Marker {
                    reason: error.clone(),
                    vote,
                    vote_fence_index: last_log_index,
                    leader_id,
                    granted_unix_ms: unix_ms(),
                };
                let why = grant_and_restart(&data_dir, &marker);
                guard.note_repair(why.clone());
                if why != last_why {
                    tracing::error!(reason = %why, "repair: waiting");
                    last_why = why;
                }
            }
            Err(why) => {
                let why = why.to_string();
                guard.note_repair(format!("waiting: {why}"));
                if why != last_why {
                    tracing::warn!(reason = %why, "repair: waiting (this node stays fenced)");
                    last_why = why;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(ASK_INTERVAL_MS)).await;
    }
}

/// Steps 2–3 for a node whose database fails its checksums at open: no Raft
/// core ever ran in this process, so the vote comes from its mirror and the
/// members from theirs. Without a readable vote the node cannot know which
/// vote it gave and stays down saying so: an operator replaces it (a new
/// node id). Never returns.
pub async fn run_unopened(
    data_dir: PathBuf,
    self_id: NodeId,
    channels: Channels,
    error: String,
) -> std::convert::Infallible {
    metrics::gauge!("billdb_storage_failed").set(1.0);
    metrics::counter!("billdb_storage_failures_total", "kind" => "corruption").increment(1);
    tracing::error!(
        error = %error,
        "storage corruption: the database fails its checksums at open; this node serves \
         nothing and repairs itself from its peers"
    );
    let members = read_members(&data_dir);
    let mut last_why = String::new();
    loop {
        let vote = read_vote(&data_dir);
        let step = match (&vote, members.is_empty()) {
            (Err(e), _) => Err(format!(
                "the vote mirror is unreadable ({e}); without it this node could vote twice \
                 in a term: replace the node (remove it, add a new one)"
            )),
            (Ok(None), _) => Err(format!(
                "no vote mirror ({}) in the data directory; replace the node (remove it, add a \
                 new one)",
                crate::store::vote_mirror::VOTE_FILE
            )),
            (_, true) => Err(format!(
                "no member list ({MEMBERS_FILE}) in the data directory: cannot find the leader"
            )),
            (Ok(Some(_)), false) => ask_leader(&channels, self_id, &members, None, true)
                .await
                .map_err(|e| e.to_string()),
        };
        match step {
            Ok((leader_id, last_log_index)) => {
                let marker = Marker {
                    reason: error.clone(),
                    vote: vote.ok().flatten(),
                    vote_fence_index: last_log_index,
                    leader_id,
                    granted_unix_ms: unix_ms(),
                };
                let why = grant_and_restart(&data_dir, &marker);
                if why != last_why {
                    tracing::error!(reason = %why, "repair: waiting");
                    last_why = why;
                }
            }
            Err(why) => {
                if why != last_why {
                    tracing::warn!(reason = %why, "repair: waiting (this node serves nothing)");
                    last_why = why;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(ASK_INTERVAL_MS)).await;
    }
}

/// Keeps [`MEMBERS_FILE`] equal to the membership, and after a repair
/// (`fence` > 0) asks the leader to accept the empty log until this node's
/// log holds the fence index; then lifts the vote fence (`clear` removes it
/// from the database first).
pub fn spawn_rejoin(
    raft: Raft,
    guard: Arc<StorageGuard>,
    data_dir: PathBuf,
    self_id: NodeId,
    channels: Channels,
    clear: impl Fn() -> Result<(), std::io::Error> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut mirrored: Option<BTreeMap<NodeId, String>> = None;
        let mut last_ask: Option<Instant> = None;
        loop {
            let m = raft.metrics().borrow_watched().clone();
            if m.running_state.is_err() {
                return;
            }
            let members: BTreeMap<NodeId, String> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.raft_addr.clone()))
                .collect();
            if !members.is_empty() && mirrored.as_ref() != Some(&members) {
                match serde_json::to_vec_pretty(&members)
                    .map_err(std::io::Error::other)
                    .and_then(|b| write_atomically(&data_dir, MEMBERS_FILE, &b))
                {
                    Ok(()) => mirrored = Some(members.clone()),
                    Err(e) => tracing::warn!(error = %e, "could not mirror the members"),
                }
            }
            let fence = guard.vote_fence();
            if fence > 0 {
                if m.last_log_index.unwrap_or(0) >= fence {
                    match clear() {
                        Ok(()) => {
                            guard.set_vote_fence(0);
                            metrics::gauge!("billdb_repair_waiting").set(0.0);
                            tracing::info!(
                                fence,
                                "repair: caught up to the fence; this node votes again"
                            );
                            let known = read_members(&data_dir);
                            let known = if members.is_empty() { known } else { members };
                            let _ = ask_leader(&channels, self_id, &known, m.current_leader, false)
                                .await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "repair: could not lift the vote fence")
                        }
                    }
                } else if last_ask
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(ASK_INTERVAL_MS))
                {
                    last_ask = Some(Instant::now());
                    let known = read_members(&data_dir);
                    let known = if members.is_empty() { known } else { members };
                    if let Err(why) =
                        ask_leader(&channels, self_id, &known, m.current_leader, true).await
                    {
                        tracing::info!(reason = %why, "repair: rejoining; the leader has not accepted the reset yet");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, node: NodeId) -> Vote {
        Vote::new(term, node)
    }

    #[test]
    fn the_newer_vote_wins() {
        assert_eq!(newer(Some(vote(3, 1)), Some(vote(5, 2))), Some(vote(5, 2)));
        assert_eq!(newer(Some(vote(6, 1)), Some(vote(5, 2))), Some(vote(6, 1)));
        assert_eq!(newer(None, Some(vote(5, 2))), Some(vote(5, 2)));
        assert_eq!(newer(None, None), None);
    }

    #[test]
    fn a_marker_moves_the_damaged_database_aside_and_keeps_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(take_marker(d).expect("no marker").is_none());
        for round in 0..3u64 {
            std::fs::create_dir_all(d.join("db")).expect("db");
            std::fs::write(d.join("db/000001.sst"), round.to_string()).expect("sst");
            let marker = Marker {
                reason: format!("Corruption round {round}"),
                vote: Some(vote(4, 2)),
                vote_fence_index: 100 + round,
                leader_id: 2,
                granted_unix_ms: 1,
            };
            write_atomically(d, MARKER_FILE, &serde_json::to_vec(&marker).expect("json"))
                .expect("marker");
            let got = take_marker(d).expect("take").expect("a marker");
            assert_eq!(got.vote_fence_index, 100 + round);
            assert!(!d.join("db").exists(), "the damaged database moved aside");
            finish_start(d).expect("finish");
            assert!(!d.join(MARKER_FILE).exists());
            // Distinct names: the clock moves between rounds.
            std::thread::sleep(Duration::from_millis(3));
        }
        let kept: Vec<_> = std::fs::read_dir(d.join(DAMAGED_DIR))
            .expect("damaged")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(kept.len(), DAMAGED_KEPT_MAX);
        // The newest is kept: it holds round 2's file and reason.
        let newest = kept
            .iter()
            .map(|e| e.path())
            .max()
            .expect("a kept directory");
        assert_eq!(
            std::fs::read_to_string(newest.join("db/000001.sst")).expect("sst"),
            "2"
        );
        assert!(
            std::fs::read_to_string(newest.join("reason.txt"))
                .expect("reason")
                .contains("round 2")
        );
    }
}
