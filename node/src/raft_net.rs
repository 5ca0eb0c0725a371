//! Raft transport, client side: openraft's network traits over tonic gRPC.
//!
//! One lazily connected channel per peer address, reused by every RPC and
//! replication stream; each unary RPC is bounded by its `RPCOption`
//! deadline; appends are pipelined over one bidirectional stream; HTTP/2
//! keepalive tears down silently dead connections. Messages are openraft's
//! own types encoded with bincode inside `billdb.raft.v1.RaftMsg`.
//!
//! Every attempt to reach a peer first waits out that peer's backoff and
//! then reports its outcome (`peer_health`): a peer that is down costs a
//! few refused connections a second, not a spinning core. Snapshot sends
//! are registered in `log_purge::SnapshotSends` so the log they need is
//! not purged under them.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billdb_api::raftpb::raft_internal_client::RaftInternalClient;
use billdb_api::raftpb::{RaftMsg, SnapshotChunk};
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use crate::log_purge::SnapshotSends;
use crate::peer_health::{FailureKind, PeerHealth};
use crate::store::checkpoint::SnapshotHandle;
use crate::store::snapshot::CHUNK_SIZE_BYTES;
use crate::tls::Tls;
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote};

/// Largest gRPC message between nodes (a batch of entries, a snapshot chunk).
pub const MESSAGE_SIZE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT_MS: u64 = 500;
const KEEPALIVE_INTERVAL_MS: u64 = 1000;
const KEEPALIVE_TIMEOUT_MS: u64 = 2000;
/// Snapshot chunks buffered ahead of the wire.
const SNAPSHOT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

type RpcErr<E = openraft::errors::Infallible> = RPCError<TypeConfig, E>;

pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    crate::codec::encode(v)
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, bincode::Error> {
    crate::codec::decode(b)
}

/// Build a channel to `addr` (`host:port`) with the node-to-node settings.
/// `local_ip`, when set, is the source address of the outgoing connections
/// (the IP of this node's own Raft address), so per-link firewall rules between
/// node addresses (the chaos suite's partitions) see who is talking to whom.
pub fn channel(addr: &str, local_ip: Option<IpAddr>) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?
        .local_address(local_ip)
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .connect_lazy())
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true))
}

