//! Season billing: the heating charge of every heat account for the open
//! season, raised by many bounded commands ([`Op::BillSeason`], at most
//! [`BILL_BATCH_MAX`] accounts each, listed by the node driving the run
//! from its applied state). Each (season, account) is charged at most once
//! however many runs, batches or retries there are: the account's line is
//! written with its charge, in the same command, and checked first.
//!
//! The charge is area × the area tariff's price per m² (× its
//! `suspended_share` for an account with a heating stop), rounded half-even
//! to the cent (`billdb_api::tariff::season_charge`). An account is
//! skipped, with the reason kept, when it is closed, has no heated area
//! (exempt), has no area tariff in force, or its charge rounds to 0.00. A
//! skipped account is looked at again by a later run (after its tariff is
//! defined, say); a billed one never.
//!
//! May touch: accounts and records (through `ledger`), and these rows of
//! the `reports` family (ids length-prefixed, see `keys::with_id`):
//! * `S` ‖ season ‖ `l` ‖ account → [`Line`]: billed or skipped, why;
//! * `S` ‖ season ‖ `x` ‖ account → [`Line`]: the skipped ones only (so
//!   they list without a scan of every line);
//! * `S` ‖ season ‖ `s` ‖ branch ‖ tariff → [`Sum`]: accounts billed, Σ;
//! * `S` ‖ season ‖ `k` ‖ reason → accounts skipped for it (u64).
//!
//! An operation: imports the ground floor, `accounts`, `ledger`, `reports`
//! (key parsing), `seasons` and `tariffs`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::error::ErrorCode;
use billdb_api::tariff::{Tariff, TariffKind};

use super::context::{self, Ctx, Res, check_id, read, refuse, write};
use super::model::Account;
use super::ops::{Op, Outcome};
use super::txn::{Family, Get, ReadView, SCAN_LIMIT_MAX, Txn};
use super::{accounts, keys, ledger, reports, seasons, tariffs};

/// Most accounts one `BillSeason` command bills: its write set stays far
/// below the batch limits (about six keys per account).
pub const BILL_BATCH_MAX: usize = 256;

/// The channel of a season charge record.
pub const SEASON_CHANNEL: &str = "season";

/// How the charge is computed, as every report says it.
pub const ROUNDING_NOTE: &str = "each account's charge is its heated area (m²) × the area \
    tariff's price per m² (× the tariff's suspended_share for an account with a heating \
    stop), rounded half-even to the cent";

/// Why an account got no season charge.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Closed accounts are frozen.
    Closed,
    /// Heated area 0: exempt.
    NoArea,
    /// No version of the account's tariff is in force at the bill's time.
    NoTariff,
    /// The account's tariff is not an area tariff.
    NotAreaTariff,
    /// The charge rounds to 0.00.
    RoundsToZero,
    /// Not a heat account (listed by mistake).
    NotHeat,
    /// The charge could not be computed (the tariff refused it).
    Refused,
}

impl SkipReason {
    pub fn code(self) -> &'static str {
        match self {
            SkipReason::Closed => "closed",
            SkipReason::NoArea => "no_area",
            SkipReason::NoTariff => "no_tariff",
            SkipReason::NotAreaTariff => "not_area_tariff",
            SkipReason::RoundsToZero => "rounds_to_zero",
            SkipReason::NotHeat => "not_heat",
            SkipReason::Refused => "refused",
        }
    }
}

/// One account's line in a season's bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub account_id: String,
    pub branch: String,
    pub tariff_id: String,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub area_m2: Decimal,
    /// A heating stop: the suspended share was charged.
    pub suspended: bool,
    /// Billed: the charge record's sequence number.
    pub record_seq: Option<u64>,
    /// Billed: the charge; skipped: 0.
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
    /// Skipped: why, in words.
    pub skipped: Option<(SkipReason, String)>,
    pub ts_ms: i64,
}

/// Accounts billed and their charges, per (branch, tariff).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sum {
    pub accounts: u64,
    #[serde(with = "billdb_api::money::decimal_compact")]
    pub amount: Decimal,
}

fn prefix(season_id: &str, tag: u8) -> Vec<u8> {
    let mut k = vec![b'S'];
    keys::push_id(&mut k, season_id);
    k.push(tag);
    k
}

fn line_key(season_id: &str, tag: u8, account_id: &str) -> Vec<u8> {
    let mut k = prefix(season_id, tag);
    keys::push_id(&mut k, account_id);
    k
}

