//! Heating seasons. Opening a season is ONE bounded command whatever the
//! number of heat accounts: it only bumps a season counter in
//! `domain_meta`. The carry-forward of each heat account (its balance at the
//! season start becomes the season's opening balance; arrears or credit
//! carry over) is applied lazily: [`carry_forward`] runs whenever an account
//! is loaded (by every write through `accounts::load`, and by every read
//! through `get_account`), and a write saves it. This is exact, because an
//! account not yet touched since the season opened has not changed since
//! then, so its current balance *is* its balance at the season start.
//! Closed accounts are frozen and not carried forward.
//!
//! May touch `domain_meta` (`season`) only; accounts are changed in memory.
//!
//! Imports the ground floor only (`Season`, `AccountSeason` are `model`'s).

use billdb_api::error::ErrorCode;

use super::context::{Ctx, Res, check_id, read, refuse, write};
use super::keys;
use super::model::{Account, AccountSeason, Season};
use super::ops::{Op, Outcome};
use super::txn::{Family, Get, Txn};

pub fn current_season<G: Get + ?Sized>(view: &G) -> Result<Option<Season>, std::io::Error> {
    read(view, Family::Meta, keys::META_SEASON)
}

/// Brings a heat account into `season` if it is behind. Returns whether it
/// changed.
pub fn carry_forward(account: &mut Account, season: Option<&Season>) -> bool {
    let Some(season) = season else {
        return false;
    };
    if account.utility != "heat" || account.is_closed() {
        return false;
    }
    if account
        .season
        .as_ref()
        .is_some_and(|s| s.number >= season.number)
    {
        return false;
    }
    account.season = Some(AccountSeason {
        number: season.number,
        season_id: season.season_id.clone(),
        opening_balance: account.balance,
    });
    true
}

pub(crate) fn open<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::OpenHeatingSeason { season_id } = &ctx.cmd.op else {
        return Err(std::io::Error::other("season open called with another op").into());
    };
    check_id("season_id", season_id)?;
    let current = current_season(txn)?;
    if current.as_ref().is_some_and(|s| &s.season_id == season_id) {
        return refuse(
            ErrorCode::SeasonExists,
            format!("heating season {season_id:?} is already open"),
        );
    }
    let season = Season {
        number: current.map_or(1, |s| s.number.saturating_add(1)),
        season_id: season_id.clone(),
        opened_ms: ctx.ts(),
    };
    write(txn, Family::Meta, keys::META_SEASON.to_vec(), &season)?;
    Ok(Outcome::SeasonOpened {
        season: Box::new(season),
    })
}
