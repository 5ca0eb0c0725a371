//! Reachability of each peer as this node's Raft client sees it, and the
//! backoff that keeps a peer which is down from costing anything.
//!
//! openraft retries a failed replication stream at once: the error goes to
//! the Raft core, which resets the follower's in-flight state and starts a
//! new stream, which fails again (a refused connection fails in
//! microseconds). With a follower down that loop spun a core and wrote
//! tens of thousands of warnings a second. Every outgoing Raft RPC therefore
//! asks [`PeerHealth::wait_before_attempt`] first: after consecutive
//! failures it waits out an exponential delay with jitter, capped at
//! [`BACKOFF_MS_MAX`], and the first success resets it, so replication to a
//! peer that comes back resumes within one capped delay.
//!
//! Changes of state are logged once each (unreachable, reachable again
//! after how long and how many failed attempts); while a peer stays down a
//! summary is logged at most once per [`SUMMARY_INTERVAL_MS`]. Per peer, the
//! status document shows reachable or not, since when, consecutive failures
//! and the last error; `/metrics` counts errors by peer and kind.
//!
//! Touches nothing but its own table and the metrics registry.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::types::NodeId;

/// First retry delay after a failure.
pub const BACKOFF_MS_MIN: u64 = 20;
/// Longest delay between two attempts to reach a peer that is down. Small
/// enough that a returning peer hears from the leader well within a second
/// (an attempt costs one refused connection or one connect timeout).
pub const BACKOFF_MS_MAX: u64 = 250;
/// While a peer stays unreachable, at most one summary line per interval.
pub const SUMMARY_INTERVAL_MS: u64 = 60_000;
/// Longest error text kept for the status document.
const ERROR_TEXT_BYTES_MAX: usize = 300;

/// What kind of failure an attempt ended in (the `kind` label of
/// `billdb_raft_peer_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connection refused, reset, or the peer's service unavailable.
    Unreachable,
    /// No answer within the RPC's deadline.
    Timeout,
    /// Any other transport or codec failure.
    Network,
}

impl FailureKind {
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::Timeout => "timeout",
            FailureKind::Network => "network",
        }
    }
}

/// One peer as the status document shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerReport {
    pub reachable: bool,
    /// Since when (Unix ms) the peer has been in this state.
    pub since_ms: i64,
    /// Consecutive failed attempts (0 when reachable).
    pub consecutive_failures: u64,
    /// Failed attempts since this node started.
    pub failures_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Peer {
    reachable: bool,
    since: Instant,
    since_ms: i64,
    consecutive_failures: u64,
    failures_total: u64,
    /// Failures since the last line logged about this peer.
    failures_unlogged: u64,
    last_logged: Instant,
    last_error: Option<String>,
    /// No attempt before this instant (set after a failure).
    next_attempt_at: Option<Instant>,
}

impl Peer {
    fn new(now: Instant) -> Peer {
        Peer {
            reachable: true,
            since: now,
            since_ms: unix_ms(),
            consecutive_failures: 0,
            failures_total: 0,
            failures_unlogged: 0,
            last_logged: now,
            last_error: None,
            next_attempt_at: None,
        }
    }
}

/// The table of peers, shared by every Raft client connection of a node.
#[derive(Clone, Default)]
pub struct PeerHealth {
    peers: Arc<Mutex<BTreeMap<NodeId, Peer>>>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The delay before attempt `failures + 1`: doubling from
/// [`BACKOFF_MS_MIN`], capped at [`BACKOFF_MS_MAX`], then scaled by
/// `jitter` in [0.5, 1.0] so peers that failed together do not retry in step.
pub fn backoff_delay(failures: u64, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16) as u32;
    let ms = BACKOFF_MS_MIN
        .saturating_mul(1u64 << exp)
        .min(BACKOFF_MS_MAX);
    let jitter = jitter.clamp(0.5, 1.0);
    Duration::from_millis(((ms as f64) * jitter).round().max(1.0) as u64)
}

/// A jitter factor in [0.5, 1.0] from the process's random hasher keys.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_ms() as u64);
    0.5 + (h.finish() % 1000) as f64 / 2000.0
}