fn sum_key(season_id: &str, branch: &str, tariff_id: &str) -> Vec<u8> {
    let mut k = prefix(season_id, b's');
    keys::push_id(&mut k, branch);
    keys::push_id(&mut k, tariff_id);
    k
}

fn skip_key(season_id: &str, reason: SkipReason) -> Vec<u8> {
    let mut k = prefix(season_id, b'k');
    keys::push_id(&mut k, reason.code());
    k
}

/// The tariff version in force at `ts_ms`, per tariff id, read once per
/// command.
struct Tariffs(BTreeMap<String, Option<Tariff>>);

impl Tariffs {
    fn at<G: Get + ?Sized>(
        &mut self,
        view: &G,
        tariff_id: &str,
        ts_ms: i64,
    ) -> Result<Option<Tariff>, std::io::Error> {
        if let Some(t) = self.0.get(tariff_id) {
            return Ok(t.clone());
        }
        let t = tariffs::get_tariff(view, tariff_id)?.and_then(|v| v.at(ts_ms).cloned());
        self.0.insert(tariff_id.to_string(), t.clone());
        Ok(t)
    }
}

/// What one account comes to: a charge, or why not.
fn assess(account: &Account, tariff: Option<&Tariff>) -> Result<Decimal, (SkipReason, String)> {
    if account.utility != "heat" {
        return Err((
            SkipReason::NotHeat,
            format!("utility {:?} is not heat", account.utility),
        ));
    }
    if account.is_closed() {
        return Err((SkipReason::Closed, "the account is closed".into()));
    }
    if account.area.is_zero() {
        return Err((SkipReason::NoArea, "heated area 0 m²: exempt".into()));
    }
    let Some(tariff) = tariff else {
        return Err((
            SkipReason::NoTariff,
            format!("no version of tariff {:?} is in force", account.tariff_id),
        ));
    };
    if !matches!(tariff.kind, TariffKind::Area { .. }) {
        return Err((
            SkipReason::NotAreaTariff,
            format!(
                "tariff {:?} is not an area tariff (no price per m²)",
                account.tariff_id
            ),
        ));
    }
    let suspended = account.status == "suspended";
    match billdb_api::tariff::season_charge(tariff, account.area, suspended) {
        Ok(c) if c.amount.is_zero() => Err((
            SkipReason::RoundsToZero,
            format!("the charge {} rounds to 0.00", c.exact),
        )),
        Ok(c) => Ok(c.amount),
        Err(e) => Err((SkipReason::Refused, e.to_string())),
    }
}

/// Why `season_id` cannot be billed now (`INVALID_STATE`): it is not the
/// open heating season. `None`: it is.
pub fn not_open<G: Get + ?Sized>(
    view: &G,
    season_id: &str,
) -> Result<Option<billdb_api::error::ApiError>, std::io::Error> {
    let open = seasons::current_season(view)?;
    if open.as_ref().map(|s| s.season_id.as_str()) == Some(season_id) {
        return Ok(None);
    }
    Ok(Some(billdb_api::error::ApiError::new(
        ErrorCode::InvalidState,
        format!(
            "season {season_id:?} is not the open heating season ({}): a season is billed \
             while it is open",
            open.map_or("none is open".to_string(), |s| format!(
                "{:?} is",
                s.season_id
            ))
        ),
    )))
}

