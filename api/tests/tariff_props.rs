//! Property tests for the tariff arithmetic (SPEC.md "Tariff arithmetic").
//!
//! The main properties compare `price_by_money` / `price_by_units` with an
//! independent oracle written here from the spec's definitions rather than
//! its algorithm:
//! * by money M (whole-cent tier bounds and year units): the units bought are
//!   the largest multiple of 0.01 whose exact cost is <= M (found by binary
//!   search over a straightforward cost function), and the amount is M;
//! * by units N: the amount is the exact cost rounded up to the cent;
//! * the breakdown splits the units over the tiers they fall in, each piece
//!   costed half-even to the cent except the last, which takes the rest.
//!
//! On top of that: sums, bounds, boundaries, monotonicity, round trips and
//! no panics on arbitrary input.

use std::str::FromStr;

use billdb_api::money::{self, AMOUNT_MAX, UNITS_MAX};
use billdb_api::tariff::{Quote, Tariff, TariffError, Tier, price_by_money, price_by_units};
use proptest::prelude::*;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------
// Fixtures and oracle

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("literal")
}

fn cents(n: i64) -> Decimal {
    Decimal::new(n, 2)
}

/// The ladder of the shared vectors.
fn vector_tariff() -> Tariff {
    Tariff::ladder(
        "RES-LADDER-2026",
        vec![
            Tier {
                up_to_units: Some(d("2160")),
                price: d("0.4883"),
            },
            Tier {
                up_to_units: Some(d("4200")),
                price: d("0.5383"),
            },
            Tier {
                up_to_units: None,
                price: d("0.7883"),
            },
        ],
    )
    .expect("valid")
}

/// `(lower, upper, price)` of every tier; `upper` None = unbounded.
fn bands(t: &Tariff) -> Vec<(Decimal, Option<Decimal>, Decimal)> {
    let mut lower = Decimal::ZERO;
    let mut out = Vec::new();
    for tier in t.tiers() {
        out.push((lower, tier.up_to_units, tier.price));
        if let Some(u) = tier.up_to_units {
            lower = u;
        }
    }
    out
}

/// Units of `[before, before + units]` falling in each tier, with its price.
fn overlaps(t: &Tariff, before: Decimal, units: Decimal) -> Vec<(Decimal, Decimal)> {
    let end = before + units;
    bands(t)
        .into_iter()
        .filter_map(|(lower, upper, price)| {
            let lo = lower.max(before);
            let hi = upper.map_or(end, |u| u.min(end));
            (hi > lo).then_some((hi - lo, price))
        })
        .collect()
}

/// Exact, unrounded cost of `units` bought after `before`.
fn cost(t: &Tariff, before: Decimal, units: Decimal) -> Decimal {
    overlaps(t, before, units)
        .into_iter()
        .map(|(u, p)| u * p)
        .sum()
}

/// Ceiling to the cent, computed differently from the library.
fn ceil_cent(x: Decimal) -> Decimal {
    (x * Decimal::ONE_HUNDRED).ceil() / Decimal::ONE_HUNDRED
}

/// The expected quote for `units` after `before` charging `amount`, or the
/// code of the refusal the breakdown rule forces.
fn oracle_breakdown(
    t: &Tariff,
    before: Decimal,
    units: Decimal,
    amount: Decimal,
) -> Result<Quote, &'static str> {
    let parts = overlaps(t, before, units);
    let mut tiers = Vec::new();
    let mut allotted = Decimal::ZERO;
    for (i, (u, p)) in parts.iter().enumerate() {
        let a = if i + 1 == parts.len() {
            amount - allotted
        } else {
            (u * p).round_dp(2) // banker's rounding
        };
        if a < Decimal::ZERO {
            return Err("TARIFF_BREAKDOWN_NEGATIVE");
        }
        allotted += a;
        tiers.push(billdb_api::tariff::TierPiece {
            units: *u,
            price: *p,
            amount: a,
        });
    }
    Ok(Quote {
        units,
        amount,
        tiers,
    })
}

