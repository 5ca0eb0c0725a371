//! Node startup and shutdown: open storage, start Raft, serve the Raft,
//! client gRPC and HTTP ports, stop cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use billdb_api::pb::billing_server::BillingServer;
use billdb_api::pb::cluster_server::ClusterServer;
use billdb_api::pb2::billing_server::BillingServer as BillingV2Server;
use billdb_api::raftpb::raft_internal_server::RaftInternalServer;
use openraft::SnapshotPolicy;

use crate::api::grpc::GrpcApi;
use crate::api::http::{HttpState, router};
use crate::app::App;
use crate::config::Config;
use crate::listen::{AxumListener, Limits, PeerInfo, Port};
use crate::peer_auth::PeerAuth;
use crate::raft_net::{Channels, MESSAGE_SIZE_BYTES_MAX, Network};
use crate::raft_service::RaftService;
use crate::store::{LogStore, StateMachine, open_db};
use crate::tls::Tls;
use crate::types::Raft;

use crate::config::CLIENT_MESSAGE_SIZE_BYTES_MAX;

pub fn raft_config(c: &Config) -> anyhow::Result<openraft::Config> {
    let r = &c.raft;
    let cfg = openraft::Config {
        cluster_name: "billdb".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        max_payload_entries: r.max_payload_entries,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
        // The log is purged by `log_purge` (it keeps what a snapshot in
        // flight needs), never by openraft on its own.
        max_in_snapshot_log_to_keep: crate::log_purge::OPENRAFT_KEEP_ALL,
        enable_pre_vote: Some(true),
        broadcast_submitted_on_append: Some(r.replicate_before_local_fsync),
        // A restarted leader stands for election like any node instead of
        // resuming its old term (openraft's default). Resuming skips the
        // term's blank entry and trusts the local log and state as they
        // were: after a power loss the leader's log may lack entries that
        // a quorum of followers fsynced and committed (they are replicated
        // before the leader's own fsync), and new entries in the same term
        // would reuse those indexes. A new term also gives the lease-read
        // rule (`read_fence`) the blank entry it waits for.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// Concurrent HTTP/2 streams on one Raft-port connection (a peer's
/// replication stream, snapshot sends and forwarded client requests).
const RAFT_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;
/// Concurrent HTTP/2 streams on one client gRPC connection.
const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// How often the TLS files and the tokens file are looked at.
const RELOAD_CHECK_MS: u64 = 1_000;

/// Reload the TLS material and the tokens file when they change: new
/// connections use new certificates; a revoked token stops working within
/// about a second. A bad new file is refused, logged, and the old kept.
fn spawn_reloader(tls: Option<Arc<Tls>>, auth: Arc<crate::auth::Auth>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(RELOAD_CHECK_MS)).await;
            if let Some(tls) = &tls {
                match tls.reload_if_changed() {
                    None => {}
                    Some(Ok(generation)) => {
                        let m = tls.current();
                        metrics::counter!("billdb_tls_reloads_total", "outcome" => "ok")
                            .increment(1);
                        tracing::info!(
                            generation,
                            cert_sha256 = %m.cert_sha256,
                            cert_not_after_unix_s = m.cert_not_after_unix_s,
                            ca_count = m.ca_count,
                            "TLS material reloaded: new connections use it"
                        );
                    }
                    Some(Err(e)) => {
                        metrics::counter!("billdb_tls_reloads_total", "outcome" => "refused")
                            .increment(1);
                        tracing::warn!(error = %e, "new TLS files refused; the old ones stay in use");
                    }
                }
            }
            match auth.reload_if_changed() {
                None => {}
                Some(Ok(entries)) => {
                    metrics::counter!("billdb_tokens_reloads_total", "outcome" => "ok")
                        .increment(1);
                    tracing::info!(entries, "tokens file reloaded");
                }
                Some(Err(e)) => {
                    metrics::counter!("billdb_tokens_reloads_total", "outcome" => "refused")
                        .increment(1);
                    tracing::warn!(error = %e, "new tokens file refused; the old one stays in use");
                }
            }
        }
    });
}

/// How often the size-based snapshot trigger looks at the log.
const SNAPSHOT_TRIGGER_CHECK_MS: u64 = 1_000;

/// openraft's snapshot policy counts entries; bulk imports append entries
/// of tens of kilobytes, so also build a snapshot (which lets the log be
/// purged) after every `bytes_since_last` bytes appended to the log.
fn spawn_snapshot_by_log_bytes(raft: Raft, appended: Arc<AtomicU64>, bytes_since_last: u64) {
    tokio::spawn(async move {
        let mut last = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(SNAPSHOT_TRIGGER_CHECK_MS)).await;
            let now = appended.load(Ordering::Relaxed);
            if now.saturating_sub(last) < bytes_since_last {
                continue;
            }
            last = now;
            tracing::info!(
                log_bytes = now,
                "log grew past the snapshot size: building a snapshot"
            );
            if raft.trigger().snapshot().await.is_err() {
                return; // Raft stopped.
            }
        }
    });
}

