//! Ground floor: what a command asks for and what it answers. [`Op`] (with
//! [`Buy`]) is what a client asked for, [`Outcome`] the result stored with
//! its request_id and returned to every retry; both are replicated and
//! stored (their variants are numbered in declaration order: append only).
//! The data they carry lives in `model` (accounts, records, cards,
//! invoices, seasons) and `payloads` (tariff specs, import items, drill
//! summaries, reconciliations).
//!
//! Imports from the ground floor only (`model`, `payloads`).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use billdb_api::error::ApiError;

use super::model::{Account, Card, Invoice, Record, Season, record_id};
use super::payloads::{DrillSummary, ImportAccount, ImportRecord, Reconciliation, TariffSpec};

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
        summary: Box<DrillSummary>,
    },
    /// The result of matching a bank's statement against one business
    /// day of its payments (`bank_recon`), kept with who and when.
    /// Appended last: the variant index is the stored encoding.
    RecordReconciliation {
        reconciliation: Box<Reconciliation>,
    },
    /// Raise the cluster's op level (`levels`): proposed by the leader once
    /// every member's build applies that level. Appended last.
    SetClusterLevel {
        level: u32,
    },
    /// Index bank payments posted before the bank-day index existed
    /// (`bank_recon::index_payments`), at most
    /// `bank_recon::BACKFILL_BATCH_MAX` records (`account:seq`) per
    /// command, listed by the node driving the backfill. Appended last.
    IndexBankPayments {
        record_ids: Vec<String>,
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
            Op::IndexBankPayments { .. } => "index_bank_payments",
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
    /// One bank index backfill command: payments indexed now, already
    /// indexed, and records that were not bank payments (or are gone).
    BankPaymentsIndexed {
        indexed: u32,
        already: u32,
        skipped: u32,
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
            Outcome::BankPaymentsIndexed {
                indexed,
                already,
                skipped,
            } => json!({"result":"bank_payments_indexed","indexed":indexed,
                "already":already,"skipped":skipped}),
        }
    }
}
