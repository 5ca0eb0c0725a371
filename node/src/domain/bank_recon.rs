//! Bank statement reconciliation: a per-(bank, business day) index of
//! bank payments, the matching of a bank's statement against it (a pure
//! function, [`reconcile`]), and the stored result (`RecordReconciliation`,
//! replicated through Raft: who reconciled which bank's day, when, with
//! what outcome).
//!
//! Keys, in the `reports` family (ids length-prefixed, `keys::with_id`):
//! * `P` ‖ day `YYYY-MM-DD` ‖ bank_code ‖ bank_ref → [`BankPayment`]: every
//!   payment carrying a bank code, under the UTC day of its own timestamp
//!   (the business day of the bank-daily report), written by the apply that
//!   posts it (`ledger::post_with`: payments and imported payments alike)
//!   and updated by its reversal ([`mark_reversed`]). One bank's day is one
//!   prefix scan, whatever the number of accounts and years.
//! * `R` ‖ bank_code ‖ day ‖ ts_ms ‖ request_id → [`Reconciliation`]: the
//!   stored results, in time order per (bank, day).
//!
//! May touch the `reports` family only (writes: the two key families above).
//!
//! Imports the ground floor, `reports` and `requests`; `ledger` (above)
//! indexes each payment it posts and marks its reversal. The stored result
//! ([`Reconciliation`] and its parts) is data an `Op` carries, so it lives
//! on the ground floor (`payloads`) and is re-exported here.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::statement::StatementLine;

use super::context::{Ctx, Res, check_id, read, refuse, write};
use super::model::{Record, RecordMeta, record_id};
use super::ops::{Op, Outcome};
pub use super::payloads::{Class, Item, Matching, Reconciliation, Sum};
use super::requests;
use super::txn::{Family, Get, ReadView, SCAN_LIMIT_MAX, Txn};
use super::{calendar, keys, reports};

/// Most itemised differences one stored reconciliation keeps (counts and
/// totals always cover every line).
pub const ITEMS_MAX: usize = 500;
/// Most payments of one bank's day a reconciliation reads.
pub const DAY_PAYMENTS_MAX: usize = 200_000;
/// Most stored reconciliations one listing returns.
pub const LIST_MAX: usize = 100;

const TAG_PAYMENT: u8 = b'P';
const TAG_RECON: u8 = b'R';

/// One bank payment as the index holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankPayment {
    pub account_id: String,
    pub seq: u64,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    pub ts_ms: i64,
    /// The reversal record (seq) and its time, once reversed.
    pub reversed_by: Option<u64>,
    pub reversed_ms: Option<i64>,
}

/// A bank payment of a day with its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct DayPayment {
    pub bank_ref: String,
    pub payment: BankPayment,
}

fn day_prefix(day: impl AsRef<[u8]>, bank_code: &str) -> Vec<u8> {
    let mut k = vec![TAG_PAYMENT];
    keys::push_id(&mut k, day);
    keys::push_id(&mut k, bank_code);
    k
}

fn payment_key(day: impl AsRef<[u8]>, bank_code: &str, bank_ref: &str) -> Vec<u8> {
    let mut k = day_prefix(day, bank_code);
    keys::push_id(&mut k, bank_ref);
    k
}

/// Index a payment record carrying a bank code (called by `ledger::post_with`).
pub(crate) fn index_payment<T: Txn + ?Sized>(txn: &mut T, r: &Record) -> Res<()> {
    if r.kind != "payment" || r.bank_code.is_empty() {
        return Ok(());
    }
    let entry = BankPayment {
        account_id: r.account_id.clone(),
        seq: r.seq,
        amount: r.amount,
        ts_ms: r.ts_ms,
        reversed_by: None,
        reversed_ms: None,
    };
    // The day's digits as the report rows write them (no formatting:
    // an import indexes every legacy payment it carries).
    let (_, day) = reports::month_day(r.ts_ms);
    let key = payment_key(day, &r.bank_code, &r.bank_ref);
    write(txn, Family::Reports, key, &entry)?;
    Ok(())
}

