//! Ground floor: the data an [`Op`](super::ops::Op) carries beyond plain
//! fields: a tariff definition ([`TariffSpec`]), the items of a bulk import
//! ([`ImportAccount`], [`ImportRecord`]), a drill summary
//! ([`DrillSummary`]) and a bank reconciliation ([`Reconciliation`], with
//! its [`Matching`], [`Sum`], [`Item`] and [`Class`]). Only the data and the
//! accessors that need nothing but the data; what each means and how it is
//! applied lives in its module (`tariffs`, `import`, `drills`,
//! `bank_recon`, which re-export them where code outside the domain names
//! them).
//!
//! Imports no sibling module: plain types over `billdb_api`, serde and
//! `rust_decimal`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::tariff::{Tariff, TariffKind, Tier};

/// A tariff as carried in the Raft log: a plain (bincode-friendly) form of
/// `billdb_api::tariff::TariffKind` (whose serde form is internally tagged,
/// which bincode cannot read back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TariffSpec {
    Flat {
        price: Decimal,
    },
    /// (up_to_units, price) per tier; only the last is unbounded (`None`).
    Ladder {
        tiers: Vec<(Option<Decimal>, Decimal)>,
    },
    /// Heating per m² of heated area per season (`season_bill`).
    Area {
        price_per_m2: Decimal,
        suspended_share: Decimal,
    },
}

impl TariffSpec {
    pub fn to_tariff(&self, tariff_id: &str) -> Tariff {
        Tariff {
            tariff_id: tariff_id.to_string(),
            kind: match self {
                TariffSpec::Flat { price } => TariffKind::Flat { price: *price },
                TariffSpec::Ladder { tiers } => TariffKind::Ladder {
                    tiers: tiers
                        .iter()
                        .map(|(up_to_units, price)| Tier {
                            up_to_units: *up_to_units,
                            price: *price,
                        })
                        .collect(),
                },
                TariffSpec::Area {
                    price_per_m2,
                    suspended_share,
                } => TariffKind::Area {
                    price_per_m2: *price_per_m2,
                    suspended_share: *suspended_share,
                },
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportAccount {
    pub account_id: String,
    pub name: String,
    pub address: String,
    pub branch: String,
    pub utility: String,
    pub meter_id: String,
    pub tariff_id: String,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub area: Decimal,
    /// active | suspended | closed
    pub status: String,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub balance: Decimal,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    /// The legacy active card, if any, with its generation.
    pub card_no: Option<String>,
    pub card_generation: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportRecord {
    pub account_id: String,
    /// purchase | payment | charge | adjustment
    pub kind: String,
    /// Signed only for adjustments.
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub units: Decimal,
    pub ts_ms: i64,
    pub operator_id: String,
    pub branch: String,
    pub tariff_id: String,
    /// Legacy invoice number (empty: one is assigned for purchases and
    /// payments).
    pub invoice_no: String,
    pub bank_code: String,
    pub bank_ref: String,
    pub card_no: String,
    pub card_seq: u64,
}

/// What a drill reported, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrillSummary {
    pub scenario: String,
    /// `PASS` or `FAILED`.
    pub result: String,
    /// The drill's start (Unix ms, the drill tool's clock).
    pub started_ms: i64,
    /// Write gap: fault to the first acknowledged write (ms).
    pub write_gap_ms: u64,
    pub read_gap_ms: u64,
    /// Fault to every node ready (ms).
    pub health_ms: u64,
    pub acknowledged: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub digests_equal: bool,
    /// SHA-256 (hex) of the report's canonical data, as signed.
    pub report_sha256: String,
    /// Who ran it, as the drill tool was told (`--operator`).
    pub run_by: String,
}

/// Σ of one outcome class: lines, the file's amount and billdb's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sum {
    pub count: u64,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub file_amount: Decimal,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub billdb_amount: Decimal,
}

/// What a line (or a billdb payment) came out as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Class {
    /// In the file, not a payment of this bank's day in billdb, and its
    /// reference was never posted: post it.
    MissingInBillDb,
    /// In the file; billdb holds the reference on another day.
    PostedOtherDay,
    /// A payment of the day in billdb that the file does not have.
    MissingInBank,
    /// Same reference, different amount (the account may differ too).
    AmountMismatch,
    /// Same reference and amount, different account.
    AccountMismatch,
    /// In the file, but billdb reversed the payment.
    ReversedInBillDb,
    /// Same reference, amount and account.
    Matched,
    /// Reversed in billdb and not in the file: nothing to do.
    ReversedNotInFile,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::MissingInBillDb => "missing_in_billdb",
            Class::PostedOtherDay => "posted_other_day",
            Class::MissingInBank => "missing_in_bank",
            Class::AmountMismatch => "amount_mismatch",
            Class::AccountMismatch => "account_mismatch",
            Class::ReversedInBillDb => "reversed_in_billdb",
            Class::Matched => "matched",
            Class::ReversedNotInFile => "reversed_not_in_file",
        }
    }

    /// A difference someone has to act on.
    pub fn is_difference(self) -> bool {
        !matches!(self, Class::Matched | Class::ReversedNotInFile)
    }
}

/// One itemised difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub class: Class,
    pub bank_ref: String,
    /// The file's side (absent for `MissingInBank`).
    pub line: Option<u32>,
    pub file_account_id: Option<String>,
    pub file_amount: Option<Decimal>,
    pub file_time: Option<String>,
    /// billdb's side (absent for `MissingInBillDb`).
    pub record_id: Option<String>,
    pub billdb_account_id: Option<String>,
    pub billdb_amount: Option<Decimal>,
    pub billdb_ts_ms: Option<i64>,
    /// The reversal record, or the day it was posted (`PostedOtherDay`).
    pub reversal_record_id: Option<String>,
    pub billdb_day: Option<String>,
    pub request_id: Option<String>,
}

/// The outcome of matching one statement against one bank's day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matching {
    /// Every line of the file.
    pub file: Sum,
    /// Every payment of the day in billdb that stands (not reversed).
    pub billdb: Sum,
    pub matched: Sum,
    pub missing_in_billdb: Sum,
    pub posted_other_day: Sum,
    pub missing_in_bank: Sum,
    pub amount_mismatch: Sum,
    pub account_mismatch: Sum,
    pub reversed_in_billdb: Sum,
    pub reversed_not_in_file: Sum,
    /// The differences (and reversed payments not in the file), ordered by
    /// class then bank_ref, at most `bank_recon::ITEMS_MAX`.
    pub items: Vec<Item>,
    pub items_truncated: bool,
}

impl Matching {
    /// Lines or payments in a class someone has to act on.
    pub fn differences(&self) -> u64 {
        self.missing_in_billdb.count
            + self.posted_other_day.count
            + self.missing_in_bank.count
            + self.amount_mismatch.count
            + self.account_mismatch.count
            + self.reversed_in_billdb.count
    }
}

/// A stored reconciliation: the matching plus what it was of and who
/// did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub bank_code: String,
    /// The business day `YYYY-MM-DD` (UTC, as the bank-daily report).
    pub day: String,
    /// SHA-256 (hex) of the statement file as sent, and its name if given.
    pub file_sha256: String,
    pub file_name: String,
    /// The applied log index the matching read billdb's state at.
    pub as_of_index: u64,
    pub matching: Matching,
    /// The role of the token that asked (ops, bank).
    pub role: String,
    /// Set by apply from the command: its time and operator.
    pub recorded_ms: i64,
    pub recorded_by: String,
}
