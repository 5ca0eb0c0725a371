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
//! * `P` ‖ day ‖ bank_code ‖ bank_ref and `R` ‖ bank_code ‖ day ‖ …: the
//!   bank payment index and stored reconciliations
//!   ([`super::bank_recon`]);
//! * `m` ‖ month ‖ … as `M`, for the records of failover-drill accounts
//!   (branch `billdb_api::DRILL_BRANCH`): kept out of business reports
//!   unless asked for ([`Drills`]).
//!
//! A row is (count, amount, units) summed over the records it covers, with
//! their signs (a reversal subtracts), by the record's own timestamp.
//!
//! Imports the ground floor only; `ledger` (above) adds each record it
//! posts.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::context::{Res, add, read, write};
use super::model::Record;
use super::txn::{Family, Get, ReadView, SCAN_LIMIT_MAX, Txn};
use super::{calendar, keys};

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

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub period: String,
    pub lines: Vec<ReportLine>,
    /// More rows than one report returns ([`SCAN_LIMIT_MAX`]).
    pub truncated: bool,
}

/// Whether a monthly report covers the failover drills' records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drills {
    /// Business records only (the default).
    Exclude,
    /// Business and drill records.
    Include,
    /// Drill records only.
    Only,
}

/// The tag of a month's rows: `M` for business records, `m` for drills'.
fn month_tag(drill: bool) -> u8 {
    if drill { b'm' } else { b'M' }
}

/// `M` (or `m`) ‖ month ‖ dim, appended to `k`: the prefix of a month's
/// rows.
fn push_month_prefix_tagged(k: &mut Vec<u8>, tag: u8, month: impl AsRef<[u8]>, dim: u8) {
    k.push(tag);
    keys::push_id(k, month);
    k.push(dim);
}

/// `D` ‖ day, appended to `k`: the prefix of a day's bank rows.
fn push_day_prefix(k: &mut Vec<u8>, day: impl AsRef<[u8]>) {
    k.push(b'D');
    keys::push_id(k, day);
}

#[cfg(test)]
fn month_key(month: &str, dim: u8) -> Vec<u8> {
    let mut k = Vec::new();
    push_month_prefix_tagged(&mut k, b'M', month, dim);
    k
}

fn day_key(day: &str) -> Vec<u8> {
    let mut k = Vec::new();
    push_day_prefix(&mut k, day);
    k
}

/// The `D` row of one bank's records of one kind on one day.
pub(crate) fn bank_day_row_key(day: &str, bank_code: &str, kind: &str) -> Vec<u8> {
    let mut k = day_key(day);
    keys::push_id(&mut k, bank_code);
    keys::push_id(&mut k, kind);
    k
}

/// `YYYY-MM` and `YYYY-MM-DD` of `ts_ms`, written as digits (no
/// formatting machinery: bulk imports build these for every record).
/// Domain timestamps lie in years 1970..=9999 (`calendar::TS_MAX_MS`), so
/// the widths are fixed.
pub(crate) fn month_day(ts_ms: i64) -> ([u8; 7], [u8; 10]) {
    let (y, m, d) = calendar::civil(ts_ms);
    let y = y.clamp(0, 9999) as u32;
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let month = [
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
    ];
    let mut day = [b'-'; 10];
    day[..7].copy_from_slice(&month);
    day[8] = digit(d / 10);
    day[9] = digit(d);
    (month, day)
}

/// Call `f` with each row key a record contributes to, built in `key`
/// (reused: no allocation per key once it has grown).
fn for_each_row_key(r: &Record, key: &mut Vec<u8>, mut f: impl FnMut(&[u8]) -> Res<()>) -> Res<()> {
    let (month, day) = month_day(r.ts_ms);
    let tag = month_tag(r.branch == billdb_api::DRILL_BRANCH);
    for (dim, value) in [
        (b'o', &r.operator_id),
        (b'b', &r.branch),
        (b't', &r.tariff_id),
        (b'k', &r.kind),
    ] {
        key.clear();
        push_month_prefix_tagged(key, tag, month, dim);
        keys::push_id(key, value);
        keys::push_id(key, &r.kind);
        f(key)?;
    }
    if !r.bank_code.is_empty() {
        key.clear();
        push_day_prefix(key, day);
        keys::push_id(key, &r.bank_code);
        keys::push_id(key, &r.kind);
        f(key)?;
    }
    Ok(())
}

/// Add one record to its report rows (a few point reads and writes).
pub(crate) fn add_record<T: Txn + ?Sized>(txn: &mut T, r: &Record) -> Res<()> {
    let mut key = Vec::with_capacity(64);
    for_each_row_key(r, &mut key, |k| {
        let mut row: ReportRow = read(txn, Family::Reports, k)?.unwrap_or_default();
        row.add(r)?;
        write(txn, Family::Reports, k.to_vec(), &row)?;
        Ok(())
    })
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
/// sums). Rows are looked up by a key built in a reused buffer and kept in
/// a hash map; [`RowDeltas::write`] writes them in key order, so storage
/// never sees hash order.
#[derive(Debug, Default)]
pub(crate) struct RowDeltas {
    rows: std::collections::HashMap<Vec<u8>, ReportRow, foldhash::fast::RandomState>,
    key: Vec<u8>,
}

impl RowDeltas {
    pub(crate) fn add_record(&mut self, r: &Record) -> Res<()> {
        let rows = &mut self.rows;
        for_each_row_key(r, &mut self.key, |k| {
            match rows.get_mut(k) {
                Some(row) => row.add(r)?,
                None => {
                    let mut row = ReportRow::default();
                    row.add(r)?;
                    rows.insert(k.to_vec(), row);
                }
            }
            Ok(())
        })
    }

    /// Add the sums to the stored rows, in key order.
    pub(crate) fn write<T: Txn + ?Sized>(self, txn: &mut T) -> Res<()> {
        let mut rows: Vec<(Vec<u8>, ReportRow)> = self.rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, delta) in rows {
            let mut row: ReportRow = read(txn, Family::Reports, &key)?.unwrap_or_default();
            row.merge(&delta)?;
            write(txn, Family::Reports, key, &row)?;
        }
        Ok(())
    }
}