/// By money, from the definition: the most whole hundredths of a unit whose
/// exact cost is <= M. Valid when `before` and every bound are whole
/// hundredths (then the spec's tier walk finds exactly this maximum).
fn oracle_by_money(t: &Tariff, before: Decimal, m: Decimal) -> Result<Quote, &'static str> {
    let min_price = t.tiers().iter().map(|x| x.price).min().expect("tiers");
    // cost(u) >= u * min_price, so cost(hi) > m.
    let hi_units = (m / min_price).floor() + Decimal::ONE;
    let mut lo: i64 = 0;
    let mut hi: i64 = (hi_units * Decimal::ONE_HUNDRED)
        .to_string()
        .parse()
        .expect("fits");
    assert!(cost(t, before, cents(hi)) > m);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if cost(t, before, cents(mid)) <= m {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Err("AMOUNT_TOO_SMALL");
    }
    let units = cents(lo);
    if units > UNITS_MAX {
        return Err("UNITS_OVER_LIMIT");
    }
    oracle_breakdown(t, before, units, m)
}

fn oracle_by_units(t: &Tariff, before: Decimal, n: Decimal) -> Result<Quote, &'static str> {
    let amount = ceil_cent(cost(t, before, n));
    if amount > AMOUNT_MAX {
        return Err("AMOUNT_OVER_LIMIT");
    }
    oracle_breakdown(t, before, n, amount)
}

/// Compares a result with the oracle, and checks the representation rules
/// (amounts with exactly 2 places, units with 2 or 3) and the sums.
fn check_against(
    got: &Result<Quote, TariffError>,
    want: &Result<Quote, &'static str>,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(q), Ok(w)) => {
            prop_assert_eq!(q, w);
            check_shape(q)?;
        }
        (Err(e), Err(code)) => prop_assert_eq!(e.code(), *code, "{}", e),
        (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want),
    }
    Ok(())
}

fn check_shape(q: &Quote) -> Result<(), TestCaseError> {
    prop_assert_eq!(q.amount.scale(), 2, "amount {}", q.amount);
    let us = q.units.scale();
    prop_assert!(us == 2 || us == 3, "units {}", q.units);
    prop_assert!(!q.tiers.is_empty());
    let mut units = Decimal::ZERO;
    let mut amount = Decimal::ZERO;
    for p in &q.tiers {
        prop_assert_eq!(p.amount.scale(), 2, "piece amount {}", p.amount);
        prop_assert!(p.units > Decimal::ZERO, "empty piece {:?}", p);
        prop_assert!(p.amount >= Decimal::ZERO, "negative piece {:?}", p);
        units += p.units;
        amount += p.amount;
    }
    prop_assert_eq!(units, q.units, "piece units must sum to the total");
    prop_assert_eq!(amount, q.amount, "piece amounts must sum to the total");
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies

/// Ladders of 1 to 6 tiers with whole-hundredth bounds (some tiers as narrow
/// as 0.01 unit) and 4-place prices from 0.0100 to 5.0000.
fn arb_tariff() -> impl Strategy<Value = Tariff> {
    let width = prop_oneof![1i64..=200, 100i64..=500_000]; // hundredths of a unit
    let price = 100i64..=50_000; // ten-thousandths
    (prop::collection::vec((width, price.clone()), 0..=5), price).prop_map(
        |(bounded, last_price)| {
            let mut bound = 0i64;
            let mut tiers: Vec<Tier> = bounded
                .into_iter()
                .map(|(w, p)| {
                    bound += w;
                    Tier {
                        up_to_units: Some(cents(bound)),
                        price: Decimal::new(p, 4),
                    }
                })
                .collect();
            tiers.push(Tier {
                up_to_units: None,
                price: Decimal::new(last_price, 4),
            });
            Tariff::ladder("PROP", tiers).expect("generated tariffs are valid")
        },
    )
}

/// Ladders of 2 to 6 tiers, every bounded tier at least 100 units wide.
fn arb_wide_tariff() -> impl Strategy<Value = Tariff> {
    let price = 100i64..=50_000; // ten-thousandths
    (
        prop::collection::vec((10_000i64..=500_000, price.clone()), 1..=5),
        price,
    )
        .prop_map(|(bounded, last_price)| {
            let mut bound = 0i64;
            let mut tiers: Vec<Tier> = bounded
                .into_iter()
                .map(|(w, p)| {
                    bound += w;
                    Tier {
                        up_to_units: Some(cents(bound)),
                        price: Decimal::new(p, 4),
                    }
                })
                .collect();
            tiers.push(Tier {
                up_to_units: None,
                price: Decimal::new(last_price, 4),
            });
            Tariff::ladder("WIDE", tiers).expect("generated tariffs are valid")
        })
}

/// Money: mostly everyday amounts, sometimes up to the limit.
fn arb_money() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        4 => (1i64..=10).prop_map(cents),
        8 => (1i64..=1_000_000).prop_map(cents),
        1 => (1i64..=100_000_000).prop_map(cents),
    ]
}

