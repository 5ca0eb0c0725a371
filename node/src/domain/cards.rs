//! IC cards: issue, replace (the old card is refused from then on), revoke
//! (on close), and the card check a counter runs before every sale. May
//! touch the `cards` family and the account's active-card fields; the card
//! check reads the recent segment of the ledger only.
//!
//! Imports the ground floor, `accounts` and `ledger`. Suspend, resume and
//! close run here ([`lifecycle`]): a close revokes the account's card.

use serde::Serialize;

use billdb_api::error::{ApiError, ErrorCode};

use super::accounts;
use super::context::{Ctx, Res, check_id, check_text, read, refuse, write};
use super::keys;
use super::ledger::{self, RecordQuery, Segment};
use super::model::{Account, Card, Record, record_id};
use super::ops::{Op, Outcome};
use super::txn::{Family, Get, ReadView, Txn};

pub fn get_card<G: Get + ?Sized>(view: &G, card_no: &str) -> Result<Option<Card>, std::io::Error> {
    read(view, Family::Cards, &keys::card(card_no))
}

fn put_card<T: Txn + ?Sized>(txn: &mut T, card: &Card) -> Res<()> {
    write(txn, Family::Cards, keys::card(&card.card_no), card)?;
    Ok(())
}

/// Card numbers are never reused.
fn check_new_card_no<G: Get + ?Sized>(view: &G, card_no: &str) -> Res<()> {
    check_id("card_no", card_no)?;
    if get_card(view, card_no)?.is_some() {
        return refuse(
            ErrorCode::CardExists,
            format!("card {card_no:?} already exists (card numbers are never reused)"),
        );
    }
    Ok(())
}

/// The refusal for a card that is not the account's active one.
pub(crate) fn not_active<G: Get + ?Sized>(view: &G, card: &Card) -> Res<()> {
    match card.status.as_str() {
        "active" => Ok(()),
        "replaced" => {
            let current = match get_account(view, &card.account_id)? {
                Some(a) => a.active_card,
                None => None,
            };
            Err(ApiError::new(
                ErrorCode::CardReplaced,
                format!(
                    "card {:?} was replaced by {:?}; refuse it and use the current card",
                    card.card_no, card.replaced_by
                ),
            )
            .with_details(serde_json::json!({
                "replaced_ms": card.replaced_ms,
                "replaced_by": card.replaced_by,
                "current_card": current,
            }))
            .into())
        }
        // A card is revoked when its account closes: the cashier needs
        // to hear that the account is closed, not that the card is unknown.
        _ => match get_account(view, &card.account_id)? {
            Some(a) if a.is_closed() => refuse(
                ErrorCode::AccountClosed,
                format!(
                    "card {:?} belongs to account {:?}, which is closed",
                    card.card_no, a.account_id
                ),
            ),
            _ => refuse(
                ErrorCode::CardUnknown,
                format!("card {:?} was revoked", card.card_no),
            ),
        },
    }
}

fn get_account<G: Get + ?Sized>(
    view: &G,
    account_id: &str,
) -> Result<Option<Account>, std::io::Error> {
    accounts::get_account(view, account_id)
}

/// Resolve a card for a sale: CARD_UNKNOWN / CARD_REPLACED if it is not
/// an active card.
pub(crate) fn load_active<G: Get + ?Sized>(view: &G, card_no: &str) -> Res<Card> {
    let Some(card) = get_card(view, card_no)? else {
        return refuse(ErrorCode::CardUnknown, format!("no card {card_no:?}"));
    };
    not_active(view, &card)?;
    Ok(card)
}

pub(crate) fn issue<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::IssueCard {
        account_id,
        card_no,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("issue called with another op").into());
    };
    let mut account = accounts::load(txn, account_id)?;
    account.check_writable(false)?;
    if let Some(active) = &account.active_card {
        return refuse(
            ErrorCode::CardAlreadyIssued,
            format!("account {account_id:?} already has the active card {active:?}; replace it"),
        );
    }
    check_new_card_no(txn, card_no)?;
    account.card_generation = account.card_generation.saturating_add(1);
    let card = Card {
        card_no: card_no.clone(),
        account_id: account_id.clone(),
        generation: account.card_generation,
        status: "active".into(),
        issued_ms: ctx.ts(),
        replaced_ms: None,
        replaced_by: None,
        revoked_ms: None,
    };
    account.active_card = Some(card_no.clone());
    put_card(txn, &card)?;
    accounts::save(txn, &account)?;
    Ok(Outcome::CardIssued {
        card: Box::new(card),
    })
}

pub(crate) fn replace<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::ReplaceCard {
        card_no,
        new_card_no,
        reason,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("replace called with another op").into());
    };
    check_text("reason", reason)?;
    let Some(mut old) = get_card(txn, card_no)? else {
        return refuse(ErrorCode::CardUnknown, format!("no card {card_no:?}"));
    };
    let mut account = accounts::load(txn, &old.account_id)?;
    account.check_writable(false)?;
    not_active(txn, &old)?;
    check_new_card_no(txn, new_card_no)?;
    old.status = "replaced".into();
    old.replaced_ms = Some(ctx.ts());
    old.replaced_by = Some(new_card_no.clone());
    account.card_generation = account
        .card_generation
        .max(old.generation)
        .saturating_add(1);
    let new = Card {
        card_no: new_card_no.clone(),
        account_id: old.account_id.clone(),
        generation: account.card_generation,
        status: "active".into(),
        issued_ms: ctx.ts(),
        replaced_ms: None,
        replaced_by: None,
        revoked_ms: None,
    };
    account.active_card = Some(new_card_no.clone());
    put_card(txn, &old)?;
    put_card(txn, &new)?;
    accounts::save(txn, &account)?;
    Ok(Outcome::CardReplaced {
        old: Box::new(old),
        new: Box::new(new),
    })
}

