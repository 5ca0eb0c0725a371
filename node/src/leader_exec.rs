//! Executing on the leader (op level 3): the leader runs each batch's
//! commands through the domain once, before proposing it, and the log
//! entry carries the replies and the sorted write set (`types::Executed`).
//! Followers, and the leader itself when the entry commits, only write that
//! set (`store::apply_results`); nobody else runs billing logic.
//!
//! What a batch is executed against: the applied state plus the write sets
//! of this leader's entries proposed and not yet applied ("pending", newest
//! first). Why that is the state the entry will be applied on:
//! - An entry's write set depends only on the entries before it in the
//!   same log. Within one term only this leader appends, in the order of
//!   [`Submit::send`] calls (this type is the only proposer of batches),
//!   and every write is sent with `with_leader`: openraft refuses it if
//!   the leader changed since, even when this node leads again in a later
//!   term, after another leader's entries.
//! - At the start of each term (and whenever results replication turns on)
//!   the executor waits for a blank entry of its own to be applied: every
//!   entry of earlier terms is then in the applied state, so the pending
//!   list (empty at that point) covers exactly what is appended and not
//!   applied.
//! - Write sets hold final values, not deltas: reading a key from a state
//!   newer than the pending list assumes (an entry applied meanwhile) and
//!   then overlaying that entry's writes again gives the same value. So
//!   reads need no snapshot; a pending write set is dropped only after the
//!   RocksDB write that applied it (`ReadFence::exec_applied`).
//! - A write that fails (the leader lost its term, or the entry was
//!   discarded) ends the epoch: pending is cleared and the next batch waits
//!   for a new barrier.
//! - openraft may refuse one write (its leader lease lapsed for a moment:
//!   `ForwardToLeader` with the same leader) and accept the next, before
//!   this executor hears of the refusal. So each entry names the entry of
//!   its epoch it was executed after (`Executed::prev`), and replicas apply
//!   its write set only if that one was the last applied
//!   (`store::apply_results`); otherwise they execute its commands, the
//!   same on every replica.
//!
//! Entry size: commands execute one at a time into the entry; the next
//! command goes into a new entry once commands and results would pass
//! `raft.batch_bytes_max`. An entry of one command may be up to
//! [`ALONE_ENTRY_FACTOR`] times that (a large import); a command whose
//! results are larger still is proposed without them (every replica
//! executes it) and the executor starts a new epoch after it.
//!
//! The executor's own read cache holds values read from RocksDB and is
//! updated by every batch it executes: within an epoch this leader is the
//! only writer of the state, so the cache stays exact; it is cleared at
//! every epoch start.
//!
//! May touch: the Raft handle (writes, blank barrier, leader id), RocksDB
//! point reads of the domain families, and the domain's `execute`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::alias::CommittedLeaderIdOf;
use openraft::errors::ClientWriteError;
use openraft::impls::ProgressResponder;
use rocksdb::DB;

use crate::domain::{self, Family, Get, Scratch, Txn, WriteSet};
use crate::proposer::{Pending, ProposeError, Submit};
use crate::read_fence::ReadFence;
use crate::store::apply_cache::ApplyCache;
use crate::types::{Batch, Command, Executed, Raft, TypeConfig};

/// Most entries executed and not yet applied; beyond it the leader is not
/// committing (cut off from its quorum) and refuses to execute more.
pub const PENDING_ENTRIES_MAX: usize = 1024;

/// How much larger than `raft.batch_bytes_max` an entry of one command
/// with its results may be (an import of 1,000 records writes about three
/// times its own size); `raft.max_payload_entries` × this × the batch bound
/// stays under half the Raft message bound (`config`).
pub const ALONE_ENTRY_FACTOR: usize = 4;

/// Bytes of the executor's read cache.
const EXEC_CACHE_BYTES_MAX: usize = 64 << 20;

