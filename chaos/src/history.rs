//! The recorded history of a chaos run: one [`Op`] per client operation
//! (invoke time, completion time, process, request_id, outcome, what it
//! observed) and one [`NemesisEvent`] per fault. Pure data plus a
//! thread-safe recorder; touches no files, processes or network.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// What a client operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Bank payment, first delivery (new request_id, new bank_ref).
    Payment,
    /// The same payment delivered again with the SAME request_id: must
    /// answer the original outcome and add nothing.
    PaymentReplay,
    /// The same payment delivered again under a NEW request_id but the same
    /// (bank_code, bank_ref): must be refused (DUPLICATE_PAYMENT).
    PaymentNewId,
    /// Counter sale.
    Purchase,
    /// Counter re-issue of the latest unloaded purchase.
    Reissue,
    /// Linearizable `GET /v1/accounts/{id}`.
    ReadAccount,
    /// Counter card check (verify + recent records).
    VerifyCard,
    /// Counter read of the recent segment.
    ReadRecent,
    /// Monthly report read.
    Report,
}

impl OpKind {
    /// Writes that add one ledger record when they take effect.
    pub fn adds_record(self) -> bool {
        matches!(
            self,
            OpKind::Payment | OpKind::PaymentNewId | OpKind::Purchase | OpKind::Reissue
        )
    }

    /// Writes whose acknowledgement promises a stored outcome.
    pub fn is_write(self) -> bool {
        self.adds_record() || self == OpKind::PaymentReplay
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Definitely refused: had no effect.
    Fail,
    /// Never got a definite answer (timeouts, unavailability until the retry
    /// budget ran out): may or may not have taken effect.
    Unknown,
}

/// Account state as a read (or a write's answer) shows it: the register the
/// linearizability checker models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcctState {
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    /// Sequence number of the newest record (= number of records).
    pub last_seq: u64,
}

/// One client operation, complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Index in the history.
    pub id: usize,
    /// Worker thread that ran it.
    pub process: u32,
    pub kind: OpKind,
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_ref: Option<String>,
    /// Money the write moves into the balance when it takes effect.
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_delta: Decimal,
    /// Nanoseconds since the run started.
    pub invoke_ns: u64,
    /// When the last attempt was sent (retries keep the request_id).
    pub last_attempt_ns: u64,
    /// None while unknown.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    pub attempts: u32,
    /// Node of the last attempt.
    pub node: u64,
    /// Error code of a refusal, or the last transport/availability error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Record the write created (`account:seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// Account state read, or the state right after the write (from its answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<AcctState>,
}

/// One fault injected by a nemesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NemesisEvent {
    pub nemesis: String,
    /// Human description: what was done to whom.
    pub detail: String,
    pub start_ns: u64,
    /// When the fault was healed.
    pub heal_ns: u64,
    /// When the cluster was back (leader agreed, members healthy).
    pub end_ns: u64,
    /// Instants at which the then-leader was made unavailable, and how.
    pub leader_faults: Vec<LeaderFault>,
    /// Unsynced bytes a simulated power loss dropped (`power-loss-*`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_unsynced_bytes: u64,
    /// ... of which in RocksDB WAL files (`db/*.log`): a write appended
    /// but not yet synced when the power went.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_wal_bytes: u64,
    /// Error of the nemesis itself (it could not do or undo the fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderFault {
    /// kill | pause | isolate | stop
    pub how: String,
    pub node: u64,
    pub at_ns: u64,
}

/// Thread-safe recorder shared by workers and nemeses.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the recorder was created (monotonic).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Stores a finished operation; assigns its id.
    pub fn push(&self, mut op: Op) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        op.id = ops.len();
        ops.push(op);
    }

    /// All operations recorded so far, in completion order.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
