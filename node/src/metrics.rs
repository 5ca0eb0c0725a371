//! Prometheus metrics: the recorder, every metric's HELP text, gauges
//! refreshed on scrape from openraft's metrics (term, leader, apply lag),
//! RocksDB and the data directory's filesystem, the TLS certificate's
//! expiry, and the process collector (`process_*`, read from /proc/self).
//! Histograms (commit latency, request latency, fsync) and counters are
//! recorded where they happen.
//!
//! Naming follows Prometheus: counters end in `_total`, durations are
//! `_seconds`, sizes `_bytes`, points in time `_timestamp_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::App;

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The node's version, as `billdb_build_info{version}` exports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    describe();
    initialise();
    Ok(handle)
}

/// The `/metrics` answer: the recorder's metrics and the process's.
pub fn render(app: &App, handle: &PrometheusHandle) -> String {
    refresh(app);
    let mut text = handle.render();
    process::render(&mut text);
    text
}

/// Metrics that alerts read exist (at 0) from the start, not only after
/// the first event.
fn initialise() {
    metrics::gauge!("billdb_build_info", "version" => VERSION).set(1.0);
    metrics::gauge!("billdb_storage_failed").set(0.0);
    metrics::gauge!("billdb_repair_waiting").set(0.0);
    metrics::gauge!("billdb_storage_degraded").set(0.0);
    // 0 without [backup]; the scheduler sets them when configured.
    metrics::gauge!("billdb_backup_interval_seconds").set(0.0);
    metrics::gauge!("billdb_backup_last_success_timestamp_seconds").set(0.0);
    // 0 without backup.archive_interval_s; the archiver sets it when on.
    metrics::gauge!("billdb_archive_interval_seconds").set(0.0);
    for name in [
        "billdb_archive_gaps_total",
        "billdb_raft_leader_changes_total",
        "billdb_corruption_reports_total",
        "billdb_raft_log_damaged_reports_total",
        "billdb_raft_log_truncations_total",
        "billdb_purchases_total",
        "billdb_payments_total",
        "billdb_invoices_issued_total",
        "billdb_snapshot_installs_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for outcome in ["ok", "refused"] {
        metrics::counter!("billdb_tls_reloads_total", "outcome" => outcome).increment(0);
    }
}

