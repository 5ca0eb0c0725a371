//! Group commit on the leader. Commands proposed while earlier entries are
//! still in flight wait in one bounded queue and go to Raft together as one
//! log entry (a [`Batch`]), so the per-entry costs of consensus — the log
//! write and its fsync callback, replication messages, openraft's
//! bookkeeping, apply's per-entry work — are paid once per batch instead of
//! once per command. A lone command never waits: while fewer than
//! `in_flight_max` entries are in flight it is proposed at once, so a single
//! client sees no added latency. A command larger than half `bytes_max` (an
//! import) is proposed alone at once, outside that bound; one larger than
//! `bytes_max` is refused before it reaches Raft (`bytes_max` bounds every
//! log entry, so one AppendEntries message of `max_payload_entries` entries
//! stays under the Raft message bound).
//!
//! Each command's time (`ts_ms`) is stamped here, when its batch is formed,
//! in log order: times never go back along this leader's proposals.
//!
//! May touch only the Raft handle, behind [`Submit`] (a fake in the tests).

use std::future::Future;
use std::sync::Arc;

use std::pin::Pin;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::types::{Batch, BatchReply, Command, CommandReply};

/// Commands waiting to be batched; proposers beyond this wait for room
/// (within their own request deadline).
pub const QUEUE_COMMANDS_MAX: usize = 8192;

/// Bounds on one batch and on the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most commands in one entry (1: every command its own entry).
    pub commands_max: usize,
    /// Most encoded bytes of commands in one entry; a single larger command
    /// is refused ([`ProposeError::TooLarge`]).
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
    /// The command alone encodes to more than one entry may hold; nothing
    /// was proposed.
    TooLarge {
        size_bytes: usize,
        bytes_max: usize,
    },
    Internal(String),
}

/// The outcome of one command (its `decided_at` is the index of the entry
/// that decided it).
pub type Proposed = Result<CommandReply, ProposeError>;

/// The wait for one proposed entry's replies.
pub type Pending = Pin<Box<dyn Future<Output = Result<BatchReply, ProposeError>> + Send>>;

/// Where batches go (`leader_exec::LeaderExec`; a fake in the tests).
pub trait Submit: Send + 'static {
    /// Hand `batch` to Raft as one entry and return the wait for its
    /// replies (one per command, once applied). Called one batch at a
    /// time, in order: the log holds entries in the order of these calls.
    fn send(&mut self, batch: Batch) -> impl Future<Output = Result<Pending, ProposeError>> + Send;
}

struct Waiting {
    cmd: Command,
    size_bytes: usize,
    reply: oneshot::Sender<Proposed>,
}

/// Handle to the proposer task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Waiting>,
    bytes_max: usize,
}