/// `r` is what reading the database at start gave; when it is a checksum
/// failure, this node is repaired from its peers (`repair::run_unopened`,
/// which never returns). Other errors are returned.
async fn repaired_if_corrupt<T, E: std::fmt::Display>(
    r: Result<T, E>,
    config: &Config,
    channels: &Channels,
) -> Result<T, E> {
    match r {
        Err(e)
            if crate::storage_guard::FailureKind::of(&e.to_string())
                == crate::storage_guard::FailureKind::Corruption =>
        {
            let never = crate::repair::run_unopened(
                config.data_dir.clone(),
                config.node_id,
                channels.clone(),
                e.to_string(),
            )
            .await;
            match never {}
        }
        r => r,
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Every call site's lines are rate-bounded (`log_limit`): no failure
    // loop, ours or openraft's, can fill the disk with the log.
    let log_limit = crate::log_limit::RateLimit::default();
    let logging = tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_env("BILLDB_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with(log_limit.clone())
        .with(tracing_subscriber::fmt::layer())
        .try_init();
    if logging.is_ok() {
        crate::log_limit::spawn_summary(log_limit);
    }
    if std::env::var(billdb_api::failpoints::ENV).as_deref() == Ok("1") {
        tracing::warn!(
            "TEST FAULT POINTS ON ({}=1): files in the data directory can make this node \
             hold fsyncs or acknowledge a write it never wrote; never set it on a node \
             that holds real data",
            billdb_api::failpoints::ENV
        );
    }
    // TLS first: a node with bad material stops before it touches its data.
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(
            Tls::load(t, config.node_id).context("loading the TLS material ([tls])")?,
        )),
        None => None,
    };
    let backup_key = crate::backup::schedule::load_key(&config).context("[backup]")?;
    for port in [Port::Raft, Port::Grpc, Port::Http] {
        if config.insecure.of(port) {
            tracing::warn!(
                listener = port.as_str(),
                "PLAINTEXT listener (insecure.{} = true): anyone who can reach it is served \
                 and everything it carries can be read on the wire",
                port.as_str()
            );
        }
    }
    let prometheus = crate::metrics::install()?;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // A repair from peers was granted before this start: the damaged
    // database moves aside and a new one is made (`repair`).
    let rejoin = crate::repair::take_marker(&config.data_dir).context("repair marker")?;
    let tls_for = |port: Port| (!config.insecure.of(port)).then(|| tls.clone()).flatten();
    let channels = Channels::new(
        crate::raft_net::local_ip_of(&config.raft_addr),
        tls_for(Port::Raft),
    );
    // A database that fails its checksums at open is repaired from the
    // peers like one found damaged later, instead of exiting at every start.
    let db = repaired_if_corrupt(open_db(&config.data_dir.join("db")), &config, &channels)
        .await
        .context("opening RocksDB")?;
    // A database restored from a backup names the new cluster it was made
    // for: a node configured for another cluster (the old one) must not
    // start on it.
    if let (Some(stamp), Some(tls)) = (
        crate::backup::stamped_cluster_id(&db).context("reading the cluster id stamp")?,
        &config.tls,
    ) {
        anyhow::ensure!(
            stamp == tls.cluster_id,
            "the data directory was restored for cluster {stamp:?}, but tls.cluster_id is {:?}: \
             this node belongs to another cluster",
            tls.cluster_id
        );
    }
    let fsync_pause_file = crate::store::log_store::fsync_pause_file(&config.data_dir);
    if let Some(p) = &fsync_pause_file {
        tracing::warn!(file = %p.display(), "fault injection on: WAL fsyncs wait while this file exists");
    }
    let log_store = LogStore::new(db.clone(), fsync_pause_file)?
        .with_vote_mirror(config.data_dir.clone())
        .context("mirroring the vote")?;
    if let Some(m) = &rejoin {
        log_store
            .restore_after_repair(m.vote.as_ref(), m.vote_fence_index)
            .context("restoring the vote after a repair")?;
        crate::repair::finish_start(&config.data_dir).context("removing the repair marker")?;
    }
    // Entries not yet applied, and any a read found damaged, are verified
    // before the Raft core reads the log; the log is cut at the first
    // damaged one (and fetched again from the leader, the vote fenced
    // meanwhile). RocksDB's own checksum failures go to the repair.
    let log_truncation = repaired_if_corrupt(
        crate::store::log_store::truncate_damaged_tail(&db),
        &config,
        &channels,
    )
    .await
    .context("verifying the Raft log")?;
    if let Some(t) = &log_truncation {
        tracing::error!(
            from_index = t.from_index,
            last_index_before = t.last_index_before,
            reason = %t.reason,
            "Raft log entry {} is damaged ({}): the log was cut there and is fetched again from \
             the leader; this node grants no vote until its log holds index {} again",
            t.from_index,
            t.reason,
            t.last_index_before
        );
    }
    let vote_fence = log_store.vote_fence().context("reading the vote fence")?;
    let fsync_watch = log_store.fsync_watch();
    if vote_fence > 0 {
        tracing::warn!(
            vote_fence,
            "rejoining after a repair: this node grants no vote until its log holds index {vote_fence}"
        );
    }
    let log_appended_bytes = log_store.appended_bytes();
    let sm = StateMachine::open(db.clone(), config.data_dir.join("snapshots"))
        .context("opening state machine")?
        .with_build_op_level(config.build_op_level())
        .with_verify_results(config.raft.verify_results);
    // Data of a cluster whose op level this build cannot apply: refuse to
    // start, rather than stop at the first entry it cannot apply.
    let data_level =
        crate::domain::levels::cluster_level(&crate::store::state_machine::RocksTxn::new(&db))
            .context("reading the cluster op level")?;
    anyhow::ensure!(
        data_level <= config.build_op_level(),
        "the data directory belongs to a cluster at op level {data_level}; this build applies \
         op level {} at most: run a billdb of op level {data_level} or later (downgrades are \
         not possible once every member was upgraded)",
        config.build_op_level()
    );
    let snapshot_sends = crate::log_purge::SnapshotSends::default();
    let network = Network {
        self_id: config.node_id,
        channels: channels.clone(),
        first_kept_index: log_store.first_kept_index(),
        snapshot_sends: snapshot_sends.clone(),
    };
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        network,
        log_store,
        sm.clone(),
    )
    .await;
    let raft = match raft {
        Ok(r) => r,
        // openraft read a damaged entry while loading the log (its term
        // boundaries, the membership): the read recorded the index, and the
        // next start cuts the log there.
        Err(e)
            if crate::storage_guard::FailureKind::of(&e.to_string())
                == crate::storage_guard::FailureKind::LogDamaged =>
        {
            tracing::error!(error = %e, "a Raft log entry read at start is damaged; restarting to cut the log there");
            crate::storage_guard::restart();
        }
        Err(e) => return Err(e).context("starting raft"),
    };
    let auth = match &config.auth.tokens_file {
        Some(path) => crate::auth::Auth::load(path).context("loading auth.tokens_file")?,
        None => {
            tracing::warn!(
                "no auth.tokens_file configured: authentication is OFF (development only)"
            );
            crate::auth::Auth::disabled()
        }
    };
    let auth = Arc::new(auth);
    spawn_reloader(tls.clone(), auth.clone());
    let app = App::new(
        config.node_id,
        raft.clone(),
        db.clone(),
        config.clone(),
        channels,
        crate::app::Trust {
            auth,
            tls: tls.clone(),
        },
        sm.fence(),
    );
    crate::metrics::spawn_leader_watch(app.clone());
    crate::backup::archiver::spawn(&app, backup_key.clone().map(Arc::new));
    crate::backup::schedule::spawn(&app, backup_key);
    crate::cluster_level::spawn(app.clone(), app.op_levels.clone());
    app.storage.set_vote_fence(vote_fence);
    if let Some(t) = &log_truncation {
        app.storage.note_log_truncation(t);
    }
    if let Some(m) = &rejoin {
        app.storage.note_rebuilt(crate::storage_guard::LastRepair {
            reason: m.reason.clone(),
            leader_id: m.leader_id,
            granted_unix_ms: m.granted_unix_ms,
            vote_fence_index: m.vote_fence_index,
        });
    }
    app.storage
        .watch_fsyncs(fsync_watch, config.storage.fsync_stall_ms);
    crate::storage_guard::spawn(crate::storage_guard::Guarded {
        raft: raft.clone(),
        guard: app.storage.clone(),
        data_dir: config.data_dir.clone(),
        free_min: config.storage.recover_free_bytes_min,
        self_id: config.node_id,
        channels: app.channels.clone(),
    });
    let fence_db = db.clone();
    crate::repair::spawn_rejoin(
        raft.clone(),
        app.storage.clone(),
        config.data_dir.clone(),
        config.node_id,
        app.channels.clone(),
        move || crate::store::log_store::clear_vote_fence(&fence_db),
    );
    crate::scrub::spawn(
        db.clone(),
        app.storage.clone(),
        config.storage.scrub_interval_s,
    );
    crate::log_purge::spawn_purger(
        raft.clone(),
        snapshot_sends,
        app.archive_reads.clone(),
        config.raft.logs_to_keep_after_snapshot,
    );
    spawn_snapshot_by_log_bytes(
        raft.clone(),
        log_appended_bytes,
        config.raft.snapshot_log_bytes_since_last,
    );

    let bind = |name: &'static str, addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {name} {addr}"))
    };
    let raft_listener = bind("raft_addr", config.raft_addr.clone()).await?;
    let grpc_listener = bind("grpc_addr", config.grpc_addr.clone()).await?;
    let http_listener = bind("http_addr", config.http_addr.clone()).await?;
    let http_local = http_listener.local_addr().context("http_addr")?;
    let accept = |l: tokio::net::TcpListener, port: Port| {
        let rx = crate::listen::spawn_accept(l, port, tls_for(port), Limits::for_port(port));
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |c| {
            Ok::<_, std::io::Error>(c)
        })
    };
    let raft_svc = RaftInternalServer::new(RaftService {
        app: app.clone(),
        sm,
        peer_auth: Arc::new(PeerAuth::new(
            tls_for(Port::Raft).map(|t| t.cluster_id().to_string()),
        )),
    })
    .max_decoding_message_size(MESSAGE_SIZE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_SIZE_BYTES_MAX);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let raft_server = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .max_concurrent_streams(Some(RAFT_STREAMS_PER_CONNECTION_MAX))
            .add_service(raft_svc)
            .serve_with_incoming_shutdown(
                accept(raft_listener, Port::Raft),
                stopped(stop_rx.clone()),
            ),
    );
    let (reflection_v1, reflection_v1alpha) =
        crate::api::grpc_discovery::reflection_services().context("gRPC reflection descriptors")?;
    let grpc_api = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(CLIENT_STREAMS_PER_CONNECTION_MAX))
        .layer(crate::metrics::GrpcMetricsLayer)
        .add_service(crate::api::grpc_discovery::health_service(app.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ClusterServer::new(GrpcApi { app: app.clone() })
                .max_decoding_message_size(CLIENT_MESSAGE_SIZE_BYTES_MAX),
        )
        .add_service(
            BillingServer::new(GrpcApi { app: app.clone() })
                .max_decoding_message_size(CLIENT_MESSAGE_SIZE_BYTES_MAX),
        )
        .add_service(
            BillingV2Server::new(GrpcApi { app: app.clone() })
                .max_decoding_message_size(CLIENT_MESSAGE_SIZE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(accept(grpc_listener, Port::Grpc), stopped(stop_rx.clone()));
    let grpc_server = tokio::spawn(grpc_api);
    let http_rx = crate::listen::spawn_accept(
        http_listener,
        Port::Http,
        tls_for(Port::Http),
        Limits::for_port(Port::Http),
    );
    let http = axum::serve(
        AxumListener {
            rx: http_rx,
            local: http_local,
        },
        router(HttpState {
            app: std::sync::Arc::new(app.clone()),
            prometheus,
        })
        .into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let http_server = tokio::spawn(async move { http.await });
    tracing::info!(
        node = config.node_id,
        raft = %config.raft_addr,
        grpc = %config.grpc_addr,
        http = %config.http_addr,
        "billdb-node serving"
    );

    shutdown_signal().await;
    // A leader hands over first: a rolling restart or `systemctl stop`
    // then pauses writes for one transfer, not an election timeout.
    let handover = crate::handover::hand_over(
        &raft,
        config.node_id,
        Duration::from_millis(HANDOVER_ON_STOP_MS),
        |term| app.note_leader_transfer(term),
    )
    .await;
    match handover {
        crate::handover::Handover::NotLeader => tracing::info!("shutting down"),
        crate::handover::Handover::Done { to, took_ms } => tracing::info!(
            to,
            took_ms,
            "shutting down: leadership handed to node {to} in {took_ms} ms"
        ),
        crate::handover::Handover::TimedOut { to } => tracing::warn!(
            to,
            "shutting down: node {to} did not take over within {HANDOVER_ON_STOP_MS} ms; \
             an election follows"
        ),
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
    for h in [raft_server, grpc_server] {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_server).await;
    db.flush_wal(true).context("final WAL sync")?;
    Ok(())
}

/// How long a stopping leader waits for its successor to take over.
const HANDOVER_ON_STOP_MS: u64 = 3_000;

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
