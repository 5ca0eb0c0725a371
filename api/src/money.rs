//! Validated money amounts and units (SPEC.md "Domain model").
//!
//! Money is a [`Decimal`] with at most 2 decimal places, units (kWh, m³, GJ) a
//! [`Decimal`] with at most 3. Floats never appear: values cross JSON as
//! strings (`"123.45"`), and the string parser here accepts only plain
//! decimal notation (`[-]digits[.digits]`), no exponent, sign `+`,
//! separators or whitespace.
//!
//! Decimal places are counted as written: `"1.000"` is refused as an amount
//! (3 places) even though its value is 1. The same holds for a [`Decimal`]
//! whose scale is 3. Validated values are canonical: an [`Amount`] always has
//! exactly 2 decimal places, [`Units`] have 2 or 3 (see [`canonical_units`]).
//!
//! Nothing here panics, whatever the input.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Decimal places allowed in a money amount.
pub const AMOUNT_DECIMALS: u32 = 2;
/// Decimal places allowed in a quantity of units.
pub const UNITS_DECIMALS: u32 = 3;
/// Largest amount accepted in one operation: 1,000,000.00.
pub const AMOUNT_MAX: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 2);
/// Largest quantity of units accepted in one operation: 1,000,000.000.
pub const UNITS_MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 3);
/// One cent, the smallest positive amount.
pub const CENT: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// Longest string the parsers look at; anything longer is `INVALID_*`.
const MAX_INPUT_LEN: usize = 64;
/// Longest input echoed back inside an error message.
const MAX_ECHO_LEN: usize = 32;

/// Which kind of quantity a [`MoneyError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    Amount,
    Units,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantity::Amount => "amount",
            Quantity::Units => "units",
        })
    }
}

/// Why an amount or a quantity of units was refused.
///
/// [`MoneyError::code`] is the stable machine-readable code; the `Display`
/// text ([`MoneyError::message`]) is the human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MoneyError {
    /// Not a plain decimal number (`INVALID_AMOUNT`).
    #[error("invalid amount {input:?}: expected a plain decimal number such as \"123.45\"")]
    InvalidAmount { input: String },
    /// Not a plain decimal number (`INVALID_UNITS`).
    #[error("invalid units {input:?}: expected a plain decimal number such as \"12.345\"")]
    InvalidUnits { input: String },
    /// More decimal places than allowed (`TOO_MANY_DECIMALS`).
    #[error("{quantity} {value} has {decimals} decimal places; at most {max} are allowed")]
    TooManyDecimals {
        quantity: Quantity,
        value: String,
        decimals: u32,
        max: u32,
    },
    /// Zero or negative amount (`AMOUNT_TOO_SMALL`).
    #[error("amount {value} is too small: it must be greater than 0")]
    AmountTooSmall { value: String },
    /// Amount above [`AMOUNT_MAX`] (`AMOUNT_OVER_LIMIT`).
    #[error("amount {value} is over the limit of {max}")]
    AmountOverLimit { value: String, max: String },
    /// Zero or negative units (`UNITS_TOO_SMALL`).
    #[error("units {value} is too small: it must be greater than 0")]
    UnitsTooSmall { value: String },
    /// Units above [`UNITS_MAX`] (`UNITS_OVER_LIMIT`).
    #[error("units {value} is over the limit of {max}")]
    UnitsOverLimit { value: String, max: String },
}

impl MoneyError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::InvalidAmount { .. } => "INVALID_AMOUNT",
            MoneyError::InvalidUnits { .. } => "INVALID_UNITS",
            MoneyError::TooManyDecimals { .. } => "TOO_MANY_DECIMALS",
            MoneyError::AmountTooSmall { .. } => "AMOUNT_TOO_SMALL",
            MoneyError::AmountOverLimit { .. } => "AMOUNT_OVER_LIMIT",
            MoneyError::UnitsTooSmall { .. } => "UNITS_TOO_SMALL",
            MoneyError::UnitsOverLimit { .. } => "UNITS_OVER_LIMIT",
        }
    }

    /// Human-readable message.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// A validated money amount: > 0, at most 2 decimal places, at most
/// [`AMOUNT_MAX`]; always held with exactly 2 decimal places.
///
/// Serializes as a JSON string (`"123.45"`) and validates on deserialization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Amount(Decimal);

