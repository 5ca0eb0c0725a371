//! The legacy files, one row at a time: the columns of `accounts.csv`,
//! `cards.csv` and `records.csv`, the mapping file of legacy codes, and
//! the checks that turn a row into a billdb import item or a reason it
//! cannot be one (docs/MIGRATION.md describes the same columns). Checks
//! that need more than the row (a duplicate id, an unknown account, time
//! order) live with the caller's state in `migrate::run`. Pure: no I/O.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;

use billdb_api::money::{AMOUNT_MAX, UNITS_MAX};
use billdb_api::statement::is_id;
use billdb_node::domain::calendar::{TS_MAX_MS, TS_MIN_MS, civil, days_ms};
use billdb_node::domain::{ImportAccount, ImportRecord, UTILITIES, is_assigned_form};

pub const ACCOUNT_COLUMNS: [&str; 12] = [
    "account_id",
    "name",
    "address",
    "branch",
    "utility",
    "meter_id",
    "tariff_code",
    "area_m2",
    "status",
    "balance",
    "opened",
    "closed",
];
pub const CARD_COLUMNS: [&str; 4] = ["card_no", "account_id", "generation", "status"];
pub const RECORD_COLUMNS: [&str; 13] = [
    "account_id",
    "kind",
    "amount",
    "units",
    "time",
    "operator",
    "branch",
    "tariff_code",
    "invoice_no",
    "bank_code",
    "bank_ref",
    "card_no",
    "card_seq",
];
pub const MAPPING_COLUMNS: [&str; 3] = ["category", "legacy", "billdb"];

/// Categories of legacy codes the mapping file may translate. `tariff` is
/// required for every tariff code; the others, when the file has no line
/// of that category, take the legacy value as the billdb value.
pub const CATEGORIES: [&str; 5] = ["tariff", "branch", "utility", "status", "kind"];

/// Longest free-text field (name, address) kept.
pub const TEXT_LEN_MAX: usize = 256;

/// The mapping of legacy codes to billdb values, by category.
#[derive(Debug, Default, Clone)]
pub struct Mapping {
    by_category: BTreeMap<String, BTreeMap<String, String>>,
}

impl Mapping {
    /// Adds one line of the mapping file; `Err` says what is wrong with it.
    pub fn add(&mut self, category: &str, legacy: &str, billdb: &str) -> Result<(), String> {
        let category = category.trim();
        if !CATEGORIES.contains(&category) {
            return Err(format!(
                "category {category:?}: one of {}",
                CATEGORIES.join(", ")
            ));
        }
        let (legacy, billdb) = (legacy.trim(), billdb.trim());
        if legacy.is_empty() || billdb.is_empty() {
            return Err("legacy and billdb values may not be empty".into());
        }
        let check = match category {
            "utility" => UTILITIES.contains(&billdb),
            "status" => ["active", "suspended", "closed"].contains(&billdb),
            "kind" => RECORD_KINDS.contains(&billdb),
            _ => is_id(billdb),
        };
        if !check {
            return Err(format!("{billdb:?} is not a billdb {category}"));
        }
        let m = self.by_category.entry(category.to_string()).or_default();
        match m.get(legacy) {
            Some(before) if before != billdb => Err(format!(
                "{category} {legacy:?} is mapped twice ({before:?} and {billdb:?})"
            )),
            _ => {
                m.insert(legacy.to_string(), billdb.to_string());
                Ok(())
            }
        }
    }

    /// The billdb value of a legacy code.
    pub fn map(&self, category: &str, code: &str) -> Result<String, String> {
        match self.by_category.get(category) {
            Some(m) => m.get(code).cloned().ok_or_else(|| {
                format!("unknown {category} code {code:?} (not in the mapping file)")
            }),
            None if category == "tariff" => Err(format!(
                "unknown tariff code {code:?} (the mapping file maps no tariff codes)"
            )),
            None => Ok(code.to_string()),
        }
    }

    /// Every billdb tariff id the mapping names.
    pub fn tariffs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_category
            .get("tariff")
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }
}

pub const RECORD_KINDS: [&str; 4] = ["purchase", "payment", "charge", "adjustment"];

/// How legacy times without an offset are read.
#[derive(Debug, Clone, Copy)]
pub struct Zone {
    /// Seconds east of UTC (`--utc-offset +08:00` → 28,800).
    pub offset_s: i32,
}

