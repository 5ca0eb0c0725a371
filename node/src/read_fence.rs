//! Lease reads on the leader without a Raft round: what the state machine
//! has applied, what the leader has promised to followers, and the pure
//! rule deciding whether a read may be served from the local state as it
//! is right now.
//!
//! Why it is linearizable (`raft.read_policy = "lease"` only):
//! - Every write is acknowledged by the leader after the leader applied it
//!   (replies come from the leader's apply), so the leader's applied state
//!   holds every write acknowledged in its term.
//! - Writes acknowledged in earlier terms sit at or below the leader's
//!   blank entry; the rule needs that entry applied here.
//! - Followers apply committed entries the leader may not have applied
//!   yet. A follower's read waits for the read index the leader granted
//!   it, so the rule also needs the leader's applied index at or past every
//!   index it granted: a later read here never sees less than an earlier
//!   read there.
//! - No other leader can commit anything while a quorum acknowledged this
//!   one less than a lease ago (voters refuse to vote for that long), the
//!   same assumption openraft's own lease read makes. A leadership transfer
//!   lifts the voters' lease, so a transfer started by this node turns the
//!   rule off for the rest of its term.
//!
//! The fence also says which of the leader executor's entries are applied
//! (`exec_applied`, `leader_exec`).
//!
//! Touches atomics and one small lock only; the state machine writes them
//! after each applied write batch, the API and the leader executor read
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Part of the leader lease kept back for clock-rate differences between
/// nodes: a lease read is served only while the quorum acknowledgement is
/// younger than `lease × (1 − 1/LEASE_MARGIN_DIVISOR)`.
pub const LEASE_MARGIN_DIVISOR: u32 = 4;

/// Shared between the state machine (writer) and the API (reader).
#[derive(Debug, Default)]
pub struct ReadFence {
    /// Index of the last entry whose writes are visible in the database.
    applied_index: AtomicU64,
    /// Term of the last blank (leader's first) entry applied here; 0 none.
    blank_term: AtomicU64,
    /// Highest read index this node granted to another node as leader.
    granted_max: AtomicU64,
    /// Term in which this node started a leadership transfer; 0 none.
    transfer_term: AtomicU64,
    /// (term, leader execution sequence) of the newest applied entry that
    /// carried the leader's results; read as a pair.
    exec_applied: std::sync::Mutex<(u64, u64)>,
}

/// What the lease rule looks at, taken from one Raft metrics snapshot and
/// the fence.
#[derive(Debug, Clone, Copy)]
pub struct LeaseView {
    pub is_leader: bool,
    pub term: u64,
    /// Age of the newest quorum acknowledgement (from when its round was
    /// sent); `None` if there is none.
    pub quorum_ack_age: Option<Duration>,
    pub lease: Duration,
    pub blank_term: u64,
    pub transfer_term: u64,
    pub applied_index: u64,
    pub granted_max: u64,
}

/// Why a read could not be served locally (it then takes the Raft path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    NotLeader,
    TermBlankNotApplied,
    Transferring,
    LeaseExpired,
    BehindGranted,
}

impl NotNow {
    /// The name the status document shows (`lease_read`).
    pub fn name(self) -> &'static str {
        match self {
            NotNow::NotLeader => "not_leader",
            NotNow::TermBlankNotApplied => "term_blank_not_applied",
            NotNow::Transferring => "transferring",
            NotNow::LeaseExpired => "lease_expired",
            NotNow::BehindGranted => "behind_granted",
        }
    }
}

/// The rule: `Ok` when the local state may answer a linearizable read now.
pub fn lease_read(v: &LeaseView) -> Result<(), NotNow> {
    if !v.is_leader {
        return Err(NotNow::NotLeader);
    }
    if v.blank_term != v.term {
        return Err(NotNow::TermBlankNotApplied);
    }
    if v.transfer_term == v.term {
        return Err(NotNow::Transferring);
    }
    let usable = v.lease - v.lease / LEASE_MARGIN_DIVISOR;
    match v.quorum_ack_age {
        Some(age) if age < usable => {}
        _ => return Err(NotNow::LeaseExpired),
    }
    if v.applied_index < v.granted_max {
        return Err(NotNow::BehindGranted);
    }
    Ok(())
}

impl ReadFence {
    /// After a write batch is in the database: `blank_term` when the batch
    /// held a blank entry (the last one's term).
    pub fn applied(&self, index: u64, blank_term: Option<u64>) {
        if let Some(t) = blank_term {
            self.blank_term.store(t, Ordering::Release);
        }
        self.applied_index.store(index, Ordering::Release);
    }

    /// After a write batch holding an executed entry of `term` with
    /// execution sequence `seq` (the batch's last) is in the database.
    pub fn exec_applied(&self, term: u64, seq: u64) {
        if let Ok(mut l) = self.exec_applied.lock() {
            *l = (term, seq);
        }
    }