/// A TLS handshake to a peer not done within this time fails the connect.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// As [`channel`], over mutual TLS: this node presents its certificate and
/// accepts only a peer certificate from the cluster CA naming node `target`
/// (its DNS name `billdb_api::identity::node_dns_name`). Each connection
/// takes the TLS material current when it is made.
pub fn tls_channel(
    addr: &str,
    local_ip: Option<IpAddr>,
    target: NodeId,
    tls: Arc<Tls>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(addr)?;
    let addr = addr.to_string();
    let server_name = billdb_api::identity::node_dns_name(tls.cluster_id(), target);
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (addr, tls, server_name) = (addr.clone(), tls.clone(), server_name.clone());
        async move {
            let io_err = |m: String| std::io::Error::other(m);
            let peer = tokio::net::lookup_host(&addr)
                .await?
                .next()
                .ok_or_else(|| io_err(format!("{addr}: no address")))?;
            let socket = if peer.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(ip) = local_ip {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            let tcp = tokio::time::timeout(
                Duration::from_millis(CONNECT_TIMEOUT_MS),
                socket.connect(peer),
            )
            .await
            .map_err(|_| io_err(format!("{addr}: connect timed out")))??;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(server_name)
                .map_err(|e| io_err(format!("peer name: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(tls.current().peer_client.clone());
            let stream = tokio::time::timeout(
                Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
                connector.connect(name, tcp),
            )
            .await
            .map_err(|_| io_err(format!("{addr}: TLS handshake timed out")))??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

pub fn client(ch: Channel) -> RaftInternalClient<Channel> {
    RaftInternalClient::new(ch)
        .max_decoding_message_size(MESSAGE_SIZE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_SIZE_BYTES_MAX)
}

/// Channels by peer, shared by the Raft network and request forwarding
/// (every node-to-node connection is made here).
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<ChannelMap>>,
    /// Source IP of outgoing connections (`None`: chosen by the kernel).
    local_ip: Option<IpAddr>,
    /// Reachability and backoff of each peer, as the Raft client sees it.
    health: PeerHealth,
    /// Mutual TLS to peers (`None`: plaintext, `insecure.raft`).
    tls: Option<Arc<Tls>>,
}

/// One channel per (peer, address). Under TLS a channel's connector takes
/// the material current at each (re)connect, so after a rotation the open
/// connections go on and every new one uses the new certificates.
#[derive(Default)]
struct ChannelMap {
    by_peer: HashMap<(NodeId, String), Channel>,
}

/// The source IP to bind node-to-node connections to: the IP of this node's
/// Raft address, unless it is unspecified (`0.0.0.0` / `::`) or not an IP.
pub fn local_ip_of(raft_addr: &str) -> Option<IpAddr> {
    let ip = raft_addr.parse::<std::net::SocketAddr>().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

impl Channels {
    /// Channels whose connections originate from `local_ip` (when set),
    /// over mutual TLS when `tls` is set.
    pub fn new(local_ip: Option<IpAddr>, tls: Option<Arc<Tls>>) -> Self {
        Channels {
            inner: Arc::default(),
            local_ip,
            health: PeerHealth::default(),
            tls,
        }
    }

    /// Every peer's reachability (shared by all Raft client connections).
    pub fn health(&self) -> &PeerHealth {
        &self.health
    }

    /// A client of node `id` at `addr`.
    pub fn get(
        &self,
        id: NodeId,
        addr: &str,
    ) -> Result<RaftInternalClient<Channel>, tonic::transport::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (id, addr.to_string());
        if let Some(ch) = map.by_peer.get(&key) {
            return Ok(client(ch.clone()));
        }
        let ch = match &self.tls {
            Some(tls) => tls_channel(addr, self.local_ip, id, tls.clone())?,
            None => channel(addr, self.local_ip)?,
        };
        map.by_peer.insert(key, ch.clone());
        Ok(client(ch))
    }
}

#[derive(Clone)]
pub struct Network {
    pub self_id: NodeId,
    pub channels: Channels,
    /// The local log's first kept index (`LogStore::first_kept_index`).
    pub first_kept_index: Arc<AtomicU64>,
    /// Snapshots being sent, so the purge keeps the log after them.
    pub snapshot_sends: SnapshotSends,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Conn {
        Conn {
            self_id: self.self_id,
            target,
            addr: node.raft_addr.clone(),
            channels: self.channels.clone(),
            first_kept_index: self.first_kept_index.clone(),
            snapshot_sends: self.snapshot_sends.clone(),
        }
    }
}

pub struct Conn {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    channels: Channels,
    first_kept_index: Arc<AtomicU64>,
    snapshot_sends: SnapshotSends,
}

fn unreachable<E: std::error::Error + 'static>(e: &E) -> Unreachable<TypeConfig> {
    Unreachable::new(e)
}

fn status_err<E: std::error::Error>(s: tonic::Status) -> RpcErr<E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(unreachable(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

/// The kind of failure an RPC error is, for the peer's health.
fn failure_kind<E: std::error::Error>(e: &RpcErr<E>) -> FailureKind {
    match e {
        RPCError::Unreachable(_) => FailureKind::Unreachable,
        RPCError::Timeout(_) => FailureKind::Timeout,
        _ => FailureKind::Network,
    }
}

fn codec_err<E: std::error::Error>(e: bincode::Error) -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!(
        "raft message codec: {e}"
    ))))
}

impl Conn {
    fn health(&self) -> &PeerHealth {
        self.channels.health()
    }

    /// Report an RPC's outcome to the peer's health table.
    fn note<T, E: std::error::Error>(&self, r: &Result<T, RpcErr<E>>) {
        match r {
            Ok(_) => self.health().on_success(self.target),
            Err(e) => self
                .health()
                .on_failure(self.target, failure_kind(e), &e.to_string()),
        }
    }

    fn client<E: std::error::Error>(&self) -> Result<RaftInternalClient<Channel>, RpcErr<E>> {
        self.channels
            .get(self.target, &self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(&e)))
    }

    fn timeout<E: std::error::Error>(&self, action: RPCTypes, ttl: Duration) -> RpcErr<E> {
        RPCError::Timeout(Timeout {
            action,
            id: self.self_id,
            target: self.target,
            timeout: ttl,
        })
    }

    /// One unary RPC: encode, send with the deadline, decode.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftInternalClient<Channel>, RaftMsg) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMsg>, tonic::Status>>,
    {
        let data = encode(req).map_err(codec_err)?;
        let ttl = deadline_for(action, option);
        // Appends retry in a loop inside openraft: they wait out the peer's
        // backoff. Votes and leader transfers are one-off: sent at once.
        if action == RPCTypes::AppendEntries {
            self.health().wait_before_attempt(self.target).await;
        }
        let fut = call(self.client()?, RaftMsg { data });
        let r = match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(self.timeout(action, ttl)),
            Ok(Err(s)) => Err(status_err(s)),
            Ok(Ok(resp)) => Ok(resp),
        };
        self.note(&r);
        decode(&r?.into_inner().data).map_err(codec_err)
    }
}