/// HELP text of every metric the node exports (one place, so that a new
/// metric without one shows up in review and in `promtool check metrics`).
fn describe() {
    // --- build, business --------------------------------------------------
    describe_gauge!(
        "billdb_build_info",
        "Always 1; the version label names the running billdb-node build."
    );
    describe_counter!(
        "billdb_purchases_total",
        "Purchases (card or account sales) this node applied, retries of the same request not counted again."
    );
    describe_counter!(
        "billdb_payments_total",
        "Bank payments this node applied, retries of the same request not counted again."
    );
    describe_counter!(
        "billdb_invoices_issued_total",
        "Invoices printed for the first time that this node applied (reprints not counted)."
    );
    describe_counter!(
        "billdb_refusals_total",
        "Commands this node applied that the billing rules refused, by error code and operation."
    );
    // --- Raft ---------------------------------------------------------------
    describe_gauge!("billdb_raft_term", "Current Raft term on this node.");
    describe_gauge!(
        "billdb_raft_is_leader",
        "1 when this node is the Raft leader, else 0."
    );
    describe_gauge!(
        "billdb_raft_last_log_index",
        "Index of the last entry in this node's Raft log."
    );
    describe_gauge!(
        "billdb_raft_committed_index",
        "Highest Raft log index this node knows to be committed."
    );
    describe_gauge!(
        "billdb_raft_applied_index",
        "Highest Raft log index this node's state machine has applied."
    );
    describe_gauge!(
        "billdb_raft_apply_lag_entries",
        "Committed but not yet applied Raft entries on this node."
    );
    describe_counter!(
        "billdb_raft_leader_changes_total",
        "Leader changes this node has seen since it started."
    );
    describe_histogram!(
        "billdb_raft_append_seconds",
        Unit::Seconds,
        "AppendEntries round trips to a peer (kind: empty heartbeat or entries)."
    );
    describe_counter!(
        "billdb_raft_stale_stream_resets_total",
        "Raft replication streams reset because the peer answered for an older request."
    );
    describe_counter!(
        "billdb_raft_commit_updates_coalesced_total",
        "Entry-less append requests (commit index updates) not sent because the next request of their replication stream, within 2 ms, carried a newer commit."
    );
    describe_gauge!(
        "billdb_raft_peer_reachable",
        "1 when this node's last Raft RPC to the peer succeeded, else 0."
    );
    describe_gauge!(
        "billdb_raft_peer_consecutive_failures",
        "Raft RPCs to the peer that failed in a row."
    );
    describe_counter!(
        "billdb_raft_peer_errors_total",
        "Failed Raft RPCs to the peer, by kind of failure."
    );
    describe_counter!(
        "billdb_raft_rpc_refused_total",
        "Raft RPCs this node refused from a caller that is not a cluster member, by reason."
    );
    describe_counter!(
        "billdb_votes_refused_rejoining_total",
        "Vote requests refused while this node rejoins after a repair."
    );
    describe_gauge!(
        "billdb_vote_fence_index",
        "Log index this node must hold before it grants a vote again (after a repair)."
    );
    // --- writes and reads ---------------------------------------------------
    describe_histogram!(
        "billdb_write_seconds",
        Unit::Seconds,
        "Client writes from arrival to applied outcome, on the node that proposed them."
    );
    describe_histogram!(
        "billdb_commit_seconds",
        Unit::Seconds,
        "Proposal to commit of a batch of commands on the leader."
    );
    describe_histogram!(
        "billdb_propose_batch_commands",
        Unit::Count,
        "Commands per proposed Raft entry (group commit)."
    );
    describe_counter!(
        "billdb_forwarded_requests_total",
        "Client writes this node forwarded to the leader."
    );
    describe_counter!(
        "billdb_attempts_rerouted_total",
        "Write attempts retried at a new leader after a leadership change."
    );
    describe_counter!(
        "billdb_write_replays_answered_locally_total",
        "Retried writes answered from this node's exactly-once table without a new proposal."
    );
    describe_counter!(
        "billdb_reads_total",
        "Linearizable reads, by path (leader_lease or read_index)."
    );
    describe_histogram!(
        "billdb_read_index_obtain_seconds",
        Unit::Seconds,
        "Time to obtain a ReadIndex from the leader."
    );
    describe_histogram!(
        "billdb_read_index_seconds",
        Unit::Seconds,
        "Time until this node has applied up to the ReadIndex of a read."
    );
    // --- state machine and log ----------------------------------------------
    describe_counter!(
        "billdb_apply_writes_total",
        "RocksDB write batches the state machine committed."
    );
    describe_counter!(
        "billdb_apply_cache_hits_total",
        "State machine cache hits while applying."
    );
    describe_counter!(
        "billdb_apply_cache_misses_total",
        "State machine cache misses while applying."
    );
    describe_counter!(
        "billdb_applied_entries_total",
        "Raft entries the state machine applied."
    );
    describe_counter!(
        "billdb_applied_commands_total",
        "Client commands the state machine applied."
    );
    describe_counter!(
        "billdb_applied_results_entries_total",
        "Entries applied by writing the leader's results (op level 3), without executing their commands."
    );
    describe_counter!(
        "billdb_exec_batches_total",
        "Batches this node executed as leader before proposing them (results replication)."
    );
    describe_counter!(
        "billdb_exec_epochs_total",
        "Times this node started executing as leader (a new term, or results replication turned on)."
    );
    describe_counter!(
        "billdb_exec_cut_entries_total",
        "Extra entries the leader made of one batch because the batch's results passed raft.batch_bytes_max."
    );
    describe_counter!(
        "billdb_exec_oversized_total",
        "Commands proposed without results because one command's results passed the entry bound (every replica executes them)."
    );
    describe_counter!(
        "billdb_forwarded_leader_failures_total",
        "Forwarded requests the leader failed (its storage or Raft core), passed on to the client as UNAVAILABLE."
    );
    describe_counter!(
        "billdb_exec_premise_broken_total",
        "Entries with results whose previous entry of the same leader epoch was never applied (the leader's lease lapsed between two writes); they were executed from their commands here."
    );
    describe_counter!(
        "billdb_exec_divergences_total",
        "Entries whose re-execution here (raft.verify_results) differed from the leader's results; apply stops at the first."
    );
    describe_histogram!(
        "billdb_wal_fsync_seconds",
        Unit::Seconds,
        "Duration of each fsync of the Raft log."
    );
    describe_histogram!(
        "billdb_wal_fsync_batch_callbacks",
        Unit::Count,
        "Appends made durable by one fsync of the Raft log."
    );
    describe_histogram!(
        "billdb_vote_save_seconds",
        Unit::Seconds,
        "Duration of saving the Raft vote durably."
    );
    // --- snapshots ------------------------------------------------------------
    describe_histogram!(
        "billdb_snapshot_build_seconds",
        Unit::Seconds,
        "Duration of building a state machine snapshot."
    );
    describe_histogram!(
        "billdb_snapshot_file_write_seconds",
        Unit::Seconds,
        "Duration of writing a snapshot's checkpoint files."
    );
    describe_histogram!(
        "billdb_snapshot_install_seconds",
        Unit::Seconds,
        "Duration of installing a snapshot received from the leader."
    );
    describe_counter!(
        "billdb_snapshot_installs_total",
        "Snapshots this node installed from the leader."
    );
    describe_counter!(
        "billdb_snapshot_install_items_total",
        "Keys written while installing snapshots."
    );
    describe_counter!(
        "billdb_snapshot_sends_total",
        "Snapshot transfers this node started to a peer."
    );
    describe_counter!(
        "billdb_snapshot_sent_bytes_total",
        "Snapshot bytes this node sent to peers."
    );
    describe_counter!(
        "billdb_snapshot_received_bytes_total",
        "Snapshot bytes this node received."
    );
    describe_counter!(
        "billdb_snapshot_resumed_bytes_total",
        "Snapshot bytes a resumed transfer did not need to receive again."
    );
    // --- storage --------------------------------------------------------------
    describe_gauge!(
        "billdb_rocksdb_size_bytes",
        "Bytes of this node's RocksDB files (SSTs and logs)."
    );
    describe_gauge!(
        "billdb_rocksdb_family_sst_bytes",
        "Bytes of SST files per RocksDB column family."
    );
    describe_gauge!(
        "billdb_rocksdb_family_memtable_entries",
        "Entries in the memtables per RocksDB column family."
    );
    describe_gauge!(
        "billdb_rocksdb_family_memtable_bytes",
        "Bytes of the memtables per RocksDB column family."
    );
    describe_gauge!(
        "billdb_data_dir_free_bytes",
        "Bytes available to the node on the filesystem holding its data directory."
    );
    describe_gauge!(
        "billdb_data_dir_capacity_bytes",
        "Size in bytes of the filesystem holding the node's data directory."
    );
    describe_gauge!(
        "billdb_storage_failed",
        "1 when this node's storage failed (I/O error or corruption) and the node is fenced, else 0."
    );
    describe_gauge!(
        "billdb_storage_degraded",
        "1 while a WAL fsync on this node has not returned for storage.fsync_stall_ms (a stalled disk), else 0."
    );
    describe_counter!(
        "billdb_storage_failures_total",
        "Storage failures that fenced this node, by kind."
    );
    describe_counter!(
        "billdb_corruption_reports_total",
        "Checksum failures this node found in its storage (reads, Raft core, scrub)."
    );
    describe_counter!(
        "billdb_raft_log_damaged_reports_total",
        "Raft log entries this node found failing their CRC-32 (reads, scrub); each restarts the node to cut its log there."
    );
    describe_counter!(
        "billdb_raft_log_truncations_total",
        "Times this process, at its start, cut its Raft log at a damaged entry and fetched the rest again from the leader."
    );
    describe_gauge!(
        "billdb_repair_waiting",
        "1 while this node waits for its peers to grant a repair of its damaged storage, else 0."
    );
    describe_counter!(
        "billdb_repairs_total",
        "Repairs from peers this node was granted."
    );
    describe_counter!(
        "billdb_scrub_passes_total",
        "Complete background checksum passes over this node's storage."
    );
    describe_gauge!(
        "billdb_scrub_last_pass_timestamp_seconds",
        "Unix time the last complete scrub pass finished."
    );
    describe_counter!("billdb_scrub_bytes_total", "Bytes the scrub has verified.");
    // --- API, security ------------------------------------------------------------
    describe_histogram!(
        "billdb_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP API requests by route template, method and status."
    );
    describe_histogram!(
        "billdb_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC API requests by method and gRPC status code."
    );
    describe_counter!(
        "billdb_listener_refused_total",
        "Connections or requests a listener refused before the API saw them, by listener and reason."
    );
    describe_counter!(
        "billdb_tls_reloads_total",
        "Reloads of the TLS files, by outcome (ok or refused)."
    );
    describe_counter!(
        "billdb_tokens_reloads_total",
        "Reloads of the tokens file, by outcome (ok or refused)."
    );
    describe_gauge!(
        "billdb_tls_certificate_expiry_timestamp_seconds",
        "Unix time this node's TLS certificate expires (not after)."
    );
    // --- scheduled backups (`backup::schedule`; only with [backup]) ---
    describe_gauge!(
        "billdb_backup_interval_seconds",
        Unit::Seconds,
        "Configured interval of the scheduled backups (backup.interval_s); 0: no [backup] configured on this node."
    );
    describe_gauge!(
        "billdb_backup_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time the newest scheduled backup in the destination was written, by any node (0: none yet)."
    );
    describe_gauge!(
        "billdb_backup_last_size_bytes",
        Unit::Bytes,
        "Size of the newest scheduled backup (all its files, shared ones included)."
    );
    describe_gauge!(
        "billdb_backup_last_copied_bytes",
        Unit::Bytes,
        "Bytes the newest scheduled backup copied (the files the destination did not hold yet)."
    );
    describe_gauge!(
        "billdb_backup_last_duration_seconds",
        Unit::Seconds,
        "Time the newest scheduled backup took, from its claim to its manifest."
    );
    describe_gauge!(
        "billdb_backup_running",
        "1 while this node writes a scheduled backup."
    );
    describe_counter!(
        "billdb_backup_successes_total",
        "Scheduled backups this node wrote."
    );
    describe_counter!(
        "billdb_backup_failures_total",
        "Failed scheduled backup attempts, by reason: error and claim_lost (this node's own), abandoned (another node's claim that stopped being renewed, taken over by this node)."
    );
    describe_counter!(
        "billdb_backup_prune_freed_bytes_total",
        Unit::Bytes,
        "Bytes the prunes after this node's scheduled backups freed."
    );
    // --- the log archive (`backup::archiver`; only with backup.archive_interval_s) ---
    describe_gauge!(
        "billdb_archive_interval_seconds",
        Unit::Seconds,
        "Configured interval of the log archive (backup.archive_interval_s)."
    );
    describe_gauge!(
        "billdb_archive_last_index",
        "Last log index this node wrote to the log archive."
    );
    describe_gauge!(
        "billdb_archive_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time this node last wrote a log archive segment."
    );
    describe_counter!(
        "billdb_archive_entries_total",
        "Log entries this node wrote to the log archive."
    );
    describe_counter!(
        "billdb_archive_bytes_total",
        Unit::Bytes,
        "Bytes of log archive segments this node wrote."
    );
    describe_counter!(
        "billdb_archive_failures_total",
        "Log archive passes of this node that failed (the next pass tries again)."
    );
    describe_counter!(
        "billdb_archive_gaps_total",
        "Gaps this node left in the log archive: entries no longer held when it came to archive them."
    );
    describe_counter!(
        "billdb_backup_prune_failures_total",
        "Prunes after this node's scheduled backups that failed (the next success tries again)."
    );
    describe_counter!(
        "billdb_log_lines_suppressed_total",
        "Log lines suppressed by the rate limit on repeated messages."
    );
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
    // An unreadable filesystem leaves the last values (the storage guard
    // reports the failure itself).
    if let Ok((free, capacity)) = crate::storage_guard::fs_space(&app.config.data_dir) {
        metrics::gauge!("billdb_data_dir_free_bytes").set(free as f64);
        metrics::gauge!("billdb_data_dir_capacity_bytes").set(capacity as f64);
    }
    if let Some(tls) = &app.tls {
        metrics::gauge!("billdb_tls_certificate_expiry_timestamp_seconds")
            .set(tls.current().cert_not_after_unix_s as f64);
    }
}