/// Mark the indexed payment `orig` reversed by `reversal` (a payment
/// posted before the index existed has no entry: nothing to mark).
pub(crate) fn mark_reversed<T: Txn + ?Sized>(
    txn: &mut T,
    orig: &Record,
    reversal: &Record,
) -> Res<()> {
    if orig.kind != "payment" || orig.bank_code.is_empty() {
        return Ok(());
    }
    let (_, day) = reports::month_day(orig.ts_ms);
    let key = payment_key(day, &orig.bank_code, &orig.bank_ref);
    let Some(mut entry): Option<BankPayment> = read(txn, Family::Reports, &key)? else {
        return Ok(());
    };
    entry.reversed_by = Some(reversal.seq);
    entry.reversed_ms = Some(reversal.ts_ms);
    write(txn, Family::Reports, key, &entry)?;
    Ok(())
}

// ---- backfill: payments posted before the index existed ----

/// Most records one `IndexBankPayments` command names (its write set: one
/// index entry each, far below the batch limits).
pub const BACKFILL_BATCH_MAX: usize = 256;

/// What one look through the records found ([`unindexed_payments`]).
#[derive(Debug, Default)]
pub struct Unindexed {
    /// Bank payments (`account:seq`) with no index entry.
    pub record_ids: Vec<String>,
    /// Records looked at.
    pub looked_at: usize,
    /// The last records key looked at: where the next look starts.
    pub last: Option<Vec<u8>>,
    /// Every record after the start was looked at.
    pub end: bool,
}

/// The index key of payment record `r` (`None`: not a bank payment).
fn index_key_of(r: &Record) -> Option<Vec<u8>> {
    if r.kind != "payment" || r.bank_code.is_empty() {
        return None;
    }
    let (_, day) = reports::month_day(r.ts_ms);
    Some(payment_key(day, &r.bank_code, &r.bank_ref))
}

/// Bank payments without an index entry, in `records` key order after
/// `after` (a `records` key): at most `max` of them, looking at most at
/// `look_max` records. Read by the node driving a backfill from its
/// applied state; the command re-checks each one.
pub fn unindexed_payments<R: ReadView + ?Sized>(
    view: &R,
    after: Option<&[u8]>,
    max: usize,
    look_max: usize,
) -> Result<Unindexed, std::io::Error> {
    let mut start = after.map_or_else(Vec::new, |a| {
        let mut k = a.to_vec();
        k.push(0);
        k
    });
    let mut out = Unindexed::default();
    while out.looked_at < look_max && out.record_ids.len() < max {
        let want = (look_max - out.looked_at).min(SCAN_LIMIT_MAX);
        let chunk = view.scan(Family::Records, &start, &[], false, want)?;
        let got = chunk.len();
        for (k, v) in chunk {
            out.looked_at += 1;
            let r: Record = keys::decode(&v)?;
            if let Some(ik) = index_key_of(&r)
                && view.get(Family::Reports, &ik)?.is_none()
            {
                out.record_ids.push(record_id(&r.account_id, r.seq));
            }
            start = k.clone();
            start.push(0);
            out.last = Some(k);
            if out.record_ids.len() == max {
                return Ok(out);
            }
        }
        if got < want {
            out.end = true;
            return Ok(out);
        }
    }
    Ok(out)
}

