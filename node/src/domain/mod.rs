//! The billing domain: what a committed [`Command`](crate::types::Command)
//! does to state. Plain functions over a [`Txn`] (writes) or a
//! [`ReadView`] (reads); they may not touch RocksDB, the network, a clock or
//! randomness, so that apply is deterministic and unit-testable without a
//! cluster. Time comes only from `Command::ts_ms` (fixed by the leader).
//!
//! The storage layer calls [`apply`] once per log entry inside one write
//! batch; that call is the only boundary between Raft and billing.
//!
//! Module map (each module says what it may touch):
//! `accounts` (accounts, lifecycle), `cards`, `purchases` (sales, reissue,
//! loaded), `payments` (payments, charges, adjustments), `ledger` (records,
//! reversal, record listing, segment boundary), `invoices`, `tariffs`
//! (versions, year units), `reports` (incremental report rows), `seasons`
//! (heating season, lazy carry-forward), `import` (bulk legacy import),
//! `balances` (accounts and Σ balance per branch/utility/tariff),
//! `calendar` (UTC civil dates), `keys`, `txn`.
//!
//! Every command runs against a [`Scratch`] overlay: its writes reach the
//! transaction only if it succeeds, so a refusal writes nothing but its
//! request entry, by construction.

mod accounts;
pub mod balances;
pub mod bank_recon;
pub mod calendar;
mod cards;
pub mod drills;
mod import;
mod invoices;
mod keys;
mod ledger;
pub mod levels;
mod payments;
mod purchases;
mod reports;
pub mod season_bill;
mod seasons;
pub mod statements;
mod tariffs;
pub mod txn;

#[cfg(test)]
mod tests;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use billdb_api::error::{ApiError, ErrorCode};

pub use accounts::{Account, LastPurchase, UTILITIES, get_account};
pub use cards::{Card, CardCheck, get_card, verify_card};
pub use import::{IMPORT_ITEMS_MAX, ImportAccount, ImportRecord};
pub use invoices::{Invoice, get_invoice, is_assigned_form};
pub use ledger::{
    LIST_LIMIT_MAX, Record, RecordMeta, RecordPage, RecordQuery, Segment, get_record, list_records,
    parse_record_id, record_id, segment_boundary,
};
pub use reports::{
    Drills, GroupBy, Report, ReportLine, bank_daily_report, monthly_report, monthly_report_with,
};
pub use seasons::{Season, current_season};
pub use tariffs::{TariffSpec, get_tariff, year_units};
pub use txn::{Family, Get, MemTxn, ReadView, Scratch, Txn, WriteSet};

use crate::types::Command;

/// Every domain column family, in a fixed order (snapshots, digests).
/// Append only: snapshot files store the index into this list.
/// (The declaration order of [`Family`]; `txn::FAMILY_ORDER`.)
pub const FAMILIES: &[Family] = &txn::FAMILY_ORDER;