/// Apply `Op::BillSeason`.
pub(crate) fn bill<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::BillSeason {
        season_id,
        account_ids,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("season bill called with another op").into());
    };
    check_id("season_id", season_id)?;
    if account_ids.len() > BILL_BATCH_MAX {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("account_ids: at most {BILL_BATCH_MAX} per command"),
        );
    }
    for (i, id) in account_ids.iter().enumerate() {
        check_id("account_ids", id)?;
        if account_ids[..i].contains(id) {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("account_ids: {id:?} is listed twice"),
            );
        }
    }
    if let Some(e) = not_open(txn, season_id)? {
        return Err(e.into());
    }
    let ts = ctx.ts();
    let mut tariffs = Tariffs(BTreeMap::new());
    let mut sums: BTreeMap<(String, String), Sum> = BTreeMap::new();
    let mut skips: BTreeMap<SkipReason, i64> = BTreeMap::new();
    let (mut billed, mut skipped, mut already) = (0u32, 0u32, 0u32);
    let mut amount = Decimal::ZERO;
    for id in account_ids {
        let key = line_key(season_id, b'l', id);
        let prev: Option<Line> = read(txn, Family::Reports, &key)?;
        if prev.as_ref().is_some_and(|l| l.record_seq.is_some()) {
            already += 1;
            continue;
        }
        let Some(mut account) = accounts::get_account(txn, id)? else {
            return refuse(ErrorCode::AccountNotFound, format!("no account {id:?}"));
        };
        let tariff = tariffs.at(txn, &account.tariff_id, ts)?;
        let mut line = Line {
            account_id: account.account_id.clone(),
            branch: account.branch.clone(),
            tariff_id: account.tariff_id.clone(),
            area_m2: account.area,
            suspended: account.status == "suspended",
            record_seq: None,
            amount: Decimal::ZERO,
            skipped: None,
            ts_ms: ts,
        };
        let prev_skip = prev.and_then(|l| l.skipped).map(|(r, _)| r);
        match assess(&account, tariff.as_ref()) {
            Ok(charge) => {
                let mut rec = ledger::draft(ctx, &account, "charge");
                rec.branch = account.branch.clone();
                rec.channel = SEASON_CHANNEL.to_string();
                rec.amount = charge;
                rec.balance_effect = -charge;
                rec.reason = format!(
                    "season {season_id}: {} m² heated{}",
                    account.area,
                    if line.suspended {
                        " (heating stop: suspended share)"
                    } else {
                        ""
                    }
                );
                let rec = ledger::post(txn, &mut account, rec, true)?;
                accounts::save(txn, &account)?;
                line.record_seq = Some(rec.seq);
                line.amount = charge;
                let s = sums
                    .entry((line.branch.clone(), line.tariff_id.clone()))
                    .or_default();
                s.accounts += 1;
                s.amount = context::add(s.amount, charge)?;
                amount = context::add(amount, charge)?;
                billed += 1;
                if let Some(r) = prev_skip {
                    *skips.entry(r).or_default() -= 1;
                    txn.delete(Family::Reports, line_key(season_id, b'x', id));
                }
            }
            Err((reason, text)) => {
                skipped += 1;
                if prev_skip == Some(reason) {
                    continue;
                }
                if let Some(r) = prev_skip {
                    *skips.entry(r).or_default() -= 1;
                }
                *skips.entry(reason).or_default() += 1;
                line.skipped = Some((reason, text));
                write(txn, Family::Reports, line_key(season_id, b'x', id), &line)?;
            }
        }
        write(txn, Family::Reports, key, &line)?;
    }
    for ((branch, tariff_id), add) in sums {
        let k = sum_key(season_id, &branch, &tariff_id);
        let mut s: Sum = read(txn, Family::Reports, &k)?.unwrap_or_default();
        s.accounts += add.accounts;
        s.amount = context::add(s.amount, add.amount)?;
        write(txn, Family::Reports, k, &s)?;
    }
    for (reason, delta) in skips {
        if delta == 0 {
            continue;
        }
        let k = skip_key(season_id, reason);
        let n: u64 = read(txn, Family::Reports, &k)?.unwrap_or(0);
        let n = n.saturating_add_signed(delta);
        write(txn, Family::Reports, k, &n)?;
    }
    Ok(Outcome::SeasonBilled {
        season_id: season_id.clone(),
        billed,
        skipped,
        already,
        amount,
    })
}

/// What [`next_heat_accounts`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextAccounts {
    /// Heat accounts, in key order.
    pub heat: Vec<String>,
    /// Accounts looked at (heat or not).
    pub looked_at: usize,
    /// The last account looked at: where the next call goes on from.
    pub last: Option<String>,
    /// No account after `last`.
    pub end: bool,
}

