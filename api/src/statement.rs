//! A bank's statement file: one line per payment the bank posted, as CSV
//! `bank_ref,account_id,amount,time` (a header line of those names is
//! optional). Parsed the same way by the node (`POST
//! /v1/banks/{bank_code}/reconciliations`) and by `billdb bank reconcile`
//! (which checks the file before sending it). Every refusal names the line
//! (1-based, as an editor counts them) in its message and in
//! `details.line`. Does no I/O.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// Most payment lines one statement may hold.
pub const STATEMENT_LINES_MAX: usize = 20_000;

/// The columns, in order.
pub const COLUMNS: [&str; 4] = ["bank_ref", "account_id", "amount", "time"];

/// Longest `bank_ref` and `account_id` (as billdb's own identifiers).
pub const ID_LEN_MAX: usize = 64;
/// Longest `time` field.
const TIME_LEN_MAX: usize = 35;

/// One payment as the bank reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    /// The line of the file it came from (1-based).
    pub line: u32,
    pub bank_ref: String,
    pub account_id: String,
    /// Exactly 2 decimal places, > 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// As the bank wrote it (`HH:MM[:SS]`, or a date and time); shown,
    /// not matched on.
    pub time: String,
}

fn at(line: usize, field: &str, code: ErrorCode, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(code, format!("line {line}: {field}: {msg}"))
        .with_details(serde_json::json!({"line": line, "field": field}))
}

/// An identifier as billdb accepts one: 1..=64 of `[A-Za-z0-9._:-]`.
pub fn is_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= ID_LEN_MAX
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Split one CSV line into fields: commas separate, a field may be
/// double-quoted (a `""` inside is one `"`), spaces around a field are
/// dropped. `Err` for an unterminated quote or text after a closing quote.
fn split_fields(text: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field.trim_end().to_string());
                        break;
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

fn two_digits(s: &str, max: u32) -> bool {
    s.len() == 2
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok_and(|v| v <= max)
}