/// Apply `IndexBankPayments`: an index entry for each named bank payment
/// that has none, marked reversed when its record was (as
/// [`index_payment`] and [`mark_reversed`] would have written it). A
/// payment already indexed is left as it is, so a backfill run twice, or
/// resumed, writes nothing twice.
pub(crate) fn index_payments<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::IndexBankPayments { record_ids } = &ctx.cmd.op else {
        return Err(std::io::Error::other("index_payments called with another op").into());
    };
    if record_ids.len() > BACKFILL_BATCH_MAX {
        return refuse(
            ErrorCode::PayloadTooLarge,
            format!("at most {BACKFILL_BATCH_MAX} records per command"),
        );
    }
    let (mut indexed, mut already, mut skipped) = (0u32, 0u32, 0u32);
    for id in record_ids {
        let Some((account_id, seq)) = super::model::parse_record_id(id) else {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("record id {id:?}: expected account:seq"),
            );
        };
        let meta: Option<RecordMeta> = read(
            txn,
            Family::RecordIndex,
            &keys::record_index(account_id, seq),
        )?;
        let Some(meta) = meta else {
            skipped += 1;
            continue;
        };
        let rec: Option<Record> = read(
            txn,
            Family::Records,
            &keys::record(account_id, meta.ts_ms, seq),
        )?;
        let Some((rec, key)) = rec.and_then(|r| index_key_of(&r).map(|k| (r, k))) else {
            skipped += 1;
            continue;
        };
        if txn.get(Family::Reports, &key)?.is_some() {
            already += 1;
            continue;
        }
        let reversed_ms = match meta.reversed_by {
            None => None,
            Some(by) => {
                let m: Option<RecordMeta> = read(
                    txn,
                    Family::RecordIndex,
                    &keys::record_index(account_id, by),
                )?;
                m.map(|m| m.ts_ms)
            }
        };
        let entry = BankPayment {
            account_id: rec.account_id.clone(),
            seq: rec.seq,
            amount: rec.amount,
            ts_ms: rec.ts_ms,
            reversed_by: meta.reversed_by,
            reversed_ms,
        };
        write(txn, Family::Reports, key, &entry)?;
        indexed += 1;
    }
    Ok(Outcome::BankPaymentsIndexed {
        indexed,
        already,
        skipped,
    })
}

fn bad_key() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "malformed bank payment key",
    )
}

/// Up to `limit` payments of `bank_code` on `day`, in bank_ref order,
/// after `after` (a bank_ref) when given; and whether more follow.
pub fn day_payments_page<R: ReadView + ?Sized>(
    view: &R,
    bank_code: &str,
    day: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<DayPayment>, bool), std::io::Error> {
    let prefix = day_prefix(day, bank_code);
    let end = keys::prefix_end(&prefix);
    let mut start = match after {
        Some(a) => {
            let mut k = payment_key(day, bank_code, a);
            k.push(0);
            k
        }
        None => prefix.clone(),
    };
    let mut out = Vec::new();
    loop {
        let want = limit.saturating_sub(out.len()).saturating_add(1);
        let chunk = view.scan(
            Family::Reports,
            &start,
            &end,
            false,
            want.min(SCAN_LIMIT_MAX),
        )?;
        let got = chunk.len();
        for (k, v) in chunk {
            if out.len() == limit {
                return Ok((out, true));
            }
            let tail = k.get(prefix.len()..).ok_or_else(bad_key)?;
            let mut parts = reports::split_tail(tail, 1).ok_or_else(bad_key)?;
            let bank_ref = parts.pop().ok_or_else(bad_key)?;
            out.push(DayPayment {
                bank_ref,
                payment: keys::decode(&v)?,
            });
            start = k;
            start.push(0);
        }
        if got < want.min(SCAN_LIMIT_MAX) {
            return Ok((out, false));
        }
    }
}

/// How many payments (count, amount) the bank-daily report counts for
/// `bank_code` on `day`: the index of a day is complete when it holds as
/// many.
pub fn reported_payments<G: Get + ?Sized>(
    view: &G,
    bank_code: &str,
    day: &str,
) -> Result<(u64, Decimal), std::io::Error> {
    let row = reports::row(view, &reports::bank_day_row_key(day, bank_code, "payment"))?;
    Ok(row.map_or((0, Decimal::ZERO), |r| (r.count, r.amount)))
}

/// Where a bank reference absent from the day was posted, if anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedElsewhere {
    /// The request that posted it.
    pub request_id: String,
    /// `account:seq` and its day, when known: from a payment request's
    /// outcome, or from the index of the days around (an imported payment's
    /// request is the whole import).
    pub record_id: Option<String>,
    pub day: Option<String>,
}

/// How many days before and after a reconciled day are looked at for a
/// reference posted on another day.
pub const NEARBY_DAYS: i64 = 7;