/// Units as whole hundredths, >= 0.01.
fn arb_units_2dp() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (1i64..=10).prop_map(cents),
        (1i64..=2_000_000).prop_map(cents),
        (1i64..=100_000_000).prop_map(cents),
    ]
}

/// Year units before: whole hundredths up to 30,000.
fn arb_before() -> impl Strategy<Value = Decimal> {
    (0i64..=3_000_000).prop_map(cents)
}

/// A tariff with a year-units position near one of its bounds: at the bound,
/// or up to 0.03 unit either side.
fn arb_at_boundary() -> impl Strategy<Value = (Tariff, Decimal)> {
    (arb_tariff(), any::<prop::sample::Index>(), -3i64..=3).prop_map(|(t, idx, delta)| {
        let bounds: Vec<Decimal> = t.tiers().iter().filter_map(|x| x.up_to_units).collect();
        let before = if bounds.is_empty() {
            cents(delta.abs())
        } else {
            (bounds[idx.index(bounds.len())] + cents(delta)).max(Decimal::ZERO)
        };
        (t, before)
    })
}

// ---------------------------------------------------------------------------
// Properties

/// `cases` cases per property. Failures are reported with their shrunk input
/// but not saved to a regressions file beside the sources (the failing input
/// belongs in a named test instead).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// By money equals the oracle (units, amount, every piece), charges
    /// exactly M, never more than M of exact cost, and no further 0.01 unit
    /// would have been affordable.
    #[test]
    fn by_money_matches_definition(t in arb_tariff(), before in arb_before(), m in arb_money()) {
        let got = price_by_money(&t, before, m);
        check_against(&got, &oracle_by_money(&t, before, m))?;
        if let Ok(q) = &got {
            prop_assert_eq!(q.amount, m);
            prop_assert!(cost(&t, before, q.units) <= m);
            prop_assert!(cost(&t, before, q.units + cents(1)) > m);
        }
    }

    /// By units equals the oracle; the amount is >= the exact cost and less
    /// than one cent above it; exactly the asked units are delivered.
    #[test]
    fn by_units_matches_definition(t in arb_tariff(), before in arb_before(), n in arb_units_2dp()) {
        let got = price_by_units(&t, before, n);
        check_against(&got, &oracle_by_units(&t, before, n))?;
        if let Ok(q) = &got {
            let exact = cost(&t, before, n);
            prop_assert_eq!(q.units, n);
            prop_assert!(q.amount >= exact);
            prop_assert!(q.amount < exact + cents(1));
        }
    }

    /// Year units and purchases with 3 decimal places: the oracle's maximum
    /// no longer applies across a 3-place bound, but amount == M, exact cost
    /// <= M, the sums and the by-units rounding still hold.
    #[test]
    fn three_decimal_places(
        t in arb_tariff(),
        before_milli in 0i64..=30_000_000,
        m in arb_money(),
        n_milli in 10i64..=10_000_000,
    ) {
        let before = Decimal::new(before_milli, 3);
        let n = Decimal::new(n_milli, 3);
        match price_by_money(&t, before, m) {
            Ok(q) => {
                check_shape(&q)?;
                prop_assert_eq!(q.amount, m);
                prop_assert!(q.units >= cents(1));
                prop_assert!(cost(&t, before, q.units) <= m);
            }
            Err(e) => prop_assert!(
                ["AMOUNT_TOO_SMALL", "UNITS_OVER_LIMIT", "TARIFF_BREAKDOWN_NEGATIVE"].contains(&e.code()),
                "{:?}", e
            ),
        }
        match price_by_units(&t, before, n) {
            Ok(q) => {
                check_shape(&q)?;
                prop_assert_eq!(q.units, n);
                let exact = cost(&t, before, n);
                prop_assert_eq!(q.amount, ceil_cent(exact));
                check_against(&Ok(q), &oracle_breakdown(&t, before, n, ceil_cent(exact)))?;
            }
            Err(e) => prop_assert!(
                ["AMOUNT_OVER_LIMIT", "TARIFF_BREAKDOWN_NEGATIVE"].contains(&e.code()),
                "{:?}", e
            ),
        }
    }

    /// Positions at and around every tier boundary, both ways.
    #[test]
    fn boundaries((t, before) in arb_at_boundary(), m in arb_money(), n in arb_units_2dp()) {
        check_against(&price_by_money(&t, before, m), &oracle_by_money(&t, before, m))?;
        check_against(&price_by_units(&t, before, n), &oracle_by_units(&t, before, n))?;
    }

    /// Money that exactly covers the rest of a tier buys exactly the rest of
    /// the tier, in one piece of exactly that money; one cent more buys
    /// floor(0.01 / next price) to 0.01 unit of the next tier (possibly
    /// none); buying the rest of the tier by units costs exactly the same.
    #[test]
    fn money_exactly_covering_rest_of_tier(
        t in arb_wide_tariff(),
        idx in any::<prop::sample::Index>(),
        k in 1i64..=20,
    ) {
        let tiers = t.tiers();
        let i = idx.index(tiers.len() - 1); // a bounded tier
        let bound = tiers[i].up_to_units.expect("bounded");
        let lower = if i == 0 { Decimal::ZERO } else { tiers[i - 1].up_to_units.expect("bounded") };
        // A rest of a multiple of 100 units costs whole cents at a 4-place price.
        let hundreds_in_tier = ((bound - lower) / Decimal::ONE_HUNDRED).floor();
        let rest = Decimal::ONE_HUNDRED * Decimal::from(k).min(hundreds_in_tier);
        prop_assert!(rest >= Decimal::ONE_HUNDRED);
        let before = bound - rest;
        let m = (rest * tiers[i].price).normalize();
        prop_assert!(m.scale() <= 2 && m >= cents(1));

        let q = price_by_money(&t, before, m).expect("prices");
        prop_assert_eq!(q.units, rest);
        prop_assert_eq!(q.amount, m);
        prop_assert_eq!(q.tiers.len(), 1);
        prop_assert_eq!(q.tiers[0].amount, m);
        prop_assert_eq!(q.tiers[0].price, tiers[i].price);
        check_shape(&q)?;

        let next_price = tiers[i + 1].price;
        let extra = (cents(1) / next_price * Decimal::ONE_HUNDRED).floor() / Decimal::ONE_HUNDRED;
        let q2 = price_by_money(&t, before, m + cents(1)).expect("prices");
        prop_assert_eq!(q2.amount, m + cents(1));
        prop_assert_eq!(q2.units, rest + extra);
        prop_assert_eq!(q2.tiers.len(), if extra > Decimal::ZERO { 2 } else { 1 });
        prop_assert_eq!(q2.tiers[0].units, rest);
        prop_assert_eq!(q2.tiers[0].amount, if extra > Decimal::ZERO { m } else { m + cents(1) });
        check_shape(&q2)?;

        let by_units = price_by_units(&t, before, rest).expect("prices");
        prop_assert_eq!(by_units.amount, m);
        prop_assert_eq!(by_units.tiers.len(), 1);

        // One cent less cannot cover the rest: it stops inside the tier.
        if m > cents(1) {
            let q3 = price_by_money(&t, before, m - cents(1)).expect("prices");
            prop_assert!(q3.units < rest);
            prop_assert_eq!(q3.tiers.len(), 1);
            prop_assert_eq!(q3.tiers[0].price, tiers[i].price);
        }
    }

    /// More money never buys fewer units; more units never cost less.
    #[test]
    fn monotone(t in arb_tariff(), before in arb_before(), a in arb_money(), b in arb_money(),
                x in arb_units_2dp(), y in arb_units_2dp()) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        match (price_by_money(&t, before, lo), price_by_money(&t, before, hi)) {
            (Ok(q1), Ok(q2)) => prop_assert!(q1.units <= q2.units, "{} buys {}, {} buys {}", lo, q1.units, hi, q2.units),
            (Err(e), _) if e.code() == "AMOUNT_TOO_SMALL" => {}
            (_, Err(e)) if ["UNITS_OVER_LIMIT", "TARIFF_BREAKDOWN_NEGATIVE"].contains(&e.code()) => {}
            (Err(e), _) if e.code() == "TARIFF_BREAKDOWN_NEGATIVE" => {}
            (r1, r2) => prop_assert!(false, "unexpected {:?} / {:?}", r1, r2),
        }
        let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
        match (price_by_units(&t, before, lo), price_by_units(&t, before, hi)) {
            (Ok(q1), Ok(q2)) => prop_assert!(q1.amount <= q2.amount),
            (_, Err(e)) if ["AMOUNT_OVER_LIMIT", "TARIFF_BREAKDOWN_NEGATIVE"].contains(&e.code()) => {}
            (Err(e), _) if e.code() == "TARIFF_BREAKDOWN_NEGATIVE" => {}
            (r1, r2) => prop_assert!(false, "unexpected {:?} / {:?}", r1, r2),
        }
    }

    /// Round trips: the units M buys never cost more than M by units, and
    /// paying what N units cost buys at least N units.
    #[test]
    fn round_trips(t in arb_tariff(), before in arb_before(), m in arb_money(), n in arb_units_2dp()) {
        let there_and_back = price_by_money(&t, before, m)
            .ok()
            .and_then(|q| price_by_units(&t, before, q.units).ok().map(|back| (q, back)));
        if let Some((q, back)) = there_and_back {
            prop_assert!(back.amount <= m, "{} buys {} which cost {}", m, q.units, back.amount);
        }
        let there_and_back = price_by_units(&t, before, n)
            .ok()
            .and_then(|q| price_by_money(&t, before, q.amount).ok().map(|back| (q, back)));
        if let Some((q, back)) = there_and_back {
            prop_assert!(back.units >= n, "{} units cost {} which buys {}", n, q.amount, back.units);
        }
    }

    /// The shared vectors' tariff, at and around its own boundaries with
    /// small and large money and units.
    #[test]
    fn vector_tariff_boundaries(
        b in prop::sample::select(vec![d("2160"), d("4200")]),
        delta in -2i64..=2,
        m in arb_money(),
        n in arb_units_2dp(),
    ) {
        let t = vector_tariff();
        let before = b + cents(delta);
        check_against(&price_by_money(&t, before, m), &oracle_by_money(&t, before, m))?;
        check_against(&price_by_units(&t, before, n), &oracle_by_units(&t, before, n))?;
    }

    /// Pieces whose exact cost is exactly half a cent round to the even cent
    /// (0.005 → 0.00, 0.015 → 0.02, 0.025 → 0.02 …), by money and by units.
    #[test]
    fn half_cent_pieces_round_to_even(
        j in 0i64..=2_000,
        next_price in 100i64..=50_000,
        extra in 1i64..=100_000,
        width_extra in 0i64..=100_000,
    ) {
        // Tier 1 at 0.5 per unit; the rest of it, (2j+1) hundredths of a
        // unit, costs exactly (2j+1) half cents.
        let rest = cents(2 * j + 1);
        let bound = rest + cents(width_extra);
        let t = Tariff::ladder(
            "HALF",
            vec![
                Tier { up_to_units: Some(bound), price: d("0.5") },
                Tier { up_to_units: None, price: Decimal::new(next_price, 4) },
            ],
        )
        .expect("valid");
        let before = bound - rest;
        let even_cents = cents(j + j % 2); // (j + 0.5) cents, half to even

        let n = rest + cents(extra);
        let q = price_by_units(&t, before, n).expect("prices");
        prop_assert_eq!(q.tiers.len(), 2);
        prop_assert_eq!(q.tiers[0].amount, even_cents);
        check_against(&Ok(q), &oracle_by_units(&t, before, n))?;

        // By money: enough to cover the rest of tier 1 and some of tier 2.
        let m = cents(j + 1) + cents(extra);
        let q = price_by_money(&t, before, m).expect("prices");
        prop_assert_eq!(&q.tiers[0].units, &rest);
        if q.tiers.len() == 2 {
            prop_assert_eq!(q.tiers[0].amount, even_cents);
        }
        check_against(&Ok(q), &oracle_by_money(&t, before, m))?;
    }

    /// Same inputs, same answer.
    #[test]
    fn deterministic(t in arb_tariff(), before in arb_before(), m in arb_money()) {
        prop_assert_eq!(price_by_money(&t, before, m), price_by_money(&t.clone(), before, m));
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Arbitrary strings never panic the parsers; what they accept is valid.
    #[test]
    fn parsers_never_panic(s in ".{0,80}", digits in "-?[0-9]{0,12}(\\.[0-9]{0,5})?") {
        for input in [s.as_str(), digits.as_str()] {
            match money::parse_amount(input) {
                Ok(a) => {
                    prop_assert_eq!(a.scale(), 2);
                    prop_assert!(a > Decimal::ZERO && a <= AMOUNT_MAX);
                    prop_assert_eq!(Decimal::from_str(input).expect("accepted input is a decimal"), a);
                }
                Err(e) => prop_assert!(
                    ["INVALID_AMOUNT", "TOO_MANY_DECIMALS", "AMOUNT_TOO_SMALL", "AMOUNT_OVER_LIMIT"].contains(&e.code()),
                    "{:?}", e
                ),
            }
            match money::parse_units(input) {
                Ok(u) => {
                    prop_assert!(u > Decimal::ZERO && u <= UNITS_MAX && u.scale() <= 3);
                    prop_assert_eq!(Decimal::from_str(input).expect("accepted input is a decimal"), u);
                }
                Err(e) => prop_assert!(
                    ["INVALID_UNITS", "TOO_MANY_DECIMALS", "UNITS_TOO_SMALL", "UNITS_OVER_LIMIT"].contains(&e.code()),
                    "{:?}", e
                ),
            }
        }
    }

    /// Arbitrary decimals (any scale, sign, magnitude) never panic pricing;
    /// what is accepted satisfies the sums.
    #[test]
    fn pricing_never_panics(
        lo in any::<u32>(), mid in any::<u32>(), hi in prop_oneof![Just(0u32), any::<u32>()],
        neg in any::<bool>(), scale in 0u32..=28,
        before_milli in prop_oneof![Just(-1i64), 0i64..=2_000_000_000_000],
        by_money in any::<bool>(),
        t in arb_tariff(),
    ) {
        let x = Decimal::from_parts(lo, mid, hi, neg, scale);
        let before = Decimal::new(before_milli, 3);
        let r = if by_money { price_by_money(&t, before, x) } else { price_by_units(&t, before, x) };
        match r {
            Ok(q) => check_shape(&q)?,
            Err(e) => prop_assert!(!e.code().is_empty() && !e.message().is_empty()),
        }
    }
}

