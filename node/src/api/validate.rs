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

/// Units: a decimal string, > 0, at most 3 decimals, within limits.
pub fn units(field: &str, v: &str) -> Result<Decimal, ApiError> {
    billdb_api::money::parse_units(v).map_err(|e| {
        let mut api = ApiError::from(e);
        api.message = format!("{field}: {}", api.message);
        api.with_details(serde_json::json!({"field": field}))
    })
}

/// A signed money amount (adjustments): non-zero, 2 dp, |v| within limits.
pub fn signed_amount(field: &str, v: &str) -> Result<Decimal, ApiError> {
    let (neg, abs) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let a = amount(field, abs)?;
    Ok(if neg { -a } else { a })
}

/// A decimal that may be zero (heated area): >= 0, at most 3 decimals.
pub fn area(field: &str, v: &str) -> Result<Decimal, ApiError> {
    if v == "0" {
        return Ok(Decimal::ZERO);
    }
    units(field, v)
}

/// An optional non-empty id (empty string = absent).
pub fn opt_id(field: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => id(field, s).map(Some),
    }
}

fn digits(s: &str, field: &str) -> Result<u32, ApiError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, "not a valid date/time"));
    }
    s.parse::<u32>()
        .map_err(|_| invalid(field, "not a valid date/time"))
}

/// `YYYY-MM-DD` → (year, month, day), checked.
pub fn date(field: &str, v: &str) -> Result<(i32, u32, u32), ApiError> {
    let parts: Vec<&str> = v.split('-').collect();
    if v.len() != 10 || parts.len() != 3 {
        return Err(invalid(field, "expected YYYY-MM-DD"));
    }
    let (y, m, d) = (
        digits(parts[0], field)?,
        digits(parts[1], field)?,
        digits(parts[2], field)?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return Err(invalid(field, "date out of range"));
    }
    let y = y as i32;
    let next = if m == 12 {
        crate::domain::calendar::days_ms(y + 1, 1, 1)
    } else {
        crate::domain::calendar::days_ms(y, m + 1, 1)
    };
    let dim = (next - crate::domain::calendar::days_ms(y, m, 1)) / 86_400_000;
    if i64::from(d) > dim {
        return Err(invalid(field, "no such day"));
    }
    Ok((y, m, d))
}

/// `YYYY-MM`, checked.
pub fn month(field: &str, v: &str) -> Result<String, ApiError> {
    date(field, &format!("{v}-01"))?;
    Ok(v.to_string())
}

/// An RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SS[.fff]Z`) → Unix ms.
pub fn rfc3339(field: &str, v: &str) -> Result<i64, ApiError> {
    let bad = || {
        invalid(
            field,
            "expected RFC 3339 UTC time like 2026-01-31T12:00:00Z",
        )
    };
    let rest = v
        .strip_suffix('Z')
        .or_else(|| v.strip_suffix('z'))
        .ok_or_else(bad)?;
    if rest.len() < 19 || !matches!(rest.as_bytes()[10], b'T' | b't') {
        return Err(bad());
    }
    let (y, m, d) = date(field, rest.get(..10).ok_or_else(bad)?)?;
    let time = rest.get(11..19).ok_or_else(bad)?;
    let frac = rest.get(19..).ok_or_else(bad)?;
    let hms: Vec<&str> = time.split(':').collect();
    if hms.len() != 3 || hms.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let (h, mi, s) = (
        digits(hms[0], field)?,
        digits(hms[1], field)?,
        digits(hms[2], field)?,
    );
    if h > 23 || mi > 59 || s > 59 {
        return Err(bad());
    }
    let mut ms = 0i64;
    if !frac.is_empty() {
        let f = frac.strip_prefix('.').ok_or_else(bad)?;
        if f.is_empty() || f.len() > 9 {
            return Err(bad());
        }
        let mut padded = f.to_string();
        padded.truncate(3);
        while padded.len() < 3 {
            padded.push('0');
        }
        ms = i64::from(digits(&padded, field)?);
        digits(f, field)?;
    }
    Ok(crate::domain::calendar::days_ms(y, m, d)
        + i64::from(h) * 3_600_000
        + i64::from(mi) * 60_000
        + i64::from(s) * 1000
        + ms)
}

/// Unix ms → RFC 3339 UTC with milliseconds.
pub fn to_rfc3339(ts_ms: i64) -> String {
    let (y, m, d) = crate::domain::calendar::civil(ts_ms);
    let in_day = ts_ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        (in_day / 60_000) % 60,
        (in_day / 1000) % 60,
        in_day % 1000
    )
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
    fn times() {
        let t = rfc3339("t", "2026-02-28T23:59:59.5Z").unwrap();
        assert_eq!(to_rfc3339(t), "2026-02-28T23:59:59.500Z");
        assert!(rfc3339("t", "2026-02-29T00:00:00Z").is_err());
        assert!(rfc3339("t", "2026-02-28 00:00:00Z").is_err());
        assert!(rfc3339("t", "2026-02-28T00:00:00+01:00").is_err());
        assert_eq!(
            month("m", "2026-13").unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(signed_amount("a", "-1.50").unwrap().to_string(), "-1.50");
    }

    #[test]
    fn ids() {
        assert!(id("x", "ACC-0001").is_ok());
        assert!(id("x", "").is_err());
        assert!(id("x", "a b").is_err());
        assert!(id("x", &"a".repeat(65)).is_err());
    }
}