/// The heat accounts after `after` (an account id; `None`: from the
/// first) in key order: up to `want` of them, looking at no more than
/// `look_max` accounts.
pub fn next_heat_accounts<R: ReadView + ?Sized>(
    view: &R,
    after: Option<&str>,
    want: usize,
    look_max: usize,
) -> Result<NextAccounts, std::io::Error> {
    let mut out = NextAccounts {
        heat: Vec::new(),
        looked_at: 0,
        last: after.map(str::to_string),
        end: false,
    };
    loop {
        let start = match &out.last {
            Some(a) => {
                let mut k = keys::account(a);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let chunk = SCAN_LIMIT_MAX
            .min(look_max.saturating_sub(out.looked_at))
            .max(1);
        let rows = view.scan(Family::Accounts, &start, &[], false, chunk)?;
        let got = rows.len();
        for (_, v) in rows {
            let a: Account = keys::decode(&v)?;
            out.looked_at += 1;
            if a.utility == "heat" {
                out.heat.push(a.account_id.clone());
            }
            out.last = Some(a.account_id);
            if out.heat.len() >= want {
                return Ok(out);
            }
        }
        if got < chunk {
            out.end = true;
            return Ok(out);
        }
        if out.looked_at >= look_max {
            return Ok(out);
        }
    }
}

/// One (branch, tariff) line of a season bill report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = SeasonBillSumLine)]
pub struct SumLine {
    pub branch: String,
    pub tariff_id: String,
    pub accounts: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The season bill report: what was charged, to the cent, and what was
/// skipped, how many for each reason.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = SeasonBillReport)]
pub struct Report {
    pub season_id: String,
    pub accounts_billed: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub by_branch_and_tariff: Vec<SumLine>,
    /// Accounts skipped per reason code.
    pub skipped: BTreeMap<String, u64>,
    pub accounts_skipped: u64,
    pub rounding: &'static str,
    /// More (branch, tariff) lines than one scan returns.
    pub truncated: bool,
}

/// The report of `season_id`'s bill from `view`.
pub fn report<R: ReadView + ?Sized>(view: &R, season_id: &str) -> Result<Report, std::io::Error> {
    let p = prefix(season_id, b's');
    let rows = view.scan(
        Family::Reports,
        &p,
        &keys::prefix_end(&p),
        false,
        SCAN_LIMIT_MAX,
    )?;
    let truncated = rows.len() >= SCAN_LIMIT_MAX;
    let mut lines = Vec::with_capacity(rows.len());
    let (mut accounts, mut total) = (0u64, Decimal::ZERO);
    for (k, v) in rows {
        let ids = reports::split_tail(&k[p.len()..], 2)
            .ok_or_else(|| std::io::Error::other("a season sum key is malformed"))?;
        let s: Sum = keys::decode(&v)?;
        accounts += s.accounts;
        total = total
            .checked_add(s.amount)
            .ok_or_else(|| std::io::Error::other("season total overflow"))?;
        let mut ids = ids.into_iter();
        lines.push(SumLine {
            branch: ids.next().unwrap_or_default(),
            tariff_id: ids.next().unwrap_or_default(),
            accounts: s.accounts,
            amount: s.amount,
        });
    }
    let p = prefix(season_id, b'k');
    let mut skipped = BTreeMap::new();
    for (k, v) in view.scan(
        Family::Reports,
        &p,
        &keys::prefix_end(&p),
        false,
        SCAN_LIMIT_MAX,
    )? {
        let code = reports::split_tail(&k[p.len()..], 1)
            .and_then(|v| v.into_iter().next())
            .ok_or_else(|| std::io::Error::other("a season skip key is malformed"))?;
        let n: u64 = keys::decode(&v)?;
        if n > 0 {
            skipped.insert(code, n);
        }
    }
    Ok(Report {
        season_id: season_id.to_string(),
        accounts_billed: accounts,
        total,
        by_branch_and_tariff: lines,
        accounts_skipped: skipped.values().sum(),
        skipped,
        rounding: ROUNDING_NOTE,
        truncated,
    })
}

/// A page of `season_id`'s lines in key order after `after` (an account
/// id): every line, or only the skipped ones. The next page's `after`,
/// when there is more.
pub fn lines<R: ReadView + ?Sized>(
    view: &R,
    season_id: &str,
    skipped_only: bool,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Line>, Option<String>), std::io::Error> {
    let p = prefix(season_id, if skipped_only { b'x' } else { b'l' });
    let start = match after {
        Some(a) => {
            let mut k = line_key(season_id, if skipped_only { b'x' } else { b'l' }, a);
            k.push(0);
            k
        }
        None => p.clone(),
    };
    let limit = limit.clamp(1, SCAN_LIMIT_MAX);
    let rows = view.scan(Family::Reports, &start, &keys::prefix_end(&p), false, limit)?;
    let more = rows.len() == limit;
    let mut out = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        out.push(keys::decode::<Line>(&v)?);
    }
    let next = if more {
        out.last().map(|l| l.account_id.clone())
    } else {
        None
    };
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_two_seasons_do_not_interleave() {
        let a = line_key("2026", b'l', "A1");
        let b = line_key("2026-27", b'l', "A1");
        let pa = prefix("2026", b'l');
        assert!(a.starts_with(&pa));
        assert!(
            !b.starts_with(&pa),
            "length-prefixed ids keep seasons apart"
        );
        let s = sum_key("2026", "B01", "HEAT");
        let ids =
            crate::domain::reports::split_tail(&s[prefix("2026", b's').len()..], 2).expect("ids");
        assert_eq!(ids, vec!["B01".to_string(), "HEAT".to_string()]);
    }
}
