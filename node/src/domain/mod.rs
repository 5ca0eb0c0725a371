//! The billing domain: what a committed [`Command`](crate::types::Command)
//! does to state. Plain functions over a [`Txn`] (writes) or a
//! [`ReadView`] (reads); they may not touch RocksDB, the network, a clock or
//! randomness, so that apply is deterministic and unit-testable without a
//! cluster. Time comes only from `Command::ts_ms` (fixed by the leader).
//!
//! The storage layer calls [`apply`] once per log entry inside one write
//! batch; that call is the only boundary between Raft and billing.
//!
//! Module map (each module says what it may touch and import):
//! `accounts` (accounts, lifecycle), `cards` (cards; suspend / resume /
//! close, since a close revokes the card), `purchases` (sales, reissue,
//! loaded), `payments` (payments, charges, adjustments), `ledger` (records,
//! reversal, record listing, segment boundary), `invoices`, `tariffs`
//! (versions, year units), `reports` (incremental report rows), `seasons`
//! (heating season, lazy carry-forward), `season_bill` (a season's heating
//! charges), `import` (bulk legacy import), `bank_recon` (the bank payment
//! index, reconciliations), `statements`, `drills`, `levels` (op levels),
//! `balances` (accounts and Σ balance per branch/utility/tariff),
//! `requests` (the exactly-once table), and the ground floor below.
//!
//! Layers: imports run one way, down. A module imports only from floors
//! below its own; nothing imports from this file (`tests/domain_layers.rs`
//! keeps it so: ground floor, no cycle, no `super::Item`):
//!
//! 0. the ground floor, plain vocabulary with no domain rules: `txn` (the
//!    storage view), `keys` (key layouts, encoding), `calendar` (UTC civil
//!    dates), `model` (the stored records: `Account`, `Record`,
//!    `RecordMeta`, `Card`, `Invoice`, `Season`, record ids), `payloads`
//!    (what an `Op` carries: `TariffSpec`, import items, `DrillSummary`,
//!    `Reconciliation`), then `ops` (`Op`, `Buy`, `Outcome`; uses `model`,
//!    `payloads`), then `context` (`Ctx`, `Fail`, `Res`, `refuse`, `read`,
//!    `write`, `add`, `sub`, `check_*`; uses `txn`, `keys`, `model`, `ops`);
//! 1. tables that need only the ground floor: `requests`, `seasons`,
//!    `tariffs`, `levels`, `drills`, `reports`, `balances`;
//! 2. `accounts` (uses `seasons`);
//! 3. `invoices` and `statements` (use `accounts`); `bank_recon` (uses
//!    `reports`, `requests`);
//! 4. `ledger`: posting a record updates `accounts`, `reports`, `invoices`,
//!    `bank_recon` and `tariffs`, all below it;
//! 5. `cards` (uses `accounts`, `ledger`);
//! 6. the operations: `payments`, `purchases`, `import`, `season_bill`;
//! 7. this file: the dispatcher ([`execute`], [`apply`], [`record`],
//!    [`precheck`], the exec chain) and the re-exports (`pub use`) that code
//!    outside the domain names.
//!
//! Every command runs against a [`Scratch`] overlay: its writes reach the
//! transaction only if it succeeds, so a refusal writes nothing but its
//! request entry, by construction.

// The ground floor.
pub mod calendar;
mod context;
mod keys;
mod model;
mod ops;
mod payloads;
pub mod txn;

// The domain modules, in their layers (see above).
mod accounts;
pub mod balances;
pub mod bank_recon;
mod cards;
pub mod drills;
mod import;
mod invoices;
mod ledger;
pub mod levels;
mod payments;
mod purchases;
mod reports;
mod requests;
pub mod season_bill;
mod seasons;
pub mod statements;
mod tariffs;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use billdb_api::error::{ApiError, ErrorCode};

pub use accounts::{UTILITIES, get_account};
pub use cards::{CardCheck, get_card, verify_card};
pub use import::IMPORT_ITEMS_MAX;
pub use invoices::{get_invoice, is_assigned_form};
pub use ledger::{
    LIST_LIMIT_MAX, RecordPage, RecordQuery, Segment, get_record, list_records, segment_boundary,
};
pub use model::{
    Account, Card, Invoice, LastPurchase, Record, RecordMeta, Season, parse_record_id, record_id,
};
pub use ops::{Buy, EFFECTIVE_FROM_COMMAND_TIME, Op, Outcome};
pub use payloads::{ImportAccount, ImportRecord, TariffSpec};
pub use reports::{
    Drills, GroupBy, Report, ReportLine, bank_daily_report, monthly_report, monthly_report_with,
};
pub use requests::{Replay, replayed, request_outcome};
pub use seasons::current_season;
pub use tariffs::{get_tariff, year_units};
pub use txn::{Family, Get, MemTxn, ReadView, Scratch, Txn, WriteSet};

use crate::types::Command;
use context::{Ctx, Fail, Res, read, write};
use requests::{RequestEntry, replayed_with};