/// Look up a bank reference in the exactly-once table of bank references
/// (`day`: the day being reconciled, `YYYY-MM-DD`).
pub fn posted_elsewhere<G: Get + ?Sized>(
    view: &G,
    bank_code: &str,
    bank_ref: &str,
    day: &str,
) -> Result<Option<PostedElsewhere>, std::io::Error> {
    let Some(raw) = view.get(Family::BankRefs, &keys::bank_ref(bank_code, bank_ref))? else {
        return Ok(None);
    };
    let request_id: String = keys::decode(&raw)?;
    let (mut found_record, mut found_day) = (None, None);
    if let Some(Outcome::PaymentPosted {
        account_id,
        record_seq,
        ..
    }) = requests::request_outcome(view, &request_id)?
    {
        found_record = Some(record_id(&account_id, record_seq));
        // The payment record's index entry (`ledger::meta`, read here: the
        // ledger is a layer up).
        let meta: Option<RecordMeta> = read(
            view,
            Family::RecordIndex,
            &keys::record_index(&account_id, record_seq),
        )?;
        if let Some(m) = meta {
            found_day = Some(calendar::day_str(m.ts_ms));
        }
    }
    if found_day.is_none()
        && let Some(start) = day_start_ms(day)
    {
        for k in (-NEARBY_DAYS..=NEARBY_DAYS).filter(|k| *k != 0) {
            let Some(ts) = start.checked_add(k * 86_400_000) else {
                continue;
            };
            if !(calendar::TS_MIN_MS..=calendar::TS_MAX_MS).contains(&ts) {
                continue;
            }
            let other = calendar::day_str(ts);
            let found: Option<BankPayment> = read(
                view,
                Family::Reports,
                &payment_key(&other, bank_code, bank_ref),
            )?;
            if let Some(p) = found {
                found_record = Some(record_id(&p.account_id, p.seq));
                found_day = Some(other);
                break;
            }
        }
    }
    Ok(Some(PostedElsewhere {
        request_id,
        record_id: found_record,
        day: found_day,
    }))
}

/// 00:00 UTC of `YYYY-MM-DD` (`None` if it is not one).
fn day_start_ms(day: &str) -> Option<i64> {
    if !is_day(day) {
        return None;
    }
    let y: i32 = day.get(..4)?.parse().ok()?;
    let m: u32 = day.get(5..7)?.parse().ok()?;
    let d: u32 = day.get(8..10)?.parse().ok()?;
    let ts = calendar::days_ms(y, m, d);
    (calendar::day_str(ts) == day).then_some(ts)
}

impl Item {
    fn new(class: Class, bank_ref: &str) -> Item {
        Item {
            class,
            bank_ref: bank_ref.to_string(),
            line: None,
            file_account_id: None,
            file_amount: None,
            file_time: None,
            record_id: None,
            billdb_account_id: None,
            billdb_amount: None,
            billdb_ts_ms: None,
            reversal_record_id: None,
            billdb_day: None,
            request_id: None,
        }
    }

    fn file(mut self, l: &StatementLine) -> Item {
        self.line = Some(l.line);
        self.file_account_id = Some(l.account_id.clone());
        self.file_amount = Some(l.amount);
        self.file_time = Some(l.time.clone());
        self
    }

    fn billdb(mut self, p: &BankPayment) -> Item {
        self.record_id = Some(record_id(&p.account_id, p.seq));
        self.billdb_account_id = Some(p.account_id.clone());
        self.billdb_amount = Some(p.amount);
        self.billdb_ts_ms = Some(p.ts_ms);
        self.reversal_record_id = p.reversed_by.map(|s| record_id(&p.account_id, s));
        self
    }
}

impl Matching {
    fn sum_mut(&mut self, c: Class) -> &mut Sum {
        match c {
            Class::MissingInBillDb => &mut self.missing_in_billdb,
            Class::PostedOtherDay => &mut self.posted_other_day,
            Class::MissingInBank => &mut self.missing_in_bank,
            Class::AmountMismatch => &mut self.amount_mismatch,
            Class::AccountMismatch => &mut self.account_mismatch,
            Class::ReversedInBillDb => &mut self.reversed_in_billdb,
            Class::Matched => &mut self.matched,
            Class::ReversedNotInFile => &mut self.reversed_not_in_file,
        }
    }
}