/// `+08:00`, `-05:30`, `Z` → seconds east of UTC.
pub fn parse_offset(s: &str) -> Result<i32, String> {
    if s == "Z" || s == "z" {
        return Ok(0);
    }
    let b = s.as_bytes();
    let bad = || format!("UTC offset {s:?}: +HH:MM, -HH:MM or Z");
    if b.len() != 6 || !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' {
        return Err(bad());
    }
    let h: i32 = s[1..3].parse().map_err(|_| bad())?;
    let m: i32 = s[4..6].parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    let v = h * 3600 + m * 60;
    Ok(if b[0] == b'-' { -v } else { v })
}

fn num(s: &str, what: &str, lo: u32, hi: u32) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    let v: u32 = s.parse().map_err(|_| format!("{what} {s:?}"))?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("{what} {v} is not in {lo}..={hi}"));
    }
    Ok(v)
}

/// A legacy date or time → Unix ms. Accepts `YYYY-MM-DD`, `YYYY-MM-DD
/// HH:MM[:SS]` (in `zone`), and RFC 3339 (`T` separator, `Z` or an offset).
/// A date that does not exist (2021-02-30) is refused.
pub fn parse_time(s: &str, zone: Zone) -> Result<i64, String> {
    let s = s.trim();
    let bad = |why: String| format!("time {s:?}: {why}");
    if s.len() < 10 || !s.is_char_boundary(10) {
        return Err(bad("expected YYYY-MM-DD[ HH:MM[:SS]]".into()));
    }
    let (date, rest) = s.split_at(10);
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 || parts[0].len() != 4 || parts[1].len() != 2 || parts[2].len() != 2 {
        return Err(bad("expected YYYY-MM-DD".into()));
    }
    let y = num(parts[0], "year", 1970, 9999).map_err(bad)? as i32;
    let mo = num(parts[1], "month", 1, 12).map_err(bad)?;
    let d = num(parts[2], "day", 1, 31).map_err(bad)?;
    let day_ms = days_ms(y, mo, d);
    if civil(day_ms) != (y, mo, d) {
        return Err(bad(format!("{y:04}-{mo:02}-{d:02} is not a date")));
    }
    let mut offset_s = zone.offset_s;
    let mut clock = rest;
    if !clock.is_empty() {
        let sep = clock.as_bytes()[0];
        if sep != b' ' && sep != b'T' {
            return Err(bad("a space or T between date and time".into()));
        }
        clock = &clock[1..];
        if let Some(c) = clock.strip_suffix('Z') {
            offset_s = 0;
            clock = c;
        } else if clock.len() > 6 && clock.is_char_boundary(clock.len() - 6) {
            let (c, off) = clock.split_at(clock.len() - 6);
            if off.starts_with('+') || off.starts_with('-') {
                offset_s = parse_offset(off).map_err(bad)?;
                clock = c;
            }
        }
    }
    let mut secs: i64 = 0;
    if !clock.is_empty() {
        let hms: Vec<&str> = clock.split(':').collect();
        if !(2..=3).contains(&hms.len()) || hms.iter().any(|p| p.len() != 2) {
            return Err(bad("expected HH:MM or HH:MM:SS".into()));
        }
        let h = num(hms[0], "hour", 0, 23).map_err(bad)?;
        let m = num(hms[1], "minute", 0, 59).map_err(bad)?;
        let sec = match hms.get(2) {
            Some(v) => num(v, "second", 0, 59).map_err(bad)?,
            None => 0,
        };
        secs = i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
    }
    let ms = day_ms + (secs - i64::from(offset_s)) * 1000;
    if !(TS_MIN_MS..=TS_MAX_MS).contains(&ms) {
        return Err(bad("out of range (1970..=9999)".into()));
    }
    Ok(ms)
}

/// A money amount: at most 2 decimal places, within billdb's limits.
pub fn parse_money(s: &str, what: &str, max: Decimal) -> Result<Decimal, String> {
    let v = Decimal::from_str(s.trim()).map_err(|_| format!("{what} {s:?} is not a decimal"))?;
    if v.scale() > 2 {
        return Err(format!("{what} {s:?} has more than 2 decimal places"));
    }
    if v.abs() > max {
        return Err(format!("{what} {s:?} is beyond {max}"));
    }
    let mut v = v;
    // Every amount carries cents, so sums print as money ("30930.00").
    v.rescale(2);
    Ok(v)
}

/// Units or an area: ≥ 0, at most 3 decimal places.
pub fn parse_units(s: &str, what: &str) -> Result<Decimal, String> {
    if s.trim().is_empty() {
        return Ok(Decimal::ZERO);
    }
    let v = Decimal::from_str(s.trim()).map_err(|_| format!("{what} {s:?} is not a decimal"))?;
    if v.scale() > 3 || v.is_sign_negative() || v > UNITS_MAX {
        return Err(format!(
            "{what} {s:?}: 0..={UNITS_MAX}, at most 3 decimal places"
        ));
    }
    Ok(v)
}

