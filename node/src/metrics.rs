//! Prometheus metrics: the recorder, and gauges refreshed from openraft's
//! metrics (term, leader changes, apply lag, RocksDB size). Histograms
//! (commit latency, request latency, fsync) are recorded where they happen.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::App;

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

pub fn install() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))
}

/// Refresh gauges from the current Raft metrics (called on scrape).
pub fn refresh(app: &App) {
    let m = app.metrics();
    metrics::gauge!("billdb_raft_term").set(m.current_term as f64);
    metrics::gauge!("billdb_raft_is_leader").set(if m.state == openraft::ServerState::Leader {
        1.0
    } else {
        0.0
    });
    let committed = m.local_committed.as_ref().map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
    metrics::gauge!("billdb_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("billdb_raft_committed_index").set(committed as f64);
    metrics::gauge!("billdb_raft_applied_index").set(applied as f64);
    metrics::gauge!("billdb_raft_apply_lag_entries").set(committed.saturating_sub(applied) as f64);
    metrics::gauge!("billdb_rocksdb_size_bytes").set(app.db_size_bytes() as f64);
    app.channels.health().refresh_metrics();
    for (family, bytes) in app.family_sst_bytes() {
        metrics::gauge!("billdb_rocksdb_family_sst_bytes", "family" => family).set(bytes as f64);
    }
    for (family, entries, bytes) in app.family_memtables() {
        metrics::gauge!("billdb_rocksdb_family_memtable_entries", "family" => family.clone())
            .set(entries as f64);
        metrics::gauge!("billdb_rocksdb_family_memtable_bytes", "family" => family)
            .set(bytes as f64);
    }
}

/// Count leader changes as seen by this node.
pub fn spawn_leader_watch(app: App) {
    static LAST_LEADER: AtomicU64 = AtomicU64::new(0);
    use openraft::async_runtime::WatchReceiver;
    // The server metrics change only with the vote, role, leader or
    // membership, not with every append like `metrics()`.
    let mut rx = app.raft.server_metrics();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let leader = rx.borrow_watched().current_leader.unwrap_or(0);
            if leader != 0 && LAST_LEADER.swap(leader, Ordering::SeqCst) != leader {
                metrics::counter!("billdb_raft_leader_changes_total").increment(1);
                tracing::info!(leader, "leader changed");
            }
        }
    });
}
