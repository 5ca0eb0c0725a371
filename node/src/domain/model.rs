//! Ground floor: the plain data records the domain stores and answers
//! with, shared by several modules: an [`Account`] (with its
//! [`LastPurchase`] and [`AccountSeason`]), the heating [`Season`], a ledger
//! [`Record`] and its [`RecordMeta`], a [`Card`], an [`Invoice`]; record ids
//! (`account_id:seq`). Only the data and the accessors that need nothing
//! but the data: the rules and the storage of each live in its module
//! (`accounts`, `seasons`, `ledger`, `cards`, `invoices`).
//!
//! Imports no sibling module: plain types over `billdb_api`, serde and
//! `rust_decimal`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::tariff::TierPiece;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Account {
    pub account_id: String,
    pub name: String,
    pub address: String,
    pub phone: String,
    pub branch: String,
    pub utility: String,
    pub meter_id: String,
    pub tariff_id: String,
    /// Heated area (heat accounts), m².
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub area: Decimal,
    /// active | suspended | closed
    pub status: String,
    /// Receivable balance: payments and credits add, charges subtract.
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub balance: Decimal,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    /// Sequence number of the account's newest record (0: none yet).
    pub last_seq: u64,
    /// The purchase sequence number last written to the card (0: none).
    pub last_card_seq: u64,
    /// The newest purchase, if any, summarised (see [`LastPurchase`]).
    pub last_purchase: Option<LastPurchase>,
    /// The active card, if any (one meter, one card).
    pub active_card: Option<String>,
    /// Generation of the newest card issued to this account (0: none).
    pub card_generation: u32,
    /// The heating season this account was carried forward into (heat).
    pub season: Option<AccountSeason>,
}

/// The account's newest purchase, kept beside the account so a sale's
/// duplicate check and unloaded-credit check read no record: always equal
/// to that record and its `RecordMeta` (a purchase sets it; confirming the
/// credit loaded, and reversing the purchase, update it; the domain property
/// test checks the equality after every step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastPurchase {
    pub seq: u64,
    pub card_no: String,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    pub ts_ms: i64,
    pub request_id: String,
    pub loaded: bool,
    pub reversed: bool,
}

impl LastPurchase {
    pub(crate) fn of(r: &Record, loaded: bool) -> Self {
        LastPurchase {
            seq: r.seq,
            card_no: r.card_no.clone(),
            amount: r.amount,
            ts_ms: r.ts_ms,
            request_id: r.request_id.clone(),
            loaded,
            reversed: false,
        }
    }
}

impl Account {
    /// `seq` of the newest purchase record, if any.
    pub fn last_purchase_seq(&self) -> Option<u64> {
        self.last_purchase.as_ref().map(|l| l.seq)
    }

    /// The summary of purchase `seq`, when it is the newest purchase.
    pub(crate) fn last_purchase_mut(&mut self, seq: u64) -> Option<&mut LastPurchase> {
        self.last_purchase.as_mut().filter(|l| l.seq == seq)
    }

    pub fn is_closed(&self) -> bool {
        self.status == "closed"
    }
}

/// The current heating season (global).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Season {
    /// 1, 2, … in opening order.
    pub number: u32,
    pub season_id: String,
    pub opened_ms: i64,
}

/// An account's carry-forward into a season.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountSeason {
    pub number: u32,
    pub season_id: String,
    /// The balance carried forward (negative: arrears).
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub opening_balance: Decimal,
}

/// One ledger entry. Never changed once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    pub account_id: String,
    /// Per-account record number, 1, 2, …
    pub seq: u64,
    /// purchase | payment | charge | reissue | reversal | adjustment
    pub kind: String,
    /// Signed money: a reversal carries the negated amount.
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    /// Signed units (purchases, reissues, their reversals).
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub units: Decimal,
    pub tiers: Vec<TierPiece>,
    pub tariff_id: String,
    pub operator_id: String,
    pub branch: String,
    /// counter | bank | app | import
    pub channel: String,
    pub request_id: String,
    pub ts_ms: i64,
    /// Empty when the record has no invoice.
    pub invoice_no: String,
    pub bank_code: String,
    pub bank_ref: String,
    pub card_no: String,
    /// The purchase sequence number written to the card (purchases and
    /// their reissues; a reissue carries its purchase's card_seq).
    pub card_seq: u64,
    /// The record this one reverses or reissues.
    pub refers_to: Option<u64>,
    pub reason: String,
    /// The change this record made to the account balance.
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub balance_effect: Decimal,
}

/// The mutable state about a record, kept beside it (the record itself is
/// immutable): where it is, and whether it was loaded, reissued, reversed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub ts_ms: i64,
    pub kind: String,
    pub loaded: bool,
    pub reissued_by: Option<u64>,
    pub reversed_by: Option<u64>,
}

/// `account_id:seq`.
pub fn record_id(account_id: &str, seq: u64) -> String {
    format!("{account_id}:{seq}")
}

pub fn parse_record_id(record_id: &str) -> Option<(&str, u64)> {
    let (account, seq) = record_id.rsplit_once(':')?;
    if account.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((account, seq.parse().ok()?))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Card {
    pub card_no: String,
    pub account_id: String,
    /// 1, 2, … (+1 at each replacement).
    pub generation: u32,
    /// active | replaced | revoked
    pub status: String,
    pub issued_ms: i64,
    pub replaced_ms: Option<i64>,
    pub replaced_by: Option<String>,
    pub revoked_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
    pub invoice_no: String,
    pub account_id: String,
    pub seq: u64,
    pub kind: String,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub units: Decimal,
    pub issued_ms: i64,
    /// 0 until first printed.
    pub print_count: u32,
    pub first_printed_ms: Option<i64>,
    pub last_printed_ms: Option<i64>,
}
