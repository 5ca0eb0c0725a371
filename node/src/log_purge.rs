//! When the Raft log may be purged: behind this node's snapshot by
//! `raft.logs_to_keep_after_snapshot` entries, but never past a snapshot
//! that the leader is still sending to a follower.
//!
//! openraft purges as soon as a new snapshot is built and no log
//! *replication* reads the range; a snapshot in flight does not hold the
//! log. A follower caught up by a snapshot at index S needs the entries
//! from S + 1; under load the leader built its next snapshot and purged
//! past S while the transfer ran, so the follower was sent another
//! snapshot, and another (a chaos run saw a fresh node receive 48 in a row
//! and never catch up). So openraft's own purge is switched off
//! (`max_in_snapshot_log_to_keep` = [`OPENRAFT_KEEP_ALL`]) and
//! [`spawn_purger`] purges through `Trigger::purge_log` by [`purge_upto`],
//! which holds the log at S while a send to a follower is in flight and
//! until that follower has matched S (at most [`HOLD_AFTER_SEND_MS`] after
//! the send ended, so a follower that died mid-transfer does not hold the
//! log forever).
//!
//! An archiver of committed entries (`billdb backup archive`, reading this
//! node's log over `GET /v1/backup/log`) holds the log too, like a
//! PostgreSQL replication slot, but bounded: from the index it last read,
//! for [`ARCHIVE_HOLD_MS`] after that read, and never more than
//! [`ARCHIVE_HOLD_ENTRIES_MAX`] entries behind the policy's purge point,
//! so an archiver that stopped cannot fill the disk ([`ArchiveReads`]).
//!
//! [`SnapshotSends`] is written by the Raft client (`raft_net`), read here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::types::{NodeId, Raft};

/// `max_in_snapshot_log_to_keep` given to openraft: it never purges by
/// itself (its purge point, snapshot index minus this, is always 0).
pub const OPENRAFT_KEEP_ALL: u64 = u64::MAX / 2;
/// How long the log stays held for a follower after a snapshot send ended
/// (success or not) while the follower has not matched it yet.
pub const HOLD_AFTER_SEND_MS: u64 = 30_000;
/// Longest a send in flight holds the log (a transfer at full scale takes
/// minutes; one that has not ended by then no longer holds it).
pub const HOLD_IN_FLIGHT_MS_MAX: u64 = 30 * 60_000;
/// How long an archiver's last read holds the log (it reads every few
/// seconds when it runs).
pub const ARCHIVE_HOLD_MS: u64 = 15 * 60_000;
/// Most entries an archiver's hold keeps beyond what the policy keeps.
pub const ARCHIVE_HOLD_ENTRIES_MAX: u64 = 2_000_000;
/// How often the purger looks at the log.
const PURGE_CHECK_MS: u64 = 500;

#[derive(Debug, Clone, Copy)]
struct Send {
    /// Last log index the snapshot covers.
    index: u64,
    started: Instant,
    /// When the send ended, and whether the follower installed it.
    ended: Option<(Instant, bool)>,
}

/// Snapshots this node is sending or has recently sent, by follower.
#[derive(Clone, Default)]
pub struct SnapshotSends {
    sends: Arc<Mutex<BTreeMap<NodeId, Send>>>,
}

/// Marks the send ended when dropped: installed if [`SendGuard::installed`]
/// was called, failed otherwise (an error, or the send cancelled).
pub struct SendGuard {
    sends: SnapshotSends,
    target: NodeId,
    index: u64,
    installed: bool,
}

impl SendGuard {
    /// The follower answered that it installed the snapshot.
    pub fn installed(&mut self) {
        self.installed = true;
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        let mut m = self.sends.sends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get_mut(&self.target) {
            // A newer send to the same follower replaced this one's entry.
            if s.index == self.index && s.ended.is_none() {
                s.ended = Some((Instant::now(), self.installed));
            }
        }
    }
}

impl SnapshotSends {
    /// A snapshot covering up to `index` starts going to `target`.
    pub fn start(&self, target: NodeId, index: u64) -> SendGuard {
        let mut m = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(
            target,
            Send {
                index,
                started: Instant::now(),
                ended: None,
            },
        );
        SendGuard {
            sends: self.clone(),
            target,
            index,
            installed: false,
        }
    }