/// How a purchase is asked for: pay exactly this money, or buy exactly
/// these units (priced by the server with the account's tariff).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Buy {
    Money(#[serde(with = "billdb_api::money::decimal_compact")] Decimal),
    Units(#[serde(with = "billdb_api::money::decimal_compact")] Decimal),
}

/// What a client asked for, validated at the edge (and checked again here
/// where stored state depends on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    OpenAccount {
        account_id: String,
        name: String,
        address: String,
        branch: String,
        utility: String,
        meter_id: String,
        tariff_id: String,
    },
    Payment {
        account_id: String,
        #[serde(with = "billdb_api::money::decimal_compact")]
        amount: Decimal,
        bank_code: String,
        bank_ref: String,
    },
    /// Contact data (and the heated area of a heat account); `None` keeps.
    UpdateContact {
        account_id: String,
        name: Option<String>,
        address: Option<String>,
        phone: Option<String>,
        area: Option<Decimal>,
    },
    IssueCard {
        account_id: String,
        card_no: String,
    },
    /// Replace the active card `card_no` by `new_card_no`; the old card is
    /// refused (CARD_REPLACED) from then on.
    ReplaceCard {
        card_no: String,
        new_card_no: String,
        reason: String,
    },
    /// A sale by card (preferred) or by account.
    Purchase {
        card_no: Option<String>,
        account_id: Option<String>,
        buy: Buy,
        confirm_duplicate: bool,
    },
    /// A charge (heating) that the account owes: balance decreases.
    PostCharge {
        account_id: String,
        #[serde(with = "billdb_api::money::decimal_compact")]
        amount: Decimal,
        period: String,
        reason: String,
    },
    /// Re-issue the credit of the latest purchase that was not loaded (no
    /// money, same card seq, once).
    Reissue {
        record_id: String,
    },
    ConfirmLoaded {
        record_id: String,
    },
    /// A compensating record for `record_id` (once per record).
    Reverse {
        record_id: String,
        reason: String,
    },
    /// A signed correction of the balance, with a reason.
    Adjust {
        account_id: String,
        #[serde(with = "billdb_api::money::decimal_compact")]
        amount: Decimal,
        reason: String,
    },
    Suspend {
        account_id: String,
        reason: String,
    },
    Resume {
        account_id: String,
    },
    Close {
        account_id: String,
        reason: String,
    },
    /// Records with `ts_ms >= boundary_ms` are the recent segment.
    SetSegmentBoundary {
        boundary_ms: i64,
    },
    /// Open a heating season: carry-forward of every heat account (lazy).
    OpenHeatingSeason {
        season_id: String,
    },
    Import {
        accounts: Vec<ImportAccount>,
        records: Vec<ImportRecord>,
    },
    /// Add (or replace) the version of `tariff_id` effective from
    /// `effective_from_ms`, or from the command's own time when it is
    /// [`EFFECTIVE_FROM_COMMAND_TIME`] (the default "now": a retry with the
    /// same request_id carries the same op, and every replica resolves it
    /// to the same `ts_ms`).
    DefineTariff {
        tariff_id: String,
        tariff: TariffSpec,
        effective_from_ms: i64,
    },
    PrintInvoice {
        invoice_no: String,
    },
    /// Raise the open season's heating charge of these accounts
    /// (`season_bill`; at most `season_bill::BILL_BATCH_MAX`). New ops go
    /// last: the log's encoding numbers variants in order.
    BillSeason {
        season_id: String,
        account_ids: Vec<String>,
    },
    /// The summary of a failover drill (`billdb drill run`), kept as the
    /// last drill of its scenario (`drills.rs`). Appended last: the variant
    /// index is the stored encoding.
    RecordDrill {
        summary: Box<drills::DrillSummary>,
    },
    /// The result of matching a bank's statement against one business
    /// day of its payments (`bank_recon`), kept with who and when.
    /// Appended last: the variant index is the stored encoding.
    RecordReconciliation {
        reconciliation: Box<bank_recon::Reconciliation>,
    },
    /// Raise the cluster's op level (`levels`): proposed by the leader once
    /// every member's build applies that level. Appended last.
    SetClusterLevel {
        level: u32,
    },
}

/// `DefineTariff::effective_from_ms` meaning "from the command's time"
/// (outside the range a client may give, `calendar::TS_MIN_MS..`).
pub const EFFECTIVE_FROM_COMMAND_TIME: i64 = i64::MIN;

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::OpenAccount { .. } => "open_account",
            Op::Payment { .. } => "payment",
            Op::UpdateContact { .. } => "update_contact",
            Op::IssueCard { .. } => "issue_card",
            Op::ReplaceCard { .. } => "replace_card",
            Op::Purchase { .. } => "purchase",
            Op::PostCharge { .. } => "post_charge",
            Op::Reissue { .. } => "reissue",
            Op::ConfirmLoaded { .. } => "confirm_loaded",
            Op::Reverse { .. } => "reverse",
            Op::Adjust { .. } => "adjust",
            Op::Suspend { .. } => "suspend",
            Op::Resume { .. } => "resume",
            Op::Close { .. } => "close",
            Op::SetSegmentBoundary { .. } => "set_segment_boundary",
            Op::OpenHeatingSeason { .. } => "open_heating_season",
            Op::Import { .. } => "import",
            Op::DefineTariff { .. } => "define_tariff",
            Op::PrintInvoice { .. } => "print_invoice",
            Op::BillSeason { .. } => "bill_season",
            Op::RecordDrill { .. } => "record_drill",
            Op::RecordReconciliation { .. } => "record_reconciliation",
            Op::SetClusterLevel { .. } => "set_cluster_level",
        }
    }

    /// Fingerprint of the payload for exactly-once: same request_id with a
    /// different fingerprint is an IDEMPOTENCY_CONFLICT.
    pub fn fingerprint(&self) -> [u8; 32] {
        let bytes = crate::codec::encode(self).unwrap_or_default();
        Sha256::digest(bytes).into()
    }
}