/// `HH:MM` or `HH:MM:SS` with an optional fraction of a second.
fn is_clock(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    if let Some(f) = frac
        && (f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    match parts.as_slice() {
        [h, m] => frac.is_none() && two_digits(h, 23) && two_digits(m, 59),
        [h, m, sec] => two_digits(h, 23) && two_digits(m, 59) && two_digits(sec, 60),
        _ => false,
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s[..4].bytes().all(|c| c.is_ascii_digit())
        && two_digits(&s[5..7], 12)
        && &s[5..7] != "00"
        && two_digits(&s[8..10], 31)
        && &s[8..10] != "00"
}

/// The shapes of `time` accepted: `HH:MM[:SS[.f]]`, or
/// `YYYY-MM-DD` + `T` or a space + that, with an optional `Z` or `±HH:MM`.
pub fn is_statement_time(s: &str) -> bool {
    if s.len() > TIME_LEN_MAX {
        return false;
    }
    if is_clock(s) {
        return true;
    }
    if s.len() < 11 || !s.is_char_boundary(10) || !s.is_char_boundary(11) {
        return false;
    }
    let (date, sep, rest) = (&s[..10], &s[10..11], &s[11..]);
    if !is_date(date) || !(sep == "T" || sep == " ") {
        return false;
    }
    let clock = if let Some(c) = rest.strip_suffix('Z') {
        c
    } else if rest.len() > 6
        && rest.is_char_boundary(rest.len() - 6)
        && matches!(&rest[rest.len() - 6..rest.len() - 5], "+" | "-")
    {
        let zone = &rest[rest.len() - 5..];
        if !(zone.len() == 5
            && &zone[2..3] == ":"
            && two_digits(&zone[..2], 23)
            && two_digits(&zone[3..], 59))
        {
            return false;
        }
        &rest[..rest.len() - 6]
    } else {
        rest
    };
    is_clock(clock)
}

/// Parse a statement file. Blank lines are skipped; a first line naming
/// the columns is a header. Refusals (nothing parsed is kept):
/// `PAYLOAD_TOO_LARGE` past [`STATEMENT_LINES_MAX`] lines;
/// `INVALID_ARGUMENT` for a line without exactly 4 fields, a bad
/// `bank_ref`, `account_id` or `time`, or a `bank_ref` given twice (both
/// lines named); the amount's own code (`INVALID_AMOUNT`,
/// `TOO_MANY_DECIMALS`, `AMOUNT_TOO_SMALL`, `AMOUNT_OVER_LIMIT`) for a bad
/// amount.
pub fn parse_csv(text: &str) -> Result<Vec<StatementLine>, ApiError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<StatementLine> = Vec::new();
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut first = true;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        if raw.chars().any(|c| c.is_control() && c != '\t') {
            return Err(at(
                n,
                "line",
                ErrorCode::InvalidArgument,
                "control characters are not allowed",
            ));
        }
        let fields = split_fields(raw).map_err(|e| at(n, "line", ErrorCode::InvalidArgument, e))?;
        let was_first = std::mem::replace(&mut first, false);
        if was_first
            && fields.len() == COLUMNS.len()
            && fields
                .iter()
                .zip(COLUMNS)
                .all(|(f, c)| f.eq_ignore_ascii_case(c))
        {
            continue;
        }
        if fields.len() != COLUMNS.len() {
            return Err(at(
                n,
                "line",
                ErrorCode::InvalidArgument,
                format!(
                    "{} fields, expected {} ({})",
                    fields.len(),
                    COLUMNS.len(),
                    COLUMNS.join(",")
                ),
            ));
        }
        if out.len() >= STATEMENT_LINES_MAX {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "line {n}: a statement holds at most {STATEMENT_LINES_MAX} payment lines; \
                     split the file by time of day and reconcile each part against the day"
                ),
            )
            .with_details(serde_json::json!({"line": n, "lines_max": STATEMENT_LINES_MAX})));
        }
        let [bank_ref, account_id, amount, time]: [String; 4] = match fields.try_into() {
            Ok(f) => f,
            Err(_) => {
                return Err(at(
                    n,
                    "line",
                    ErrorCode::InvalidArgument,
                    "expected 4 fields",
                ));
            }
        };
        for (field, v) in [("bank_ref", &bank_ref), ("account_id", &account_id)] {
            if !is_id(v) {
                return Err(at(
                    n,
                    field,
                    ErrorCode::InvalidArgument,
                    format!("{v:?} is not 1..={ID_LEN_MAX} of [A-Za-z0-9._:-]"),
                ));
            }
        }
        let amount = crate::money::parse_amount(&amount).map_err(|e| {
            let code = ErrorCode::parse(e.code()).unwrap_or(ErrorCode::InvalidAmount);
            at(n, "amount", code, e)
        })?;
        if !is_statement_time(&time) {
            return Err(at(
                n,
                "time",
                ErrorCode::InvalidArgument,
                format!(
                    "{time:?}: expected HH:MM[:SS] or YYYY-MM-DDTHH:MM:SS (Z or ±HH:MM optional)"
                ),
            ));
        }
        let line = u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(prev) = seen.insert(bank_ref.clone(), line) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("line {n}: bank_ref: {bank_ref} is also on line {prev}"),
            )
            .with_details(
                serde_json::json!({"line": n, "field": "bank_ref", "first_line": prev}),
            ));
        }
        out.push(StatementLine {
            line,
            bank_ref,
            account_id,
            amount,
            time,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_file_with_header_blank_lines_quotes_and_crlf_parses() {
        let text = "\u{feff}bank_ref,account_id,amount,time\r\n\
                    R1,A-1,12.5,08:15\r\n\
                    \r\n\
                    \"R2\" , \"A-2\",0.01,2026-03-07T23:59:59Z\n\
                    R3,A-3,1000000.00,2026-03-07 10:00:00+08:00\n";
        let lines = parse_csv(text).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].line, 2);
        assert_eq!(lines[0].bank_ref, "R1");
        assert_eq!(lines[0].amount, dec("12.50"));
        assert_eq!(lines[0].amount.scale(), 2);
        assert_eq!(lines[1].line, 4);
        assert_eq!(lines[1].account_id, "A-2");
        assert_eq!(lines[2].line, 5);
        assert_eq!(lines[2].time, "2026-03-07 10:00:00+08:00");
        assert!(parse_csv("").unwrap().is_empty());
        assert!(
            parse_csv("bank_ref,account_id,amount,time\n")
                .unwrap()
                .is_empty()
        );
    }

    fn refusal(text: &str) -> ApiError {
        match parse_csv(text) {
            Ok(l) => panic!("accepted {text:?}: {l:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn each_bad_line_is_refused_naming_its_line_and_field() {
        let ok = "R1,A1,1.00,08:00\n";
        for (bad, code, field) in [
            ("R2,A1,1.00\n", ErrorCode::InvalidArgument, "line"),
            ("R2,A1,1.00,08:00,x\n", ErrorCode::InvalidArgument, "line"),
            (
                "R 2,A1,1.00,08:00\n",
                ErrorCode::InvalidArgument,
                "bank_ref",
            ),
            (",A1,1.00,08:00\n", ErrorCode::InvalidArgument, "bank_ref"),
            ("R2,,1.00,08:00\n", ErrorCode::InvalidArgument, "account_id"),
            ("R2,A1,1.001,08:00\n", ErrorCode::TooManyDecimals, "amount"),
            ("R2,A1,0,08:00\n", ErrorCode::AmountTooSmall, "amount"),
            ("R2,A1,-5.00,08:00\n", ErrorCode::AmountTooSmall, "amount"),
            ("R2,A1,1e3,08:00\n", ErrorCode::InvalidAmount, "amount"),
            ("R2,A1,abc,08:00\n", ErrorCode::InvalidAmount, "amount"),
            ("R2,A1,1.00,25:00\n", ErrorCode::InvalidArgument, "time"),
            ("R2,A1,1.00,\n", ErrorCode::InvalidArgument, "time"),
            (
                "R2,A1,1.00,2026-13-01T08:00\n",
                ErrorCode::InvalidArgument,
                "time",
            ),
            ("\"R2,A1,1.00,08:00\n", ErrorCode::InvalidArgument, "line"),
            ("R1,A1,2.00,09:00\n", ErrorCode::InvalidArgument, "bank_ref"),
        ] {
            let e = refusal(&format!("bank_ref,account_id,amount,time\n{ok}\n{bad}"));
            assert_eq!(e.code, code, "{bad:?}: {e:?}");
            assert_eq!(e.details["line"], 4, "{bad:?}: {e:?}");
            assert_eq!(e.details["field"], field, "{bad:?}: {e:?}");
            assert!(e.message.starts_with("line 4: "), "{}", e.message);
        }
        let dup = refusal("R1,A1,1.00,08:00\nR1,A2,2.00,09:00\n");
        assert_eq!(dup.details["first_line"], 1);
        assert!(dup.message.contains("also on line 1"), "{}", dup.message);
    }

    #[test]
    fn more_lines_than_the_limit_are_refused_saying_the_limit() {
        let mut text = String::new();
        for i in 0..=STATEMENT_LINES_MAX {
            text.push_str(&format!("R{i},A1,1.00,08:00\n"));
        }
        let e = refusal(&text);
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert!(
            e.message.contains(&STATEMENT_LINES_MAX.to_string()),
            "{}",
            e.message
        );
        assert_eq!(e.details["line"], STATEMENT_LINES_MAX + 1);
    }
}
