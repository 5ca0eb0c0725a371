//! A leader that is about to stop hands its leadership to the follower
//! holding the most of the log first, so writes pause for one transfer
//! (a round trip and an election in the follower's favour) instead of an
//! election timeout. Used on SIGTERM (`server`: rolling restarts,
//! `systemctl stop`) and before a damaged node stops its Raft core
//! (`repair`).
//!
//! May touch: the Raft handle (metrics, the transfer trigger).

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::types::{NodeId, Raft};

/// How a handover went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// This node did not lead (or led alone): nothing to hand over.
    NotLeader,
    /// Node `to` leads now, `took_ms` after the transfer began.
    Done { to: NodeId, took_ms: u64 },
    /// Node `to` did not take over within the wait (it goes on: an
    /// election follows the stop as it would have without the transfer).
    TimedOut { to: NodeId },
}

/// The voter other than `self_id` whose replication has matched the
/// highest index, when this node leads.
pub fn successor(raft: &Raft, self_id: NodeId) -> Option<NodeId> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(self_id) {
        return None;
    }
    let membership = m.membership_config.membership();
    m.replication.as_ref().and_then(|r| {
        r.iter()
            .filter(|(id, _)| **id != self_id)
            .filter(|(id, _)| membership.voter_ids().any(|v| v == **id))
            .max_by_key(|(_, l)| l.as_ref().map(|l| l.index))
            .map(|(id, _)| *id)
    })
}

/// When this node leads, transfers leadership to [`successor`] and waits
/// up to `wait` for another node to lead. `before(term)` runs first (the
/// read fence: no lease reads during a transfer).
pub async fn hand_over(
    raft: &Raft,
    self_id: NodeId,
    wait: Duration,
    before: impl FnOnce(u64),
) -> Handover {
    let Some(to) = successor(raft, self_id) else {
        return Handover::NotLeader;
    };
    before(raft.metrics().borrow_watched().current_term);
    let started = Instant::now();
    if raft.trigger().transfer_leader(to).await.is_err() {
        return Handover::TimedOut { to };
    }
    let moved = raft
        .wait(Some(wait))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != self_id),
            "leadership handed over",
        )
        .await;
    match moved {
        Ok(m) => Handover::Done {
            to: m.current_leader.unwrap_or(to),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        Err(_) => Handover::TimedOut { to },
    }
}