impl Amount {
    /// Validates `value` (see [`validate_amount`]).
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        validate_amount(value).map(Amount)
    }

    /// Parses and validates a string (see [`parse_amount`]).
    pub fn parse(input: &str) -> Result<Self, MoneyError> {
        parse_amount(input).map(Amount)
    }

    /// The amount, with exactly 2 decimal places.
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Amount {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = MoneyError;
    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Amount::new(value)
    }
}

impl TryFrom<String> for Amount {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Amount::parse(&value)
    }
}

impl From<Amount> for String {
    fn from(value: Amount) -> Self {
        value.0.to_string()
    }
}

impl From<Amount> for Decimal {
    fn from(value: Amount) -> Self {
        value.0
    }
}

/// A validated quantity of units: > 0, at most 3 decimal places, at most
/// [`UNITS_MAX`]; held in canonical form (see [`canonical_units`]).
///
/// Serializes as a JSON string (`"12.345"`) and validates on deserialization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Units(Decimal);

impl Units {
    /// Validates `value` (see [`validate_units`]).
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        validate_units(value).map(Units)
    }

    /// Parses and validates a string (see [`parse_units`]).
    pub fn parse(input: &str) -> Result<Self, MoneyError> {
        parse_units(input).map(Units)
    }

    /// The quantity, in canonical form.
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Units {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Units::parse(s)
    }
}

impl TryFrom<Decimal> for Units {
    type Error = MoneyError;
    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Units::new(value)
    }
}

impl TryFrom<String> for Units {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Units::parse(&value)
    }
}

impl From<Units> for String {
    fn from(value: Units) -> Self {
        value.0.to_string()
    }
}

impl From<Units> for Decimal {
    fn from(value: Units) -> Self {
        value.0
    }
}

/// Checks a money amount: at most 2 decimal places (as written, i.e. the
/// scale), > 0, <= [`AMOUNT_MAX`]. Returns it with exactly 2 decimal places.
pub fn validate_amount(value: Decimal) -> Result<Decimal, MoneyError> {
    if value.scale() > AMOUNT_DECIMALS {
        return Err(MoneyError::TooManyDecimals {
            quantity: Quantity::Amount,
            value: value.to_string(),
            decimals: value.scale(),
            max: AMOUNT_DECIMALS,
        });
    }
    if value <= Decimal::ZERO {
        return Err(MoneyError::AmountTooSmall {
            value: value.to_string(),
        });
    }
    if value > AMOUNT_MAX {
        return Err(MoneyError::AmountOverLimit {
            value: value.to_string(),
            max: AMOUNT_MAX.to_string(),
        });
    }
    Ok(with_scale(value, AMOUNT_DECIMALS))
}

/// Checks a quantity of units: at most 3 decimal places (as written, i.e. the
/// scale), > 0, <= [`UNITS_MAX`]. Returns it in canonical form.
pub fn validate_units(value: Decimal) -> Result<Decimal, MoneyError> {
    if value.scale() > UNITS_DECIMALS {
        return Err(MoneyError::TooManyDecimals {
            quantity: Quantity::Units,
            value: value.to_string(),
            decimals: value.scale(),
            max: UNITS_DECIMALS,
        });
    }
    if value <= Decimal::ZERO {
        return Err(MoneyError::UnitsTooSmall {
            value: value.to_string(),
        });
    }
    if value > UNITS_MAX {
        return Err(MoneyError::UnitsOverLimit {
            value: value.to_string(),
            max: UNITS_MAX.to_string(),
        });
    }
    Ok(canonical_units(value))
}

/// Parses a money amount from a string such as `"123.45"` and validates it
/// like [`validate_amount`].
pub fn parse_amount(input: &str) -> Result<Decimal, MoneyError> {
    let d = parse_plain(input, Quantity::Amount, AMOUNT_DECIMALS)?;
    validate_amount(d)
}

/// Parses a quantity of units from a string such as `"12.345"` and validates
/// it like [`validate_units`].
pub fn parse_units(input: &str) -> Result<Decimal, MoneyError> {
    let d = parse_plain(input, Quantity::Units, UNITS_DECIMALS)?;
    validate_units(d)
}

