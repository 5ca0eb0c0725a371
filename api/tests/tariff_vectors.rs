//! Reproduces every worked case of `tests/data/tariff-vectors.json` (a copy of
//! the shared tariff vectors, SPEC.md "Tariff arithmetic") exactly: totals
//! and every tier piece, compared both by value and as the JSON strings they
//! serialize to (so `"2160.00"` must not come out as `"2160"`).

use std::str::FromStr;

use billdb_api::tariff::{PurchaseBy, Quote, Tariff, Tier, price, price_by_money, price_by_units};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

const VECTORS: &str = include_str!("data/tariff-vectors.json");

/// Number of cases in the file when it was copied; a changed file must be
/// looked at (and this number updated), not silently half-run.
const EXPECTED_CASES: usize = 26;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorFile {
    tariff: VectorTariff,
    rule: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorTariff {
    tariff_id: String,
    period: String,
    tiers: Vec<Tier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum By {
    Money,
    Units,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(with = "rust_decimal::serde::str")]
    year_units_before: Decimal,
    by: By,
    #[serde(with = "rust_decimal::serde::str")]
    input: Decimal,
    /// The expected quote, kept raw to compare the exact strings.
    #[serde(default)]
    expect: Option<Value>,
    /// An expected refusal, by machine code (none in the file today).
    #[serde(default, alias = "expect_error", alias = "error_code")]
    error: Option<String>,
}

fn load() -> (Tariff, VectorFile) {
    let file: VectorFile = serde_json::from_str(VECTORS).expect("tariff-vectors.json parses");
    let tariff =
        Tariff::ladder(file.tariff.tariff_id.clone(), file.tariff.tiers.clone()).expect("valid");
    (tariff, file)
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("literal")
}

#[test]
fn vector_file_is_the_expected_one() {
    let (tariff, file) = load();
    assert_eq!(tariff.tariff_id, "RES-LADDER-2026");
    assert_eq!(file.tariff.period, "calendar-year");
    assert!(file.rule.contains("Tariff arithmetic"), "{}", file.rule);
    assert_eq!(
        tariff.tiers(),
        vec![
            Tier {
                up_to_units: Some(d("2160")),
                price: d("0.4883")
            },
            Tier {
                up_to_units: Some(d("4200")),
                price: d("0.5383")
            },
            Tier {
                up_to_units: None,
                price: d("0.7883")
            },
        ]
    );
    assert_eq!(file.cases.len(), EXPECTED_CASES);
    assert!(file.cases.iter().any(|c| c.by == By::Money));
    assert!(file.cases.iter().any(|c| c.by == By::Units));
    for (i, c) in file.cases.iter().enumerate() {
        assert!(
            c.expect.is_some() != c.error.is_some(),
            "case {i} must have exactly one of expect / error"
        );
    }
}

#[test]
fn every_vector_is_reproduced_exactly() {
    let (tariff, file) = load();
    let mut failures = Vec::new();
    let mut checked = 0usize;
    for (i, case) in file.cases.iter().enumerate() {
        let label = format!(
            "case {i}: by {:?} {} after {} units",
            case.by, case.input, case.year_units_before
        );
        let got = match case.by {
            By::Money => price_by_money(&tariff, case.year_units_before, case.input),
            By::Units => price_by_units(&tariff, case.year_units_before, case.input),
        };
        // The PurchaseBy front door must agree with the direct call.
        let by = match case.by {
            By::Money => PurchaseBy::Money(case.input),
            By::Units => PurchaseBy::Units(case.input),
        };
        if price(&tariff, case.year_units_before, by) != got {
            failures.push(format!("{label}: price() disagrees with the direct call"));
        }
        match (&case.expect, &case.error, got) {
            (Some(expect), None, Ok(quote)) => {
                let want: Quote = match serde_json::from_value(expect.clone()) {
                    Ok(q) => q,
                    Err(e) => {
                        failures.push(format!("{label}: expect does not parse as a Quote: {e}"));
                        continue;
                    }
                };
                // By value: totals and every piece.
                if quote != want {
                    failures.push(format!("{label}: got {quote:?}, want {want:?}"));
                }
                // As text: the exact strings the file holds.
                let got_json = serde_json::to_value(&quote).expect("serializes");
                if &got_json != expect {
                    failures.push(format!("{label}: got JSON {got_json}, want {expect}"));
                }
                // The spec's invariants hold on every vector too.
                let units: Decimal = quote.tiers.iter().map(|p| p.units).sum();
                let amount: Decimal = quote.tiers.iter().map(|p| p.amount).sum();
                if units != quote.units || amount != quote.amount {
                    failures.push(format!("{label}: pieces do not sum to the totals"));
                }
                if case.by == By::Money && quote.amount != case.input {
                    failures.push(format!("{label}: by money must charge exactly the input"));
                }
                if case.by == By::Units && quote.units != case.input {
                    failures.push(format!("{label}: by units must deliver exactly the input"));
                }
                checked += 1;
            }
            (None, Some(code), Err(err)) => {
                if err.code() != code {
                    failures.push(format!("{label}: refused with {}, want {code}", err.code()));
                }
                checked += 1;
            }
            (Some(_), _, Err(err)) => {
                failures.push(format!("{label}: refused with {}: {err}", err.code()));
            }
            (_, Some(code), Ok(quote)) => {
                failures.push(format!(
                    "{label}: accepted ({quote:?}), want refusal {code}"
                ));
            }
            (None, None, _) => failures.push(format!("{label}: case has no expectation")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n")
    );
    assert_eq!(checked, file.cases.len());
}

#[test]
fn the_vectors_tariff_roundtrips_through_json() {
    let (tariff, _) = load();
    let json = serde_json::to_string(&tariff).expect("serializes");
    let back: Tariff = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, tariff);
    // Same prices after a round trip: a smoke check that nothing was lost.
    assert_eq!(
        price_by_money(&back, d("4199.50"), d("1.00")).expect("prices"),
        price_by_money(&tariff, d("4199.50"), d("1.00")).expect("prices")
    );
}
