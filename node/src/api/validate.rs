//! Input validation shared by the gRPC and HTTP front-ends. Turns wire
//! input into domain [`Op`]s or a precise [`ApiError`]; never panics.

use billdb_api::error::{ApiError, ErrorCode};
use rust_decimal::Decimal;

use crate::domain::Op;

pub const ID_LEN_MAX: usize = 64;
pub const TEXT_LEN_MAX: usize = 200;
pub const UTILITIES: &[&str] = &["electricity", "heat", "water", "gas"];

fn invalid(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, format!("{field}: {msg}"))
        .with_details(serde_json::json!({"field": field}))
}

/// An identifier: 1..=64 of `[A-Za-z0-9._:-]`.
pub fn id(field: &str, v: &str) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > ID_LEN_MAX {
        return Err(invalid(
            field,
            format!("must be 1..={ID_LEN_MAX} characters"),
        ));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(invalid(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(v.to_string())
}

pub fn text(field: &str, v: &str) -> Result<String, ApiError> {
    if v.chars().count() > TEXT_LEN_MAX {
        return Err(invalid(field, format!("at most {TEXT_LEN_MAX} characters")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(v.to_string())
}

/// Money: a decimal string, > 0, at most 2 decimals, at most
/// [`billdb_api::money::AMOUNT_MAX`]; the codes are the money module's.
pub fn amount(field: &str, v: &str) -> Result<Decimal, ApiError> {
    billdb_api::money::parse_amount(v).map_err(|e| {
        let mut api = ApiError::from(e);
        api.message = format!("{field}: {}", api.message);
        api.with_details(serde_json::json!({"field": field}))
    })
}

pub struct OpenAccountInput<'a> {
    pub account_id: &'a str,
    pub name: &'a str,
    pub address: &'a str,
    pub branch: &'a str,
    pub utility: &'a str,
    pub meter_id: &'a str,
    pub tariff_id: &'a str,
}

pub fn open_account(i: OpenAccountInput<'_>) -> Result<Op, ApiError> {
    if !UTILITIES.contains(&i.utility) {
        return Err(invalid("utility", format!("must be one of {UTILITIES:?}")));
    }
    Ok(Op::OpenAccount {
        account_id: id("account_id", i.account_id)?,
        name: text("name", i.name)?,
        address: text("address", i.address)?,
        branch: id("branch", i.branch)?,
        utility: i.utility.to_string(),
        meter_id: if i.meter_id.is_empty() {
            String::new()
        } else {
            id("meter_id", i.meter_id)?
        },
        tariff_id: if i.tariff_id.is_empty() {
            String::new()
        } else {
            id("tariff_id", i.tariff_id)?
        },
    })
}

pub fn payment(
    account_id: &str,
    amount_s: &str,
    bank_code: &str,
    bank_ref: &str,
) -> Result<Op, ApiError> {
    Ok(Op::Payment {
        account_id: id("account_id", account_id)?,
        amount: amount("amount", amount_s)?,
        bank_code: id("bank_code", bank_code)?,
        bank_ref: id("bank_ref", bank_ref)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(amount("a", "12.5").unwrap().to_string(), "12.50");
        assert_eq!(
            amount("a", "12.500").unwrap_err().code,
            ErrorCode::TooManyDecimals
        );
        assert_eq!(
            amount("a", "1.234").unwrap_err().code,
            ErrorCode::TooManyDecimals
        );
        assert_eq!(
            amount("a", "0").unwrap_err().code,
            ErrorCode::AmountTooSmall
        );
        assert_eq!(
            amount("a", "-3.00").unwrap_err().code,
            ErrorCode::AmountTooSmall
        );
        assert_eq!(
            amount("a", "1000000.01").unwrap_err().code,
            ErrorCode::AmountOverLimit
        );
        assert_eq!(
            amount("a", "1e5").unwrap_err().code,
            ErrorCode::InvalidAmount
        );
        assert_eq!(
            amount("a", "abc").unwrap_err().code,
            ErrorCode::InvalidAmount
        );
        assert_eq!(amount("a", "1000000.00").unwrap().to_string(), "1000000.00");
    }

    #[test]
    fn ids() {
        assert!(id("x", "ACC-0001").is_ok());
        assert!(id("x", "").is_err());
        assert!(id("x", "a b").is_err());
        assert!(id("x", &"a".repeat(65)).is_err());
    }
}