/// Rounds to the cent, half to even (banker's rounding); exactly 2 decimal
/// places in the result.
pub fn round_cents_half_even(value: Decimal) -> Decimal {
    with_scale(
        value.round_dp_with_strategy(AMOUNT_DECIMALS, RoundingStrategy::MidpointNearestEven),
        AMOUNT_DECIMALS,
    )
}

/// Rounds up (towards +infinity) to the cent; exactly 2 decimal places in
/// the result.
pub fn round_cents_up(value: Decimal) -> Decimal {
    with_scale(
        value.round_dp_with_strategy(AMOUNT_DECIMALS, RoundingStrategy::ToPositiveInfinity),
        AMOUNT_DECIMALS,
    )
}

/// Canonical form of a quantity of units: trailing zeros removed, but never
/// fewer than 2 decimal places (`2160` → `2160.00`, `1.500` → `1.50`,
/// `0.005` → `0.005`).
pub fn canonical_units(value: Decimal) -> Decimal {
    let n = value.normalize();
    if n.scale() < AMOUNT_DECIMALS {
        with_scale(n, AMOUNT_DECIMALS)
    } else {
        n
    }
}

/// `value` with exactly `scale` decimal places. Only used where `value` has
/// at most `scale` places and is small enough that no rounding happens.
fn with_scale(value: Decimal, scale: u32) -> Decimal {
    let mut v = value;
    v.rescale(scale);
    v
}

fn truncate_for_echo(input: &str) -> String {
    if input.chars().count() <= MAX_ECHO_LEN {
        input.to_string()
    } else {
        let mut s: String = input.chars().take(MAX_ECHO_LEN).collect();
        s.push('…');
        s
    }
}

/// Strict parser for `[-]digits[.digits]`. Checks syntax, decimal places and
/// magnitude far enough to build the [`Decimal`] without overflow; the
/// caller's `validate_*` does the range checks.
fn parse_plain(input: &str, quantity: Quantity, max_decimals: u32) -> Result<Decimal, MoneyError> {
    let invalid = || match quantity {
        Quantity::Amount => MoneyError::InvalidAmount {
            input: truncate_for_echo(input),
        },
        Quantity::Units => MoneyError::InvalidUnits {
            input: truncate_for_echo(input),
        },
    };
    if input.is_empty() || input.len() > MAX_INPUT_LEN {
        return Err(invalid());
    }
    let (negative, body) = match input.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty()
        || !all_digits(int_part)
        || !all_digits(frac_part)
        || (body.contains('.') && frac_part.is_empty())
    {
        return Err(invalid());
    }
    // MAX_INPUT_LEN bounds this; the conversion cannot fail in practice.
    let decimals = u32::try_from(frac_part.len()).map_err(|_| invalid())?;
    if decimals > max_decimals {
        return Err(MoneyError::TooManyDecimals {
            quantity,
            value: truncate_for_echo(input),
            decimals,
            max: max_decimals,
        });
    }
    let int_digits = int_part.trim_start_matches('0');
    // The limits are 1,000,000 (7 integer digits); anything with more digits
    // is over the limit (or, when negative, too small) without building it.
    if int_digits.len() > 7 {
        let value = truncate_for_echo(input);
        return Err(match (quantity, negative) {
            (Quantity::Amount, true) => MoneyError::AmountTooSmall { value },
            (Quantity::Units, true) => MoneyError::UnitsTooSmall { value },
            (Quantity::Amount, false) => MoneyError::AmountOverLimit {
                value,
                max: AMOUNT_MAX.to_string(),
            },
            (Quantity::Units, false) => MoneyError::UnitsOverLimit {
                value,
                max: UNITS_MAX.to_string(),
            },
        });
    }
    // At most 7 + 3 digits: fits an i64 with lots of room.
    let mut mantissa: i64 = 0;
    for b in int_digits.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or_else(invalid)?;
    }
    if negative {
        mantissa = -mantissa;
    }
    Decimal::try_from_i128_with_scale(i128::from(mantissa), decimals).map_err(|_| invalid())
}