    /// The indexes the log must keep the entry after, given each
    /// replication target's matched index (`None`: nothing matched yet);
    /// forgets sends that no longer hold.
    fn holds(&self, matched: &BTreeMap<NodeId, Option<u64>>, now: Instant) -> Vec<u64> {
        let mut m = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|target, s| still_holds(s, matched.get(target).copied(), now));
        m.values().map(|s| s.index).collect()
    }
}

/// The log index an archiver reads from next on this node, and when it
/// last read (`GET /v1/backup/log`).
#[derive(Clone, Default)]
pub struct ArchiveReads {
    last: Arc<Mutex<Option<(u64, Instant)>>>,
}

impl ArchiveReads {
    /// An archiver read the log from `from`: keep `from` and after.
    pub fn read_from(&self, from: u64) {
        let mut l = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *l = Some((from, Instant::now()));
    }

    /// The index to keep the log after (a [`purge_upto`] hold), given the
    /// policy's purge point, if an archiver read recently.
    fn hold(&self, by_policy: u64, now: Instant) -> Option<u64> {
        let l = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (from, at) = (*l)?;
        if now.saturating_duration_since(at) >= Duration::from_millis(ARCHIVE_HOLD_MS) {
            return None;
        }
        Some(
            from.saturating_sub(1)
                .max(by_policy.saturating_sub(ARCHIVE_HOLD_ENTRIES_MAX)),
        )
    }
}

/// `matched`: the follower's matched index, `None` when it is not a
/// replication target (removed, or this node no longer leads).
fn still_holds(s: &Send, matched: Option<Option<u64>>, now: Instant) -> bool {
    let Some(matched) = matched else {
        return false; // Not a follower of this leader any more.
    };
    if matched.is_some_and(|m| m >= s.index) {
        return false; // The follower is past the snapshot: its stream holds the log now.
    }
    match s.ended {
        // Failed: the follower will need another snapshot anyway.
        Some((_, false)) => false,
        // Installed, and the leader has not seen it match yet.
        Some((t, true)) => {
            now.saturating_duration_since(t) < Duration::from_millis(HOLD_AFTER_SEND_MS)
        }
        None => {
            now.saturating_duration_since(s.started) < Duration::from_millis(HOLD_IN_FLIGHT_MS_MAX)
        }
    }
}

/// The index to purge the log up to (inclusive), if any: `keep` entries
/// behind the snapshot at `snapshot_index`, never past a held index (a
/// follower given the snapshot at S needs S + 1 on), and only forward of
/// what was already purged.
pub fn purge_upto(
    snapshot_index: u64,
    keep: u64,
    purged: Option<u64>,
    holds: &[u64],
) -> Option<u64> {
    let by_policy = snapshot_index.checked_sub(keep)?;
    let upto = holds.iter().copied().fold(by_policy, u64::min);
    match purged {
        Some(p) if upto <= p => None,
        _ => Some(upto),
    }
}