/// Appends (heartbeats included) and their streamed answers get at least
/// this long. openraft asks for one heartbeat interval (50 ms), which a
/// follower on a loaded machine misses while it fsyncs and applies a large
/// batch: the leader then tears down the stream, resends, falls further
/// behind and finally ships a snapshot, and stale heartbeat acks make a
/// healthy leader look cut off. Dead peers are still found by HTTP/2
/// keepalive (1 s / 2 s).
const APPEND_DEADLINE_MS_MIN: u64 = 1_000;

/// Append requests a replication stream holds ready ahead of the transport.
const APPEND_REQUESTS_QUEUED_MAX: usize = 16;

/// Longest an entry-less append request (a commit index update) waits for
/// the next request of its stream before it is sent on its own
/// ([`coalesce_commit_updates`]): a follower learns a commit at most this
/// much later than it could, and no later than with the next entry.
const COMMIT_UPDATE_HOLD_MS: u64 = 2;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a replication stream waiting for an answer checks whether its
/// requests have ended or its oldest request is overdue.
const IDLE_CHECK_MS: u64 = 100;

/// Empty append requests for purged entries in a row after which a
/// replication stream is ended and reopened (see `stream_append`).
const STALE_APPENDS_MAX: u64 = 50;

/// Send time of each of a stream's unanswered append requests, oldest
/// first, and whether it carried entries.
type SendTimes = Arc<Mutex<VecDeque<(std::time::Instant, bool)>>>;

/// How long ago the oldest unanswered request was sent (`None`: every
/// request answered).
fn oldest_unanswered_age(q: &SendTimes) -> Option<Duration> {
    match q.lock() {
        Ok(q) => q.front().map(|(sent, _)| sent.elapsed()),
        // A poisoned lock counts as overdue: the stream is then reopened.
        Err(_) => Some(Duration::MAX),
    }
}

fn deadline_for(action: RPCTypes, option: &RPCOption) -> Duration {
    let ttl = option.hard_ttl();
    match action {
        RPCTypes::AppendEntries => ttl.max(Duration::from_millis(APPEND_DEADLINE_MS_MIN)),
        _ => ttl,
    }
}