fn plus(a: Decimal, b: Decimal) -> Result<Decimal, ApiError> {
    a.checked_add(b)
        .ok_or_else(|| ApiError::new(ErrorCode::ArithmeticOverflow, "amount out of range"))
}

fn count_in(s: &mut Sum, file: Option<Decimal>, billdb: Option<Decimal>) -> Result<(), ApiError> {
    s.count += 1;
    if let Some(f) = file {
        s.file_amount = plus(s.file_amount, f)?;
    }
    if let Some(b) = billdb {
        s.billdb_amount = plus(s.billdb_amount, b)?;
    }
    Ok(())
}

/// Match a statement against billdb's payments of the same bank and day.
/// Pure and deterministic: lines are matched by bank_ref (unique in a
/// statement and, per bank, in billdb); the result does not depend on the
/// order of either input. `elsewhere` answers, for references in the file
/// but not in the day, where billdb posted them (if at all).
pub fn reconcile(
    lines: &[StatementLine],
    day: &[DayPayment],
    elsewhere: &BTreeMap<String, PostedElsewhere>,
) -> Result<Matching, ApiError> {
    let mut by_ref: BTreeMap<&str, &BankPayment> = BTreeMap::new();
    for p in day {
        by_ref.insert(p.bank_ref.as_str(), &p.payment);
    }
    let mut in_file: BTreeMap<&str, ()> = BTreeMap::new();
    let mut m = Matching::default();
    let mut items: Vec<Item> = Vec::new();
    for l in lines {
        in_file.insert(l.bank_ref.as_str(), ());
        count_in(&mut m.file, Some(l.amount), None)?;
        let (class, item) = match by_ref.get(l.bank_ref.as_str()) {
            None => match elsewhere.get(&l.bank_ref) {
                Some(e) => {
                    let mut it = Item::new(Class::PostedOtherDay, &l.bank_ref).file(l);
                    it.record_id = e.record_id.clone();
                    it.billdb_day = e.day.clone();
                    it.request_id = Some(e.request_id.clone());
                    (Class::PostedOtherDay, it)
                }
                None => (
                    Class::MissingInBillDb,
                    Item::new(Class::MissingInBillDb, &l.bank_ref).file(l),
                ),
            },
            Some(p) => {
                let class = if p.reversed_by.is_some() {
                    Class::ReversedInBillDb
                } else if p.amount != l.amount {
                    Class::AmountMismatch
                } else if p.account_id != l.account_id {
                    Class::AccountMismatch
                } else {
                    Class::Matched
                };
                (class, Item::new(class, &l.bank_ref).file(l).billdb(p))
            }
        };
        let billdb_amount = item.billdb_amount;
        count_in(m.sum_mut(class), Some(l.amount), billdb_amount)?;
        if class != Class::Matched {
            items.push(item);
        }
    }
    for p in day {
        let stands = p.payment.reversed_by.is_none();
        if stands {
            count_in(&mut m.billdb, None, Some(p.payment.amount))?;
        }
        if in_file.contains_key(p.bank_ref.as_str()) {
            continue;
        }
        let class = if stands {
            Class::MissingInBank
        } else {
            Class::ReversedNotInFile
        };
        count_in(m.sum_mut(class), None, Some(p.payment.amount))?;
        items.push(Item::new(class, &p.bank_ref).billdb(&p.payment));
    }
    items.sort_by(|a, b| (a.class, &a.bank_ref).cmp(&(b.class, &b.bank_ref)));
    m.items_truncated = items.len() > ITEMS_MAX;
    items.truncate(ITEMS_MAX);
    m.items = items;
    Ok(m)
}

fn recon_prefix(bank_code: &str, day: Option<&str>) -> Vec<u8> {
    let mut k = vec![TAG_RECON];
    keys::push_id(&mut k, bank_code);
    if let Some(d) = day {
        keys::push_id(&mut k, d);
    }
    k
}

fn recon_key(bank_code: &str, day: &str, ts_ms: i64, request_id: &str) -> Vec<u8> {
    let mut k = recon_prefix(bank_code, Some(day));
    k.extend_from_slice(&keys::ts_bytes(ts_ms));
    keys::push_id(&mut k, request_id);
    k
}