/// Count an applied command's business outcome (fresh decisions only: a
/// retry answered from the exactly-once table is not counted again).
pub fn count_outcome(op: &crate::domain::Op, outcome: &crate::domain::Outcome) {
    use crate::domain::{Op, Outcome};
    match (op, outcome) {
        (_, Outcome::Refused(e)) => {
            metrics::counter!(
                "billdb_refusals_total",
                "code" => e.code.as_str(),
                "op" => op.name()
            )
            .increment(1);
        }
        (Op::Purchase { .. }, _) => metrics::counter!("billdb_purchases_total").increment(1),
        (Op::Payment { .. }, _) => metrics::counter!("billdb_payments_total").increment(1),
        (_, Outcome::InvoicePrinted { reprint: false, .. }) => {
            metrics::counter!("billdb_invoices_issued_total").increment(1)
        }
        _ => {}
    }
}

/// gRPC status code names (as `grpc-status` numbers them).
fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The `method` label of a gRPC request path: billdb's own methods by
/// name, anything else (a stranger's path) as `other`, so that callers
/// cannot grow the label set.
fn grpc_method_label(path: &str) -> String {
    let known = path
        .strip_prefix("/billdb.v1.")
        .or_else(|| path.strip_prefix("/billdb.v2."))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !service.is_empty()
                && !method.is_empty()
                && method.len() <= 64
                && method.chars().all(|c| c.is_ascii_alphanumeric())
                && matches!(service, "Billing" | "Cluster")
        });
    if known {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// Tower layer on the gRPC client server: `billdb_grpc_request_duration_seconds`
/// by method and status code (the code of a trailers-only answer, which
/// is how tonic answers an error; `OK` otherwise).
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<tonic::codegen::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<RB>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = grpc_method_label(req.uri().path());
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(grpc_code_name)
                    .unwrap_or("OK"),
                Err(_) => "UNKNOWN",
            };
            metrics::histogram!(
                "billdb_grpc_request_duration_seconds",
                "method" => method,
                "code" => code
            )
            .record(started.elapsed().as_secs_f64());
            result
        })
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