impl Proposer {
    /// Start the proposer task on the current tokio runtime.
    pub fn start<S: Submit>(submit: S, limits: Limits) -> Proposer {
        assert!(limits.commands_max >= 1 && limits.in_flight_max >= 1);
        let (tx, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        tokio::spawn(run(submit, limits, rx));
        Proposer {
            tx,
            bytes_max: limits.bytes_max,
        }
    }

    /// Propose `cmd` (its `ts_ms` is overwritten) and wait until the entry
    /// carrying it is applied. Dropping the future abandons the wait, not
    /// the command.
    pub async fn propose(&self, cmd: Command) -> Proposed {
        let size_bytes = crate::codec::size_bytes(&cmd)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        if size_bytes > self.bytes_max {
            return Err(ProposeError::TooLarge {
                size_bytes,
                bytes_max: self.bytes_max,
            });
        }
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

async fn run<S: Submit>(mut submit: S, limits: Limits, mut rx: mpsc::Receiver<Waiting>) {
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
        let timeout = std::time::Duration::from_millis(limits.entry_timeout_ms);
        match tokio::time::timeout(timeout, submit.send(Batch::of(commands))).await {
            Ok(Ok(pending)) => {
                tokio::spawn(async move {
                    let r = tokio::time::timeout(timeout, pending)
                        .await
                        .unwrap_or(Err(ProposeError::TimedOut));
                    drop(slot);
                    deliver(r, replies);
                });
            }
            Ok(Err(e)) => {
                drop(slot);
                deliver(Err(e), replies);
            }
            Err(_) => {
                drop(slot);
                deliver(Err(ProposeError::TimedOut), replies);
            }
        }
    }
}

fn deliver(r: Result<BatchReply, ProposeError>, replies: Vec<oneshot::Sender<Proposed>>) {
    let r = match r {
        Ok(reply) if reply.replies.len() != replies.len() => Err(ProposeError::Internal(format!(
            "an entry answered {} commands, {} were proposed",
            reply.replies.len(),
            replies.len()
        ))),
        other => other,
    };
    match r {
        Ok(reply) => {
            for (tx, reply) in replies.into_iter().zip(reply.replies) {
                // A caller that gave up has dropped its receiver.
                let _ = tx.send(Ok(reply));
            }
        }
        Err(e) => {
            for tx in replies {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use billdb_api::error::{ApiError, ErrorCode};

    use super::*;
    use crate::domain::{Op, Outcome};

    /// Records every batch, counts entries in flight, answers each command
    /// with its own request id after `delay_ms`; a batch holding a `hang*`
    /// request never answers.
    #[derive(Clone, Default)]
    struct Fake {
        batches: Arc<Mutex<Vec<Vec<Command>>>>,
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        delay_ms: u64,
        fail: Option<ProposeError>,
    }

    fn echo(request_id: &str) -> Outcome {
        Outcome::Refused(ApiError::new(ErrorCode::Internal, request_id))
    }

    impl Submit for Fake {
        async fn send(&mut self, batch: Batch) -> Result<Pending, ProposeError> {
            let fake = self.clone();
            Ok(Box::pin(async move { fake.submit(batch).await }))
        }
    }

    impl Fake {
        async fn submit(&self, batch: Batch) -> Result<BatchReply, ProposeError> {
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            let index = {
                let mut b = self.batches.lock().unwrap();
                b.push((*batch.commands).clone());
                b.len() as u64
            };
            if batch
                .commands
                .iter()
                .any(|c| c.request_id.starts_with("hang"))
            {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            let replies = batch
                .commands
                .iter()
                .map(|c| CommandReply {
                    outcome: echo(&c.request_id),
                    decided_at: index,
                })
                .collect();
            Ok(BatchReply { replies })
        }
    }

    fn cmd(request_id: &str, pad: usize) -> Command {
        Command {
            request_id: request_id.into(),
            ts_ms: 0,
            operator: "op".into(),
            branch: String::new(),
            channel: String::new(),
            op: Op::PrintInvoice {
                invoice_no: "x".repeat(pad),
            },
        }
    }

    fn limits(commands_max: usize, bytes_max: usize, in_flight_max: usize) -> Limits {
        Limits {
            commands_max,
            bytes_max,
            in_flight_max,
            entry_timeout_ms: 5_000,
        }
    }

    /// Propose every id at once (after `first`, which goes out alone and is
    /// in flight while the others queue); returns each caller's answer.
    async fn propose_all(p: &Proposer, first: &str, ids: &[String], pad: usize) -> Vec<Proposed> {
        let lead = {
            let (p, c) = (p.clone(), cmd(first, 8));
            tokio::spawn(async move { p.propose(c).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = ids
            .iter()
            .map(|id| {
                let (p, c) = (p.clone(), cmd(id, pad));
                tokio::spawn(async move { p.propose(c).await })
            })
            .collect();
        let mut out = vec![lead.await.unwrap()];
        for h in rest {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_lone_command_goes_alone_and_later_ones_share_an_entry_with_their_own_replies() {
        let fake = Fake {
            delay_ms: 50,
            ..Fake::default()
        };
        let p = Proposer::start(fake.clone(), limits(256, 64 << 10, 1));
        let ids: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
        let answers = propose_all(&p, "a", &ids, 8).await;
        let batches = fake.batches.lock().unwrap().clone();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![1, 10],
            "the lone command alone, the rest together"
        );
        for (answer, id) in answers
            .iter()
            .zip(std::iter::once("a").chain(ids.iter().map(String::as_str)))
        {
            let reply = answer.as_ref().expect("answered");
            assert_eq!(reply.outcome, echo(id), "each caller gets its own reply");
            assert_eq!(reply.decided_at, if id == "a" { 1 } else { 2 });
        }
        // Times are stamped in log order and never go back.
        let ts: Vec<i64> = batches.iter().flatten().map(|c| c.ts_ms).collect();
        assert!(ts[0] > 0 && ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    }

    #[tokio::test]
    async fn batches_keep_their_count_and_byte_bounds() {
        let fake = Fake {
            delay_ms: 30,
            ..Fake::default()
        };
        let size = |c: &Command| crate::codec::size_bytes(c).unwrap() as usize;
        let small = size(&cmd("s00", 40));
        // Room for two small commands per entry by bytes, three by count.
        let bytes_max = 2 * small + small / 2;
        let p = Proposer::start(fake.clone(), limits(3, bytes_max, 1));
        let ids: Vec<String> = (0..9).map(|i| format!("s{i:02}")).collect();
        let answers = propose_all(&p, "f", &ids, 40).await;
        assert!(answers.iter().all(Result::is_ok));
        let batches = fake.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 10);
        for b in &batches {
            assert!(b.len() <= 3, "count bound: {}", b.len());
            assert!(b.iter().map(size).sum::<usize>() <= bytes_max, "byte bound");
        }
        assert!(
            batches.iter().skip(1).any(|b| b.len() == 2),
            "commands did share entries"
        );

        let p = Proposer::start(fake.clone(), limits(3, 4 * small, 1));
        let ids: Vec<String> = (0..5).map(|i| format!("c{i:02}")).collect();
        let answers = propose_all(&p, "g", &ids, 40).await;
        assert!(answers.iter().all(Result::is_ok));
        let batches = fake.batches.lock().unwrap().clone();
        assert!(
            batches.iter().any(|b| b.len() == 3),
            "up to the count bound"
        );
    }

    #[tokio::test]
    async fn entries_in_flight_stay_bounded_but_a_large_command_does_not_wait() {
        let fake = Fake {
            delay_ms: 20,
            ..Fake::default()
        };
        let p = Proposer::start(fake.clone(), limits(1, 64 << 10, 2));
        let ids: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        let answers = propose_all(&p, "m", &ids, 8).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(fake.batches.lock().unwrap().len(), 21);
        assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 2);

        // One slot, taken; an import-sized command still goes at once.
        let fake = Fake {
            delay_ms: 100,
            ..Fake::default()
        };
        let p = Proposer::start(fake.clone(), limits(256, 4 << 10, 1));
        let answers = propose_all(&p, "small", &["big".to_string()], 2_500).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 2);
    }

    /// A command that alone exceeds an entry's bytes is refused, naming
    /// both sizes, and nothing reaches Raft.
    #[tokio::test]
    async fn a_command_larger_than_an_entry_is_refused_unproposed() {
        let fake = Fake::default();
        let p = Proposer::start(fake.clone(), limits(256, 4 << 10, 1));
        match p.propose(cmd("huge", 5_000)).await {
            Err(ProposeError::TooLarge {
                size_bytes,
                bytes_max,
            }) => {
                assert!(size_bytes > 5_000, "{size_bytes}");
                assert_eq!(bytes_max, 4 << 10);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(fake.batches.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn every_caller_hears_a_failure_and_a_stuck_entry_frees_its_slot() {
        let fake = Fake {
            delay_ms: 5,
            fail: Some(ProposeError::NotLeader),
            ..Fake::default()
        };
        let p = Proposer::start(fake, limits(256, 64 << 10, 1));
        let ids: Vec<String> = (0..5).map(|i| format!("x{i}")).collect();
        let answers = propose_all(&p, "w", &ids, 8).await;
        assert!(answers.iter().all(|a| *a == Err(ProposeError::NotLeader)));

        let fake = Fake {
            delay_ms: 5,
            ..Fake::default()
        };
        let p = Proposer::start(
            fake,
            Limits {
                entry_timeout_ms: 100,
                ..limits(256, 64 << 10, 1)
            },
        );
        let started = std::time::Instant::now();
        assert_eq!(
            p.propose(cmd("hang-1", 8)).await,
            Err(ProposeError::TimedOut)
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        let reply = p
            .propose(cmd("after", 8))
            .await
            .expect("the slot was freed");
        assert_eq!(reply.outcome, echo("after"));
    }
}
