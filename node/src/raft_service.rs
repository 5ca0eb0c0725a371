//! Raft transport, server side: the `billdb.raft.v1.RaftInternal` gRPC
//! service on the node's Raft port. It hands openraft messages to the local
//! Raft, stages incoming snapshots on disk, and serves requests forwarded
//! by other nodes.

use std::io::Write;
use std::pin::Pin;

use billdb_api::raftpb::raft_internal_server::RaftInternal;
use billdb_api::raftpb::{RaftMsg, SnapshotChunk};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::app::{App, Forward, ForwardReply};
use crate::listen::PeerInfo;
use crate::peer_auth::PeerAuth;
use crate::raft_net::{decode, encode};
use crate::store::StateMachine;
use crate::store::checkpoint::SnapshotHandle;
use crate::store::snapshot::SnapshotFile;
use crate::types::{SnapshotMeta, TypeConfig, Vote};

/// Largest snapshot a node accepts (guards the disk against a bad peer).
const SNAPSHOT_SIZE_BYTES_MAX: u64 = 256 << 30;

/// Numbers snapshot transfers so each stages into its own file.
static SNAPSHOT_STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct RaftService {
    pub app: App,
    pub sm: StateMachine,
    /// Who may call (`peer_auth`): checked first in every RPC.
    pub peer_auth: std::sync::Arc<PeerAuth>,
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("bad raft message: {e}"))
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Response<RaftMsg>, Status> {
    encode(v)
        .map(|data| Response::new(RaftMsg { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

impl RaftService {
    /// Serve `rpc` only for a member of this cluster (`peer_auth`); the
    /// caller's node id when its certificate names one.
    fn admit<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
    ) -> Result<Option<crate::types::NodeId>, Status> {
        self.peer_auth
            .admit(req.extensions().get::<PeerInfo>(), rpc, || {
                // Borrowed, not cloned: this runs on every append.
                use openraft::async_runtime::WatchReceiver;
                let rx = self.app.raft.metrics();
                let m = rx.borrow_watched();
                let ids: std::collections::BTreeSet<crate::types::NodeId> = m
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect();
                (!ids.is_empty()).then_some(ids)
            })
    }

    /// After a repair from peers this node grants no vote until its log
    /// holds what the leader held when the repair began (`repair`): it may
    /// have acknowledged entries it no longer has.
    fn refuse_vote_while_rejoining(&self) -> Result<(), Status> {
        let fence = self.app.storage.vote_fence();
        if fence == 0 {
            return Ok(());
        }
        metrics::counter!("billdb_votes_refused_rejoining_total").increment(1);
        Err(Status::unavailable(format!(
            "node {} is rejoining after a storage repair and grants no vote until its log holds \
             index {fence}",
            self.app.id
        )))
    }

    /// The number in fault-point file `name` of this node's data
    /// directory, when fault points are on and the file holds one.
    fn failpoint_number(&self, name: &str) -> Option<(u64, std::path::PathBuf)> {
        if std::env::var(billdb_api::failpoints::ENV).as_deref() != Ok("1") {
            return None;
        }
        let path = self.app.config.data_dir.join(name);
        let n = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
        Some((n, path))
    }

    /// The fault point that breaks off the next received transfer after
    /// the bytes its file names
    /// (`billdb_api::failpoints::SNAPSHOT_RECEIVE_BREAK_FILE`); taking it
    /// removes the file.
    fn receive_break(&self) -> Option<u64> {
        let (bytes, path) =
            self.failpoint_number(billdb_api::failpoints::SNAPSHOT_RECEIVE_BREAK_FILE)?;
        std::fs::remove_file(&path).ok()?;
        Some(bytes)
    }

    /// The fault point's delay before installing a received snapshot
    /// (`billdb_api::failpoints::SNAPSHOT_INSTALL_DELAY_FILE`), in ms.
    fn install_delay(&self) -> Option<std::time::Duration> {
        let (ms, _) = self.failpoint_number(billdb_api::failpoints::SNAPSHOT_INSTALL_DELAY_FILE)?;
        Some(std::time::Duration::from_millis(ms.min(600_000)))
    }
}

#[tonic::async_trait]
impl RaftInternal for RaftService {
    async fn vote(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "vote")?;
        self.refuse_vote_while_rejoining()?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self.app.raft.vote(rpc).await.map_err(fatal)?;
        enc(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "pre_vote")?;
        self.refuse_vote_while_rejoining()?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self.app.raft.pre_vote(rpc).await.map_err(fatal)?;
        enc(&resp)
    }

    async fn append_entries(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "append_entries")?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        self.app.note_leader_contact();
        let resp = self.app.raft.append_entries(rpc).await.map_err(fatal)?;
        enc(&resp)
    }

    type StreamAppendStream = Pin<Box<dyn Stream<Item = Result<RaftMsg, Status>> + Send>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMsg>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.admit(&req, "stream_append")?;
        let app = self.app.clone();
        let input = tokio_stream::StreamExt::map_while(req.into_inner(), move |m| {
            app.note_leader_contact();
            // A transport error or an undecodable message ends the stream.
            m.ok().and_then(|m| {
                decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&m.data).ok()
            })
        });
        let output = self.app.raft.stream_append(input).map(|r| match r {
            Ok(result) => encode(&result)
                .map(|data| RaftMsg { data })
                .map_err(|e| Status::internal(e.to_string())),
            Err(e) => Err(fatal(e)),
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "install_snapshot")?;
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.meta).map_err(bad)?;
        let stream_no = SNAPSHOT_STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = self.sm.incoming_path(&meta, stream_no);
        let staged = self.sm.staged_path(&meta);
        let started = std::time::Instant::now();
        self.sm.discard_staged_except(&meta);
        // A resumed transfer continues the bytes an interrupted one left
        // staged: claimed by renaming them to this stream's own file.
        let resumed = first.offset > 0;
        let (mut file, mut received) = if resumed {
            std::fs::rename(&staged, &part).map_err(|e| {
                Status::failed_precondition(format!("no staged bytes to resume from: {e}"))
            })?;
            let held = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if held != first.offset {
                let _ = std::fs::remove_file(&part);
                return Err(Status::failed_precondition(format!(
                    "resume at {} but {held} bytes are staged",
                    first.offset
                )));
            }
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .map_err(|e| Status::internal(e.to_string()))?;
            metrics::counter!("billdb_snapshot_resumed_bytes_total").increment(held);
            tracing::info!(offset = held, "snapshot transfer resumed");
            (f, held)
        } else {
            let f = std::fs::File::create(&part).map_err(|e| Status::internal(e.to_string()))?;
            (f, 0u64)
        };
        let break_after = self.receive_break();
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            received += c.data.len() as u64;
            if received > SNAPSHOT_SIZE_BYTES_MAX {
                let _ = std::fs::remove_file(&part);
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            file.write_all(&c.data)
                .map_err(|e| Status::internal(e.to_string()))?;
            metrics::counter!("billdb_snapshot_received_bytes_total")
                .increment(c.data.len() as u64);
            if break_after.is_some_and(|b| received >= b) {
                tracing::warn!(
                    bytes = received,
                    "fault injection: snapshot transfer broken off"
                );
                drop(file);
                let _ = std::fs::rename(&part, &staged);
                return Err(Status::unavailable("fault injection: transfer broken off"));
            }
            chunk = match stream.next().await {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    // Keep what arrived: the sender resumes from here.
                    drop(file);
                    if std::fs::rename(&part, &staged).is_err() {
                        let _ = std::fs::remove_file(&part);
                    }
                    tracing::info!(
                        bytes = received,
                        "snapshot transfer interrupted; bytes kept to resume"
                    );
                    return Err(e);
                }
                None => None,
            };
        }
        file.sync_all()
            .map_err(|e| Status::internal(e.to_string()))?;
        drop(file);
        let recv = part.with_extension("recv");
        std::fs::rename(&part, &recv).map_err(|e| Status::internal(e.to_string()))?;
        let _ = std::fs::remove_file(&staged);
        if resumed {
            // Its first bytes came from an earlier transfer, maybe of another
            // leader's build of this index: check the whole file here, so a
            // mismatch costs a new transfer, not a failed install.
            let check = recv.clone();
            let ok = tokio::task::spawn_blocking(move || crate::store::snapshot::verify(&check))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if let Err(e) = ok {
                let _ = std::fs::remove_file(&recv);
                return Err(Status::data_loss(format!(
                    "resumed snapshot does not verify: {e}"
                )));
            }
        }
        tracing::info!(
            bytes = received,
            ms = started.elapsed().as_millis() as u64,
            "snapshot received"
        );
        if let Some(delay) = self.install_delay() {
            tracing::warn!(
                ms = delay.as_millis() as u64,
                "fault injection: snapshot install delayed"
            );
            tokio::time::sleep(delay).await;
        }
        let data = SnapshotFile::open(&recv).map_err(|e| Status::internal(e.to_string()))?;
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotHandle> {
            meta,
            snapshot: SnapshotHandle::of_file(data),
        };
        let resp = self
            .app
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        metrics::counter!("billdb_snapshot_installs_total").increment(1);
        enc(&resp)
    }

    async fn snapshot_staged(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "snapshot_staged")?;
        let meta: SnapshotMeta = decode(&req.into_inner().data).map_err(bad)?;
        let held = std::fs::metadata(self.sm.staged_path(&meta))
            .map(|m| m.len())
            .unwrap_or(0);
        enc(&held)
    }

    async fn transfer_leader(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "transfer_leader")?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .app
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(fatal)?;
        enc(&resp)
    }

    async fn repair(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        let caller = self.admit(&req, "repair")?;
        let ask: crate::repair::RepairRequest = decode(&req.into_inner().data).map_err(bad)?;
        let reply = crate::repair::serve(
            &self.app.raft,
            self.app.id,
            caller,
            ask,
            self.app.config.raft.election_timeout_max_ms,
        )
        .await;
        enc(&reply)
    }

    async fn forward(&self, req: Request<RaftMsg>) -> Result<Response<RaftMsg>, Status> {
        self.admit(&req, "forward")?;
        let fwd: Forward = decode(&req.into_inner().data).map_err(bad)?;
        let reply: Result<ForwardReply, billdb_api::error::ApiError> =
            self.app.serve_forwarded(fwd).await;
        enc(&reply)
    }
}