/// The result of a command, stored with its request_id and returned to
/// every retry of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    AccountOpened {
        account_id: String,
        opened_ms: i64,
    },
    PaymentPosted {
        account_id: String,
        record_seq: u64,
        #[serde(with = "billdb_api::money::decimal_compact")]
        amount: Decimal,
        #[serde(with = "billdb_api::money::decimal_compact")]
        balance: Decimal,
        invoice_no: String,
    },
    /// Contact update, suspend, resume, close: the account after it.
    AccountUpdated {
        account: Box<Account>,
    },
    CardIssued {
        card: Box<Card>,
    },
    CardReplaced {
        old: Box<Card>,
        new: Box<Card>,
    },
    /// Purchase, charge, reissue, reversal, adjustment: the new record.
    RecordPosted {
        record: Box<Record>,
        #[serde(with = "billdb_api::money::decimal_compact")]
        balance: Decimal,
        /// e.g. `CREDIT_NOT_LOADED` when the previous sale was never loaded.
        warnings: Vec<String>,
    },
    CreditLoaded {
        record_id: String,
        already_loaded: bool,
    },
    BoundarySet {
        boundary_ms: i64,
    },
    SeasonOpened {
        season: Box<Season>,
    },
    Imported {
        accounts: u32,
        records: u32,
    },
    TariffDefined {
        tariff_id: String,
        versions: u32,
    },
    InvoicePrinted {
        invoice: Box<Invoice>,
        reprint: bool,
    },
    Refused(ApiError),
    /// One season bill command (new outcomes go last: stored outcomes are
    /// encoded with their variant's number).
    SeasonBilled {
        season_id: String,
        billed: u32,
        skipped: u32,
        already: u32,
        #[serde(with = "billdb_api::money::decimal_compact")]
        amount: Decimal,
    },
    /// A drill summary stored (after `Refused`: the variant index is the
    /// stored encoding).
    DrillRecorded {
        scenario: String,
        recorded_ms: i64,
    },
    /// A bank reconciliation stored (appended last: the variant index is
    /// the stored encoding).
    ReconciliationRecorded {
        bank_code: String,
        day: String,
        recorded_ms: i64,
        /// Lines or payments someone has to act on.
        differences: u64,
    },
    /// The cluster's op level, `from` what it was (equal: already there).
    ClusterLevelSet {
        from: u32,
        level: u32,
    },
}

fn json_with(result: &str, v: impl Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(v).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("result".into(), serde_json::Value::String(result.into()));
    }
    v
}