/// Suspend, resume, close an account ([`accounts::lifecycle`]); a close
/// also revokes the active card it took off the account.
pub(crate) fn lifecycle<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let (account, revoked) = accounts::lifecycle(txn, ctx)?;
    if let Some(card_no) = revoked {
        revoke(txn, &card_no, ctx.ts())?;
    }
    Ok(Outcome::AccountUpdated {
        account: Box::new(account),
    })
}

/// Revoke a card (account closed).
fn revoke<T: Txn + ?Sized>(txn: &mut T, card_no: &str, ts_ms: i64) -> Res<()> {
    if let Some(mut card) = get_card(txn, card_no)? {
        card.status = "revoked".into();
        card.revoked_ms = Some(ts_ms);
        put_card(txn, &card)?;
    }
    Ok(())
}

/// The answer to a card check.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CardCheck {
    /// `OK`, or `CARD_UNKNOWN`, `CARD_REPLACED`, `ACCOUNT_CLOSED`,
    /// `ACCOUNT_SUSPENDED`, `CREDIT_NOT_LOADED`.
    pub verdict: String,
    pub message: String,
    pub card: Option<Card>,
    pub account: Option<Account>,
    /// For CARD_REPLACED: when, and the account's current card.
    pub replaced_ms: Option<i64>,
    pub current_card: Option<String>,
    /// The seq the card should carry (the account's last card seq).
    pub expected_seq: u64,
    /// For CREDIT_NOT_LOADED: the purchase whose credit is not loaded.
    pub unloaded_record_id: Option<String>,
    /// Newest first, from the recent segment only.
    pub recent: Vec<Record>,
}

/// Most recent records a card check returns.
pub const VERIFY_RECENT_MAX: usize = 50;

/// Check a card presented at a counter: `card_no`, the `generation` and the
/// purchase `seq_on_card` read from the chip. Costs a few point reads plus
/// the recent segment (at most `recent_limit` records), however long the
/// account's history.
pub fn verify_card<R: ReadView + ?Sized>(
    view: &R,
    card_no: &str,
    generation: u32,
    seq_on_card: u64,
    recent_limit: usize,
) -> Result<CardCheck, std::io::Error> {
    let mut check = CardCheck {
        verdict: "OK".into(),
        message: String::new(),
        card: None,
        account: None,
        replaced_ms: None,
        current_card: None,
        expected_seq: 0,
        unloaded_record_id: None,
        recent: Vec::new(),
    };
    let Some(card) = get_card(view, card_no)? else {
        check.verdict = ErrorCode::CardUnknown.as_str().into();
        check.message = format!("no card {card_no:?}");
        return Ok(check);
    };
    let account = get_account(view, &card.account_id)?;
    check.card = Some(card.clone());
    let Some(account) = account else {
        check.verdict = ErrorCode::CardUnknown.as_str().into();
        check.message = "the card's account does not exist".into();
        return Ok(check);
    };
    check.expected_seq = account.last_card_seq;
    check.current_card = account.active_card.clone();
    let page = ledger::list_records(
        view,
        &RecordQuery {
            account_id: account.account_id.clone(),
            segment: Segment::Recent,
            from_ms: None,
            to_ms: None,
            limit: recent_limit.clamp(1, VERIFY_RECENT_MAX),
            page_token: None,
            descending: true,
        },
    )?;
    if let Ok(page) = page {
        check.recent = page.records;
    }
    let (verdict, message) = if account.is_closed() {
        (
            ErrorCode::AccountClosed,
            "the account is closed".to_string(),
        )
    } else if card.status == "replaced" {
        check.replaced_ms = card.replaced_ms;
        (
            ErrorCode::CardReplaced,
            format!(
                "this card was replaced; the current card is {:?}",
                account.active_card
            ),
        )
    } else if card.status != "active" || card.generation != generation {
        (
            ErrorCode::CardUnknown,
            format!(
                "card {card_no:?} generation {generation} is not an active card (expected generation {})",
                card.generation
            ),
        )
    } else if account.status == "suspended" {
        (
            ErrorCode::AccountSuspended,
            "the account is suspended".to_string(),
        )
    } else if let Some(seq) = unloaded_purchase(&account) {
        check.unloaded_record_id = Some(record_id(&account.account_id, seq));
        (
            ErrorCode::CreditNotLoaded,
            format!(
                "the credit of purchase {seq} has not been confirmed loaded (card carries seq {seq_on_card})"
            ),
        )
    } else {
        check.account = Some(account);
        return Ok(check);
    };
    check.verdict = verdict.as_str().into();
    check.message = message;
    check.account = Some(account);
    Ok(check)
}

/// The seq of the account's latest purchase if its credit was not loaded
/// (and it was not reversed).
pub(crate) fn unloaded_purchase(account: &Account) -> Option<u64> {
    match &account.last_purchase {
        Some(l) if !l.loaded && !l.reversed => Some(l.seq),
        _ => None,
    }
}
