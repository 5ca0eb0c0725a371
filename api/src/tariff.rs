//! Tariffs and the tariff arithmetic of SPEC.md "Tariff arithmetic".
//!
//! A tariff is flat (one price per unit) or a ladder: tiers over the units the
//! account bought in the calendar year *before* this purchase, each tier with
//! an upper bound (`up_to_units`, cumulative) and a price per unit, the last
//! tier unbounded. A flat tariff is priced as a ladder with one unbounded tier.
//!
//! * [`price_by_money`]: the customer pays exactly `M`. Walk the tiers from the
//!   one the account is in; if what is left of `M` covers the exact cost of the
//!   rest of the tier, take those units and go on; otherwise take
//!   `floor(left / price)` to 0.01 unit and stop. Less than 0.01 unit in total
//!   is refused (`AMOUNT_TOO_SMALL`).
//! * [`price_by_units`]: fill the tiers in order; the amount is the exact total
//!   cost rounded **up** to the cent.
//! * Breakdown ([`Quote::tiers`]): one [`TierPiece`] per tier that got units;
//!   each piece's money is its exact cost rounded half-even to the cent, except
//!   the last piece, which takes what makes the pieces add up exactly to the
//!   amount. Units and money of the pieces sum exactly to the totals.
//!
//! An **area** tariff prices heating by heated area, not sales: a season's
//! charge is area (m²) × price per m², times the tariff's
//! `suspended_share` for an account that reported a heating stop
//! (suspended), rounded half-even to the cent ([`season_charge`]). Sales
//! under an area tariff are refused (`INVALID_TARIFF`).
//!
//! Everything is exact [`Decimal`] arithmetic with checked operations and
//! bounded inputs (see the constants), deterministic, and panic-free.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{
    self, AMOUNT_DECIMALS, AMOUNT_MAX, CENT, MoneyError, UNITS_DECIMALS, UNITS_MAX,
};

/// Most decimal places a tier price may have.
pub const PRICE_DECIMALS: u32 = 6;
/// Highest price per unit a tariff may have: 1,000,000.
pub const PRICE_MAX: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Highest tier bound, and highest `year_units_before`: 1,000,000,000.000 units.
pub const YEAR_UNITS_MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Most tiers a ladder may have.
pub const MAX_TIERS: usize = 64;
/// Longest tariff id, in bytes.
pub const TARIFF_ID_MAX_LEN: usize = 128;
/// Smallest quantity one purchase may buy: 0.01 unit.
pub const MIN_PURCHASE_UNITS: Decimal = CENT;

/// One tier of a ladder: units up to `up_to_units` (cumulative over the
/// calendar year; `None` = unbounded, only for the last tier) cost `price`
/// per unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(with = "opt_decimal_str")]
    pub up_to_units: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
}

/// `Option<Decimal>` as a JSON string or null. Unlike
/// `rust_decimal::serde::str_option` this also reads `null` when it was
/// buffered, as inside the internally tagged [`TariffKind`].
mod opt_decimal_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    struct Str(#[serde(with = "rust_decimal::serde::str")] Decimal);

    pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::str_option::serialize(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<Str>::deserialize(d)?.map(|Str(v)| v))
    }
}

/// Most decimal places of an area tariff's `suspended_share`.
pub const SHARE_DECIMALS: u32 = 4;
/// Largest heated area an account may have, m² (as `Account::area`).
pub const AREA_MAX_M2: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Flat or ladder pricing of sales, or an area tariff for season charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TariffKind {
    Flat {
        #[serde(with = "rust_decimal::serde::str")]
        price: Decimal,
    },
    Ladder {
        tiers: Vec<Tier>,
    },
    /// Heating priced per m² of heated area per season.
    Area {
        #[serde(with = "rust_decimal::serde::str")]
        price_per_m2: Decimal,
        /// The share of the full charge an account with a heating stop
        /// (suspended) pays: 0 to 1, e.g. 0.30.
        #[serde(with = "rust_decimal::serde::str")]
        suspended_share: Decimal,
    },
}

/// A tariff. Construct with [`Tariff::flat`] / [`Tariff::ladder`] (which
/// validate), or check a deserialized one with [`Tariff::validate`]; the
/// pricing functions validate the tariff again before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    pub tariff_id: String,
    pub kind: TariffKind,
}

/// One effective-dated version of a tariff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffVersion {
    /// Unix milliseconds from which this version applies (inclusive).
    pub effective_from_ms: i64,
    pub tariff: Tariff,
}

/// All versions of one tariff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffVersions {
    pub tariff_id: String,
    pub versions: Vec<TariffVersion>,
}

/// One tier's share of a purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierPiece {
    #[serde(with = "crate::money::decimal_compact")]
    pub units: Decimal,
    #[serde(with = "crate::money::decimal_compact")]
    pub price: Decimal,
    #[serde(with = "crate::money::decimal_compact")]
    pub amount: Decimal,
}

/// The result of pricing a purchase. `units` and `amount` are the totals;
/// `tiers` is the per-tier breakdown, whose units and amounts sum exactly to
/// the totals. Amounts have exactly 2 decimal places, units 2 or 3
/// ([`money::canonical_units`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quote {
    #[serde(with = "crate::money::decimal_compact")]
    pub units: Decimal,
    #[serde(with = "crate::money::decimal_compact")]
    pub amount: Decimal,
    pub tiers: Vec<TierPiece>,
}