/// `Decimal` as a string for people and as `(scale, mantissa)` for
/// machines: JSON (human-readable formats) keeps `"12.50"` exactly as
/// `rust_decimal`'s own serde does, while bincode (the Raft log, RocksDB
/// values, node-to-node messages) stores one scale byte and the 96-bit
/// mantissa as an integer, so no decimal is printed or parsed on the write
/// path. Use as `#[serde(with = "billdb_api::money::decimal_compact")]`.
pub mod decimal_compact {
    use rust_decimal::Decimal;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            Serialize::serialize(d, s)
        } else {
            (d.scale() as u8, d.mantissa()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        if d.is_human_readable() {
            <Decimal as Deserialize>::deserialize(d)
        } else {
            let (scale, mantissa) = <(u8, i128)>::deserialize(d)?;
            Decimal::try_from_i128_with_scale(mantissa, u32::from(scale))
                .map_err(|e| D::Error::custom(format!("decimal out of range: {e}")))
        }
    }

    /// A bare `Decimal` value in the compact form (for a value stored on
    /// its own, like a year's units counter).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Compact(#[serde(with = "super::decimal_compact")] pub Decimal);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Held {
        #[serde(with = "decimal_compact")]
        amount: Decimal,
    }

    /// JSON keeps the exact decimal string; bincode round-trips every
    /// scale and sign exactly, in fewer bytes than the string form.
    #[test]
    fn decimal_compact_is_a_string_for_json_and_exact_in_bincode() {
        use bincode::Options;
        let varint = bincode::DefaultOptions::new();
        for text in [
            "0",
            "0.00",
            "12.50",
            "-12.50",
            "1000000.000",
            "0.001",
            "-0.01",
            "79228162514264337593543950335",
            "-7.9228162514264337593543950335",
        ] {
            let held = Held { amount: d(text) };
            let json = serde_json::to_string(&held).unwrap();
            assert_eq!(json, format!("{{\"amount\":\"{text}\"}}"));
            assert_eq!(serde_json::from_str::<Held>(&json).unwrap(), held);
            let bin = varint.serialize(&held).unwrap();
            let back: Held = varint.deserialize(&bin).unwrap();
            assert_eq!(back.amount.to_string(), text, "scale kept");
            let fixed: Held = bincode::deserialize(&bincode::serialize(&held).unwrap()).unwrap();
            assert_eq!(fixed, held);
        }
        let small = varint.serialize(&Held { amount: d("12.50") }).unwrap();
        assert!(small.len() <= 4, "{} bytes", small.len());
        // A scale past 28 is refused, not wrapped.
        let bad = varint.serialize(&(29u8, 1i128)).unwrap();
        assert!(varint.deserialize::<Held>(&bad).is_err());
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    #[test]
    fn constants() {
        assert_eq!(AMOUNT_MAX.to_string(), "1000000.00");
        assert_eq!(UNITS_MAX.to_string(), "1000000.000");
        assert_eq!(CENT.to_string(), "0.01");
    }

    #[test]
    fn parse_amount_accepts_plain_decimals() {
        for (input, want) in [
            ("123.45", "123.45"),
            ("100", "100.00"),
            ("0.5", "0.50"),
            ("0.01", "0.01"),
            ("007.10", "7.10"),
            ("1000000", "1000000.00"),
            ("1000000.00", "1000000.00"),
        ] {
            let got = parse_amount(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), want, "{input}");
            assert_eq!(got.scale(), 2, "{input}");
        }
    }

    #[test]
    fn parse_amount_refusals_have_stable_codes() {
        for (input, code) in [
            ("", "INVALID_AMOUNT"),
            (" 1.00", "INVALID_AMOUNT"),
            ("1.00 ", "INVALID_AMOUNT"),
            ("+1.00", "INVALID_AMOUNT"),
            ("1e3", "INVALID_AMOUNT"),
            ("1_000", "INVALID_AMOUNT"),
            ("1,00", "INVALID_AMOUNT"),
            (".5", "INVALID_AMOUNT"),
            ("5.", "INVALID_AMOUNT"),
            ("-", "INVALID_AMOUNT"),
            ("--1", "INVALID_AMOUNT"),
            ("1.2.3", "INVALID_AMOUNT"),
            ("NaN", "INVALID_AMOUNT"),
            ("١٢", "INVALID_AMOUNT"),
            ("0.001", "TOO_MANY_DECIMALS"),
            ("1.000", "TOO_MANY_DECIMALS"),
            ("0", "AMOUNT_TOO_SMALL"),
            ("0.00", "AMOUNT_TOO_SMALL"),
            ("-0.00", "AMOUNT_TOO_SMALL"),
            ("-5.00", "AMOUNT_TOO_SMALL"),
            ("-99999999999999999999999999999999", "AMOUNT_TOO_SMALL"),
            ("1000000.01", "AMOUNT_OVER_LIMIT"),
            ("99999999999999999999999999999999", "AMOUNT_OVER_LIMIT"),
        ] {
            let err = parse_amount(input).expect_err(input);
            assert_eq!(err.code(), code, "{input}: {err}");
            assert!(!err.message().is_empty());
        }
        let long = "1".repeat(MAX_INPUT_LEN + 1);
        assert_eq!(parse_amount(&long).unwrap_err().code(), "INVALID_AMOUNT");
    }

    #[test]
    fn parse_units_rules() {
        assert_eq!(parse_units("12.345").unwrap().to_string(), "12.345");
        assert_eq!(parse_units("12.300").unwrap().to_string(), "12.30");
        assert_eq!(parse_units("5").unwrap().to_string(), "5.00");
        assert_eq!(parse_units("1000000.000").unwrap(), UNITS_MAX);
        for (input, code) in [
            ("abc", "INVALID_UNITS"),
            ("1.0001", "TOO_MANY_DECIMALS"),
            ("0.000", "UNITS_TOO_SMALL"),
            ("-1", "UNITS_TOO_SMALL"),
            ("1000000.001", "UNITS_OVER_LIMIT"),
        ] {
            assert_eq!(parse_units(input).unwrap_err().code(), code, "{input}");
        }
    }

    #[test]
    fn validate_decimal_values() {
        assert_eq!(validate_amount(d("5")).unwrap().to_string(), "5.00");
        assert_eq!(
            validate_amount(d("1.000")).unwrap_err().code(),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(
            validate_amount(d("-0.01")).unwrap_err().code(),
            "AMOUNT_TOO_SMALL"
        );
        assert_eq!(
            validate_amount(Decimal::MAX).unwrap_err().code(),
            "AMOUNT_OVER_LIMIT"
        );
        assert_eq!(
            validate_units(d("0.0001")).unwrap_err().code(),
            "TOO_MANY_DECIMALS"
        );
        assert_eq!(validate_units(d("0.001")).unwrap().to_string(), "0.001");
        assert_eq!(
            validate_units(Decimal::MIN).unwrap_err().code(),
            "UNITS_TOO_SMALL"
        );
    }

    #[test]
    fn newtypes_roundtrip_through_json_as_strings() {
        let a = Amount::parse("12.5").unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"12.50\"");
        let back: Amount = serde_json::from_str("\"12.50\"").unwrap();
        assert_eq!(back, a);
        // Floats and invalid strings are refused on the way in.
        assert!(serde_json::from_str::<Amount>("12.5").is_err());
        assert!(serde_json::from_str::<Amount>("\"12.505\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"0\"").is_err());
        let u: Units = serde_json::from_str("\"0.125\"").unwrap();
        assert_eq!(u.value(), d("0.125"));
        assert!(serde_json::from_str::<Units>("0.125").is_err());
    }

    #[test]
    fn errors_serialize_with_their_code() {
        let err = parse_amount("0.001").unwrap_err();
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(v["code"], "TOO_MANY_DECIMALS");
        let back: MoneyError = serde_json::from_value(v).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(round_cents_half_even(d("0.005")).to_string(), "0.00");
        assert_eq!(round_cents_half_even(d("0.015")).to_string(), "0.02");
        assert_eq!(round_cents_half_even(d("1054.728")).to_string(), "1054.73");
        assert_eq!(round_cents_half_even(d("7")).to_string(), "7.00");
        assert_eq!(round_cents_up(d("10.266")).to_string(), "10.27");
        assert_eq!(round_cents_up(d("10.26")).to_string(), "10.26");
        assert_eq!(round_cents_up(d("0.0000001")).to_string(), "0.01");
        assert_eq!(canonical_units(d("2160")).to_string(), "2160.00");
        assert_eq!(canonical_units(d("1.500")).to_string(), "1.50");
        assert_eq!(canonical_units(d("0.005")).to_string(), "0.005");
    }
}
