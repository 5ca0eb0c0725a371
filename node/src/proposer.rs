//! Group commit on the leader. Commands proposed while earlier entries are
//! still in flight wait in one bounded queue and go to Raft together as one
//! log entry (a [`Batch`]), so the per-entry costs of consensus — the log
//! write and its fsync callback, replication messages, openraft's
//! bookkeeping, apply's per-entry work — are paid once per batch instead of
//! once per command. A lone command never waits: while fewer than
//! `in_flight_max` entries are in flight it is proposed at once, so a single
//! client sees no added latency. A command larger than half `bytes_max` (an
//! import) is proposed alone at once, outside that bound.
//!
//! Each command's time (`ts_ms`) is stamped here, when its batch is formed,
//! in log order: times never go back along this leader's proposals.
//!
//! May touch only the Raft handle.

use std::sync::Arc;

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::types::{Batch, Command, CommandReply, Raft, TypeConfig};

/// Commands waiting to be batched; proposers beyond this wait for room
/// (within their own request deadline).
pub const QUEUE_COMMANDS_MAX: usize = 8192;

/// Bounds on one batch and on the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most commands in one entry (1: every command its own entry).
    pub commands_max: usize,
    /// Most encoded bytes of commands in one entry; a single larger command
    /// (an import) still goes, alone.
    pub bytes_max: usize,
    /// Most entries proposed and not yet applied; commands arriving while
    /// all are in flight form the next batch.
    pub in_flight_max: usize,
    /// An entry not applied within this time frees its slot and its
    /// commands' callers learn the outcome is unknown (a leader cut off from
    /// its quorum must not hold the pipeline).
    pub entry_timeout_ms: u64,
}

/// Why a proposal has no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node does not lead (any more); the entry may or may not commit
    /// under the next leader: retry with the same request_id.
    NotLeader,
    /// The proposer stopped (the node is shutting down).
    Stopped,
    /// Not applied within `entry_timeout_ms`: the outcome is unknown; retry
    /// with the same request_id.
    TimedOut,
    Internal(String),
}

/// The outcome of one command and the index of the entry that carried it.
pub type Proposed = Result<(CommandReply, u64), ProposeError>;

struct Waiting {
    cmd: Command,
    size_bytes: usize,
    reply: oneshot::Sender<Proposed>,
}

/// Handle to the proposer task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Waiting>,
}

impl Proposer {
    /// Start the proposer task on the current tokio runtime.
    pub fn start(raft: Raft, limits: Limits) -> Proposer {
        assert!(limits.commands_max >= 1 && limits.in_flight_max >= 1);
        let (tx, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        tokio::spawn(run(raft, limits, rx));
        Proposer { tx }
    }

    /// Propose `cmd` (its `ts_ms` is overwritten) and wait until the entry
    /// carrying it is applied. Dropping the future abandons the wait, not
    /// the command.
    pub async fn propose(&self, cmd: Command) -> Proposed {
        let size_bytes = bincode::serialized_size(&cmd)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Waiting {
                cmd,
                size_bytes,
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn run(raft: Raft, limits: Limits, mut rx: mpsc::Receiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(limits.in_flight_max));
    let mut last_ts_ms = 0i64;
    // A command that did not fit the previous batch opens the next one.
    let mut carry: Option<Waiting> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // A command too large to share an entry (an import) gains nothing
        // from waiting for a slot: it goes alone, at once, outside the
        // in-flight bound (its callers' own concurrency bounds it).
        let slot = if first.size_bytes > limits.bytes_max / 2 {
            None
        } else {
            // While every slot is in flight, more commands queue up behind
            // `first`: they are what the next batch carries.
            match slots.clone().acquire_owned().await {
                Ok(slot) => Some(slot),
                Err(_) => return,
            }
        };
        let mut bytes = first.size_bytes;
        let mut batch = vec![first];
        while slot.is_some() && batch.len() < limits.commands_max {
            match rx.try_recv() {
                Ok(w) if bytes.saturating_add(w.size_bytes) <= limits.bytes_max => {
                    bytes += w.size_bytes;
                    batch.push(w);
                }
                Ok(w) => {
                    carry = Some(w);
                    break;
                }
                Err(_) => break,
            }
        }
        last_ts_ms = last_ts_ms.max(wall_ms());
        let mut commands = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for mut w in batch {
            w.cmd.ts_ms = last_ts_ms;
            commands.push(w.cmd);
            replies.push(w.reply);
        }
        metrics::histogram!("billdb_propose_batch_commands").record(commands.len() as f64);
        let raft = raft.clone();
        let timeout = std::time::Duration::from_millis(limits.entry_timeout_ms);
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, raft.client_write(Batch { commands })).await;
            drop(slot);
            match r {
                Ok(r) => deliver(r, replies),
                Err(_) => {
                    for tx in replies {
                        let _ = tx.send(Err(ProposeError::TimedOut));
                    }
                }
            }
        });
    }
}

type WriteResult = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
>;

fn deliver(r: WriteResult, replies: Vec<oneshot::Sender<Proposed>>) {
    let fail_all = |replies: Vec<oneshot::Sender<Proposed>>, e: ProposeError| {
        for tx in replies {
            let _ = tx.send(Err(e.clone()));
        }
    };
    match r {
        Ok(resp) if resp.data.replies.len() == replies.len() => {
            let index = resp.log_id.index;
            for (tx, reply) in replies.into_iter().zip(resp.data.replies) {
                // A caller that gave up has dropped its receiver.
                let _ = tx.send(Ok((reply, index)));
            }
        }
        Ok(resp) => {
            let e = ProposeError::Internal(format!(
                "entry {} answered {} commands, {} were proposed",
                resp.log_id.index,
                resp.data.replies.len(),
                replies.len()
            ));
            fail_all(replies, e)
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
        | Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
            fail_all(replies, ProposeError::NotLeader)
        }
        Err(e) => fail_all(replies, ProposeError::Internal(e.to_string())),
    }
}