/// Every domain column family, in a fixed order (snapshots, digests).
/// Append only: snapshot files store the index into this list.
/// (The declaration order of [`Family`]; `txn::FAMILY_ORDER`.)
pub const FAMILIES: &[Family] = &txn::FAMILY_ORDER;

fn dispatch<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    match &ctx.cmd.op {
        Op::OpenAccount { .. } => accounts::open(txn, ctx),
        Op::UpdateContact { .. } => accounts::update_contact(txn, ctx),
        Op::Suspend { .. } | Op::Resume { .. } | Op::Close { .. } => cards::lifecycle(txn, ctx),
        Op::Payment { .. } => payments::payment(txn, ctx),
        Op::PostCharge { .. } => payments::charge(txn, ctx),
        Op::Adjust { .. } => payments::adjust(txn, ctx),
        Op::IssueCard { .. } => cards::issue(txn, ctx),
        Op::ReplaceCard { .. } => cards::replace(txn, ctx),
        Op::Purchase { .. } => purchases::purchase(txn, ctx),
        Op::Reissue { .. } => purchases::reissue(txn, ctx),
        Op::ConfirmLoaded { .. } => purchases::confirm_loaded(txn, ctx),
        Op::Reverse { .. } => ledger::reverse(txn, ctx),
        Op::SetSegmentBoundary { .. } => ledger::set_boundary(txn, ctx),
        Op::OpenHeatingSeason { .. } => seasons::open(txn, ctx),
        Op::Import { .. } => import::import(txn, ctx),
        Op::DefineTariff { .. } => tariffs::define(txn, ctx),
        Op::PrintInvoice { .. } => invoices::print(txn, ctx),
        Op::BillSeason { .. } => season_bill::bill(txn, ctx),
        Op::RecordDrill { .. } => drills::record(txn, ctx),
        Op::RecordReconciliation { .. } => bank_recon::record(txn, ctx),
        Op::SetClusterLevel { level } => levels::set(txn, *level),
        Op::IndexBankPayments { .. } => bank_recon::index_payments(txn, ctx),
    }
}

/// Refusals that need no log entry: a command naming an account or card
/// that does not exist. The leader checks these against its applied state
/// before proposing, so such a command writes nothing, not even a request
/// entry. Accounts and cards are never deleted, so a command whose
/// request_id already holds an outcome always passes this check.
pub fn precheck<G: Get + ?Sized>(view: &G, op: &Op) -> Result<Option<ApiError>, std::io::Error> {
    // An operation above the cluster's op level is never proposed: some
    // member's build could not decode it. (The level never goes down, so a
    // request_id that holds an outcome passes.)
    if let Some(e) = levels::check(view, op)? {
        return Ok(Some(e));
    }
    let account = match op {
        Op::Payment { account_id, .. }
        | Op::UpdateContact { account_id, .. }
        | Op::IssueCard { account_id, .. }
        | Op::PostCharge { account_id, .. }
        | Op::Adjust { account_id, .. }
        | Op::Suspend { account_id, .. }
        | Op::Resume { account_id, .. }
        | Op::Close { account_id, .. } => Some(account_id),
        Op::Purchase {
            account_id: Some(a),
            ..
        } => Some(a),
        _ => None,
    };
    if let Some(a) = account
        && get_account(view, a)?.is_none()
    {
        return Ok(Some(ApiError::new(
            ErrorCode::AccountNotFound,
            format!("no account {a:?}"),
        )));
    }
    let card = match op {
        Op::ReplaceCard { card_no, .. } => Some(card_no),
        Op::Purchase {
            card_no: Some(c),
            account_id: None,
            ..
        } => Some(c),
        _ => None,
    };
    if let Some(c) = card
        && cards::get_card(view, c)?.is_none()
    {
        return Ok(Some(ApiError::new(
            ErrorCode::CardUnknown,
            format!("no card {c:?}"),
        )));
    }
    Ok(None)
}

/// The log index a command is executed at on the leader, before its entry
/// has one: its request entry is kept only in the leader's pending view;
/// every replica writes the real one from the entry's [`ExecReply`]
/// (`record`).
pub const PENDING_LOG_INDEX: u64 = u64::MAX;

/// What executing one command decided ([`execute`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Decided now: its writes and its request entry are in the txn.
    Recorded(Outcome),
    /// The request_id already holds this outcome, decided at `log_index`
    /// ([`PENDING_LOG_INDEX`] when that entry is not applied yet).
    Replayed { outcome: Outcome, log_index: u64 },
    /// Answered without a request entry (a request_id reused with another
    /// payload: IDEMPOTENCY_CONFLICT).
    Unrecorded(Outcome),
}

/// How an executed log entry answers one command (`types::Executed`): what
/// a replica needs, with the entry's writes, to answer and record it
/// without running the domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExecReply {
    /// Decided by this entry: the replica records (request_id, payload
    /// fingerprint, this entry's index, outcome) in the exactly-once table.
    Recorded(Outcome),
    /// The request_id was decided by an earlier entry: the replica answers
    /// what its exactly-once table holds.
    Replay,
    /// Answered, not recorded.
    Unrecorded(Outcome),
}

