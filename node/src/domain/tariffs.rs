//! Tariffs (effective-dated versions, defined by ops) and the per-account
//! per-calendar-year units counter the ladder prices against (kept
//! incrementally: a purchase reads one counter, never scans records). May
//! touch `tariffs` and `year_units` only. Pricing itself is
//! `billdb_api::tariff`.

use rust_decimal::Decimal;

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::money::decimal_compact::Compact;
use billdb_api::tariff::{Tariff, TariffKind, TariffVersion, TariffVersions, Tier};
use serde::{Deserialize, Serialize};

use super::txn::{Family, Get, Txn};
use super::{Ctx, Op, Outcome, Res, keys, read, refuse, write};

/// A tariff as carried in the Raft log: a plain (bincode-friendly) form of
/// `billdb_api::tariff::TariffKind` (whose serde form is internally tagged,
/// which bincode cannot read back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TariffSpec {
    Flat {
        price: Decimal,
    },
    /// (up_to_units, price) per tier; only the last is unbounded (`None`).
    Ladder {
        tiers: Vec<(Option<Decimal>, Decimal)>,
    },
}

impl TariffSpec {
    pub fn to_tariff(&self, tariff_id: &str) -> Tariff {
        Tariff {
            tariff_id: tariff_id.to_string(),
            kind: match self {
                TariffSpec::Flat { price } => TariffKind::Flat { price: *price },
                TariffSpec::Ladder { tiers } => TariffKind::Ladder {
                    tiers: tiers
                        .iter()
                        .map(|(up_to_units, price)| Tier {
                            up_to_units: *up_to_units,
                            price: *price,
                        })
                        .collect(),
                },
            },
        }
    }
}

/// Most versions one tariff keeps.
pub const TARIFF_VERSIONS_MAX: usize = 256;

pub fn get_tariff<G: Get + ?Sized>(
    view: &G,
    tariff_id: &str,
) -> Result<Option<TariffVersions>, std::io::Error> {
    // Stored as JSON: `TariffKind` is internally tagged (not bincode-able).
    match view.get(Family::Tariffs, &keys::tariff(tariff_id))? {
        Some(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        None => Ok(None),
    }
}

/// The version of `tariff_id` in force at `ts_ms`: TARIFF_NOT_FOUND if
/// none.
pub(crate) fn in_force<G: Get + ?Sized>(view: &G, tariff_id: &str, ts_ms: i64) -> Res<Tariff> {
    if tariff_id.is_empty() {
        return refuse(ErrorCode::TariffNotFound, "the account has no tariff");
    }
    match get_tariff(view, tariff_id)?.and_then(|v| v.at(ts_ms).cloned()) {
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