fn is_day(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Apply `RecordReconciliation`: one put, stamped with the command's time
/// and operator.
pub(crate) fn record<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::RecordReconciliation { reconciliation } = &ctx.cmd.op else {
        return Err(std::io::Error::other("record_reconciliation called with another op").into());
    };
    let r = reconciliation.as_ref();
    check_id("bank_code", &r.bank_code)?;
    if !is_day(&r.day) {
        return refuse(ErrorCode::InvalidArgument, "day: expected YYYY-MM-DD");
    }
    if r.matching.items.len() > ITEMS_MAX {
        return refuse(
            ErrorCode::PayloadTooLarge,
            format!("at most {ITEMS_MAX} itemised differences are stored"),
        );
    }
    let mut stored = r.clone();
    stored.recorded_ms = ctx.ts();
    stored.recorded_by = ctx.cmd.operator.clone();
    let key = recon_key(&r.bank_code, &r.day, ctx.ts(), &ctx.cmd.request_id);
    write(txn, Family::Reports, key, &stored)?;
    Ok(Outcome::ReconciliationRecorded {
        bank_code: r.bank_code.clone(),
        day: r.day.clone(),
        recorded_ms: ctx.ts(),
        differences: r.matching.differences(),
    })
}

/// The stored reconciliation of `request_id` (its outcome names the key).
pub fn get<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
) -> Result<Option<Reconciliation>, std::io::Error> {
    let Some(Outcome::ReconciliationRecorded {
        bank_code,
        day,
        recorded_ms,
        ..
    }) = requests::request_outcome(view, request_id)?
    else {
        return Ok(None);
    };
    read(
        view,
        Family::Reports,
        &recon_key(&bank_code, &day, recorded_ms, request_id),
    )
}

/// The stored reconciliations of a bank (of one day when given), oldest
/// first, at most [`LIST_MAX`] (the latest ones) and whether there were
/// more; with their request ids.
pub fn list<R: ReadView + ?Sized>(
    view: &R,
    bank_code: &str,
    day: Option<&str>,
) -> Result<(Vec<(String, Reconciliation)>, bool), std::io::Error> {
    let prefix = recon_prefix(bank_code, day);
    let end = keys::prefix_end(&prefix);
    let rows = view.scan(Family::Reports, &prefix, &end, true, LIST_MAX + 1)?;
    let more = rows.len() > LIST_MAX;
    let mut out = Vec::with_capacity(rows.len().min(LIST_MAX));
    for (k, v) in rows.into_iter().take(LIST_MAX) {
        let rec: Reconciliation = keys::decode(&v)?;
        let base = recon_prefix(&rec.bank_code, Some(&rec.day)).len() + 8;
        let tail = k.get(base..).ok_or_else(bad_key)?;
        let mut parts = reports::split_tail(tail, 1).ok_or_else(bad_key)?;
        out.push((parts.pop().ok_or_else(bad_key)?, rec));
    }
    out.reverse();
    Ok((out, more))
}

