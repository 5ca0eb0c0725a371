//! Accounts: open, contact data, suspend / resume / close (freeze). May
//! touch the `accounts` family only (and read the season in `domain_meta`
//! for the lazy carry-forward, see `seasons`).
//!
//! Imports the ground floor and `seasons`. A close takes the account's
//! active card off it; revoking that card is `cards`' (a layer up).

use rust_decimal::Decimal;

use billdb_api::error::ErrorCode;

use super::context::{Ctx, Res, check_id, check_text, read, refuse, write};
use super::keys;
use super::model::Account;
use super::ops::{Op, Outcome};
use super::seasons;
use super::txn::{Family, Get, Txn};

pub const UTILITIES: &[&str] = &["electricity", "heat", "water", "gas"];

/// The account rules every write checks (the data is `model::Account`).
impl Account {
    /// Refuses writes to a closed account, and (unless `allow_suspended`)
    /// to a suspended one.
    pub(crate) fn check_writable(&self, allow_suspended: bool) -> Res<()> {
        match self.status.as_str() {
            "closed" => refuse(
                ErrorCode::AccountClosed,
                format!(
                    "account {:?} is closed; its records are frozen",
                    self.account_id
                ),
            ),
            "suspended" if !allow_suspended => refuse(
                ErrorCode::AccountSuspended,
                format!("account {:?} is suspended", self.account_id),
            ),
            _ => Ok(()),
        }
    }
}

/// The account as stored, with the lazy heating-season carry-forward
/// applied (what the next write would see).
pub fn get_account<G: Get + ?Sized>(
    view: &G,
    account_id: &str,
) -> Result<Option<Account>, std::io::Error> {
    let Some(mut account) = read::<_, Account>(view, Family::Accounts, &keys::account(account_id))?
    else {
        return Ok(None);
    };
    let season = seasons::current_season(view)?;
    seasons::carry_forward(&mut account, season.as_ref());
    Ok(Some(account))
}

/// Load for a write: ACCOUNT_NOT_FOUND if absent.
pub(crate) fn load<G: Get + ?Sized>(view: &G, account_id: &str) -> Res<Account> {
    match get_account(view, account_id)? {
        Some(a) => Ok(a),
        None => refuse(
            ErrorCode::AccountNotFound,
            format!("no account {account_id:?}"),
        ),
    }
}

pub(crate) fn save<T: Txn + ?Sized>(txn: &mut T, account: &Account) -> Res<()> {
    write(
        txn,
        Family::Accounts,
        keys::account(&account.account_id),
        account,
    )?;
    Ok(())
}

/// Insert a new account (open or import): ACCOUNT_EXISTS if the id was
/// ever used (closed accounts stay, so ids are never reused).
pub(crate) fn create<T: Txn + ?Sized>(txn: &mut T, account: &Account) -> Res<()> {
    check_id("account_id", &account.account_id)?;
    check_text("name", &account.name)?;
    check_text("address", &account.address)?;
    if !UTILITIES.contains(&account.utility.as_str()) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("utility: must be one of {UTILITIES:?}"),
        );
    }
    if txn
        .get(Family::Accounts, &keys::account(&account.account_id))?
        .is_some()
    {
        return refuse(
            ErrorCode::AccountExists,
            format!(
                "account {:?} already exists (account ids are never reused)",
                account.account_id
            ),
        );
    }
    save(txn, account)
}

pub(crate) fn open<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::OpenAccount {
        account_id,
        name,
        address,
        branch,
        utility,
        meter_id,
        tariff_id,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("open called with another op").into());
    };
    let mut account = Account {
        account_id: account_id.clone(),
        name: name.clone(),
        address: address.clone(),
        phone: String::new(),
        branch: branch.clone(),
        utility: utility.clone(),
        meter_id: meter_id.clone(),
        tariff_id: tariff_id.clone(),
        area: Decimal::ZERO,
        status: "active".to_string(),
        balance: Decimal::ZERO,
        opened_ms: ctx.ts(),
        closed_ms: None,
        last_seq: 0,
        last_card_seq: 0,
        last_purchase: None,
        active_card: None,
        card_generation: 0,
        season: None,
    };
    // A heat account opened during a season starts in it.
    let season = seasons::current_season(txn)?;
    seasons::carry_forward(&mut account, season.as_ref());
    create(txn, &account)?;
    Ok(Outcome::AccountOpened {
        account_id: account_id.clone(),
        opened_ms: ctx.ts(),
    })
}

/// Heated area: 0..=1,000,000 m², at most 2 decimal places.
fn check_area(area: Decimal) -> Res<()> {
    if area < Decimal::ZERO || area > Decimal::from(1_000_000) || area.scale() > 2 {
        return refuse(
            ErrorCode::InvalidArgument,
            "area: 0..=1000000 with at most 2 decimal places",
        );
    }
    Ok(())
}

pub(crate) fn update_contact<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::UpdateContact {
        account_id,
        name,
        address,
        phone,
        area,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("update_contact called with another op").into());
    };
    let mut account = load(txn, account_id)?;
    account.check_writable(true)?;
    if let Some(v) = name {
        check_text("name", v)?;
        account.name = v.clone();
    }
    if let Some(v) = address {
        check_text("address", v)?;
        account.address = v.clone();
    }
    if let Some(v) = phone {
        check_text("phone", v)?;
        account.phone = v.clone();
    }
    if let Some(v) = area {
        check_area(*v)?;
        account.area = *v;
    }
    save(txn, &account)?;
    Ok(Outcome::AccountUpdated {
        account: Box::new(account),
    })
}

/// Suspend (active → suspended), resume (suspended → active), close
/// (active | suspended → closed: frozen, its active card taken off it).
/// Saves the account and answers it, with the card a close took off it:
/// the caller (`cards::lifecycle`, a layer up) revokes that card.
pub(crate) fn lifecycle<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<(Account, Option<String>)> {
    let (account_id, reason) = match &ctx.cmd.op {
        Op::Suspend { account_id, reason } | Op::Close { account_id, reason } => {
            (account_id, reason.as_str())
        }
        Op::Resume { account_id } => (account_id, ""),
        _ => return Err(std::io::Error::other("lifecycle called with another op").into()),
    };
    check_text("reason", reason)?;
    let mut account = load(txn, account_id)?;
    account.check_writable(true)?;
    let mut revoked = None;
    match &ctx.cmd.op {
        Op::Suspend { .. } => {
            if account.status == "suspended" {
                return refuse(
                    ErrorCode::AccountSuspended,
                    format!("account {account_id:?} is already suspended"),
                );
            }
            account.status = "suspended".into();
        }
        Op::Resume { .. } => {
            if account.status != "suspended" {
                return refuse(
                    ErrorCode::InvalidState,
                    format!("account {account_id:?} is not suspended"),
                );
            }
            account.status = "active".into();
        }
        _ => {
            account.status = "closed".into();
            account.closed_ms = Some(ctx.ts());
            revoked = account.active_card.take();
        }
    }
    save(txn, &account)?;
    Ok((account, revoked))
}