/// What the customer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum PurchaseBy {
    /// Pay exactly this amount.
    Money(#[serde(with = "rust_decimal::serde::str")] Decimal),
    /// Buy exactly this many units.
    Units(#[serde(with = "rust_decimal::serde::str")] Decimal),
}

/// Why a tariff or a pricing request was refused. [`TariffError::code`] is the
/// stable machine code, `Display` the human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum TariffError {
    /// The money or units asked for are invalid (their own code).
    #[error(transparent)]
    Money { source: MoneyError },
    /// The purchase would buy less than 0.01 unit (`AMOUNT_TOO_SMALL`).
    #[error("amount {amount} buys {units} units, less than the minimum of 0.01 unit")]
    BelowMinimumPurchase { amount: String, units: String },
    /// Fewer than 0.01 unit asked for (`AMOUNT_TOO_SMALL`).
    #[error("units {units} is less than the minimum purchase of 0.01 unit")]
    UnitsBelowMinimum { units: String },
    /// By money: the units bought exceed [`UNITS_MAX`] (`UNITS_OVER_LIMIT`).
    #[error("amount buys {units} units, over the limit of {max} units per purchase")]
    UnitsOverLimit { units: String, max: String },
    /// By units: the amount due exceeds [`AMOUNT_MAX`] (`AMOUNT_OVER_LIMIT`).
    #[error("{units} units cost {amount}, over the limit of {max} per purchase")]
    AmountOverLimit {
        units: String,
        amount: String,
        max: String,
    },
    /// The tariff itself is malformed (`INVALID_TARIFF`).
    #[error("invalid tariff {tariff_id:?}: {reason}")]
    InvalidTariff { tariff_id: String, reason: String },
    /// `year_units_before` is negative, has more than 3 decimal places, or is
    /// over [`YEAR_UNITS_MAX`] (`INVALID_YEAR_UNITS`).
    #[error("invalid units bought this year {value}: {reason}")]
    InvalidYearUnits { value: String, reason: String },
    /// The breakdown rule would give the last piece a negative amount; only
    /// possible with pathological tariffs (several tiers narrower than a few
    /// hundredths of a unit) (`TARIFF_BREAKDOWN_NEGATIVE`).
    #[error(
        "tariff breakdown would give the last tier a negative amount ({amount}); the tariff's tiers are too narrow"
    )]
    NegativeBreakdown { amount: String },
    /// An intermediate value left the exact range (`ARITHMETIC_OVERFLOW`).
    #[error("arithmetic overflow while pricing")]
    Overflow,
}

impl TariffError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TariffError::Money { source } => source.code(),
            TariffError::BelowMinimumPurchase { .. } | TariffError::UnitsBelowMinimum { .. } => {
                "AMOUNT_TOO_SMALL"
            }
            TariffError::UnitsOverLimit { .. } => "UNITS_OVER_LIMIT",
            TariffError::AmountOverLimit { .. } => "AMOUNT_OVER_LIMIT",
            TariffError::InvalidTariff { .. } => "INVALID_TARIFF",
            TariffError::InvalidYearUnits { .. } => "INVALID_YEAR_UNITS",
            TariffError::NegativeBreakdown { .. } => "TARIFF_BREAKDOWN_NEGATIVE",
            TariffError::Overflow => "ARITHMETIC_OVERFLOW",
        }
    }

    /// Human-readable message.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl From<MoneyError> for TariffError {
    fn from(source: MoneyError) -> Self {
        TariffError::Money { source }
    }
}

fn invalid(tariff_id: &str, reason: impl Into<String>) -> TariffError {
    TariffError::InvalidTariff {
        tariff_id: tariff_id.chars().take(TARIFF_ID_MAX_LEN).collect(),
        reason: reason.into(),
    }
}

fn check_price(tariff_id: &str, what: &str, price: Decimal) -> Result<(), TariffError> {
    if price <= Decimal::ZERO {
        return Err(invalid(
            tariff_id,
            format!("{what}: price {price} must be > 0"),
        ));
    }
    if price.scale() > PRICE_DECIMALS {
        return Err(invalid(
            tariff_id,
            format!("{what}: price {price} has more than {PRICE_DECIMALS} decimal places"),
        ));
    }
    if price > PRICE_MAX {
        return Err(invalid(
            tariff_id,
            format!("{what}: price {price} is over the limit of {PRICE_MAX}"),
        ));
    }
    Ok(())
}

fn check_tariff_id(tariff_id: &str) -> Result<(), TariffError> {
    if tariff_id.is_empty() {
        return Err(invalid(tariff_id, "tariff_id is empty"));
    }
    if tariff_id.len() > TARIFF_ID_MAX_LEN {
        return Err(invalid(
            tariff_id,
            format!("tariff_id is longer than {TARIFF_ID_MAX_LEN} bytes"),
        ));
    }
    if tariff_id.chars().any(char::is_control) {
        return Err(invalid(tariff_id, "tariff_id contains control characters"));
    }
    Ok(())
}

impl Tariff {
    /// A validated flat tariff.
    pub fn flat(tariff_id: impl Into<String>, price: Decimal) -> Result<Self, TariffError> {
        let t = Tariff {
            tariff_id: tariff_id.into(),
            kind: TariffKind::Flat { price },
        };
        t.validate()?;
        Ok(t)
    }

    /// A validated ladder tariff.
    pub fn ladder(tariff_id: impl Into<String>, tiers: Vec<Tier>) -> Result<Self, TariffError> {
        let t = Tariff {
            tariff_id: tariff_id.into(),
            kind: TariffKind::Ladder { tiers },
        };
        t.validate()?;
        Ok(t)
    }