/// The process collector: the `process_*` metrics Prometheus client
/// libraries export, read from /proc on every scrape.
pub mod process {
    use std::fmt::Write;

    /// What /proc says about this process (None: not Linux, or unreadable).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub cpu_seconds: f64,
        pub resident_bytes: u64,
        pub virtual_bytes: u64,
        pub threads: u64,
        pub start_time_seconds: f64,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
    }

    fn clock_ticks() -> f64 {
        // SAFETY: sysconf only reads a configuration value.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }

    fn page_size() -> u64 {
        // SAFETY: sysconf only reads a configuration value.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 { p as u64 } else { 4096 }
    }

    /// Parse `/proc/<pid>/stat` (fields after the parenthesised command,
    /// which may itself hold spaces and parentheses) and `btime` from
    /// `/proc/stat`.
    pub fn parse(stat: &str, proc_stat: &str, ticks: f64, page: u64) -> Option<Sample> {
        let after = stat.get(stat.rfind(')')? + 1..)?;
        // Fields from the 3rd (state) on; field N is at index N - 3.
        let f: Vec<&str> = after.split_whitespace().collect();
        let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
        let utime = num(14)?;
        let stime = num(15)?;
        let threads = num(20)?;
        let start_ticks = num(22)?;
        let vsize = num(23)?;
        let rss_pages = num(24)?;
        let btime: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        Some(Sample {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident_bytes: rss_pages.saturating_mul(page),
            virtual_bytes: vsize,
            threads,
            start_time_seconds: btime as f64 + start_ticks as f64 / ticks,
            open_fds: None,
            max_fds: None,
        })
    }

    /// This process now.
    pub fn sample() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut s = parse(&stat, &proc_stat, clock_ticks(), page_size())?;
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            s.max_fds = Some(limit.rlim_cur);
        }
        Some(s)
    }

    fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }

    /// Append the process metrics to a Prometheus text exposition.
    pub fn render(out: &mut String) {
        let Some(s) = sample() else {
            return;
        };
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        metric(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            s.cpu_seconds,
        );
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            s.resident_bytes as f64,
        );
        metric(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            s.virtual_bytes as f64,
        );
        metric(
            out,
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            s.threads as f64,
        );
        metric(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            s.start_time_seconds,
        );
        if let Some(n) = s.open_fds {
            metric(
                out,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                n as f64,
            );
        }
        if let Some(n) = s.max_fds {
            metric(
                out,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                n as f64,
            );
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_stat_with_a_command_holding_spaces_and_parens() {
            let stat = "4242 (billdb (node) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                        250 50 0 0 20 0 17 0 1000 123456789 300 18446744073709551615";
            let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
            let s = parse(stat, proc_stat, 100.0, 4096).expect("parsed");
            assert_eq!(s.cpu_seconds, 3.0);
            assert_eq!(s.threads, 17);
            assert_eq!(s.start_time_seconds, 1_700_000_010.0);
            assert_eq!(s.virtual_bytes, 123_456_789);
            assert_eq!(s.resident_bytes, 300 * 4096);
        }

        #[test]
        fn refuses_a_truncated_stat() {
            assert_eq!(parse("1 (x) S 1 2", "btime 5\n", 100.0, 4096), None);
            let full = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 10 2";
            assert_eq!(parse(full, "cpu 1\n", 100.0, 4096), None);
        }

        #[test]
        fn this_process_has_a_sample() {
            let s = sample().expect("/proc/self");
            assert!(s.resident_bytes > 0);
            assert!(s.open_fds.unwrap_or(0) >= 3);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_method_label_keeps_billdb_methods_and_folds_the_rest() {
        assert_eq!(
            grpc_method_label("/billdb.v1.Billing/Purchase"),
            "/billdb.v1.Billing/Purchase"
        );
        assert_eq!(
            grpc_method_label("/billdb.v1.Cluster/Status"),
            "/billdb.v1.Cluster/Status"
        );
        assert_eq!(grpc_method_label("/billdb.v1.Billing/a-b"), "other");
        assert_eq!(grpc_method_label("/billdb.v1.Other/Purchase"), "other");
        assert_eq!(grpc_method_label("/x.Y/Z"), "other");
        assert_eq!(grpc_method_label("/"), "other");
    }

    #[test]
    fn grpc_code_names() {
        assert_eq!(grpc_code_name("0"), "OK");
        assert_eq!(grpc_code_name("14"), "UNAVAILABLE");
        assert_eq!(grpc_code_name("99"), "UNKNOWN");
    }
}