    /// The execution sequence of the newest applied entry of `term` (0:
    /// none applied here).
    pub fn exec_applied_seq(&self, term: u64) -> u64 {
        match self.exec_applied.lock() {
            Ok(l) if l.0 == term => l.1,
            _ => 0,
        }
    }

    /// A snapshot replaced the state (or the node opened its database).
    pub fn reset_applied(&self, index: u64) {
        self.applied_index.store(index, Ordering::Release);
    }

    /// Call before handing `index` to another node as its read index.
    pub fn granted(&self, index: u64) {
        self.granted_max.fetch_max(index, Ordering::AcqRel);
    }

    /// Call before starting a leadership transfer in `term`.
    pub fn transferring(&self, term: u64) {
        self.transfer_term.store(term, Ordering::Release);
    }

    /// The fence's part of a [`LeaseView`].
    pub fn view(
        &self,
        is_leader: bool,
        term: u64,
        quorum_ack_age: Option<Duration>,
        lease: Duration,
    ) -> LeaseView {
        // granted_max before applied_index: a grant racing with this read
        // then shows up, or its index was already applied.
        let granted_max = self.granted_max.load(Ordering::Acquire);
        LeaseView {
            is_leader,
            term,
            quorum_ack_age,
            lease,
            blank_term: self.blank_term.load(Ordering::Acquire),
            transfer_term: self.transfer_term.load(Ordering::Acquire),
            applied_index: self.applied_index.load(Ordering::Acquire),
            granted_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_view() -> LeaseView {
        LeaseView {
            is_leader: true,
            term: 7,
            quorum_ack_age: Some(Duration::from_millis(20)),
            lease: Duration::from_millis(400),
            blank_term: 7,
            transfer_term: 0,
            applied_index: 100,
            granted_max: 90,
        }
    }

    #[test]
    fn reasons_have_the_names_the_status_document_shows() {
        let names: Vec<&str> = [
            NotNow::NotLeader,
            NotNow::TermBlankNotApplied,
            NotNow::Transferring,
            NotNow::LeaseExpired,
            NotNow::BehindGranted,
        ]
        .into_iter()
        .map(NotNow::name)
        .collect();
        assert_eq!(
            names,
            [
                "not_leader",
                "term_blank_not_applied",
                "transferring",
                "lease_expired",
                "behind_granted"
            ]
        );
    }

    #[test]
    fn a_current_leader_with_its_blank_applied_reads_locally() {
        assert_eq!(lease_read(&ok_view()), Ok(()));
    }

    #[test]
    fn each_condition_alone_sends_the_read_to_raft() {
        let cases: Vec<(LeaseView, NotNow)> = vec![
            (
                LeaseView {
                    is_leader: false,
                    ..ok_view()
                },
                NotNow::NotLeader,
            ),
            (
                LeaseView {
                    blank_term: 6,
                    ..ok_view()
                },
                NotNow::TermBlankNotApplied,
            ),
            (
                LeaseView {
                    transfer_term: 7,
                    ..ok_view()
                },
                NotNow::Transferring,
            ),
            (
                LeaseView {
                    quorum_ack_age: None,
                    ..ok_view()
                },
                NotNow::LeaseExpired,
            ),
            (
                // 300 ms is the usable part of a 400 ms lease: not younger.
                LeaseView {
                    quorum_ack_age: Some(Duration::from_millis(300)),
                    ..ok_view()
                },
                NotNow::LeaseExpired,
            ),
            (
                LeaseView {
                    granted_max: 101,
                    ..ok_view()
                },
                NotNow::BehindGranted,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(lease_read(&v), Err(want), "{v:?}");
        }
        let young = LeaseView {
            quorum_ack_age: Some(Duration::from_millis(299)),
            ..ok_view()
        };
        assert_eq!(lease_read(&young), Ok(()));
    }

    #[test]
    fn the_fence_tracks_grants_blanks_and_transfers() {
        let f = ReadFence::default();
        let lease = Duration::from_millis(400);
        let age = Some(Duration::from_millis(1));
        // The rule for a fresh leader of `term`, over the fence as it is.
        let leader_of = |term| lease_read(&f.view(true, term, age, lease));
        // Leader of term 3 before its blank entry is applied.
        f.applied(10, None);
        assert_eq!(leader_of(3), Err(NotNow::TermBlankNotApplied));
        f.applied(11, Some(3));
        assert_eq!(leader_of(3), Ok(()));
        // A follower was granted index 15: local reads wait until applied.
        f.granted(15);
        f.granted(12); // never lowers the mark
        assert_eq!(leader_of(3), Err(NotNow::BehindGranted));
        f.applied(15, None);
        assert_eq!(leader_of(3), Ok(()));
        // A transfer turns the rule off for this term only.
        f.transferring(3);
        assert_eq!(leader_of(3), Err(NotNow::Transferring));
        f.applied(20, Some(5));
        assert_eq!(leader_of(5), Ok(()));
        // A snapshot install moves applied without a blank.
        f.reset_applied(30);
        assert_eq!(leader_of(6), Err(NotNow::TermBlankNotApplied));
    }
}