    /// A validated area tariff.
    pub fn area(
        tariff_id: impl Into<String>,
        price_per_m2: Decimal,
        suspended_share: Decimal,
    ) -> Result<Self, TariffError> {
        let t = Tariff {
            tariff_id: tariff_id.into(),
            kind: TariffKind::Area {
                price_per_m2,
                suspended_share,
            },
        };
        t.validate()?;
        Ok(t)
    }

    /// Refuses an area tariff for a sale.
    fn for_sales(&self) -> Result<(), TariffError> {
        match self.kind {
            TariffKind::Area { .. } => Err(invalid(
                &self.tariff_id,
                "an area tariff prices season charges by heated area; it cannot price a sale",
            )),
            _ => Ok(()),
        }
    }

    /// Checks the tariff: non-empty id; prices > 0, at most
    /// [`PRICE_DECIMALS`] places, at most [`PRICE_MAX`]; a ladder has 1 to
    /// [`MAX_TIERS`] tiers whose bounds are > 0, at most 3 decimal places, at
    /// most [`YEAR_UNITS_MAX`], strictly increasing, and only the last tier is
    /// unbounded.
    pub fn validate(&self) -> Result<(), TariffError> {
        let id = self.tariff_id.as_str();
        check_tariff_id(id)?;
        match &self.kind {
            TariffKind::Flat { price } => check_price(id, "flat tariff", *price),
            TariffKind::Area {
                price_per_m2,
                suspended_share,
            } => {
                check_price(id, "area tariff", *price_per_m2)?;
                if *suspended_share < Decimal::ZERO
                    || *suspended_share > Decimal::ONE
                    || suspended_share.scale() > SHARE_DECIMALS
                {
                    return Err(invalid(
                        id,
                        format!(
                            "suspended_share {suspended_share} must be 0 to 1 with at most \
                             {SHARE_DECIMALS} decimal places"
                        ),
                    ));
                }
                Ok(())
            }
            TariffKind::Ladder { tiers } => {
                if tiers.is_empty() {
                    return Err(invalid(id, "a ladder needs at least one tier"));
                }
                if tiers.len() > MAX_TIERS {
                    return Err(invalid(
                        id,
                        format!("a ladder has at most {MAX_TIERS} tiers"),
                    ));
                }
                let mut previous: Option<Decimal> = None;
                let last = tiers.len() - 1;
                for (i, tier) in tiers.iter().enumerate() {
                    let what = format!("tier {}", i + 1);
                    check_price(id, &what, tier.price)?;
                    match tier.up_to_units {
                        None if i == last => {}
                        None => {
                            return Err(invalid(
                                id,
                                format!("{what}: only the last tier may be unbounded"),
                            ));
                        }
                        Some(_) if i == last => {
                            return Err(invalid(
                                id,
                                format!(
                                    "{what}: the last tier must be unbounded (up_to_units null)"
                                ),
                            ));
                        }
                        Some(bound) => {
                            if bound <= Decimal::ZERO {
                                return Err(invalid(
                                    id,
                                    format!("{what}: up_to_units {bound} must be > 0"),
                                ));
                            }
                            if bound.scale() > UNITS_DECIMALS {
                                return Err(invalid(
                                    id,
                                    format!(
                                        "{what}: up_to_units {bound} has more than {UNITS_DECIMALS} decimal places"
                                    ),
                                ));
                            }
                            if bound > YEAR_UNITS_MAX {
                                return Err(invalid(
                                    id,
                                    format!(
                                        "{what}: up_to_units {bound} is over the limit of {YEAR_UNITS_MAX}"
                                    ),
                                ));
                            }
                            if let Some(p) = previous.filter(|p| bound <= *p) {
                                return Err(invalid(
                                    id,
                                    format!(
                                        "{what}: up_to_units {bound} must be greater than the previous tier's {p}"
                                    ),
                                ));
                            }
                            previous = Some(bound);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The tiers this tariff prices sales with; a flat tariff is one
    /// unbounded tier, an area tariff none (it prices no sale).
    pub fn tiers(&self) -> Vec<Tier> {
        match &self.kind {
            TariffKind::Flat { price } => vec![Tier {
                up_to_units: None,
                price: *price,
            }],
            TariffKind::Ladder { tiers } => tiers.clone(),
            TariffKind::Area { .. } => Vec::new(),
        }
    }
}

impl TariffVersions {
    /// Validated versions of `tariff_id`: at least one version, every
    /// version's tariff valid and carrying the same `tariff_id`, no two
    /// versions with the same `effective_from_ms`. Versions are sorted by
    /// `effective_from_ms`.
    pub fn new(
        tariff_id: impl Into<String>,
        mut versions: Vec<TariffVersion>,
    ) -> Result<Self, TariffError> {
        versions.sort_by_key(|v| v.effective_from_ms);
        let tv = TariffVersions {
            tariff_id: tariff_id.into(),
            versions,
        };
        tv.validate()?;
        Ok(tv)
    }

    /// Checks what [`TariffVersions::new`] guarantees (the order of
    /// `versions` does not matter to [`TariffVersions::at`]).
    pub fn validate(&self) -> Result<(), TariffError> {
        let id = self.tariff_id.as_str();
        check_tariff_id(id)?;
        if self.versions.is_empty() {
            return Err(invalid(id, "a tariff needs at least one version"));
        }
        let mut seen: Vec<i64> = Vec::with_capacity(self.versions.len());
        for v in &self.versions {
            if v.tariff.tariff_id != self.tariff_id {
                return Err(invalid(
                    id,
                    format!(
                        "version effective from {} has tariff_id {:?}",
                        v.effective_from_ms, v.tariff.tariff_id
                    ),
                ));
            }
            v.tariff.validate()?;
            if seen.contains(&v.effective_from_ms) {
                return Err(invalid(
                    id,
                    format!(
                        "two versions are effective from the same time {}",
                        v.effective_from_ms
                    ),
                ));
            }
            seen.push(v.effective_from_ms);
        }
        Ok(())
    }

    /// The version in force at `ts_ms`: the one with the latest
    /// `effective_from_ms <= ts_ms` (on a tie, the later one in the list).
    /// `None` before the first version.
    pub fn at(&self, ts_ms: i64) -> Option<&Tariff> {
        let mut best: Option<&TariffVersion> = None;
        for v in &self.versions {
            if v.effective_from_ms <= ts_ms
                && best.is_none_or(|b| v.effective_from_ms >= b.effective_from_ms)
            {
                best = Some(v);
            }
        }
        best.map(|v| &v.tariff)
    }
}

// ---------------------------------------------------------------------------
// Exact arithmetic helpers. With the validated bounds (units <= 1e9 with 3
// places, prices <= 1e6 with 6 places, money <= 1e6) every product and sum
// stays far below Decimal's 28 digits, so no operation ever rounds; the
// checked operations turn anything unexpected into `Overflow`, never a panic.

fn add(a: Decimal, b: Decimal) -> Result<Decimal, TariffError> {
    a.checked_add(b).ok_or(TariffError::Overflow)
}

fn sub(a: Decimal, b: Decimal) -> Result<Decimal, TariffError> {
    a.checked_sub(b).ok_or(TariffError::Overflow)
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, TariffError> {
    a.checked_mul(b).ok_or(TariffError::Overflow)
}

/// The largest multiple of 0.01 `u` with `u * price <= money` (money >= 0,
/// price > 0). The division only gives a first guess; the result is then
/// checked (and corrected) with exact multiplications.
fn floor_hundredths(money: Decimal, price: Decimal) -> Result<Decimal, TariffError> {
    if money <= Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let q = money.checked_div(price).ok_or(TariffError::Overflow)?;
    let mut u = q.round_dp_with_strategy(AMOUNT_DECIMALS, rust_decimal::RoundingStrategy::ToZero);
    // The quotient is correct to ~28 significant digits, so at most one step
    // is ever needed; the loop bound keeps this total in any case.
    for _ in 0..4 {
        if mul(u, price)? > money {
            u = sub(u, CENT)?;
        } else if mul(add(u, CENT)?, price)? <= money {
            u = add(u, CENT)?;
        } else {
            return Ok(u.max(Decimal::ZERO));
        }
    }
    Err(TariffError::Overflow)
}

fn check_year_units(value: Decimal) -> Result<(), TariffError> {
    let reason = if value < Decimal::ZERO {
        Some("must not be negative".to_string())
    } else if value.scale() > UNITS_DECIMALS {
        Some(format!("more than {UNITS_DECIMALS} decimal places"))
    } else if value > YEAR_UNITS_MAX {
        Some(format!("over the limit of {YEAR_UNITS_MAX}"))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TariffError::InvalidYearUnits {
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// One tier's raw share before rounding: units, price, exact cost.
struct Segment {
    units: Decimal,
    price: Decimal,
    cost: Decimal,
}

/// Units left in `tier` above `cursor` (cumulative units so far this year):
/// `None` for the unbounded tier; `Some(room)` otherwise, where `room <= 0`
/// means the account is already past this tier.
fn room_above(tier: &Tier, cursor: Decimal) -> Result<Option<Decimal>, TariffError> {
    match tier.up_to_units {
        None => Ok(None),
        Some(bound) => Ok(Some(sub(bound, cursor)?)),
    }
}

/// Builds the quote from the segments: the breakdown rule of the spec.
fn build_quote(segments: Vec<Segment>, amount: Decimal) -> Result<Quote, TariffError> {
    let mut total_units = Decimal::ZERO;
    let mut allotted = Decimal::ZERO;
    let mut pieces = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.into_iter().enumerate() {
        total_units = add(total_units, s.units)?;
        let piece_amount = if i == last {
            sub(amount, allotted)?
        } else {
            money::round_cents_half_even(s.cost)
        };
        if piece_amount < Decimal::ZERO {
            return Err(TariffError::NegativeBreakdown {
                amount: piece_amount.to_string(),
            });
        }
        allotted = add(allotted, piece_amount)?;
        let mut piece_amount = piece_amount;
        piece_amount.rescale(AMOUNT_DECIMALS);
        pieces.push(TierPiece {
            units: money::canonical_units(s.units),
            price: s.price,
            amount: piece_amount,
        });
    }
    let mut amount = amount;
    amount.rescale(AMOUNT_DECIMALS);
    Ok(Quote {
        units: money::canonical_units(total_units),
        amount,
        tiers: pieces,
    })
}

/// Prices a purchase paying exactly `money` (SPEC.md "Tariff arithmetic",
/// by money M), for an account that bought `year_units_before` units earlier
/// in the calendar year.
///
/// `money` must be a valid amount ([`money::validate_amount`]). Refused with
/// `AMOUNT_TOO_SMALL` when it buys less than 0.01 unit and with
/// `UNITS_OVER_LIMIT` when it buys more than [`UNITS_MAX`].
pub fn price_by_money(
    tariff: &Tariff,
    year_units_before: Decimal,
    money: Decimal,
) -> Result<Quote, TariffError> {
    tariff.validate()?;
    tariff.for_sales()?;
    check_year_units(year_units_before)?;
    let money = money::validate_amount(money)?;

    let mut left = money;
    let mut cursor = year_units_before;
    let mut segments = Vec::new();
    for tier in tariff.tiers() {
        let room = room_above(&tier, cursor)?;
        if let Some(room) = room {
            if room <= Decimal::ZERO {
                // The account is already past this tier.
                continue;
            }
            let cost = mul(room, tier.price)?;
            if left >= cost {
                segments.push(Segment {
                    units: room,
                    price: tier.price,
                    cost,
                });
                left = sub(left, cost)?;
                cursor = add(cursor, room)?;
                continue;
            }
        }
        let units = floor_hundredths(left, tier.price)?;
        if units > Decimal::ZERO {
            segments.push(Segment {
                units,
                price: tier.price,
                cost: mul(units, tier.price)?,
            });
        }
        break;
    }

    let mut units = Decimal::ZERO;
    for s in &segments {
        units = add(units, s.units)?;
    }
    if units < MIN_PURCHASE_UNITS {
        return Err(TariffError::BelowMinimumPurchase {
            amount: money.to_string(),
            units: money::canonical_units(units).to_string(),
        });
    }
    if units > UNITS_MAX {
        return Err(TariffError::UnitsOverLimit {
            units: money::canonical_units(units).to_string(),
            max: UNITS_MAX.to_string(),
        });
    }
    build_quote(segments, money)
}

/// Prices a purchase of exactly `units` units (SPEC.md "Tariff arithmetic",
/// by units N), for an account that bought `year_units_before` units earlier
/// in the calendar year. The amount is the exact cost rounded up to the cent.
///
/// `units` must be valid ([`money::validate_units`]) and at least 0.01
/// (`AMOUNT_TOO_SMALL` otherwise); an amount over [`AMOUNT_MAX`] is refused
/// with `AMOUNT_OVER_LIMIT`.
pub fn price_by_units(
    tariff: &Tariff,
    year_units_before: Decimal,
    units: Decimal,
) -> Result<Quote, TariffError> {
    tariff.validate()?;
    tariff.for_sales()?;
    check_year_units(year_units_before)?;
    let units = money::validate_units(units)?;
    if units < MIN_PURCHASE_UNITS {
        return Err(TariffError::UnitsBelowMinimum {
            units: units.to_string(),
        });
    }

    let mut left = units;
    let mut cursor = year_units_before;
    let mut segments = Vec::new();
    let mut exact = Decimal::ZERO;
    for tier in tariff.tiers() {
        if left <= Decimal::ZERO {
            break;
        }
        let take = match room_above(&tier, cursor)? {
            Some(room) if room <= Decimal::ZERO => continue,
            Some(room) => room.min(left),
            None => left,
        };
        let cost = mul(take, tier.price)?;
        exact = add(exact, cost)?;
        segments.push(Segment {
            units: take,
            price: tier.price,
            cost,
        });
        left = sub(left, take)?;
        cursor = add(cursor, take)?;
    }
    if left != Decimal::ZERO {
        // Unreachable for a validated tariff (the last tier is unbounded).
        return Err(invalid(
            &tariff.tariff_id,
            "tiers do not cover the purchase",
        ));
    }
    let amount = money::round_cents_up(exact);
    if amount > AMOUNT_MAX {
        return Err(TariffError::AmountOverLimit {
            units: money::canonical_units(units).to_string(),
            amount: amount.to_string(),
            max: AMOUNT_MAX.to_string(),
        });
    }
    build_quote(segments, amount)
}

/// A season's heating charge under an area tariff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonCharge {
    /// area × price per m² (× the suspended share), exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub exact: Decimal,
    /// `exact` rounded half-even to the cent: what is charged.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The season charge of an account with `area_m2` of heated area under the
/// area tariff `tariff`; `suspended`: the account reported a heating stop
/// and pays the tariff's `suspended_share` of the full charge. Refused for
/// a tariff that is not an area tariff, an area outside 0..=[`AREA_MAX_M2`]
/// or with more than 2 decimal places, and a charge over [`AMOUNT_MAX`].
pub fn season_charge(
    tariff: &Tariff,
    area_m2: Decimal,
    suspended: bool,
) -> Result<SeasonCharge, TariffError> {
    tariff.validate()?;
    let TariffKind::Area {
        price_per_m2,
        suspended_share,
    } = tariff.kind
    else {
        return Err(invalid(
            &tariff.tariff_id,
            "not an area tariff: a season charge needs a price per m²",
        ));
    };
    if area_m2 < Decimal::ZERO || area_m2 > AREA_MAX_M2 || area_m2.scale() > 2 {
        return Err(invalid(
            &tariff.tariff_id,
            format!("area {area_m2} m² must be 0 to {AREA_MAX_M2} with at most 2 decimal places"),
        ));
    }
    let full = mul(area_m2, price_per_m2)?;
    let exact = if suspended {
        mul(full, suspended_share)?
    } else {
        full
    };
    let amount = money::round_cents_half_even(exact);
    if amount > AMOUNT_MAX {
        return Err(TariffError::AmountOverLimit {
            units: format!("{area_m2} m²"),
            amount: amount.to_string(),
            max: AMOUNT_MAX.to_string(),
        });
    }
    Ok(SeasonCharge { exact, amount })
}

/// [`price_by_money`] or [`price_by_units`], as asked.
pub fn price(
    tariff: &Tariff,
    year_units_before: Decimal,
    by: PurchaseBy,
) -> Result<Quote, TariffError> {
    match by {
        PurchaseBy::Money(m) => price_by_money(tariff, year_units_before, m),
        PurchaseBy::Units(n) => price_by_units(tariff, year_units_before, n),
    }
}

/// The exact (unrounded) cost of `units` units bought after
/// `year_units_before` units: the sum of units × price over the tiers.
/// Useful to check a quote; it is what [`price_by_units`] rounds up.
/// `units` is 0 or valid units ([`money::validate_units`]).
pub fn exact_cost(
    tariff: &Tariff,
    year_units_before: Decimal,
    units: Decimal,
) -> Result<Decimal, TariffError> {
    tariff.validate()?;
    tariff.for_sales()?;
    check_year_units(year_units_before)?;
    if units == Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let units = money::validate_units(units)?;
    let mut left = units;
    let mut cursor = year_units_before;
    let mut exact = Decimal::ZERO;
    for tier in tariff.tiers() {
        if left <= Decimal::ZERO {
            break;
        }
        let take = match room_above(&tier, cursor)? {
            Some(room) if room <= Decimal::ZERO => continue,
            Some(room) => room.min(left),
            None => left,
        };
        exact = add(exact, mul(take, tier.price)?)?;
        left = sub(left, take)?;
        cursor = add(cursor, take)?;
    }
    Ok(exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    fn tier(up: Option<&str>, price: &str) -> Tier {
        Tier {
            up_to_units: up.map(d),
            price: d(price),
        }
    }

    fn ladder() -> Tariff {
        Tariff::ladder(
            "RES",
            vec![
                tier(Some("2160"), "0.4883"),
                tier(Some("4200"), "0.5383"),
                tier(None, "0.7883"),
            ],
        )
        .expect("valid ladder")
    }

    #[test]
    fn season_charges_are_area_times_price_rounded_half_even() {
        let t = Tariff::area("HEAT", d("3.65"), d("0.30")).expect("valid area tariff");
        let full = season_charge(&t, d("85.50"), false).expect("full");
        assert_eq!((full.exact, full.amount), (d("312.0750"), d("312.08")));
        // Half-even: 0.125 → 0.12, 0.135 → 0.14.
        let t1 = Tariff::area("H1", d("0.0125"), d("1")).expect("valid");
        assert_eq!(
            season_charge(&t1, d("10"), false).expect("a").amount,
            d("0.12")
        );
        let t2 = Tariff::area("H2", d("0.0135"), d("1")).expect("valid");
        assert_eq!(
            season_charge(&t2, d("10"), false).expect("a").amount,
            d("0.14")
        );
        // A heating stop pays the share of the full charge.
        let stop = season_charge(&t, d("85.50"), true).expect("suspended");
        assert_eq!((stop.exact, stop.amount), (d("93.622500"), d("93.62")));
        assert_eq!(
            season_charge(&t, d("0"), false).expect("zero").amount,
            d("0.00")
        );
        for bad in ["-1", "1000000.01", "10.005"] {
            let e = season_charge(&t, d(bad), false).expect_err(bad);
            assert_eq!(e.code(), "INVALID_TARIFF", "{bad}: {e}");
        }
        let flat = Tariff::flat("F", d("0.5")).expect("flat");
        assert_eq!(
            season_charge(&flat, d("10"), false)
                .expect_err("flat")
                .code(),
            "INVALID_TARIFF"
        );
        // An area tariff prices no sale.
        for e in [
            price_by_money(&t, Decimal::ZERO, d("10.00")).expect_err("money"),
            price_by_units(&t, Decimal::ZERO, d("10")).expect_err("units"),
        ] {
            assert_eq!(e.code(), "INVALID_TARIFF", "{e}");
            assert!(e.to_string().contains("area tariff"), "{e}");
        }
        for share in ["-0.1", "1.01", "0.12345"] {
            assert!(Tariff::area("H", d("1"), d(share)).is_err(), "{share}");
        }
        assert!(Tariff::area("H", d("0"), d("0.3")).is_err(), "price 0");
        // Stored as JSON, tagged "area".
        let json = serde_json::to_value(&t).expect("json");
        assert_eq!(json["kind"]["type"], "area", "{json}");
        assert_eq!(json["kind"]["price_per_m2"], "3.65", "{json}");
        let back: Tariff = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, t);
    }

    #[test]
    fn tariff_validation_refusals() {
        let cases: Vec<(Tariff, &str)> = vec![
            (
                Tariff {
                    tariff_id: String::new(),
                    kind: TariffKind::Flat { price: d("1") },
                },
                "empty",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Flat { price: d("0") },
                },
                "> 0",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Flat { price: d("-1") },
                },
                "> 0",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Flat {
                        price: d("0.0000001"),
                    },
                },
                "decimal places",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder { tiers: vec![] },
                },
                "at least one tier",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![tier(Some("10"), "1")],
                    },
                },
                "last tier must be unbounded",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![tier(None, "1"), tier(None, "2")],
                    },
                },
                "only the last tier",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![
                            tier(Some("10"), "1"),
                            tier(Some("10"), "2"),
                            tier(None, "3"),
                        ],
                    },
                },
                "greater than the previous",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![tier(Some("0"), "1"), tier(None, "3")],
                    },
                },
                "must be > 0",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![tier(Some("1.0001"), "1"), tier(None, "3")],
                    },
                },
                "decimal places",
            ),
            (
                Tariff {
                    tariff_id: "T".into(),
                    kind: TariffKind::Ladder {
                        tiers: vec![tier(Some("10"), "0"), tier(None, "3")],
                    },
                },
                "> 0",
            ),
        ];
        for (t, needle) in cases {
            let err = t.validate().expect_err(needle);
            assert_eq!(err.code(), "INVALID_TARIFF");
            assert!(err.message().contains(needle), "{needle}: {err}");
            // Pricing refuses an invalid tariff too.
            assert_eq!(
                price_by_money(&t, Decimal::ZERO, d("1.00"))
                    .unwrap_err()
                    .code(),
                "INVALID_TARIFF"
            );
        }
        assert!(ladder().validate().is_ok());
    }

    #[test]
    fn tariff_json_shape() {
        let t = Tariff::flat("FLAT-1", d("0.52")).unwrap();
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tariff_id": "FLAT-1", "kind": {"type": "flat", "price": "0.52"}})
        );
        let l = ladder();
        let back: Tariff = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        // Floats are refused, so are unknown fields.
        assert!(
            serde_json::from_str::<Tariff>(
                r#"{"tariff_id":"X","kind":{"type":"flat","price":0.52}}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<Tariff>(
                r#"{"tariff_id":"X","kind":{"type":"flat","price":"0.52"},"extra":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn flat_is_one_unbounded_tier() {
        let t = Tariff::flat("F", d("0.5")).unwrap();
        let q = price_by_money(&t, d("123.45"), d("10.00")).unwrap();
        assert_eq!(q.units.to_string(), "20.00");
        assert_eq!(q.amount.to_string(), "10.00");
        assert_eq!(q.tiers.len(), 1);
        let q = price_by_units(&t, d("999999"), d("3.333")).unwrap();
        assert_eq!(q.amount.to_string(), "1.67"); // 1.6665 rounded up
        assert_eq!(q.units.to_string(), "3.333");
        assert_eq!(q.tiers[0].amount.to_string(), "1.67");
    }

    #[test]
    fn versions_pick_latest_effective() {
        let v1 = Tariff::flat("T", d("1")).unwrap();
        let v2 = Tariff::flat("T", d("2")).unwrap();
        let v3 = Tariff::flat("T", d("3")).unwrap();
        let tv = TariffVersions::new(
            "T",
            vec![
                TariffVersion {
                    effective_from_ms: 3000,
                    tariff: v3.clone(),
                },
                TariffVersion {
                    effective_from_ms: 1000,
                    tariff: v1.clone(),
                },
                TariffVersion {
                    effective_from_ms: 2000,
                    tariff: v2.clone(),
                },
            ],
        )
        .unwrap();
        assert_eq!(tv.versions[0].effective_from_ms, 1000, "sorted");
        assert_eq!(tv.at(999), None);
        assert_eq!(tv.at(1000), Some(&v1));
        assert_eq!(tv.at(1999), Some(&v1));
        assert_eq!(tv.at(2000), Some(&v2));
        assert_eq!(tv.at(2999), Some(&v2));
        assert_eq!(tv.at(i64::MAX), Some(&v3));
        assert_eq!(tv.at(i64::MIN), None);

        let dup = TariffVersions::new(
            "T",
            vec![
                TariffVersion {
                    effective_from_ms: 1,
                    tariff: v1.clone(),
                },
                TariffVersion {
                    effective_from_ms: 1,
                    tariff: v2,
                },
            ],
        );
        assert_eq!(dup.unwrap_err().code(), "INVALID_TARIFF");
        let other_id = TariffVersions::new(
            "U",
            vec![TariffVersion {
                effective_from_ms: 1,
                tariff: v1,
            }],
        );
        assert_eq!(other_id.unwrap_err().code(), "INVALID_TARIFF");
        assert_eq!(
            TariffVersions::new("T", vec![]).unwrap_err().code(),
            "INVALID_TARIFF"
        );
    }

    #[test]
    fn refusals() {
        let t = ladder();
        let code = |r: Result<Quote, TariffError>| r.unwrap_err().code();
        assert_eq!(code(price_by_money(&t, d("0"), d("0"))), "AMOUNT_TOO_SMALL");
        assert_eq!(
            code(price_by_money(&t, d("0"), d("-1"))),
            "AMOUNT_TOO_SMALL"
        );
        assert_eq!(
            code(price_by_money(&t, d("0"), d("0.001"))),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(
            code(price_by_money(&t, d("0"), d("1000000.01"))),
            "AMOUNT_OVER_LIMIT"
        );
        assert_eq!(
            code(price_by_money(&t, d("-1"), d("1"))),
            "INVALID_YEAR_UNITS"
        );
        assert_eq!(
            code(price_by_money(&t, d("0.0001"), d("1"))),
            "INVALID_YEAR_UNITS"
        );
        assert_eq!(
            code(price_by_money(&t, Decimal::MAX, d("1"))),
            "INVALID_YEAR_UNITS"
        );
        assert_eq!(code(price_by_units(&t, d("0"), d("0"))), "UNITS_TOO_SMALL");
        assert_eq!(
            code(price_by_units(&t, d("0"), d("0.009"))),
            "AMOUNT_TOO_SMALL"
        );
        assert_eq!(
            code(price_by_units(&t, d("0"), d("0.0001"))),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(
            code(price_by_units(&t, d("0"), d("1000000.001"))),
            "UNITS_OVER_LIMIT"
        );

        // Less than 0.01 unit for the money: refused.
        let dear = Tariff::flat("D", d("50")).unwrap();
        let err = price_by_money(&dear, d("0"), d("0.49")).unwrap_err();
        assert_eq!(err.code(), "AMOUNT_TOO_SMALL");
        assert!(err.message().contains("0.01"));
        assert_eq!(
            price_by_money(&dear, d("0"), d("0.50")).unwrap().units,
            d("0.01")
        );

        // Too many units for the money, or too much money for the units.
        let cheap = Tariff::flat("C", d("0.000001")).unwrap();
        assert_eq!(
            code(price_by_money(&cheap, d("0"), d("2.00"))),
            "UNITS_OVER_LIMIT"
        );
        assert_eq!(
            price_by_money(&cheap, d("0"), d("1.00")).unwrap().units,
            d("1000000")
        );
        let costly = Tariff::flat("X", PRICE_MAX).unwrap();
        assert_eq!(
            code(price_by_units(&costly, YEAR_UNITS_MAX, UNITS_MAX)),
            "AMOUNT_OVER_LIMIT"
        );
        assert_eq!(
            price_by_units(&costly, YEAR_UNITS_MAX, d("1"))
                .unwrap()
                .amount,
            AMOUNT_MAX
        );
    }

    #[test]
    fn partial_tier_with_three_decimal_places() {
        let t = ladder();
        // 0.005 unit left in tier 1 costs 0.0024415; the rest buys tier 2.
        let q = price_by_money(&t, d("2159.995"), d("0.01")).unwrap();
        assert_eq!(q.tiers[0].units.to_string(), "0.005");
        assert_eq!(q.tiers[1].units.to_string(), "0.01"); // floor(0.0075585/0.5383)
        assert_eq!(q.units.to_string(), "0.015");
        assert_eq!(q.amount.to_string(), "0.01");
        assert_eq!(q.tiers[0].amount + q.tiers[1].amount, q.amount);

        let q = price_by_units(&t, d("2159.995"), d("0.01")).unwrap();
        assert_eq!(q.tiers[0].units.to_string(), "0.005");
        assert_eq!(q.tiers[1].units.to_string(), "0.005");
        assert_eq!(q.amount.to_string(), "0.01"); // 0.0051330 up
    }

    #[test]
    fn negative_last_piece_is_refused_not_invented() {
        // Three tiers of 0.01 unit at 0.6 (0.006 each, rounded to 0.01 each),
        // then a cheap tier: 0.02 buys all three plus 0.02 unit at 0.1, but
        // the rounded pieces 0.01 + 0.01 + 0.01 already exceed 0.02.
        let t = Tariff::ladder(
            "NARROW",
            vec![
                tier(Some("0.01"), "0.6"),
                tier(Some("0.02"), "0.6"),
                tier(Some("0.03"), "0.6"),
                tier(None, "0.1"),
            ],
        )
        .unwrap();
        let err = price_by_money(&t, d("0"), d("0.02")).unwrap_err();
        assert_eq!(err.code(), "TARIFF_BREAKDOWN_NEGATIVE");
    }

    #[test]
    fn exact_cost_is_unrounded() {
        let t = ladder();
        assert_eq!(exact_cost(&t, d("2150"), d("20")).unwrap(), d("10.266"));
        assert_eq!(exact_cost(&t, d("0"), d("0")).unwrap(), Decimal::ZERO);
        assert_eq!(exact_cost(&t, d("0"), d("5000")).unwrap(), d("2783.500"));
        assert_eq!(
            exact_cost(&t, d("0"), d("-1")).unwrap_err().code(),
            "UNITS_TOO_SMALL"
        );
        assert_eq!(
            exact_cost(&t, d("-1"), d("1")).unwrap_err().code(),
            "INVALID_YEAR_UNITS"
        );
    }

    #[test]
    fn floor_hundredths_is_exact() {
        assert_eq!(
            floor_hundredths(d("0.73085"), d("0.7883")).unwrap(),
            d("0.92")
        );
        assert_eq!(
            floor_hundredths(d("7.883"), d("0.7883")).unwrap(),
            d("10.00")
        );
        assert_eq!(
            floor_hundredths(d("7.882999999"), d("0.7883")).unwrap(),
            d("9.99")
        );
        assert_eq!(floor_hundredths(d("0"), d("0.7883")).unwrap(), d("0"));
        assert_eq!(floor_hundredths(d("1"), d("3")).unwrap(), d("0.33"));
    }

    #[test]
    fn errors_serialize() {
        let err = price_by_units(&ladder(), d("0"), d("0.009")).unwrap_err();
        let v = serde_json::to_value(&err).unwrap();
        let back: TariffError = serde_json::from_value(v).unwrap();
        assert_eq!(back, err);
        let err: TariffError = MoneyError::AmountTooSmall { value: "0".into() }.into();
        assert_eq!(err.code(), "AMOUNT_TOO_SMALL");
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(serde_json::from_value::<TariffError>(v).unwrap(), err);
    }

    #[test]
    fn purchase_by_json() {
        let by: PurchaseBy = serde_json::from_str(r#"{"by":"money","value":"100.00"}"#).unwrap();
        assert_eq!(by, PurchaseBy::Money(d("100.00")));
        let q = price(&ladder(), d("0"), by).unwrap();
        assert_eq!(q.units.to_string(), "204.79");
        assert!(serde_json::from_str::<PurchaseBy>(r#"{"by":"money","value":100.0}"#).is_err());
    }
}