#[test]
fn narrow_tiers_negative_last_piece_agrees_with_oracle() {
    // Three tiers of 0.01 unit at 0.6 then 0.1: paying 0.02 buys all three
    // (0.018) and 0.02 unit at 0.1, but the rounded pieces 0.01 × 3 > 0.02.
    let t = Tariff::ladder(
        "NARROW",
        vec![
            Tier {
                up_to_units: Some(d("0.01")),
                price: d("0.6"),
            },
            Tier {
                up_to_units: Some(d("0.02")),
                price: d("0.6"),
            },
            Tier {
                up_to_units: Some(d("0.03")),
                price: d("0.6"),
            },
            Tier {
                up_to_units: None,
                price: d("0.1"),
            },
        ],
    )
    .expect("valid");
    let want = oracle_by_money(&t, Decimal::ZERO, d("0.02"));
    assert_eq!(want, Err("TARIFF_BREAKDOWN_NEGATIVE"));
    let got = price_by_money(&t, Decimal::ZERO, d("0.02"));
    assert_eq!(got.map_err(|e| e.code()), Err("TARIFF_BREAKDOWN_NEGATIVE"));
    // One more cent is fine: 0.03 - 0.03 = 0.00 for the last piece.
    let q = price_by_money(&t, Decimal::ZERO, d("0.03")).expect("prices");
    assert_eq!(q.tiers.len(), 4);
    assert_eq!(q.tiers[3].amount, d("0.00"));
    assert_eq!(q.units, d("0.15"));
}

