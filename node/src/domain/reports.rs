//! Reports, maintained incrementally: every record posted adds itself to a
//! handful of report rows, so a month's report is one short range scan of
//! rows, never a scan of records. May touch the `reports` family only.
//!
//! Row keys (ids length-prefixed, see `keys::with_id`):
//! * `M` ‖ month `YYYY-MM` ‖ dim ‖ value ‖ kind, dim one of
//!   `o` (operator), `b` (branch), `t` (tariff), `k` (kind: value = kind;
//!   this gives the reissued and reversed totals);
//! * `D` ‖ day `YYYY-MM-DD` ‖ bank_code ‖ kind, for records carrying a bank
//!   code (payments and their reversals): the bank's daily reconciliation.
//!
//! A row is (count, amount, units) summed over the records it covers, with
//! their signs (a reversal subtracts), by the record's own timestamp.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::ledger::Record;
use super::txn::{Family, Get, ReadView, SCAN_LIMIT_MAX, Txn};
use super::{Res, add, calendar, keys, read, write};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub count: u64,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub units: Decimal,
}

/// What a monthly report is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Operator,
    Branch,
    Tariff,
    Kind,
}

impl GroupBy {
    fn dim(self) -> u8 {
        match self {
            GroupBy::Operator => b'o',
            GroupBy::Branch => b'b',
            GroupBy::Tariff => b't',
            GroupBy::Kind => b'k',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    /// The operator, branch, tariff, kind or bank the line is about.
    pub value: String,
    pub kind: String,
    pub count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub units: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub period: String,
    pub lines: Vec<ReportLine>,
    /// More rows than one report returns ([`SCAN_LIMIT_MAX`]).
    pub truncated: bool,
}

fn month_key(month: &str, dim: u8) -> Vec<u8> {
    let mut k = vec![b'M'];
    keys::push_id(&mut k, month);
    k.push(dim);
    k
}

fn day_key(day: &str) -> Vec<u8> {
    let mut k = vec![b'D'];
    keys::push_id(&mut k, day);
    k
}

/// The row keys a record contributes to.
pub(crate) fn row_keys(r: &Record) -> Vec<Vec<u8>> {
    let month = calendar::month_str(r.ts_ms);
    let mut out = Vec::with_capacity(5);
    for (dim, value) in [
        (b'o', &r.operator_id),
        (b'b', &r.branch),
        (b't', &r.tariff_id),
        (b'k', &r.kind),
    ] {
        let mut k = month_key(&month, dim);
        keys::push_id(&mut k, value);
        keys::push_id(&mut k, &r.kind);
        out.push(k);
    }
    if !r.bank_code.is_empty() {
        let mut k = day_key(&calendar::day_str(r.ts_ms));
        keys::push_id(&mut k, &r.bank_code);
        keys::push_id(&mut k, &r.kind);
        out.push(k);
    }
    out
}

/// Add one record to its report rows (a few point reads and writes).
pub(crate) fn add_record<T: Txn + ?Sized>(txn: &mut T, r: &Record) -> Res<()> {
    for key in row_keys(r) {
        let mut row: ReportRow = read(txn, Family::Reports, &key)?.unwrap_or_default();
        row.add(r)?;
        write(txn, Family::Reports, key, &row)?;
    }
    Ok(())
}

impl ReportRow {
    fn add(&mut self, r: &Record) -> Res<()> {
        self.count += 1;
        self.amount = add(self.amount, r.amount)?;
        self.units = add(self.units, r.units)?;
        Ok(())
    }

    fn merge(&mut self, other: &ReportRow) -> Res<()> {
        self.count += other.count;
        self.amount = add(self.amount, other.amount)?;
        self.units = add(self.units, other.units)?;
        Ok(())
    }
}

/// Report-row changes summed in memory, written once per row: a bulk
/// import of hundreds of records touches a handful of rows, and reading
/// and rewriting each row per record was most of its cost. The rows end
/// up exactly as [`add_record`] per record leaves them (exact decimal
/// sums; the map is ordered, so the writes are too).
#[derive(Debug, Default)]
pub(crate) struct RowDeltas {
    rows: std::collections::BTreeMap<Vec<u8>, ReportRow>,
}

impl RowDeltas {
    pub(crate) fn add_record(&mut self, r: &Record) -> Res<()> {
        for key in row_keys(r) {
            self.rows.entry(key).or_default().add(r)?;
        }
        Ok(())
    }

    /// Add the sums to the stored rows.
    pub(crate) fn write<T: Txn + ?Sized>(self, txn: &mut T) -> Res<()> {
        for (key, delta) in self.rows {
            let mut row: ReportRow = read(txn, Family::Reports, &key)?.unwrap_or_default();
            row.merge(&delta)?;
            write(txn, Family::Reports, key, &row)?;
        }
        Ok(())
    }
}

/// Parse `n` length-prefixed strings after a prefix.
fn split_tail(mut tail: &[u8], n: usize) -> Option<Vec<String>> {
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let (&len, rest) = tail.split_first()?;
        let len = len as usize;
        if rest.len() < len {
            return None;
        }
        parts.push(String::from_utf8_lossy(&rest[..len]).into_owned());
        tail = &rest[len..];
    }
    if !tail.is_empty() {
        return None;
    }
    Some(parts)
}

fn scan_report<R: ReadView + ?Sized>(
    view: &R,
    prefix: Vec<u8>,
    period: &str,
    fixed_value: Option<&str>,
) -> Result<Report, std::io::Error> {
    let end = keys::prefix_end(&prefix);
    let items = view.scan(Family::Reports, &prefix, &end, false, SCAN_LIMIT_MAX + 1)?;
    let truncated = items.len() > SCAN_LIMIT_MAX;
    let mut lines = Vec::with_capacity(items.len().min(SCAN_LIMIT_MAX));
    for (k, v) in items.into_iter().take(SCAN_LIMIT_MAX) {
        let n = if fixed_value.is_some() { 1 } else { 2 };
        let Some(mut parts) = k.get(prefix.len()..).and_then(|t| split_tail(t, n)) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "malformed report key",
            ));
        };
        let kind = parts.pop().unwrap_or_default();
        let value = match fixed_value {
            Some(v) => v.to_string(),
            None => parts.pop().unwrap_or_default(),
        };
        let row: ReportRow = keys::decode(&v)?;
        lines.push(ReportLine {
            value,
            kind,
            count: row.count,
            amount: row.amount,
            units: row.units,
        });
    }
    Ok(Report {
        period: period.to_string(),
        lines,
        truncated,
    })
}

/// Monthly report (`month` = `YYYY-MM`): one line per (value, kind).
pub fn monthly_report<R: ReadView + ?Sized>(
    view: &R,
    month: &str,
    group_by: GroupBy,
) -> Result<Report, std::io::Error> {
    scan_report(view, month_key(month, group_by.dim()), month, None)
}

/// A bank's (or every bank's) payments and reversals of one day
/// (`day` = `YYYY-MM-DD`).
pub fn bank_daily_report<R: ReadView + ?Sized>(
    view: &R,
    day: &str,
    bank_code: Option<&str>,
) -> Result<Report, std::io::Error> {
    let mut prefix = day_key(day);
    if let Some(b) = bank_code {
        keys::push_id(&mut prefix, b);
        return scan_report(view, prefix, day, Some(b));
    }
    scan_report(view, prefix, day, None)
}

/// One row, for tests and point lookups.
#[allow(dead_code)]
pub(crate) fn row<G: Get + ?Sized>(
    view: &G,
    key: &[u8],
) -> Result<Option<ReportRow>, std::io::Error> {
    read(view, Family::Reports, key)
}