fn clip(s: &str) -> String {
    if s.len() <= ERROR_TEXT_BYTES_MAX {
        return s.to_string();
    }
    let mut end = ERROR_TEXT_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl PeerHealth {
    fn with<R>(&self, peer: NodeId, f: impl FnOnce(&mut Peer) -> R) -> R {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let p = map.entry(peer).or_insert_with(|| Peer::new(Instant::now()));
        f(p)
    }

    /// How long an attempt to reach `peer` must wait now (zero when the
    /// peer has not failed since its last success).
    pub fn delay_before_attempt(&self, peer: NodeId) -> Duration {
        let now = Instant::now();
        self.with(peer, |p| {
            p.next_attempt_at
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
        })
    }

    /// Wait until an attempt to reach `peer` is allowed.
    pub async fn wait_before_attempt(&self, peer: NodeId) {
        let d = self.delay_before_attempt(peer);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// An RPC to `peer` got an answer.
    pub fn on_success(&self, peer: NodeId) {
        let now = Instant::now();
        let back = self.with(peer, |p| {
            let was_down = !p.reachable;
            let down_for = now.saturating_duration_since(p.since);
            let attempts = p.consecutive_failures;
            if was_down {
                p.reachable = true;
                p.since = now;
                p.since_ms = unix_ms();
            }
            p.consecutive_failures = 0;
            p.failures_unlogged = 0;
            p.next_attempt_at = None;
            was_down.then_some((down_for, attempts))
        });
        if let Some((down_for, attempts)) = back {
            metrics::gauge!("billdb_raft_peer_reachable", "peer" => peer.to_string()).set(1.0);
            tracing::info!(
                peer,
                unreachable_ms = down_for.as_millis() as u64,
                failed_attempts = attempts,
                "peer reachable again"
            );
        }
    }

    /// An RPC to `peer` failed: count it, schedule the next attempt, and
    /// log only a change of state or a periodic summary.
    pub fn on_failure(&self, peer: NodeId, kind: FailureKind, error: &str) {
        let now = Instant::now();
        metrics::counter!("billdb_raft_peer_errors_total", "peer" => peer.to_string(), "kind" => kind.name())
            .increment(1);
        enum Line {
            Down,
            StillDown { for_ms: u64, failed: u64 },
        }
        let line = self.with(peer, |p| {
            p.consecutive_failures += 1;
            p.failures_total += 1;
            p.failures_unlogged += 1;
            p.last_error = Some(clip(error));
            p.next_attempt_at = Some(now + backoff_delay(p.consecutive_failures, jitter()));
            if p.reachable {
                p.reachable = false;
                p.since = now;
                p.since_ms = unix_ms();
                p.last_logged = now;
                p.failures_unlogged = 0;
                Some(Line::Down)
            } else if now.saturating_duration_since(p.last_logged)
                >= Duration::from_millis(SUMMARY_INTERVAL_MS)
            {
                let failed = std::mem::take(&mut p.failures_unlogged);
                p.last_logged = now;
                Some(Line::StillDown {
                    for_ms: now.saturating_duration_since(p.since).as_millis() as u64,
                    failed,
                })
            } else {
                None
            }
        });
        match line {
            Some(Line::Down) => {
                metrics::gauge!("billdb_raft_peer_reachable", "peer" => peer.to_string()).set(0.0);
                tracing::warn!(peer, kind = kind.name(), error = %clip(error), "peer unreachable; retrying with backoff");
            }
            Some(Line::StillDown { for_ms, failed }) => {
                tracing::warn!(
                    peer,
                    unreachable_ms = for_ms,
                    failed_attempts_since_last_line = failed,
                    kind = kind.name(),
                    error = %clip(error),
                    "peer still unreachable"
                );
            }
            None => {}
        }
    }

    /// Every peer this node has tried to reach, for the status document.
    pub fn report(&self) -> BTreeMap<NodeId, PeerReport> {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(id, p)| {
                (
                    *id,
                    PeerReport {
                        reachable: p.reachable,
                        since_ms: p.since_ms,
                        consecutive_failures: p.consecutive_failures,
                        failures_total: p.failures_total,
                        last_error: p.last_error.clone(),
                    },
                )
            })
            .collect()
    }

    /// Publish the per-peer gauges (called by the metrics refresh).
    pub fn refresh_metrics(&self) {
        for (id, p) in self.report() {
            let peer = id.to_string();
            metrics::gauge!("billdb_raft_peer_reachable", "peer" => peer.clone())
                .set(if p.reachable { 1.0 } else { 0.0 });
            metrics::gauge!("billdb_raft_peer_consecutive_failures", "peer" => peer)
                .set(p.consecutive_failures as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_stays_in_half_to_full() {
        assert_eq!(backoff_delay(1, 1.0), Duration::from_millis(BACKOFF_MS_MIN));
        assert_eq!(
            backoff_delay(2, 1.0),
            Duration::from_millis(2 * BACKOFF_MS_MIN)
        );
        assert_eq!(
            backoff_delay(3, 1.0),
            Duration::from_millis(4 * BACKOFF_MS_MIN)
        );
        assert_eq!(
            backoff_delay(50, 1.0),
            Duration::from_millis(BACKOFF_MS_MAX)
        );
        assert_eq!(
            backoff_delay(u64::MAX, 1.0),
            Duration::from_millis(BACKOFF_MS_MAX)
        );
        assert_eq!(
            backoff_delay(50, 0.5),
            Duration::from_millis(BACKOFF_MS_MAX / 2)
        );
        // Jitter outside [0.5, 1] is clamped.
        assert_eq!(
            backoff_delay(50, 7.0),
            Duration::from_millis(BACKOFF_MS_MAX)
        );
        assert_eq!(
            backoff_delay(50, 0.0),
            Duration::from_millis(BACKOFF_MS_MAX / 2)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.5..=1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn failures_back_off_and_one_success_resets() {
        let h = PeerHealth::default();
        assert_eq!(h.delay_before_attempt(2), Duration::ZERO);
        for _ in 0..20 {
            h.on_failure(2, FailureKind::Unreachable, "tcp connect error: refused");
        }
        let d = h.delay_before_attempt(2);
        assert!(
            d > Duration::ZERO && d <= Duration::from_millis(BACKOFF_MS_MAX),
            "{d:?}"
        );
        let r = &h.report()[&2];
        assert!(!r.reachable);
        assert_eq!((r.consecutive_failures, r.failures_total), (20, 20));
        assert_eq!(r.last_error.as_deref(), Some("tcp connect error: refused"));
        // Other peers are not affected.
        assert_eq!(h.delay_before_attempt(3), Duration::ZERO);
        h.on_success(2);
        assert_eq!(h.delay_before_attempt(2), Duration::ZERO);
        let r = &h.report()[&2];
        assert!(r.reachable);
        assert_eq!((r.consecutive_failures, r.failures_total), (0, 20));
    }

    #[test]
    fn long_error_texts_are_clipped_on_a_char_boundary() {
        let h = PeerHealth::default();
        let long = "é".repeat(1000);
        h.on_failure(4, FailureKind::Network, &long);
        let kept = h.report()[&4].last_error.clone().unwrap_or_default();
        assert!(kept.len() <= ERROR_TEXT_BYTES_MAX + '…'.len_utf8());
        assert!(kept.ends_with('…'));
    }
}