impl Decided {
    /// The reply an executed entry carries for this decision.
    pub fn reply(&self) -> ExecReply {
        match self {
            Decided::Recorded(o) => ExecReply::Recorded(o.clone()),
            Decided::Replayed { .. } => ExecReply::Replay,
            Decided::Unrecorded(o) => ExecReply::Unrecorded(o.clone()),
        }
    }
}

/// Records one command of an executed entry at `log_index` in `txn`, as
/// [`execute`] would have (the request entry; the entry's domain writes
/// are written by the caller), and answers it with the index it was
/// decided at. A `Replay` whose request_id holds no outcome with the same
/// payload here means this replica's state differs from the leader's: an
/// error, never an answer.
pub fn record<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
    reply: &ExecReply,
) -> Result<(Outcome, u64), std::io::Error> {
    let answered = match reply {
        ExecReply::Recorded(outcome) => {
            let entry = RequestEntry {
                fingerprint: cmd.op.fingerprint(),
                log_index,
                outcome: outcome.clone(),
            };
            txn.put(
                Family::Requests,
                keys::request(&cmd.request_id),
                keys::encode(&entry)?,
            );
            (entry.outcome, log_index)
        }
        ExecReply::Unrecorded(outcome) => (outcome.clone(), log_index),
        ExecReply::Replay => match replayed(&*txn, &cmd.request_id, &cmd.op)? {
            Some(Replay::Original { outcome, log_index }) => (outcome, log_index),
            other => {
                return Err(std::io::Error::other(format!(
                    "entry {log_index}: the leader answered request_id {:?} as a replay, \
                     but this replica holds {other:?} for it: its state differs from the leader's",
                    cmd.request_id
                )));
            }
        },
    };
    if !matches!(reply, ExecReply::Replay) {
        crate::metrics::count_outcome(&cmd.op, &answered.0);
    }
    Ok(answered)
}

/// The last entry applied from the leader's results, as (term, execution
/// epoch, sequence): replicated state, so every replica decides alike
/// whether an entry's write set was computed on the state it is applied
/// to (`store::apply_results`).
pub fn exec_chain<G: Get + ?Sized>(view: &G) -> Result<Option<(u64, u64, u64)>, std::io::Error> {
    read(view, Family::Meta, keys::META_EXEC_CHAIN)
}

pub fn set_exec_chain<T: Txn + ?Sized>(
    txn: &mut T,
    chain: (u64, u64, u64),
) -> Result<(), std::io::Error> {
    write(txn, Family::Meta, keys::META_EXEC_CHAIN.to_vec(), &chain)
}

/// Apply one committed command. Deterministic: the same state and command
/// always give the same writes and outcome. Errors are storage failures
/// only; a refused command is an `Ok(Outcome::Refused)` that writes nothing
/// but its request entry.
pub fn apply<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
) -> Result<Outcome, std::io::Error> {
    apply_indexed(txn, log_index, cmd).map(|(outcome, _)| outcome)
}

/// [`apply`], also returning the log index the outcome was decided at: the
/// original entry's for a replayed request_id, `log_index` otherwise.
pub fn apply_indexed<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
) -> Result<(Outcome, u64), std::io::Error> {
    Ok(match execute(txn, log_index, cmd)? {
        Decided::Recorded(outcome) | Decided::Unrecorded(outcome) => {
            crate::metrics::count_outcome(&cmd.op, &outcome);
            (outcome, log_index)
        }
        Decided::Replayed { outcome, log_index } => (outcome, log_index),
    })
}

/// Executes one command into `txn` (its writes and its request entry at
/// `log_index`) and says what was decided; counts nothing. Deterministic:
/// the same state and command always give the same writes and decision.
/// The leader executes at [`PENDING_LOG_INDEX`] (`leader_exec`); a replica
/// re-executing an entry executes at the entry's index.
pub fn execute<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
) -> Result<Decided, std::io::Error> {
    let fingerprint = cmd.op.fingerprint();
    match replayed_with(&*txn, &cmd.request_id, fingerprint)? {
        Some(Replay::Original { outcome, log_index }) => {
            return Ok(Decided::Replayed { outcome, log_index });
        }
        Some(Replay::Conflict(e)) => return Ok(Decided::Unrecorded(Outcome::Refused(e))),
        None => {}
    }
    let req_key = keys::request(&cmd.request_id);
    let ctx = Ctx { cmd };
    let mut scratch = Scratch::new(&*txn);
    let result = match levels::check(&*txn, &cmd.op)? {
        Some(e) => Err(Fail::Refused(e)),
        None => dispatch(&mut scratch, &ctx),
    };
    let writes = scratch.into_writes();
    let outcome = match result {
        Ok(outcome) => {
            txn.put_all(writes);
            outcome
        }
        Err(Fail::Refused(e)) => Outcome::Refused(e),
        Err(Fail::Io(e)) => return Err(e),
    };
    let entry = RequestEntry {
        fingerprint,
        log_index,
        outcome,
    };
    txn.put(Family::Requests, req_key, keys::encode(&entry)?);
    Ok(Decided::Recorded(entry.outcome))
}