/// One replication stream's requests as they go on the wire, with the
/// entry-less ones (`commit_only`) held back at most `hold`.
///
/// openraft sends a request without entries each time the commit index
/// advances and no new entry is ready to carry it: at one client and at
/// 64 alike, nearly one for every request with entries, each a round trip
/// over TLS that costs leader and follower about what an entry's does. A
/// request that follows within `hold` was built later, so it carries a
/// commit index at least as new and the same log position or a later one:
/// the held one is dropped. Nothing else changes: openraft reads progress
/// from the answers' matching log id, not from a count of answers, and a
/// held request's send time as openraft recorded it is only earlier than
/// its real one (its lease stays conservative). The wait starts with the
/// first request held, so a run of commit updates cannot hold one back
/// for longer than `hold`; when the input ends, the held request is sent.
fn coalesce_commit_updates<S, T>(
    input: S,
    hold: Duration,
    commit_only: fn(&T) -> bool,
) -> impl Stream<Item = T>
where
    S: Stream<Item = T> + Unpin,
{
    let dropped = metrics::counter!("billdb_raft_commit_updates_coalesced_total");
    let state = (input, None::<(T, tokio::time::Instant)>, false, dropped);
    futures::stream::unfold(
        state,
        move |(mut input, mut held, mut ended, dropped)| async move {
            loop {
                if ended {
                    let (request, _) = held.take()?;
                    return Some((request, (input, None, true, dropped)));
                }
                let next = match &held {
                    None => input.next().await,
                    Some((_, deadline)) => {
                        match tokio::time::timeout_at(*deadline, input.next()).await {
                            Ok(next) => next,
                            Err(_) => {
                                let (request, _) = held.take()?;
                                return Some((request, (input, None, false, dropped)));
                            }
                        }
                    }
                };
                match next {
                    None => ended = true,
                    Some(request) if commit_only(&request) => {
                        let deadline = match held.take() {
                            Some((_, deadline)) => {
                                dropped.increment(1);
                                deadline
                            }
                            None => tokio::time::Instant::now() + hold,
                        };
                        held = Some((request, deadline));
                    }
                    Some(request) => {
                        if held.take().is_some() {
                            dropped.increment(1);
                        }
                        return Some((request, (input, None, false, dropped)));
                    }
                }
            }
        },
    )
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotHandle;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        self.unary(
            RPCTypes::AppendEntries,
            &rpc,
            &option,
            |mut c, m| async move { c.append_entries(m).await },
        )
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let fut = async move {
            // A peer that is down: wait out its backoff before trying again
            // (openraft reopens a failed stream at once, forever).
            self.health().wait_before_attempt(self.target).await;
            let mut client = self.client()?;
            let ttl = deadline_for(RPCTypes::AppendEntries, &option);
            // Send time of each request not yet answered, oldest first: the
            // follower answers in order, so each answer pops the front and
            // its round trip is recorded per peer, apart for requests with
            // entries (network, the follower's append and WAL fsync) and
            // without (commit index updates: network and the follower's
            // Raft core).
            let in_flight: SendTimes = Arc::new(Mutex::new(VecDeque::new()));
            let sent = in_flight.clone();
            // openraft 0.10.0-alpha.37 can leave a stream on a range whose
            // entries were purged meanwhile (seen when a follower's fsyncs
            // stalled: it was caught up by snapshot while its stream kept
            // the old range). The stream then sends an empty request for
            // that range every 10 ms, forever, and never takes the new one.
            // Such requests (no entries, the next entry already purged
            // here), STALE_APPENDS_MAX in a row, end the stream with an
            // error; openraft opens a new one from the follower's progress.
            let stale_run = Arc::new(AtomicU64::new(0));
            let (stale_count, first_kept) = (stale_run.clone(), self.first_kept_index.clone());
            // Each request is handled at once (a ready future): the closure
            // keeps its handles, nothing is cloned per request.
            let input = coalesce_commit_updates(
                input,
                Duration::from_millis(COMMIT_UPDATE_HOLD_MS),
                |req: &AppendEntriesRequest<TypeConfig>| req.entries.is_empty(),
            );
            let outbound = input.filter_map(move |req| {
                let carries_entries = !req.entries.is_empty();
                let next_index = req.prev_log_id.as_ref().map_or(0, |p| p.index + 1);
                if !carries_entries && next_index < first_kept.load(Ordering::Acquire) {
                    stale_count.fetch_add(1, Ordering::AcqRel);
                } else {
                    stale_count.store(0, Ordering::Release);
                }
                let msg = match encode(&req) {
                    Ok(data) => {
                        if let Ok(mut q) = sent.lock() {
                            q.push_back((std::time::Instant::now(), carries_entries));
                        }
                        Some(RaftMsg { data })
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode append request; dropping the stream item");
                        None
                    }
                };
                futures::future::ready(msg)
            });
            // openraft's request stream is pumped by a task of this stream's
            // own, never handed to the transport: it is dropped the moment
            // this stream ends (`AbortOnDrop` travels with the answers).
            // Handed to hyper, an ended session's request stream lived on
            // inside the HTTP/2 connection, waiting for new entries while
            // holding the lock openraft's replication task takes to start
            // the next session; at a quiet moment (no new entries) that
            // follower was never replicated to again (1 in ~30 disk-stall
            // runs: a follower caught up by snapshot stayed at it).
            let requests_ended = Arc::new(AtomicBool::new(false));
            let end_flag = requests_ended.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<RaftMsg>(APPEND_REQUESTS_QUEUED_MAX);
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            let resp = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Err(_) => Err(self.timeout(RPCTypes::AppendEntries, ttl)),
                Ok(Err(s)) => Err(status_err(s)),
                Ok(Ok(r)) => Ok(r.into_inner()),
            };
            self.note(&resp);
            let resp = resp?;
            // Pumped only once the follower has answered the call: a
            // request taken from openraft for a stream that never opened
            // counts there as sent and unanswered, which starts its backoff
            // (a returning follower then waited over a second).
            let pump = tokio::spawn(async move {
                let mut outbound = std::pin::pin!(outbound);
                while let Some(msg) = outbound.next().await {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                // Every request is queued: the answers end with the last one.
                end_flag.store(true, Ordering::Release);
            });
            let pump = AbortOnDrop(pump.abort_handle());
            let health = self.health().clone();
            let (self_id, target) = (self.self_id, self.target);
            let peer = target.to_string();
            let round_trip = [
                metrics::histogram!("billdb_raft_append_seconds", "peer" => peer.clone(), "kind" => "empty"),
                metrics::histogram!("billdb_raft_append_seconds", "peer" => peer, "kind" => "entries"),
            ];
            // A response must arrive within the deadline of the oldest
            // request unanswered; an idle stream may stay quiet forever.
            // The per-stream state travels in the unfold state: nothing is
            // cloned per answer.
            let state = Some((
                resp,
                in_flight,
                round_trip,
                stale_run,
                health,
                requests_ended,
                pump,
            ));
            let out = futures::stream::unfold(state, move |state| async move {
                let (mut resp, in_flight, round_trip, stale_run, health, requests_ended, pump) =
                    state?;
                loop {
                    let oldest = oldest_unanswered_age(&in_flight);
                    if oldest.is_none() && requests_ended.load(Ordering::Acquire) {
                        return None;
                    }
                    if stale_run.load(Ordering::Acquire) >= STALE_APPENDS_MAX {
                        tracing::warn!(
                            target_node = target,
                            "replication stream stuck on purged entries: restarting it"
                        );
                        metrics::counter!("billdb_raft_stale_stream_resets_total").increment(1);
                        let e = AnyError::error("replication stream stuck on purged entries");
                        return Some((Err(RPCError::Unreachable(unreachable(&e))), None));
                    }
                    if oldest.is_some_and(|age| age >= ttl) {
                        let e = RPCError::Timeout(Timeout {
                            action: RPCTypes::AppendEntries,
                            id: self_id,
                            target,
                            timeout: ttl,
                        });
                        health.on_failure(target, FailureKind::Timeout, &e.to_string());
                        return Some((Err(e), None));
                    }
                    // Woken at least every `IDLE_CHECK_MS`, to see whether
                    // the requests ended or the oldest one's deadline passed.
                    let wait = ttl.min(Duration::from_millis(IDLE_CHECK_MS));
                    match tokio::time::timeout(wait, resp.next()).await {
                        Err(_) => continue,
                        Ok(None) => return None,
                        Ok(Some(Err(s))) => {
                            let e = status_err(s);
                            health.on_failure(target, failure_kind(&e), &e.to_string());
                            return Some((Err(e), None));
                        }
                        Ok(Some(Ok(msg))) => {
                            let sent_at = in_flight.lock().ok().and_then(|mut q| q.pop_front());
                            if let Some((t, entries)) = sent_at {
                                round_trip[usize::from(entries)].record(t.elapsed().as_secs_f64());
                            }
                            let item = decode::<StreamAppendResult<TypeConfig>>(&msg.data)
                                .map_err(codec_err);
                            let next = item.is_ok().then_some((
                                resp,
                                in_flight,
                                round_trip,
                                stale_run,
                                health,
                                requests_ended,
                                pump,
                            ));
                            return Some((item, next));
                        }
                    }
                }
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        };
        Box::pin(fut)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, m| async move {
            c.vote(m).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, m| async move {
            c.pre_vote(m).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotHandle>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = encode(&(vote, snapshot.meta.clone())).map_err(|e| {
            StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))
        })?;
        self.health().wait_before_attempt(self.target).await;
        // Held until this future ends, however it ends: the purge keeps the
        // entries after the snapshot meanwhile (see `log_purge`).
        let snapshot_index = snapshot.meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let mut held = self.snapshot_sends.start(self.target, snapshot_index);
        metrics::counter!("billdb_snapshot_sends_total", "peer" => self.target.to_string())
            .increment(1);
        let r = self.send_snapshot(snapshot, meta, cancel).await;
        match &r {
            Ok(_) => {
                held.installed();
                self.health().on_success(self.target);
            }
            Err(StreamingError::Closed(_)) => {}
            Err(StreamingError::Unreachable(e)) => {
                self.health()
                    .on_failure(self.target, FailureKind::Unreachable, &e.to_string())
            }
            Err(StreamingError::Timeout(e)) => {
                self.health()
                    .on_failure(self.target, FailureKind::Timeout, &e.to_string())
            }
            Err(e) => self
                .health()
                .on_failure(self.target, FailureKind::Network, &e.to_string()),
        }
        r
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        self.unary(
            RPCTypes::TransferLeader,
            &req,
            &option,
            |mut c, m| async move { c.transfer_leader(m).await },
        )
        .await
    }
}

/// How long the sender waits to learn where to resume a snapshot transfer.
const SNAPSHOT_STAGED_TIMEOUT_MS: u64 = 2_000;

impl Conn {
    /// Bytes of this snapshot the peer holds from an interrupted transfer
    /// (0 when it holds none or does not answer in time).
    async fn staged_bytes(&self, meta: &crate::types::SnapshotMeta) -> u64 {
        let Ok(data) = encode(meta) else { return 0 };
        let Ok(mut c) = self.client::<openraft::errors::Infallible>() else {
            return 0;
        };
        let ask = c.snapshot_staged(RaftMsg { data });
        match tokio::time::timeout(Duration::from_millis(SNAPSHOT_STAGED_TIMEOUT_MS), ask).await {
            Ok(Ok(r)) => decode::<u64>(&r.into_inner().data).unwrap_or(0),
            _ => 0,
        }
    }

    /// Stream the snapshot's file to the peer in chunks (from where an
    /// interrupted transfer of it stopped); the peer answers once it has
    /// installed it.
    async fn send_snapshot(
        &mut self,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotHandle>,
        meta: Vec<u8>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // The file is written from its checkpoint the first time a peer
        // needs it (minutes at full scale): off the runtime, and given up
        // if replication to this peer closes meanwhile.
        let snapshot_meta = snapshot.meta.clone();
        let handle = snapshot.snapshot;
        let mut cancel = std::pin::pin!(cancel);
        let materialize = tokio::task::spawn_blocking(move || handle.materialize());
        let file = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = materialize => match r {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
                Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
            },
        };
        let total = file.size_bytes;
        // Resume where an interrupted transfer of this snapshot stopped:
        // the receiver says how many bytes it holds (0 when none, or when
        // it cannot be asked; the final checksum covers the whole file).
        let offset = self.staged_bytes(&snapshot_meta).await.min(total);
        if offset > 0 {
            tracing::info!(
                target_node = self.target,
                offset,
                total,
                "resuming snapshot transfer"
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(SNAPSHOT_CHUNKS_IN_FLIGHT_MAX);
        // Reader task: file → chunks. Stops when the receiver goes away.
        let target = self.target;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let mut offset = offset;
            let mut first = Some((meta, offset));
            loop {
                let mut buf = vec![0u8; CHUNK_SIZE_BYTES];
                let n = file.read_at(offset, &mut buf)?;
                buf.truncate(n);
                let (meta, start) = first.take().unwrap_or_default();
                let chunk = SnapshotChunk {
                    meta,
                    data: buf,
                    offset: start,
                };
                if tx.blocking_send(chunk).is_err() {
                    return Ok(());
                }
                offset += n as u64;
                metrics::counter!("billdb_snapshot_sent_bytes_total").increment(n as u64);
                if n == 0 || offset >= total {
                    tracing::info!(target, bytes = offset, "snapshot streamed");
                    return Ok(());
                }
            }
        });
        let mut client = self
            .client::<openraft::errors::Infallible>()
            .map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => {
                    StreamingError::Network(NetworkError::new(&AnyError::error(other.to_string())))
                }
            })?;
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = send => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let resp = result.map_err(|s| match s.code() {
            tonic::Code::Unavailable => StreamingError::Unreachable(unreachable(&s)),
            _ => StreamingError::Network(NetworkError::new(&s)),
        })?;
        decode(&resp.into_inner().data).map_err(|e| {
            StreamingError::Network(NetworkError::new(&AnyError::error(e.to_string())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request in the coalescing tests: (number, carries entries).
    type Req = (u32, bool);

    fn commit_only(r: &Req) -> bool {
        !r.1
    }

    fn coalesced(
        hold_ms: u64,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Req>,
        std::pin::Pin<Box<dyn Stream<Item = Req> + Send>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let input = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let out = coalesce_commit_updates(input, Duration::from_millis(hold_ms), commit_only);
        (tx, Box::pin(out))
    }

    async fn next_within(out: &mut (impl Stream<Item = Req> + Unpin), ms: u64) -> Option<Req> {
        tokio::time::timeout(Duration::from_millis(ms), out.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_commit_update_followed_by_a_request_is_dropped_for_it() {
        let (tx, mut out) = coalesced(10_000);
        for r in [(1, false), (2, true), (3, false), (4, false), (5, true)] {
            tx.send(r).unwrap();
        }
        assert_eq!(next_within(&mut out, 5_000).await, Some((2, true)));
        assert_eq!(next_within(&mut out, 5_000).await, Some((5, true)));
        drop(tx);
        assert_eq!(next_within(&mut out, 5_000).await, None);
    }

    #[tokio::test]
    async fn a_lone_commit_update_goes_out_after_the_hold() {
        let (tx, mut out) = coalesced(100);
        let started = std::time::Instant::now();
        tx.send((1, false)).unwrap();
        tx.send((2, false)).unwrap();
        assert_eq!(next_within(&mut out, 5_000).await, Some((2, false)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        // The stream goes on after it; the input still open.
        tx.send((3, true)).unwrap();
        assert_eq!(next_within(&mut out, 5_000).await, Some((3, true)));
    }

    #[tokio::test]
    async fn a_held_commit_update_is_sent_when_the_input_ends() {
        let (tx, mut out) = coalesced(60_000);
        tx.send((1, true)).unwrap();
        tx.send((2, false)).unwrap();
        drop(tx);
        assert_eq!(next_within(&mut out, 5_000).await, Some((1, true)));
        assert_eq!(next_within(&mut out, 5_000).await, Some((2, false)));
        assert_eq!(next_within(&mut out, 5_000).await, None);
    }

    #[tokio::test]
    async fn a_run_of_commit_updates_is_held_from_its_first_not_forever() {
        // Updates every 50 ms for 2 s against a 200 ms hold: the hold
        // counts from the first held, so about one goes out every 200 ms.
        // (Restarted by each new one, none would until the input ended.)
        let (tx, mut out) = coalesced(200);
        let producer = tokio::spawn(async move {
            for n in 0..40 {
                if tx.send((n, false)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Dropped here: the input ends.
        });
        let mut sent = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1_900);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, out.next()).await {
            sent.push(r);
        }
        producer.abort();
        assert!(sent.len() >= 5, "{sent:?}");
        assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "{sent:?}");
    }

    #[test]
    fn outgoing_connections_bind_to_the_raft_ip_unless_unspecified() {
        assert_eq!(
            local_ip_of("127.0.1.3:7203"),
            Some(IpAddr::from([127, 0, 1, 3]))
        );
        assert_eq!(local_ip_of("0.0.0.0:7203"), None);
        assert_eq!(local_ip_of("[::]:7203"), None);
        assert_eq!(local_ip_of("node1.example:7203"), None);
        assert_eq!(
            local_ip_of("[::1]:7203"),
            Some(IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
        );
    }
}