/// Parse `n` length-prefixed strings after a prefix.
/// The `n` length-prefixed ids a row key ends with (`None`: malformed).
pub(crate) fn split_tail(mut tail: &[u8], n: usize) -> Option<Vec<String>> {
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

/// Monthly report (`month` = `YYYY-MM`) of business records: one line
/// per (value, kind).
pub fn monthly_report<R: ReadView + ?Sized>(
    view: &R,
    month: &str,
    group_by: GroupBy,
) -> Result<Report, std::io::Error> {
    monthly_report_with(view, month, group_by, Drills::Exclude)
}

/// [`monthly_report`], with the drills' records left out, added, or alone.
pub fn monthly_report_with<R: ReadView + ?Sized>(
    view: &R,
    month: &str,
    group_by: GroupBy,
    drills: Drills,
) -> Result<Report, std::io::Error> {
    let prefix = |drill: bool| {
        let mut k = Vec::new();
        push_month_prefix_tagged(&mut k, month_tag(drill), month, group_by.dim());
        k
    };
    match drills {
        Drills::Exclude => scan_report(view, prefix(false), month, None),
        Drills::Only => scan_report(view, prefix(true), month, None),
        Drills::Include => {
            let mut a = scan_report(view, prefix(false), month, None)?;
            let b = scan_report(view, prefix(true), month, None)?;
            for l in b.lines {
                match a
                    .lines
                    .iter_mut()
                    .find(|x| x.value == l.value && x.kind == l.kind)
                {
                    Some(x) => {
                        x.count += l.count;
                        x.amount = add(x.amount, l.amount)
                            .map_err(|_| std::io::Error::other("report arithmetic overflow"))?;
                        x.units = add(x.units, l.units)
                            .map_err(|_| std::io::Error::other("report arithmetic overflow"))?;
                    }
                    None => a.lines.push(l),
                }
            }
            a.lines
                .sort_by(|x, y| (&x.value, &x.kind).cmp(&(&y.value, &y.kind)));
            a.truncated |= b.truncated;
            Ok(a)
        }
    }
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
pub(crate) fn row<G: Get + ?Sized>(
    view: &G,
    key: &[u8],
) -> Result<Option<ReportRow>, std::io::Error> {
    read(view, Family::Reports, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits written by hand are what `calendar` formats, over the
    /// whole range of domain timestamps and at month and year edges.
    #[test]
    fn month_and_day_digits_match_the_calendar_strings() {
        let mut samples: Vec<i64> = vec![
            calendar::TS_MIN_MS,
            calendar::TS_MAX_MS,
            calendar::days_ms(2024, 2, 29),
            calendar::days_ms(2025, 1, 1) - 1,
            calendar::days_ms(2026, 12, 31) + 86_399_999,
        ];
        samples.extend(
            (0..calendar::TS_MAX_MS)
                .step_by(86_400_000 * 37 + 12_345)
                .take(100_000),
        );
        for ts in samples {
            let (month, day) = month_day(ts);
            assert_eq!(month.as_slice(), calendar::month_str(ts).as_bytes(), "{ts}");
            assert_eq!(day.as_slice(), calendar::day_str(ts).as_bytes(), "{ts}");
        }
    }

    /// The row keys a record contributes to.
    fn row_keys(r: &Record) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_row_key(r, &mut Vec::new(), |k| {
            out.push(k.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    /// The keys are the documented layout: `M` ‖ month ‖ dim ‖ value ‖
    /// kind for the four dimensions, then `D` ‖ day ‖ bank ‖ kind.
    #[test]
    fn row_keys_follow_the_documented_layout() {
        let ts = calendar::days_ms(2026, 3, 7) + 3_600_000;
        let r = Record {
            account_id: "A1".into(),
            seq: 1,
            kind: "payment".into(),
            amount: Decimal::new(1250, 2),
            units: Decimal::ZERO,
            tiers: Vec::new(),
            tariff_id: "T9".into(),
            operator_id: "op7".into(),
            branch: "B2".into(),
            channel: "bank".into(),
            request_id: "r".into(),
            ts_ms: ts,
            invoice_no: String::new(),
            bank_code: "ICBC".into(),
            bank_ref: "x".into(),
            card_no: String::new(),
            card_seq: 0,
            refers_to: None,
            reason: String::new(),
            balance_effect: Decimal::ZERO,
        };
        let m = |dim: u8, value: &str| {
            let mut k = month_key("2026-03", dim);
            keys::push_id(&mut k, value);
            keys::push_id(&mut k, "payment");
            k
        };
        let mut d = day_key("2026-03-07");
        keys::push_id(&mut d, "ICBC");
        keys::push_id(&mut d, "payment");
        assert_eq!(
            row_keys(&r),
            vec![
                m(b'o', "op7"),
                m(b'b', "B2"),
                m(b't', "T9"),
                m(b'k', "payment"),
                d
            ]
        );
        let mut no_bank = r.clone();
        no_bank.bank_code.clear();
        assert_eq!(row_keys(&no_bank).len(), 4);
    }
}