#[test]
fn oracle_self_check_on_a_vector() {
    // The oracle itself reproduces a vector (4199.50, by money 1.00), so a
    // bug shared by oracle and library would still show in the vectors test.
    let t = vector_tariff();
    let q = oracle_by_money(&t, d("4199.50"), d("1.00")).expect("oracle");
    assert_eq!(q.units, d("1.42"));
    assert_eq!(q.tiers[0].amount, d("0.27"));
    assert_eq!(q.tiers[1].amount, d("0.73"));
    assert_eq!(price_by_money(&t, d("4199.50"), d("1.00")), Ok(q));
}

#[test]
fn less_than_a_hundredth_with_three_place_year_units_is_refused() {
    let t = vector_tariff();
    // 0.005 unit left in tier 2 costs 0.0026915; the remaining 0.0073085
    // buys less than 0.01 unit of tier 3 (0.7883): 0.005 unit in total.
    let err = price_by_money(&t, d("4199.995"), d("0.01")).expect_err("too small");
    assert_eq!(err.code(), "AMOUNT_TOO_SMALL");
    // One more cent buys 0.005 + 0.02 units.
    let q = price_by_money(&t, d("4199.995"), d("0.02")).expect("prices");
    assert_eq!(q.units.to_string(), "0.025");
    assert_eq!(q.tiers[0].units.to_string(), "0.005");
    assert_eq!(q.tiers[0].amount.to_string(), "0.00");
    assert_eq!(q.tiers[1].units.to_string(), "0.02");
    assert_eq!(q.tiers[1].amount.to_string(), "0.02");
    // By units, less than 0.01 is refused the same way.
    let err = price_by_units(&t, d("0"), d("0.009")).expect_err("too small");
    assert_eq!(err.code(), "AMOUNT_TOO_SMALL");
    assert_eq!(
        price_by_units(&t, d("0"), d("0.010"))
            .expect("prices")
            .amount,
        d("0.01")
    );
}