/// The fields of one CSV row by column name, with the row's own checks of
/// field count.
#[derive(Debug)]
pub struct Row<'a> {
    pub fields: Vec<&'a str>,
    columns: &'static [&'static str],
}

impl<'a> Row<'a> {
    pub fn new(fields: Vec<&'a str>, columns: &'static [&'static str]) -> Result<Self, String> {
        if fields.len() != columns.len() {
            return Err(format!(
                "missing fields: {} columns expected ({}), {} found",
                columns.len(),
                columns.join(","),
                fields.len()
            ));
        }
        Ok(Row { fields, columns })
    }

    pub fn get(&self, name: &str) -> &'a str {
        match self.columns.iter().position(|c| *c == name) {
            Some(i) => self.fields[i].trim(),
            None => "",
        }
    }

    pub fn required(&self, name: &str) -> Result<&'a str, String> {
        let v = self.get(name);
        if v.is_empty() {
            return Err(format!("missing field: {name} is empty"));
        }
        Ok(v)
    }

    fn id(&self, name: &str) -> Result<String, String> {
        let v = self.required(name)?;
        if !is_id(v) {
            return Err(format!("{name} {v:?}: 1..=64 of A-Z a-z 0-9 . _ : -"));
        }
        Ok(v.to_string())
    }

    fn text(&self, name: &str) -> Result<String, String> {
        let v = self.get(name);
        if v.chars().count() > TEXT_LEN_MAX || v.chars().any(char::is_control) {
            return Err(format!(
                "{name}: at most {TEXT_LEN_MAX} printable characters"
            ));
        }
        Ok(v.to_string())
    }
}

/// Checks a file's header line: the documented columns, in order.
pub fn check_header(file: &str, header: &[&str], columns: &[&str]) -> Result<(), String> {
    let got: Vec<String> = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if got != columns {
        return Err(format!(
            "{file}: the first line must name the columns {} (it names {})",
            columns.join(","),
            got.join(",")
        ));
    }
    Ok(())
}

/// One row of `accounts.csv` as an import account (no card yet).
pub fn account(row: &Row<'_>, map: &Mapping, zone: Zone) -> Result<ImportAccount, String> {
    let account_id = row.id("account_id")?;
    let branch = map.map("branch", row.required("branch")?)?;
    if !is_id(&branch) {
        return Err(format!("branch {branch:?} is not a billdb branch id"));
    }
    let utility = map.map("utility", row.required("utility")?)?;
    if !UTILITIES.contains(&utility.as_str()) {
        return Err(format!(
            "utility {utility:?}: one of {}",
            UTILITIES.join(", ")
        ));
    }
    let tariff_id = map.map("tariff", row.required("tariff_code")?)?;
    let status = map.map("status", row.required("status")?)?;
    if !["active", "suspended", "closed"].contains(&status.as_str()) {
        return Err(format!("status {status:?}: active, suspended or closed"));
    }
    let balance = parse_money(
        row.required("balance")?,
        "balance",
        AMOUNT_MAX * Decimal::from(1000),
    )?;
    let opened_ms = parse_time(row.required("opened")?, zone)?;
    let closed_ms = match row.get("closed") {
        "" => None,
        c => Some(parse_time(c, zone)?),
    };
    if closed_ms.is_some_and(|c| c < opened_ms) {
        return Err("closed before it was opened".into());
    }
    Ok(ImportAccount {
        account_id,
        name: row.text("name")?,
        address: row.text("address")?,
        branch,
        utility,
        meter_id: row.text("meter_id")?,
        tariff_id,
        area: parse_units(row.get("area_m2"), "area_m2")?,
        status,
        balance,
        opened_ms,
        closed_ms,
        card_no: None,
        card_generation: 0,
    })
}

/// One row of `cards.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyCard {
    pub card_no: String,
    pub account_id: String,
    pub generation: u32,
    /// active | replaced | revoked
    pub status: String,
}

pub fn card(row: &Row<'_>) -> Result<LegacyCard, String> {
    let status = row.required("status")?.to_ascii_lowercase();
    if !["active", "replaced", "revoked"].contains(&status.as_str()) {
        return Err(format!(
            "card status {status:?}: active, replaced or revoked"
        ));
    }
    Ok(LegacyCard {
        card_no: row.id("card_no")?,
        account_id: row.id("account_id")?,
        generation: num(row.required("generation")?, "generation", 1, 1_000_000)?,
        status,
    })
}