/// How long the executor waits for its term's barrier entry to apply.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// One leader term in which the pending list is valid.
struct Epoch {
    leader: CommittedLeaderIdOf<TypeConfig>,
    /// This executor's epoch number (`Executed::epoch`).
    number: u64,
    /// Sequence of the last entry executed in this epoch (0: none yet).
    last_seq: u64,
    /// (sequence, the entry's whole write set, its request entries
    /// included), oldest first.
    pending: VecDeque<(u64, Arc<WriteSet>)>,
}

/// The leader's proposer backend: executes (op level 3) and sends batches
/// to Raft in order.
pub struct LeaderExec {
    raft: Raft,
    db: Arc<DB>,
    /// What the state machine has applied (`exec_applied_seq`).
    fence: Arc<ReadFence>,
    /// `[raft] replicate = "results"` (else commands, as before level 3).
    replicate_results: bool,
    epoch: Option<Epoch>,
    next_seq: u64,
    cache: RefCell<ApplyCache>,
    /// Set by a write that failed: the epoch's pending list may hold a
    /// write set that will never apply.
    broken: Arc<AtomicBool>,
    /// `raft.batch_bytes_max`: an entry of several commands, with their
    /// results, stays within it.
    bytes_max: usize,
    /// Set while a write set is pending but its entry not yet handed to
    /// Raft: still set at the next `send` means the proposer dropped that
    /// call half-way (its deadline), so the epoch is over.
    sending: bool,
    /// Epochs started by this executor.
    epochs: u64,
}

impl LeaderExec {
    pub fn new(
        raft: Raft,
        db: Arc<DB>,
        fence: Arc<ReadFence>,
        replicate_results: bool,
        bytes_max: usize,
    ) -> LeaderExec {
        LeaderExec {
            raft,
            db,
            fence,
            replicate_results,
            epoch: None,
            next_seq: 1,
            cache: RefCell::new(ApplyCache::new(EXEC_CACHE_BYTES_MAX)),
            broken: Arc::new(AtomicBool::new(false)),
            bytes_max,
            sending: false,
            epochs: 0,
        }
    }

    /// Whether this batch is to be executed here: results replication is
    /// configured and the cluster's op level allows it.
    fn results_enabled(&self) -> Result<bool, ProposeError> {
        if !self.replicate_results {
            return Ok(false);
        }
        let level = match &self.epoch {
            Some(e) => domain::levels::cluster_level(&self.view(e)),
            None => domain::levels::cluster_level(&DbView { db: &self.db }),
        }
        .map_err(|e| ProposeError::Internal(e.to_string()))?;
        Ok(level >= domain::levels::RESULTS_OP_LEVEL)
    }

    fn view<'a>(&'a self, epoch: &'a Epoch) -> ExecView<'a> {
        ExecView {
            pending: &epoch.pending,
            cache: &self.cache,
            db: DbView { db: &self.db },
        }
    }

    /// Starts an epoch for `leader`: a blank entry of this term applied
    /// means every earlier entry is applied.
    async fn start_epoch(
        &mut self,
        leader: CommittedLeaderIdOf<TypeConfig>,
        term: u64,
    ) -> Result<(), ProposeError> {
        self.epoch = None;
        match tokio::time::timeout(BARRIER_TIMEOUT, self.raft.write_blank()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(ProposeError::NotLeader),
            Err(_) => return Err(ProposeError::TimedOut),
        }
        match self.raft.as_leader() {
            Ok(l) if l.to_committed_leader_id() == leader => {}
            _ => return Err(ProposeError::NotLeader),
        }
        self.cache.borrow_mut().clear();
        self.broken.store(false, Ordering::SeqCst);
        self.sending = false;
        self.epochs += 1;
        self.epoch = Some(Epoch {
            leader,
            number: self.epochs,
            last_seq: 0,
            pending: VecDeque::new(),
        });
        metrics::counter!("billdb_exec_epochs_total").increment(1);
        tracing::info!(term, "leader executes batches (results replication)");
        Ok(())
    }