#[test]
fn by_units_never_gives_energy_away_by_rounding() {
    // Exact costs a hair above a whole cent still round up.
    let cheap = Tariff::flat("CHEAP", d("0.000001")).expect("valid");
    let q = price_by_units(&cheap, d("0"), d("0.01")).expect("prices"); // 0.00000001
    assert_eq!(q.amount.to_string(), "0.01");
    let t = vector_tariff();
    // 1000 units at 0.4883 = 488.30 exactly, plus 0.01 unit: 488.304883.
    let q = price_by_units(&t, d("0"), d("1000.01")).expect("prices");
    assert_eq!(q.amount.to_string(), "488.31");
    let q = price_by_units(&t, d("0"), d("1000.00")).expect("prices");
    assert_eq!(q.amount.to_string(), "488.30");
    // Across a bound: 0.01 × 0.4883 + 0.01 × 0.5383 = 0.010266 → 0.02, the
    // first piece 0.004883 → 0.00 and the last piece takes the rest.
    let q = price_by_units(&t, d("2159.99"), d("0.02")).expect("prices");
    assert_eq!(q.amount.to_string(), "0.02");
    assert_eq!(q.tiers[0].amount.to_string(), "0.00");
    assert_eq!(q.tiers[1].amount.to_string(), "0.02");
}