/// A `billdb pay` command line that posts a line missing from billdb
/// (ids are `[A-Za-z0-9._:-]`: nothing to quote). Its request_id is
/// derived from the bank and reference, so running it twice posts once.
pub fn post_command(bank_code: &str, line: &Item) -> Option<String> {
    let account = line.file_account_id.as_deref()?;
    let amount = line.file_amount?;
    let mut rid = format!("pay-{bank_code}-{}", line.bank_ref);
    if rid.len() > billdb_api::statement::ID_LEN_MAX {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{bank_code}\0{}", line.bank_ref).as_bytes());
        rid = format!("pay-{}", &hex::encode(h)[..40]);
    }
    Some(format!(
        "billdb pay {account} {amount} --bank-code {bank_code} --bank-ref {} --request-id {rid}",
        line.bank_ref
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn line(n: u32, r: &str, a: &str, amount: &str) -> StatementLine {
        StatementLine {
            line: n,
            bank_ref: r.into(),
            account_id: a.into(),
            amount: dec(amount),
            time: "10:00".into(),
        }
    }

    fn pay(r: &str, a: &str, seq: u64, amount: &str, reversed: bool) -> DayPayment {
        DayPayment {
            bank_ref: r.into(),
            payment: BankPayment {
                account_id: a.into(),
                seq,
                amount: dec(amount),
                ts_ms: 1_000,
                reversed_by: reversed.then_some(seq + 1),
                reversed_ms: reversed.then_some(2_000),
            },
        }
    }

    fn classes(m: &Matching) -> Vec<(&'static str, String)> {
        m.items
            .iter()
            .map(|i| (i.class.name(), i.bank_ref.clone()))
            .collect()
    }

    #[test]
    fn each_kind_of_difference_is_found_and_the_sums_add_up() {
        let file = vec![
            line(2, "R1", "A1", "10.00"), // matched
            line(3, "R2", "A2", "20.00"), // amount mismatch (billdb 25.00)
            line(4, "R3", "A3", "30.00"), // missing in billdb
            line(5, "R4", "A9", "40.00"), // account mismatch (billdb A4)
            line(6, "R5", "A5", "50.00"), // reversed in billdb
            line(7, "R6", "A6", "60.00"), // posted on another day
            line(8, "R7", "A7", "0.01"),  // matched
        ];
        let day = vec![
            pay("R1", "A1", 1, "10.00", false),
            pay("R2", "A2", 1, "25.00", false),
            pay("R4", "A4", 1, "40.00", false),
            pay("R5", "A5", 1, "50.00", true),
            pay("R7", "A7", 3, "0.01", false),
            pay("R8", "A8", 1, "80.00", false), // missing in bank
            pay("R9", "A9", 1, "90.00", true),  // reversed, not in file
        ];
        let mut elsewhere = BTreeMap::new();
        elsewhere.insert(
            "R6".to_string(),
            PostedElsewhere {
                request_id: "q6".into(),
                record_id: Some("A6:4".into()),
                day: Some("2026-03-06".into()),
            },
        );
        let m = reconcile(&file, &day, &elsewhere).unwrap();
        assert_eq!(
            classes(&m),
            vec![
                ("missing_in_billdb", "R3".to_string()),
                ("posted_other_day", "R6".to_string()),
                ("missing_in_bank", "R8".to_string()),
                ("amount_mismatch", "R2".to_string()),
                ("account_mismatch", "R4".to_string()),
                ("reversed_in_billdb", "R5".to_string()),
                ("reversed_not_in_file", "R9".to_string()),
            ]
        );
        assert_eq!(m.matched.count, 2);
        assert_eq!(m.matched.file_amount, dec("10.01"));
        assert_eq!(m.file.count, 7);
        assert_eq!(m.file.file_amount, dec("210.01"));
        // Standing billdb payments: R1 R2 R4 R7 R8.
        assert_eq!(m.billdb.count, 5);
        assert_eq!(m.billdb.billdb_amount, dec("155.01"));
        assert_eq!(m.amount_mismatch.file_amount, dec("20.00"));
        assert_eq!(m.amount_mismatch.billdb_amount, dec("25.00"));
        assert_eq!(m.differences(), 6);
        // The file's total is its classes' file amounts; billdb's total is
        // its standing classes' billdb amounts.
        let file_parts = [
            &m.matched,
            &m.missing_in_billdb,
            &m.posted_other_day,
            &m.amount_mismatch,
            &m.account_mismatch,
            &m.reversed_in_billdb,
        ]
        .iter()
        .map(|s| s.file_amount)
        .sum::<Decimal>();
        assert_eq!(file_parts, m.file.file_amount);
        let billdb_parts = [
            &m.matched,
            &m.missing_in_bank,
            &m.amount_mismatch,
            &m.account_mismatch,
        ]
        .iter()
        .map(|s| s.billdb_amount)
        .sum::<Decimal>();
        assert_eq!(billdb_parts, m.billdb.billdb_amount);
        let r6 = &m.items[1];
        assert_eq!(r6.billdb_day.as_deref(), Some("2026-03-06"));
        let r5 = m.items.iter().find(|i| i.bank_ref == "R5").unwrap();
        assert_eq!(r5.reversal_record_id.as_deref(), Some("A5:2"));
        let cmd = post_command("ICBC", &m.items[0]).unwrap();
        assert_eq!(
            cmd,
            "billdb pay A3 30.00 --bank-code ICBC --bank-ref R3 --request-id pay-ICBC-R3"
        );
    }

    #[test]
    fn the_result_does_not_depend_on_input_order_and_a_clean_day_has_no_differences() {
        let file = vec![line(1, "B", "A2", "2.00"), line(2, "A", "A1", "1.00")];
        let day = vec![
            pay("A", "A1", 1, "1.00", false),
            pay("B", "A2", 1, "2.00", false),
        ];
        let m = reconcile(&file, &day, &BTreeMap::new()).unwrap();
        assert_eq!(m.differences(), 0);
        assert!(m.items.is_empty());
        assert_eq!(m.file.file_amount, m.billdb.billdb_amount);
        let mut f2 = file.clone();
        f2.reverse();
        let mut d2 = day.clone();
        d2.reverse();
        assert_eq!(reconcile(&f2, &d2, &BTreeMap::new()).unwrap(), m);
        let empty = reconcile(&[], &day, &BTreeMap::new()).unwrap();
        assert_eq!(empty.missing_in_bank.count, 2);
        assert_eq!(empty.missing_in_bank.billdb_amount, dec("3.00"));
    }

    #[test]
    fn items_are_bounded_but_counts_and_totals_cover_every_line() {
        let file: Vec<StatementLine> = (0..ITEMS_MAX as u32 + 10)
            .map(|i| line(i + 1, &format!("R{i:05}"), "A", "1.00"))
            .collect();
        let m = reconcile(&file, &[], &BTreeMap::new()).unwrap();
        assert_eq!(m.items.len(), ITEMS_MAX);
        assert!(m.items_truncated);
        assert_eq!(m.missing_in_billdb.count, ITEMS_MAX as u64 + 10);
        assert_eq!(m.file.file_amount, Decimal::from(ITEMS_MAX as u64 + 10));
    }

    /// A stored reconciliation with the most items, every id and text at
    /// its longest, fits one log entry of the default size (256 KiB) with
    /// room to spare.
    #[test]
    fn the_largest_stored_reconciliation_fits_a_default_log_entry() {
        let long = |c: char| c.to_string().repeat(64);
        let file: Vec<StatementLine> = (0..ITEMS_MAX)
            .map(|i| StatementLine {
                line: 20_000 - i as u32,
                bank_ref: format!("{i:05}{}", "R".repeat(59)),
                account_id: long('A'),
                amount: dec("999999.99"),
                time: "2026-03-07T23:59:59.999999999+08:00".into(),
            })
            .collect();
        let m = reconcile(&file, &[], &BTreeMap::new()).unwrap();
        assert_eq!(m.items.len(), ITEMS_MAX);
        let rec = Reconciliation {
            bank_code: long('B'),
            day: "2026-03-07".into(),
            file_sha256: "f".repeat(64),
            file_name: "n".repeat(200),
            as_of_index: u64::MAX,
            matching: m,
            role: "ops".into(),
            recorded_ms: i64::MAX,
            recorded_by: long('O'),
        };
        let op = Op::RecordReconciliation {
            reconciliation: Box::new(rec),
        };
        let bytes = crate::codec::encode(&op).unwrap().len();
        eprintln!("the largest stored reconciliation encodes to {bytes} bytes");
        assert!(bytes < 200 << 10, "{bytes} bytes");
    }

    #[test]
    fn a_long_reference_gets_a_hashed_request_id_that_is_still_an_id() {
        let mut it = Item::new(Class::MissingInBillDb, &"X".repeat(64));
        it.file_account_id = Some("A".into());
        it.file_amount = Some(dec("1.00"));
        let cmd = post_command("BANK", &it).unwrap();
        let rid = cmd.rsplit(' ').next().unwrap();
        assert!(billdb_api::statement::is_id(rid), "{rid}");
    }
}