    /// Executes commands from the front of `commands` against the epoch's
    /// view into one entry: as many as fit in `bytes_max` with their
    /// results (at least one). Returns the entry's commands, what it
    /// carries and the write set to keep pending; `None` when the first
    /// command alone, with its results, is larger than an entry may be.
    #[allow(clippy::type_complexity)]
    fn execute_piece(
        &self,
        epoch: &Epoch,
        commands: &mut std::collections::VecDeque<Command>,
    ) -> Result<Option<(Vec<Command>, Executed, WriteSet)>, ProposeError> {
        let view = self.view(epoch);
        let mut piece = Scratch::new(&view);
        let mut taken = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0usize;
        while let Some(cmd) = commands.front() {
            let mut one = Scratch::new(&piece);
            let decided = domain::execute(&mut one, domain::PENDING_LOG_INDEX, cmd)
                .map_err(|e| ProposeError::Internal(format!("executing {cmd}: {e}")))?;
            let reply = decided.reply();
            let writes = one.into_writes();
            let size = crate::codec::size_bytes(cmd)
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(usize::MAX)
                .saturating_add(writes.encoded_bytes_bound())
                .saturating_add(
                    crate::codec::size_bytes(&reply)
                        .ok()
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(usize::MAX),
                );
            let limit = if taken.is_empty() {
                self.bytes_max.saturating_mul(ALONE_ENTRY_FACTOR)
            } else {
                self.bytes_max
            };
            if bytes.saturating_add(size) > limit {
                if taken.is_empty() {
                    return Ok(None);
                }
                break;
            }
            bytes += size;
            piece.put_all(writes);
            replies.push(reply);
            if let Some(cmd) = commands.pop_front() {
                taken.push(cmd);
            }
        }
        let all = piece.into_writes().into_sorted();
        let mut kept = WriteSet::default();
        let mut writes = Vec::with_capacity(all.len());
        let mut cache = self.cache.borrow_mut();
        for (family, key, value) in all {
            cache.update(family, &key, value.clone());
            kept.insert(family, key.clone(), value.clone());
            if family != Family::Requests {
                writes.push((family, key, value));
            }
        }
        Ok(Some((
            taken,
            Executed {
                seq: 0,
                epoch: 0,
                prev: 0,
                replies,
                writes,
            },
            kept,
        )))
    }

    /// Sends one entry to Raft under `leader`; the wait for its replies.
    async fn write(
        &mut self,
        batch: Batch,
        leader: CommittedLeaderIdOf<TypeConfig>,
    ) -> Result<Pending, ProposeError> {
        let (responder, rx) = ProgressResponder::complete_only();
        if self
            .raft
            .write(batch)
            .with_leader(leader)
            .responder(responder)
            .await
            .is_err()
        {
            self.epoch = None;
            return Err(ProposeError::Stopped);
        }
        let broken = self.broken.clone();
        Ok(Box::pin(async move {
            let r = match rx.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(ProposeError::NotLeader),
                Ok(Err(e)) => Err(ProposeError::Internal(e.to_string())),
                Err(_) => Err(ProposeError::Stopped),
            };
            if r.is_err() {
                broken.store(true, Ordering::SeqCst);
            }
            r
        }))
    }

    /// Executes `commands` into as many entries as their size needs and
    /// sends them in order; the wait for all their replies, in order.
    async fn send_executed(
        &mut self,
        commands: Vec<Command>,
        leader: CommittedLeaderIdOf<TypeConfig>,
        term: u64,
    ) -> Result<Pending, ProposeError> {
        let mut rest: std::collections::VecDeque<Command> = commands.into();
        let mut waits: Vec<Pending> = Vec::new();
        while !rest.is_empty() {
            let applied = self.fence.exec_applied_seq(term);
            let Some(epoch) = self.epoch.as_mut() else {
                return Err(ProposeError::NotLeader);
            };
            while epoch.pending.front().is_some_and(|(s, _)| *s <= applied) {
                epoch.pending.pop_front();
            }
            if epoch.pending.len() >= PENDING_ENTRIES_MAX {
                // Entries are not committing: this leader is cut off.
                return Err(ProposeError::NotLeader);
            }
            let Some(epoch) = self.epoch.as_ref() else {
                return Err(ProposeError::NotLeader);
            };
            let batch = match self.execute_piece(epoch, &mut rest)? {
                Some((taken, mut executed, kept)) => {
                    executed.seq = self.next_seq;
                    self.next_seq += 1;
                    self.sending = true;
                    if let Some(epoch) = self.epoch.as_mut() {
                        executed.epoch = epoch.number;
                        executed.prev = epoch.last_seq;
                        epoch.last_seq = executed.seq;
                        epoch.pending.push_back((executed.seq, Arc::new(kept)));
                    }
                    metrics::counter!("billdb_exec_batches_total").increment(1);
                    Batch::executed(taken, executed)
                }
                None => {
                    // One command whose results exceed an entry (a large
                    // import): every replica executes it, and the next
                    // batch waits for it to apply (a new epoch).
                    let Some(cmd) = rest.pop_front() else { break };
                    self.broken.store(true, Ordering::SeqCst);
                    metrics::counter!("billdb_exec_oversized_total").increment(1);
                    Batch::of(vec![cmd])
                }
            };
            let executed = batch.executed.is_some();
            waits.push(self.write(batch, leader).await?);
            self.sending = false;
            if !executed && !rest.is_empty() {
                self.start_epoch(leader, term).await?;
            }
        }
        if waits.len() > 1 {
            metrics::counter!("billdb_exec_cut_entries_total").increment(waits.len() as u64 - 1);
        }
        Ok(join_in_order(waits))
    }
}

