//! Bulk import of legacy accounts and records in one command, all or
//! nothing, at most [`IMPORT_ITEMS_MAX`] items (a migration is many such
//! commands). Legacy account ids, timestamps and invoice numbers are kept
//! as is, except that a legacy invoice number may not take the form of the
//! numbers billdb assigns (`INV` + 12 digits, see
//! `invoices::is_assigned_form`). An imported account's balance is given
//! explicitly (the legacy system's figure); imported records are history
//! and do not move it, but they do update report rows, ladder year
//! counters, invoices, bank references and the account's record/card
//! sequence numbers, so reports and reconciliation cover migrated data
//! exactly. Imported purchases count as loaded. May touch everything an
//! account and its records touch.
//!
//! An operation: imports the ground floor (the items an import carries,
//! `ImportAccount` and `ImportRecord`, are `payloads`'), `accounts`,
//! `cards`, `invoices`, `ledger`, `reports`, `seasons` and `tariffs`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::money::{AMOUNT_MAX, UNITS_MAX};

use super::calendar::{TS_MAX_MS, TS_MIN_MS};
use super::cards::get_card;
use super::context::{Ctx, Fail, Res, add, check_id, refuse, write};
use super::model::{Account, Card, LastPurchase, Record, Season};
use super::ops::{Op, Outcome};
use super::payloads::{ImportAccount, ImportRecord};
use super::reports::RowDeltas;
use super::txn::{Family, Txn};
use super::{accounts, calendar, invoices, keys, ledger, seasons, tariffs};

/// Most accounts + records in one import command.
pub const IMPORT_ITEMS_MAX: usize = 1000;

fn at<T>(what: &str, i: usize, r: Res<T>) -> Res<T> {
    r.map_err(|f| match f {
        Fail::Refused(mut e) => {
            e.message = format!("{what}[{i}]: {}", e.message);
            e.details = serde_json::json!({"item": what, "index": i});
            Fail::Refused(e)
        }
        io => io,
    })
}

fn check_ts(ts: i64) -> Res<()> {
    if !(TS_MIN_MS..=TS_MAX_MS).contains(&ts) {
        return refuse(ErrorCode::InvalidArgument, "timestamp out of range");
    }
    Ok(())
}

pub(crate) fn import<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::Import {
        accounts: new_accounts,
        records,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("import called with another op").into());
    };
    let n = new_accounts.len().saturating_add(records.len());
    if n == 0 || n > IMPORT_ITEMS_MAX {
        return refuse(
            ErrorCode::PayloadTooLarge,
            format!("an import carries 1..={IMPORT_ITEMS_MAX} items, not {n}"),
        );
    }
    let season = seasons::current_season(txn)?;
    for (i, a) in new_accounts.iter().enumerate() {
        at("accounts", i, import_account(txn, a, season.as_ref()))?;
    }
    let mut pending = Pending::default();
    for (i, r) in records.iter().enumerate() {
        at("records", i, import_record(txn, ctx, r, &mut pending))?;
    }
    pending.write(txn)?;
    Ok(Outcome::Imported {
        accounts: new_accounts.len() as u32,
        records: records.len() as u32,
    })
}

/// What an import's records change, held in memory and written once at the
/// end: each account is loaded and saved once, and year counters and report
/// rows are summed (an import carries whole accounts' histories, so per
/// record read-modify-writes of the same keys were most of its cost). The
/// state written is exactly what applying the records one by one leaves.
#[derive(Default)]
struct Pending {
    accounts: BTreeMap<String, Account>,
    year_units: BTreeMap<(String, i32), Decimal>,
    reports: RowDeltas,
}

impl Pending {
    /// The account as this import has left it so far, taken out of the
    /// map (put it back with `put_account`; on a refusal the whole import
    /// is dropped, so a taken account needs no putting back).
    fn take_account<T: Txn>(&mut self, txn: &T, account_id: &str) -> Res<Account> {
        match self.accounts.remove(account_id) {
            Some(a) => Ok(a),
            None => accounts::load(txn, account_id),
        }
    }

    fn put_account(&mut self, account: Account) {
        self.accounts.insert(account.account_id.clone(), account);
    }

    fn add_year_units<T: Txn>(
        &mut self,
        txn: &T,
        account_id: &str,
        year: i32,
        units: Decimal,
    ) -> Res<()> {
        let key = (account_id.to_string(), year);
        let before = match self.year_units.get(&key) {
            Some(u) => *u,
            None => tariffs::year_units(txn, account_id, year)?,
        };
        self.year_units.insert(key, add(before, units)?);
        Ok(())
    }

    fn write<T: Txn>(self, txn: &mut T) -> Res<()> {
        for ((account_id, year), units) in &self.year_units {
            tariffs::set_year_units(txn, account_id, *year, *units)?;
        }
        for account in self.accounts.values() {
            accounts::save(txn, account)?;
        }
        self.reports.write(txn)
    }
}

