//! Tariffs (effective-dated versions, defined by ops) and the per-account
//! per-calendar-year units counter the ladder prices against (kept
//! incrementally: a purchase reads one counter, never scans records). May
//! touch `tariffs` and `year_units` only. Pricing itself is
//! `billdb_api::tariff`.
//!
//! Imports the ground floor only (a tariff as an `Op` carries it,
//! `TariffSpec`, is `payloads`').

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use rust_decimal::Decimal;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::money::decimal_compact::Compact;
use billdb_api::tariff::{Tariff, TariffVersion, TariffVersions};

use super::context::{Ctx, Res, read, refuse, write};
use super::keys;
use super::ops::{EFFECTIVE_FROM_COMMAND_TIME, Op, Outcome};
use super::txn::{Family, Get, Txn};

/// Most versions one tariff keeps.
pub const TARIFF_VERSIONS_MAX: usize = 256;

/// The stored versions of `tariff_id`, owned (see [`tariff_versions`]).
pub fn get_tariff<G: Get + ?Sized>(
    view: &G,
    tariff_id: &str,
) -> Result<Option<TariffVersions>, std::io::Error> {
    Ok(tariff_versions(view, tariff_id)?.map(Rc::unwrap_or_clone))
}

/// The stored versions of `tariff_id`, decoded through [`decode_memo`].
fn tariff_versions<G: Get + ?Sized>(
    view: &G,
    tariff_id: &str,
) -> Result<Option<Rc<TariffVersions>>, std::io::Error> {
    match view.get(Family::Tariffs, &keys::tariff(tariff_id))? {
        Some(raw) => decode_memo(&raw).map(Some),
        None => Ok(None),
    }
}

/// Most decoded tariffs [`decode_memo`] keeps per thread.
const DECODED_MAX: usize = 32;

/// Stored tariff bytes and what they decode to, newest first.
type Decoded = VecDeque<(Box<[u8]>, Rc<TariffVersions>)>;

thread_local! {
    static DECODED: RefCell<Decoded> =
        const { RefCell::new(VecDeque::new()) };
}