/// One wait for several entries' replies, concatenated in order; the
/// first failure fails all (each command's caller retries with its
/// request_id, which answers what was decided).
fn join_in_order(waits: Vec<Pending>) -> Pending {
    if waits.len() == 1 {
        if let Some(one) = waits.into_iter().next() {
            return one;
        }
        return Box::pin(async { Err(ProposeError::Stopped) });
    }
    Box::pin(async move {
        let mut replies = Vec::new();
        for w in waits {
            replies.extend(w.await?.replies);
        }
        Ok(crate::types::BatchReply { replies })
    })
}

impl Submit for LeaderExec {
    async fn send(&mut self, batch: Batch) -> Result<Pending, ProposeError> {
        let Ok(leader) = self.raft.as_leader() else {
            self.epoch = None;
            return Err(ProposeError::NotLeader);
        };
        let committed = leader.to_committed_leader_id();
        let term = committed.term;
        if !self.results_enabled()? {
            self.epoch = None;
            return self.write(batch, committed).await;
        }
        let current = !self.sending
            && self
                .epoch
                .as_ref()
                .is_some_and(|e| e.leader == committed && !self.broken.load(Ordering::SeqCst));
        if !current {
            self.start_epoch(committed, term).await?;
        }
        self.send_executed(batch.into_commands(), committed, term)
            .await
    }
}

/// Point reads of the applied state.
struct DbView<'a> {
    db: &'a DB,
}

impl Get for DbView<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        self.db
            .get_cf(crate::store::cf(self.db, family.name())?, key)
            .map_err(crate::store::io_err)
    }
}

/// The pending write sets (newest first) over the executor's cache over
/// the applied state.
struct ExecView<'a> {
    pending: &'a VecDeque<(u64, Arc<WriteSet>)>,
    cache: &'a RefCell<ApplyCache>,
    db: DbView<'a>,
}

impl Get for ExecView<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        for (_, writes) in self.pending.iter().rev() {
            if let Some(v) = writes.get(family, key) {
                return Ok(v.clone());
            }
        }
        if let Some(v) = self.cache.borrow_mut().get(family, key) {
            return Ok(v);
        }
        let v = self.db.get(family, key)?;
        if let Some(v) = &v {
            self.cache.borrow_mut().insert(family, key, v.clone());
        }
        Ok(v)
    }
}