fn import_account<T: Txn>(txn: &mut T, a: &ImportAccount, season: Option<&Season>) -> Res<()> {
    if !["active", "suspended", "closed"].contains(&a.status.as_str()) {
        return refuse(
            ErrorCode::InvalidArgument,
            "status: active|suspended|closed",
        );
    }
    check_ts(a.opened_ms)?;
    if a.balance.scale() > 2 || a.balance.abs() > AMOUNT_MAX * Decimal::from(1000) {
        return refuse(ErrorCode::InvalidAmount, "balance: 2 dp, within limits");
    }
    let mut account = Account {
        account_id: a.account_id.clone(),
        name: a.name.clone(),
        address: a.address.clone(),
        phone: String::new(),
        branch: a.branch.clone(),
        utility: a.utility.clone(),
        meter_id: a.meter_id.clone(),
        tariff_id: a.tariff_id.clone(),
        area: a.area,
        status: a.status.clone(),
        balance: a.balance,
        opened_ms: a.opened_ms,
        closed_ms: a.closed_ms,
        last_seq: 0,
        last_card_seq: 0,
        last_purchase: None,
        active_card: None,
        card_generation: 0,
        season: None,
    };
    seasons::carry_forward(&mut account, season);
    if let Some(card_no) = &a.card_no {
        check_id("card_no", card_no)?;
        if get_card(txn, card_no)?.is_some() {
            return refuse(
                ErrorCode::CardExists,
                format!("card {card_no:?} already exists"),
            );
        }
        let generation = a.card_generation.max(1);
        let active = !account.is_closed();
        let card = Card {
            card_no: card_no.clone(),
            account_id: a.account_id.clone(),
            generation,
            status: if active { "active" } else { "revoked" }.into(),
            issued_ms: a.opened_ms,
            replaced_ms: None,
            replaced_by: None,
            revoked_ms: if active { None } else { a.closed_ms },
        };
        write(txn, Family::Cards, keys::card(card_no), &card)?;
        account.card_generation = generation;
        if active {
            account.active_card = Some(card_no.clone());
        }
    }
    accounts::create(txn, &account)
}

fn import_record<T: Txn>(
    txn: &mut T,
    ctx: &Ctx<'_>,
    r: &ImportRecord,
    pending: &mut Pending,
) -> Res<()> {
    check_ts(r.ts_ms)?;
    let mut account = pending.take_account(txn, &r.account_id)?;
    let signed_ok = r.kind == "adjustment" && !r.amount.is_zero();
    let money_ok = r.amount.scale() <= 2
        && r.amount.abs() <= AMOUNT_MAX
        && (signed_ok || r.amount > Decimal::ZERO || r.kind == "purchase");
    if !money_ok || r.amount.is_sign_negative() && r.kind != "adjustment" {
        return refuse(ErrorCode::InvalidAmount, "amount out of range for its kind");
    }
    if r.units.scale() > 3 || r.units < Decimal::ZERO || r.units > UNITS_MAX {
        return refuse(ErrorCode::InvalidUnits, "units out of range");
    }
    let mut rec = Record {
        account_id: r.account_id.clone(),
        seq: 0,
        kind: r.kind.clone(),
        amount: r.amount,
        units: r.units,
        tiers: Vec::new(),
        tariff_id: if r.tariff_id.is_empty() {
            account.tariff_id.clone()
        } else {
            r.tariff_id.clone()
        },
        operator_id: r.operator_id.clone(),
        branch: if r.branch.is_empty() {
            account.branch.clone()
        } else {
            r.branch.clone()
        },
        channel: "import".into(),
        request_id: ctx.cmd.request_id.clone(),
        ts_ms: r.ts_ms,
        invoice_no: r.invoice_no.clone(),
        bank_code: r.bank_code.clone(),
        bank_ref: r.bank_ref.clone(),
        card_no: r.card_no.clone(),
        card_seq: r.card_seq,
        refers_to: None,
        reason: "import".into(),
        // History: the imported balance already includes it.
        balance_effect: Decimal::ZERO,
    };
    match r.kind.as_str() {
        "purchase" => {
            let year = calendar::year(r.ts_ms);
            pending.add_year_units(txn, &r.account_id, year, r.units)?;
            account.last_card_seq = account.last_card_seq.max(r.card_seq);
        }
        "payment" if !r.bank_code.is_empty() => {
            check_id("bank_code", &r.bank_code)?;
            check_id("bank_ref", &r.bank_ref)?;
            let key = keys::bank_ref(&r.bank_code, &r.bank_ref);
            if txn.get(Family::BankRefs, &key)?.is_some() {
                return Err(Fail::Refused(ApiError::new(
                    ErrorCode::DuplicatePayment,
                    format!("bank {} reference {} exists", r.bank_code, r.bank_ref),
                )));
            }
            write(txn, Family::BankRefs, key, &ctx.cmd.request_id)?;
        }
        "payment" | "charge" | "adjustment" => {}
        other => {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("kind {other:?}: purchase|payment|charge|adjustment"),
            );
        }
    }
    if invoices::is_assigned_form(&rec.invoice_no) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!(
                "invoice_no {:?}: the form INV + 12 digits is reserved for numbers billdb assigns; give the legacy number another form, or leave it empty to have one assigned",
                rec.invoice_no
            ),
        );
    }
    if rec.invoice_no.is_empty() && (r.kind == "purchase" || r.kind == "payment") {
        rec.invoice_no = invoices::next_number(txn)?;
    }
    let rec = ledger::post_with(txn, &mut account, rec, true, Some(&mut pending.reports))?;
    if rec.kind == "purchase" {
        account.last_purchase = Some(LastPurchase::of(&rec, true));
    }
    pending.put_account(account);
    Ok(())
}