impl Outcome {
    /// The HTTP JSON body (decimals as strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Outcome::AccountOpened {
                account_id,
                opened_ms,
            } => {
                json!({"result":"account_opened","account_id":account_id,"opened_ms":opened_ms})
            }
            Outcome::PaymentPosted {
                account_id,
                record_seq,
                amount,
                balance,
                invoice_no,
            } => json!({
                "result":"payment_posted","account_id":account_id,"seq":record_seq,
                "record_id": record_id(account_id, *record_seq),
                "amount":amount.to_string(),"balance":balance.to_string(),"invoice_no":invoice_no}),
            Outcome::AccountUpdated { account } => {
                json!({"result":"account_updated","account":account})
            }
            Outcome::CardIssued { card } => json!({"result":"card_issued","card":card}),
            Outcome::CardReplaced { old, new } => {
                json!({"result":"card_replaced","old_card":old,"card":new})
            }
            Outcome::RecordPosted {
                record,
                balance,
                warnings,
            } => json!({
                "result":"record_posted",
                "record_id": record_id(&record.account_id, record.seq),
                "record":record,"balance":balance.to_string(),"warnings":warnings}),
            Outcome::CreditLoaded {
                record_id,
                already_loaded,
            } => {
                json!({"result":"credit_loaded","record_id":record_id,"already_loaded":already_loaded})
            }
            Outcome::BoundarySet { boundary_ms } => {
                json!({"result":"boundary_set","boundary_ms":boundary_ms})
            }
            Outcome::SeasonOpened { season } => json_with("season_opened", season),
            Outcome::Imported { accounts, records } => {
                json!({"result":"imported","accounts":accounts,"records":records})
            }
            Outcome::TariffDefined {
                tariff_id,
                versions,
            } => json!({"result":"tariff_defined","tariff_id":tariff_id,"versions":versions}),
            Outcome::InvoicePrinted { invoice, reprint } => {
                json!({"result":"invoice_printed","invoice":invoice,"reprint":reprint,"print_count":invoice.print_count})
            }
            Outcome::Refused(e) => serde_json::to_value(e).unwrap_or_default(),
            Outcome::SeasonBilled {
                season_id,
                billed,
                skipped,
                already,
                amount,
            } => json!({"result":"season_billed","season_id":season_id,"billed":billed,
                "skipped":skipped,"already":already,"amount":amount.to_string()}),
            Outcome::DrillRecorded {
                scenario,
                recorded_ms,
            } => {
                json!({"result":"drill_recorded","scenario":scenario,"recorded_ms":recorded_ms})
            }
            Outcome::ReconciliationRecorded {
                bank_code,
                day,
                recorded_ms,
                differences,
            } => json!({"result":"reconciliation_recorded","bank_code":bank_code,"date":day,
                "recorded_ms":recorded_ms,"differences":differences}),
            Outcome::ClusterLevelSet { from, level } => {
                json!({"result":"cluster_level_set","from":from,"level":level})
            }
        }
    }
}

/// Why an operation did not produce an outcome: refused (a client-visible
/// code, nothing written) or a storage error.
#[derive(Debug)]
pub(crate) enum Fail {
    Io(std::io::Error),
    Refused(ApiError),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Io(e)
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail::Refused(e)
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

pub(crate) fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Res<T> {
    Err(Fail::Refused(ApiError::new(code, message)))
}

/// What an operation knows about the command it runs for.
pub(crate) struct Ctx<'a> {
    pub cmd: &'a Command,
}

impl Ctx<'_> {
    pub fn ts(&self) -> i64 {
        self.cmd.ts_ms
    }
    /// The branch of the caller, or the account's branch when the caller
    /// has none (bank, app, ops).
    pub fn branch(&self, account: &Account) -> String {
        if self.cmd.branch.is_empty() {
            account.branch.clone()
        } else {
            self.cmd.branch.clone()
        }
    }
    /// The caller's channel, or the op's natural one.
    pub fn channel(&self) -> String {
        if !self.cmd.channel.is_empty() {
            return self.cmd.channel.clone();
        }
        match self.cmd.op {
            Op::Payment { .. } => "bank",
            Op::Import { .. } => "import",
            _ => "counter",
        }
        .to_string()
    }
}

/// The stored answer to a request_id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RequestEntry {
    fingerprint: [u8; 32],
    log_index: u64,
    outcome: Outcome,
}