/// What a record row takes from its account as imported: empty branch and
/// tariff fields take the account's.
pub struct RecordAccount<'a> {
    pub account_id: &'a str,
    pub branch: &'a str,
    pub tariff_id: &'a str,
}

/// One row of `records.csv` as an import record of `account`.
pub fn record(
    row: &Row<'_>,
    map: &Mapping,
    zone: Zone,
    account: &RecordAccount<'_>,
) -> Result<ImportRecord, String> {
    let kind = map.map("kind", row.required("kind")?)?;
    if !RECORD_KINDS.contains(&kind.as_str()) {
        return Err(format!("kind {kind:?}: one of {}", RECORD_KINDS.join(", ")));
    }
    let amount = parse_money(row.required("amount")?, "amount", AMOUNT_MAX)?;
    let amount_ok = match kind.as_str() {
        "adjustment" => !amount.is_zero(),
        "purchase" => !amount.is_sign_negative(),
        _ => amount > Decimal::ZERO,
    };
    if !amount_ok {
        return Err(format!(
            "amount {amount} is not allowed for a {kind} (> 0; a purchase ≥ 0; an adjustment ≠ 0)"
        ));
    }
    let units = parse_units(row.get("units"), "units")?;
    let ts_ms = parse_time(row.required("time")?, zone)?;
    let branch = match row.get("branch") {
        "" => account.branch.to_string(),
        b => map.map("branch", b)?,
    };
    if !is_id(&branch) {
        return Err(format!("branch {branch:?} is not a billdb branch id"));
    }
    let tariff_id = match row.get("tariff_code") {
        "" => account.tariff_id.to_string(),
        t => map.map("tariff", t)?,
    };
    let invoice_no = row.get("invoice_no").to_string();
    if !invoice_no.is_empty() && !is_id(&invoice_no) {
        return Err(format!(
            "invoice_no {invoice_no:?}: 1..=64 of A-Z a-z 0-9 . _ : -"
        ));
    }
    if is_assigned_form(&invoice_no) {
        return Err(format!(
            "invoice_no {invoice_no:?} has the form billdb assigns (INV + 12 digits)"
        ));
    }
    let (bank_code, bank_ref) = (row.get("bank_code"), row.get("bank_ref"));
    if bank_code.is_empty() != bank_ref.is_empty() {
        return Err("bank_code and bank_ref: both or neither".into());
    }
    if !bank_code.is_empty() {
        if kind != "payment" {
            return Err(format!("a {kind} carries no bank reference"));
        }
        if !is_id(bank_code) || !is_id(bank_ref) {
            return Err("bank_code, bank_ref: 1..=64 of A-Z a-z 0-9 . _ : -".into());
        }
    }
    let card_no = row.get("card_no").to_string();
    if !card_no.is_empty() && !is_id(&card_no) {
        return Err(format!(
            "card_no {card_no:?}: 1..=64 of A-Z a-z 0-9 . _ : -"
        ));
    }
    let card_seq = match row.get("card_seq") {
        "" => 0,
        s => u64::from(num(s, "card_seq", 0, u32::MAX)?),
    };
    let operator_id = row.get("operator");
    if !operator_id.is_empty() && !is_id(operator_id) {
        return Err(format!(
            "operator {operator_id:?}: 1..=64 of A-Z a-z 0-9 . _ : -"
        ));
    }
    Ok(ImportRecord {
        account_id: account.account_id.to_string(),
        kind,
        amount,
        units,
        ts_ms,
        operator_id: if operator_id.is_empty() {
            "legacy".into()
        } else {
            operator_id.to_string()
        },
        branch,
        tariff_id,
        invoice_no,
        bank_code: bank_code.to_string(),
        bank_ref: bank_ref.to_string(),
        card_no,
        card_seq,
    })
}