/// `raw` decoded, remembered by its exact bytes: every purchase prices
/// against its tariff, and parsing the stored JSON each time took about 4 %
/// of a follower's CPU under a purchase load. A pure function of `raw`, so
/// apply stays deterministic; a changed tariff has other bytes and is
/// decoded anew.
/// Stored as JSON: `TariffKind` is internally tagged (not bincode-able).
fn decode_memo(raw: &[u8]) -> Result<Rc<TariffVersions>, std::io::Error> {
    let hit = DECODED.with(|d| {
        let d = d.borrow();
        d.iter().find(|(k, _)| **k == *raw).map(|(_, v)| v.clone())
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v: Rc<TariffVersions> = Rc::new(
        serde_json::from_slice(raw)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
    );
    DECODED.with(|d| {
        let mut d = d.borrow_mut();
        d.push_front((raw.into(), v.clone()));
        d.truncate(DECODED_MAX);
    });
    Ok(v)
}

/// The version of `tariff_id` in force at `ts_ms`: TARIFF_NOT_FOUND if
/// none.
pub(crate) fn in_force<G: Get + ?Sized>(view: &G, tariff_id: &str, ts_ms: i64) -> Res<Tariff> {
    if tariff_id.is_empty() {
        return refuse(ErrorCode::TariffNotFound, "the account has no tariff");
    }
    match tariff_versions(view, tariff_id)?.and_then(|v| v.at(ts_ms).cloned()) {
        Some(t) => Ok(t),
        None => refuse(
            ErrorCode::TariffNotFound,
            format!("no version of tariff {tariff_id:?} is in force at {ts_ms}"),
        ),
    }
}

/// Units `account_id` bought in calendar `year` so far.
pub fn year_units<G: Get + ?Sized>(
    view: &G,
    account_id: &str,
    year: i32,
) -> Result<Decimal, std::io::Error> {
    let units: Option<Compact> =
        read(view, Family::YearUnits, &keys::year_units(account_id, year))?;
    Ok(units.map(|c| c.0).unwrap_or_default())
}

pub(crate) fn set_year_units<T: Txn + ?Sized>(
    txn: &mut T,
    account_id: &str,
    year: i32,
    units: Decimal,
) -> Res<()> {
    write(
        txn,
        Family::YearUnits,
        keys::year_units(account_id, year),
        &Compact(units),
    )?;
    Ok(())
}

pub(crate) fn define<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::DefineTariff {
        tariff_id,
        tariff,
        effective_from_ms,
    } = &ctx.cmd.op
    else {
        return Err(std::io::Error::other("define called with another op").into());
    };
    let tariff = &tariff.to_tariff(tariff_id);
    tariff.validate().map_err(ApiError::from)?;
    let effective_from_ms = &if *effective_from_ms == EFFECTIVE_FROM_COMMAND_TIME {
        ctx.cmd.ts_ms
    } else {
        *effective_from_ms
    };
    let mut versions = match get_tariff(txn, &tariff.tariff_id)? {
        Some(v) => v.versions,
        None => Vec::new(),
    };
    versions.retain(|v| v.effective_from_ms != *effective_from_ms);
    versions.push(TariffVersion {
        effective_from_ms: *effective_from_ms,
        tariff: tariff.clone(),
    });
    if versions.len() > TARIFF_VERSIONS_MAX {
        return refuse(
            ErrorCode::InvalidTariff,
            format!("a tariff keeps at most {TARIFF_VERSIONS_MAX} versions"),
        );
    }
    let tv = TariffVersions::new(tariff.tariff_id.clone(), versions).map_err(ApiError::from)?;
    let n = tv.versions.len() as u32;
    let json = serde_json::to_vec(&tv).map_err(std::io::Error::other)?;
    txn.put(Family::Tariffs, keys::tariff(&tariff.tariff_id), json);
    Ok(Outcome::TariffDefined {
        tariff_id: tariff.tariff_id.clone(),
        versions: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use billdb_api::tariff::TariffKind;

    fn stored(id: &str, price: &str) -> Vec<u8> {
        let tariff = Tariff::flat(id, price.parse().unwrap()).unwrap();
        let versions = TariffVersions::new(
            id,
            vec![TariffVersion {
                effective_from_ms: 0,
                tariff,
            }],
        )
        .unwrap();
        serde_json::to_vec(&versions).unwrap()
    }

    #[test]
    fn decode_memo_gives_what_decoding_gives_and_follows_changed_bytes() {
        let a = stored("MEMO-A", "0.52");
        let first = decode_memo(&a).unwrap();
        let direct: TariffVersions = serde_json::from_slice(&a).unwrap();
        assert_eq!(*first, direct);
        // The same bytes again: the remembered value, not a new decode.
        assert!(Rc::ptr_eq(&first, &decode_memo(&a).unwrap()));

        // The tariff changed (new bytes under the same id): decoded anew.
        let b = stored("MEMO-A", "0.61");
        let changed = decode_memo(&b).unwrap();
        assert!(!Rc::ptr_eq(&first, &changed));
        assert_eq!(
            changed.at(1).unwrap().kind,
            TariffKind::Flat {
                price: "0.61".parse().unwrap()
            }
        );

        // Bad bytes are an error and are not remembered.
        let remembered = DECODED.with(|d| d.borrow().len());
        assert!(decode_memo(b"{not json").is_err());
        assert_eq!(DECODED.with(|d| d.borrow().len()), remembered);

        // Bounded: after DECODED_MAX other tariffs, the first is decoded anew
        // (equal, but not the remembered value).
        for i in 0..DECODED_MAX {
            decode_memo(&stored(&format!("MEMO-{i}"), "1")).unwrap();
        }
        DECODED.with(|d| assert_eq!(d.borrow().len(), DECODED_MAX));
        let again = decode_memo(&a).unwrap();
        assert_eq!(*again, direct);
        assert!(!Rc::ptr_eq(&first, &again));
    }
}