/// Purge the log by [`purge_upto`] every [`PURGE_CHECK_MS`], on every node
/// (holds apply only while this node leads: only a leader sends snapshots).
pub fn spawn_purger(raft: Raft, sends: SnapshotSends, archive: ArchiveReads, keep: u64) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(PURGE_CHECK_MS)).await;
            let m = {
                use openraft::async_runtime::WatchReceiver;
                raft.metrics().borrow_watched().clone()
            };
            let Some(snapshot_index) = m.snapshot.as_ref().map(|l| l.index) else {
                continue;
            };
            let matched: BTreeMap<NodeId, Option<u64>> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                        .collect()
                })
                .unwrap_or_default();
            let mut holds = if m.state == openraft::ServerState::Leader {
                sends.holds(&matched, Instant::now())
            } else {
                Vec::new()
            };
            let archive_hold = archive.hold(snapshot_index.saturating_sub(keep), Instant::now());
            holds.extend(archive_hold);
            let purged = m.purged.as_ref().map(|l| l.index);
            tracing::debug!(snapshot_index, ?purged, ?holds, ?matched, "purge check");
            let Some(upto) = purge_upto(snapshot_index, keep, purged, &holds) else {
                continue;
            };
            if archive_hold.is_some_and(|h| upto == h && h < snapshot_index.saturating_sub(keep)) {
                tracing::debug!(upto, "log purge held back for the log archiver");
            } else if !holds.is_empty() && upto < snapshot_index.saturating_sub(keep) {
                tracing::info!(
                    upto,
                    held_for = ?holds,
                    "log purge held back for a snapshot sent to a follower"
                );
            }
            if raft.trigger().purge_log(upto).await.is_err() {
                return; // Raft stopped.
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_keeps_entries_behind_the_snapshot_and_the_entry_after_a_held_one() {
        assert_eq!(purge_upto(1_000, 100, None, &[]), Some(900));
        assert_eq!(purge_upto(1_000, 100, Some(899), &[]), Some(900));
        assert_eq!(purge_upto(1_000, 100, Some(900), &[]), None);
        assert_eq!(purge_upto(50, 100, None, &[]), None);
        // A snapshot at 700 in flight: 701 must stay.
        assert_eq!(purge_upto(1_000, 100, None, &[700]), Some(700));
        assert_eq!(purge_upto(1_000, 100, None, &[950, 700]), Some(700));
        assert_eq!(purge_upto(1_000, 100, Some(700), &[700]), None);
        // A hold above the policy's point changes nothing.
        assert_eq!(purge_upto(1_000, 100, None, &[990]), Some(900));
    }

    #[test]
    fn a_send_holds_until_matched_or_its_time_runs_out() {
        let sends = SnapshotSends::default();
        let t0 = Instant::now();
        let new_node = BTreeMap::from([(2, None)]);
        let behind = BTreeMap::from([(2, Some(10))]);
        let mut guard = sends.start(2, 700);
        assert_eq!(sends.holds(&new_node, t0), vec![700]);
        // Still in flight: held, even if the follower's old match is lower.
        assert_eq!(sends.holds(&behind, t0), vec![700]);
        guard.installed();
        drop(guard);
        // Installed, follower not yet seen at 700: held for a while after.
        assert_eq!(sends.holds(&behind, Instant::now()), vec![700]);
        let later = Instant::now() + Duration::from_millis(HOLD_AFTER_SEND_MS + 1);
        assert!(sends.holds(&behind, later).is_empty());
        // Matched: released at once, and forgotten.
        let _g = sends.start(3, 800);
        let caught_up = BTreeMap::from([(3, Some(800))]);
        assert!(sends.holds(&caught_up, Instant::now()).is_empty());
        assert!(sends.holds(&caught_up, Instant::now()).is_empty());
        // A send that never ends stops holding after its bound.
        let _g = sends.start(4, 900);
        let four = BTreeMap::from([(4, None)]);
        assert_eq!(sends.holds(&four, Instant::now()), vec![900]);
        let much_later = Instant::now() + Duration::from_millis(HOLD_IN_FLIGHT_MS_MAX + 1);
        assert!(sends.holds(&four, much_later).is_empty());
    }

    #[test]
    fn an_archiver_holds_the_log_from_its_last_read_for_a_while_and_a_bounded_length() {
        let a = ArchiveReads::default();
        let now = Instant::now();
        assert_eq!(a.hold(900, now), None);
        a.read_from(500);
        assert_eq!(a.hold(900, now), Some(499));
        assert_eq!(purge_upto(1_000, 100, None, &[499]), Some(499));
        // Far behind: held only ARCHIVE_HOLD_ENTRIES_MAX behind the policy.
        let far = 5 * ARCHIVE_HOLD_ENTRIES_MAX;
        assert_eq!(a.hold(far, now), Some(far - ARCHIVE_HOLD_ENTRIES_MAX));
        // An archiver that stopped reading holds nothing after a while.
        let later = Instant::now() + Duration::from_millis(ARCHIVE_HOLD_MS + 1);
        assert_eq!(a.hold(900, later), None);
    }

    #[test]
    fn a_failed_send_or_a_removed_follower_holds_nothing() {
        let sends = SnapshotSends::default();
        let follower = BTreeMap::from([(2, Some(10))]);
        drop(sends.start(2, 700)); // failed or cancelled: never installed
        assert!(sends.holds(&follower, Instant::now()).is_empty());
        let _g = sends.start(2, 750);
        // The follower was removed: no longer a replication target.
        assert!(sends.holds(&BTreeMap::new(), Instant::now()).is_empty());
        // An older send ending does not end a newer one to the same node.
        let older = sends.start(5, 100);
        let _newer = sends.start(5, 200);
        drop(older);
        let five = BTreeMap::from([(5, Some(0))]);
        assert_eq!(sends.holds(&five, Instant::now()), vec![200]);
    }
}