/// What a record does to an account's balance: payments and adjustments
/// add, charges take away, purchases (prepaid: money for units) leave it.
pub fn balance_effect(kind: &str, amount: Decimal) -> Decimal {
    match kind {
        "payment" | "adjustment" => amount,
        "charge" => -amount,
        _ => Decimal::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn times_in_the_zone_or_with_their_own_offset_and_bad_dates_refused() {
        let utc = Zone { offset_s: 0 };
        let cst = Zone { offset_s: 8 * 3600 };
        let day = days_ms(2021, 3, 4);
        assert_eq!(parse_time("2021-03-04", utc), Ok(day));
        assert_eq!(parse_time("2021-03-04 08:00", cst), Ok(day));
        assert_eq!(parse_time("2021-03-04 08:00:01", cst), Ok(day + 1000));
        assert_eq!(parse_time("2021-03-04T00:00:00Z", cst), Ok(day));
        assert_eq!(parse_time("2021-03-04T09:30:00+09:30", utc), Ok(day));
        for bad in [
            "2021-02-30",
            "2021-13-01",
            "2021-3-4",
            "04/03/2021",
            "2021-03-04 24:00",
            "2021-03-04 12:60",
            "2021-03-04x12:00",
            "1969-12-31",
            "",
            "２０２１-03-04",
        ] {
            assert!(parse_time(bad, utc).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_offset("+08:00"), Ok(28_800));
        assert_eq!(parse_offset("-05:30"), Ok(-19_800));
        assert!(parse_offset("+8").is_err());
    }

    #[test]
    fn mapping_translates_codes_and_refuses_unknown_ones() {
        let mut m = Mapping::default();
        m.add("tariff", "T01", "HEAT-A").unwrap();
        m.add("kind", "SALE", "purchase").unwrap();
        assert!(m.add("kind", "X", "gift").is_err());
        assert!(m.add("tariff", "T01", "OTHER").is_err(), "mapped twice");
        assert!(m.add("colour", "a", "b").is_err());
        assert_eq!(m.map("tariff", "T01").unwrap(), "HEAT-A");
        assert!(
            m.map("tariff", "T99")
                .unwrap_err()
                .contains("unknown tariff code")
        );
        assert!(
            m.map("kind", "purchase").is_err(),
            "kinds are mapped once given"
        );
        assert_eq!(
            m.map("branch", "BR1").unwrap(),
            "BR1",
            "no branch lines: as is"
        );
        assert_eq!(m.tariffs(), ["HEAT-A"]);
    }

    #[test]
    fn rows_with_missing_or_bad_fields_say_which() {
        let mut m = Mapping::default();
        m.add("tariff", "T01", "HEAT-A").unwrap();
        let zone = Zone { offset_s: 0 };
        let ok = "A1,Li,Road 1,BR1,heat,M1,T01,87.5,active,-12.30,2019-05-01,";
        let fields: Vec<&str> = ok.split(',').collect();
        let a = account(&Row::new(fields, &ACCOUNT_COLUMNS).unwrap(), &m, zone).unwrap();
        assert_eq!(a.balance, d("-12.30"));
        assert_eq!(a.area, d("87.5"));
        let short: Vec<&str> = "A1,Li,Road 1,BR1".split(',').collect();
        assert!(
            Row::new(short, &ACCOUNT_COLUMNS)
                .unwrap_err()
                .contains("missing fields")
        );
        for (bad, why) in [
            (
                "A1,Li,R,BR1,heat,M1,T09,87.5,active,0,2019-05-01,",
                "unknown tariff code",
            ),
            (
                "A1,Li,R,BR1,heat,M1,T01,87.5,active,0,2019-02-29,",
                "not a date",
            ),
            (
                "A1,Li,R,BR1,heat,M1,T01,87.5,active,1.005,2019-05-01,",
                "decimal places",
            ),
            (
                "A1,Li,R,,heat,M1,T01,87.5,active,0,2019-05-01,",
                "branch is empty",
            ),
            (
                "A1,Li,R,BR1,steam,M1,T01,87.5,active,0,2019-05-01,",
                "utility",
            ),
        ] {
            let f: Vec<&str> = bad.split(',').collect();
            let e = account(&Row::new(f, &ACCOUNT_COLUMNS).unwrap(), &m, zone).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let rec = |line: &str| {
            let f: Vec<&str> = line.split(',').collect();
            let of = RecordAccount {
                account_id: &a.account_id,
                branch: &a.branch,
                tariff_id: &a.tariff_id,
            };
            record(&Row::new(f, &RECORD_COLUMNS).unwrap(), &m, zone, &of)
        };
        let r = rec("A1,charge,2226.15,87.3,2020-11-15,,,,L-1,,,,").unwrap();
        assert_eq!((r.branch.as_str(), r.tariff_id.as_str()), ("BR1", "HEAT-A"));
        assert_eq!(balance_effect(&r.kind, r.amount), d("-2226.15"));
        assert!(
            rec("A1,charge,-5,0,2020-11-15,,,,,,,,")
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(
            rec("A1,charge,5,0,2020-11-15,,,,INV000000000001,,,,")
                .unwrap_err()
                .contains("form billdb assigns")
        );
        assert!(
            rec("A1,payment,5,0,2020-11-15,,,,,ICBC,,,")
                .unwrap_err()
                .contains("both or neither")
        );
        assert!(
            rec("A1,gift,5,0,2020-11-15,,,,,,,,")
                .unwrap_err()
                .contains("kind")
        );
    }
}