fn dispatch<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    match &ctx.cmd.op {
        Op::OpenAccount { .. } => accounts::open(txn, ctx),
        Op::UpdateContact { .. } => accounts::update_contact(txn, ctx),
        Op::Suspend { .. } | Op::Resume { .. } | Op::Close { .. } => accounts::lifecycle(txn, ctx),
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

/// What applying a command whose request_id is already in the exactly-once
/// table gives, without applying it.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// The same payload: the original outcome and the log index it was
    /// decided at.
    Original { outcome: Outcome, log_index: u64 },
    /// A different payload under the same request_id: IDEMPOTENCY_CONFLICT.
    Conflict(ApiError),
}

/// `Some` when `request_id` was already applied: what [`apply_indexed`]
/// would answer for (`request_id`, `op`) now, and forever after — an entry
/// of the exactly-once table is written once, when its command is first
/// applied, and never changed or removed. So any replica that has applied
/// it may answer a redelivery from its own state, with no Raft round: the
/// answer is the one a replay through the log would give. `None`: not
/// applied here (yet); the command must go through the log.
pub fn replayed<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
    op: &Op,
) -> Result<Option<Replay>, std::io::Error> {
    replayed_with(view, request_id, op.fingerprint())
}

fn replayed_with<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
    fingerprint: [u8; 32],
) -> Result<Option<Replay>, std::io::Error> {
    let Some(raw) = view.get(Family::Requests, &keys::request(request_id))? else {
        return Ok(None);
    };
    let prev: RequestEntry = keys::decode(&raw)?;
    Ok(Some(if prev.fingerprint == fingerprint {
        Replay::Original {
            outcome: prev.outcome,
            log_index: prev.log_index,
        }
    } else {
        Replay::Conflict(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!("request_id {request_id:?} was already used with a different payload"),
        ))
    }))
}

/// Look up the stored outcome of a request_id.
pub fn request_outcome<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
) -> Result<Option<Outcome>, std::io::Error> {
    match view.get(Family::Requests, &keys::request(request_id))? {
        Some(raw) => Ok(Some(keys::decode::<RequestEntry>(&raw)?.outcome)),
        None => Ok(None),
    }
}

/// Read a bincode value, if present.
pub(crate) fn read<G: Get + ?Sized, V: serde::de::DeserializeOwned>(
    view: &G,
    family: Family,
    key: &[u8],
) -> Result<Option<V>, std::io::Error> {
    match view.get(family, key)? {
        Some(raw) => Ok(Some(keys::decode(&raw)?)),
        None => Ok(None),
    }
}

pub(crate) fn write<T: Txn + ?Sized, V: Serialize>(
    txn: &mut T,
    family: Family,
    key: Vec<u8>,
    value: &V,
) -> Result<(), std::io::Error> {
    txn.put(family, key, keys::encode(value)?);
    Ok(())
}

/// Checked money arithmetic: an overflow is a refusal, never a panic.
pub(crate) fn add(a: Decimal, b: Decimal) -> Res<Decimal> {
    match a.checked_add(b) {
        Some(v) => Ok(v),
        None => refuse(ErrorCode::ArithmeticOverflow, "amount out of range"),
    }
}

pub(crate) fn sub(a: Decimal, b: Decimal) -> Res<Decimal> {
    match a.checked_sub(b) {
        Some(v) => Ok(v),
        None => refuse(ErrorCode::ArithmeticOverflow, "amount out of range"),
    }
}

/// A short free-text field (reason, name, ...): bounded, no control chars.
pub(crate) fn check_text(field: &str, v: &str) -> Res<()> {
    if v.chars().count() > 200 || v.chars().any(char::is_control) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("{field}: at most 200 characters, no control characters"),
        );
    }
    Ok(())
}

/// An identifier: 1..=64 bytes, no control characters.
pub(crate) fn check_id(field: &str, v: &str) -> Res<()> {
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("{field}: must be 1..=64 bytes without control characters"),
        );
    }
    Ok(())
}

/// A positive money amount (2 dp, within limits).
pub(crate) fn check_amount(v: Decimal) -> Res<Decimal> {
    billdb_api::money::validate_amount(v).map_err(|e| Fail::Refused(e.into()))
}
