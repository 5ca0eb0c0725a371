//! Deterministic dataset generator: accounts with cards spread over
//! branches, operators and tariffs (flat and ladder), each with `years` ×
//! `per_year` purchases and `payments_per_year` bank payments, monthly over
//! the years that end at `end_month`. Every account's data comes from its
//! own ChaCha8 stream seeded by (seed, account index), so the dataset is the
//! same for a seed whatever the batching or concurrency. Items are the JSON
//! shapes of `POST /v1/import`. Pure: touches no I/O.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Most accounts a dataset may have.
pub const ACCOUNTS_MAX: u64 = 10_000_000;
/// Most years of history.
pub const YEARS_MAX: u32 = 20;
/// Most purchases per account and year.
pub const PER_YEAR_MAX: u32 = 60;
/// Most bank payments per account and year.
pub const PAYMENTS_PER_YEAR_MAX: u32 = 12;
/// Branches accounts are spread over (`B01`..).
pub const BRANCHES: u64 = 8;
/// Operators per branch (`OP-Bnn-k`).
pub const OPERATORS_PER_BRANCH: u64 = 3;
/// Banks payments come from.
pub const BANKS: &[&str] = &["ICBC", "CCB", "ABC", "BOC"];

const DAY_MS: i64 = 86_400_000;

/// A tariff the dataset uses: id and `PUT /v1/tariffs/{id}` body fields.
pub struct TariffDef {
    pub id: &'static str,
    /// Price per unit used to derive imported units (first tier for ladders).
    pub unit_price: Decimal,
    pub body: fn() -> Value,
}

/// The dataset's tariffs: two flat, two ladder.
pub fn tariffs() -> Vec<TariffDef> {
    vec![
        TariffDef {
            id: "BT-FLAT-RES",
            unit_price: Decimal::new(50, 2),
            body: || json!({"kind": "flat", "price": "0.50"}),
        },
        TariffDef {
            id: "BT-FLAT-BIZ",
            unit_price: Decimal::new(80, 2),
            body: || json!({"kind": "flat", "price": "0.80"}),
        },
        TariffDef {
            id: "BT-LADDER-A",
            unit_price: Decimal::new(4883, 4),
            body: || {
                json!({"kind": "ladder", "tiers": [
                    {"up_to": "2160", "price": "0.4883"},
                    {"up_to": "4200", "price": "0.5383"},
                    {"price": "0.7883"}]})
            },
        },
        TariffDef {
            id: "BT-LADDER-B",
            unit_price: Decimal::new(5283, 4),
            body: || {
                json!({"kind": "ladder", "tiers": [
                    {"up_to": "1800", "price": "0.5283"},
                    {"price": "0.8283"}]})
            },
        },
    ]
}

/// Scale and seed of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub seed: u64,
    pub accounts: u64,
    pub years: u32,
    pub per_year: u32,
    pub payments_per_year: u32,
    /// Last month with data, `YYYY-MM`.
    pub end_month: String,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM`.
pub fn parse_month(s: &str) -> anyhow::Result<(i64, u32)> {
    let (y, m) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("month {s:?}: want YYYY-MM"))?;
    let y: i64 = y
        .parse()
        .map_err(|_| anyhow::anyhow!("month {s:?}: year"))?;
    let m: u32 = m
        .parse()
        .map_err(|_| anyhow::anyhow!("month {s:?}: month"))?;
    anyhow::ensure!(
        (1..=12).contains(&m) && (1990..=2100).contains(&y),
        "month {s:?} out of range"
    );
    Ok((y, m))
}

/// (year, month) `k` months after (y, m).
fn add_months(y: i64, m: u32, k: i64) -> (i64, u32) {
    let idx = y * 12 + (m as i64 - 1) + k;
    (idx.div_euclid(12), (idx.rem_euclid(12) + 1) as u32)
}

/// Start of a month in ms since the epoch (UTC).
pub fn month_start_ms(y: i64, m: u32) -> i64 {
    days_from_civil(y, m, 1) * DAY_MS
}

pub fn month_label(y: i64, m: u32) -> String {
    format!("{y:04}-{m:02}")
}

/// One generated account: its import row and its records, oldest first.
pub struct AccountData {
    pub account: Value,
    pub records: Vec<Value>,
    /// (month `YYYY-MM`, kind, amount) of every record, for expected totals.
    pub sums: Vec<(String, &'static str, Decimal)>,
}

impl Spec {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=ACCOUNTS_MAX).contains(&self.accounts),
            "accounts must be 1..={ACCOUNTS_MAX}"
        );
        anyhow::ensure!(
            (1..=YEARS_MAX).contains(&self.years),
            "years must be 1..={YEARS_MAX}"
        );
        anyhow::ensure!(
            (1..=PER_YEAR_MAX).contains(&self.per_year),
            "per-year must be 1..={PER_YEAR_MAX}"
        );
        anyhow::ensure!(
            self.payments_per_year <= PAYMENTS_PER_YEAR_MAX,
            "payments-per-year must be 0..={PAYMENTS_PER_YEAR_MAX}"
        );
        parse_month(&self.end_month)?;
        Ok(())
    }

    /// Records per account.
    pub fn records_per_account(&self) -> u64 {
        self.years as u64 * (self.per_year + self.payments_per_year) as u64
    }

    pub fn total_records(&self) -> u64 {
        self.accounts * self.records_per_account()
    }

    /// (year, month) of the first month with data.
    pub fn first_month(&self) -> (i64, u32) {
        let (y, m) = parse_month(&self.end_month).unwrap_or((2026, 10));
        add_months(y, m, -(self.years as i64 * 12 - 1))
    }

    /// Every month with data, oldest first.
    pub fn months(&self) -> Vec<String> {
        let (y, m) = self.first_month();
        (0..self.years as i64 * 12)
            .map(|k| {
                let (a, b) = add_months(y, m, k);
                month_label(a, b)
            })
            .collect()
    }

    /// Start of the last month with data (the recent segment boundary).
    pub fn last_month_start_ms(&self) -> i64 {
        let (y, m) = parse_month(&self.end_month).unwrap_or((2026, 10));
        month_start_ms(y, m)
    }

    pub fn account_id(i: u64) -> String {
        format!("A{i:08}")
    }

    pub fn card_no(i: u64) -> String {
        format!("C{i:08}")
    }

    /// Branch of account `i` (fixed by index so workloads can pick one).
    pub fn branch(i: u64) -> String {
        format!("B{:02}", i % BRANCHES + 1)
    }

    fn rng(&self, i: u64) -> ChaCha8Rng {
        // splitmix64 of (seed, i): independent streams per account.
        let mut z = self
            .seed
            .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
    }

    /// Account `i`'s import row and records.
    pub fn account(&self, i: u64) -> AccountData {
        let tariffs = tariffs();
        let mut rng = self.rng(i);
        let id = Self::account_id(i);
        let card = Self::card_no(i);
        let branch = Self::branch(i);
        let t = &tariffs[rng.random_range(0..tariffs.len())];
        let (fy, fm) = self.first_month();
        let opened_ms = month_start_ms(fy, fm) - DAY_MS;
        let account = json!({
            "account_id": id, "name": format!("Customer {i}"), "address": format!("{branch} street {}", i % 997),
            "branch": branch, "utility": "electricity", "meter_id": format!("M{i:08}"),
            "tariff_id": t.id, "area": "0", "status": "active", "balance": "0.00",
            "opened_ms": opened_ms, "closed_ms": null, "card_no": card, "card_generation": 1,
        });
        // (ts, kind, amount, units, operator, bank, ref)
        let mut items: Vec<(i64, &'static str, Decimal, Decimal, String, &str, String)> =
            Vec::with_capacity(self.records_per_account() as usize);
        for y in 0..self.years as i64 {
            for k in 0..self.per_year as i64 {
                let month = y * 12 + k * 12 / self.per_year as i64;
                let ts = self.ts_in_month(&mut rng, month);
                let cents: i64 = rng.random_range(20..=300) * 100 + rng.random_range(0..100);
                let amount = Decimal::new(cents, 2);
                let units = (amount / t.unit_price).round_dp(3);
                let op = rng.random_range(0..OPERATORS_PER_BRANCH) + 1;
                items.push((
                    ts,
                    "purchase",
                    amount,
                    units,
                    format!("OP-{branch}-{op}"),
                    "",
                    String::new(),
                ));
            }
            for k in 0..self.payments_per_year as i64 {
                let month = y * 12 + rng.random_range(0..12);
                let ts = self.ts_in_month(&mut rng, month);
                let cents: i64 = rng.random_range(50..=500) * 100;
                let bank = BANKS[rng.random_range(0..BANKS.len())];
                items.push((
                    ts,
                    "payment",
                    Decimal::new(cents, 2),
                    Decimal::ZERO,
                    format!("BANK-{bank}"),
                    bank,
                    format!("G{}-{i}-{y}-{k}", self.seed),
                ));
            }
        }
        items.sort_by_key(|x| x.0);
        let mut seq = 0u64;
        let mut records = Vec::with_capacity(items.len());
        let mut sums = Vec::with_capacity(items.len());
        for (ts, kind, amount, units, op, bank, bank_ref) in items {
            let (card_no, card_seq) = if kind == "purchase" {
                seq += 1;
                (card.as_str(), seq)
            } else {
                ("", 0)
            };
            records.push(json!({
                "account_id": id, "kind": kind, "amount": amount.to_string(), "units": units.to_string(),
                "ts_ms": ts, "operator_id": op, "branch": branch, "tariff_id": t.id, "invoice_no": "",
                "bank_code": bank, "bank_ref": bank_ref, "card_no": card_no, "card_seq": card_seq,
            }));
            let days = ts.div_euclid(DAY_MS);
            sums.push((month_of_days(days), kind, amount));
        }
        AccountData {
            account,
            records,
            sums,
        }
    }

    /// A time in month `k` (counted from the first month): a day 1..=28,
    /// business hours.
    fn ts_in_month(&self, rng: &mut ChaCha8Rng, k: i64) -> i64 {
        let (fy, fm) = self.first_month();
        let (y, m) = add_months(fy, fm, k);
        month_start_ms(y, m)
            + rng.random_range(0..28) * DAY_MS
            + rng.random_range(8 * 3_600_000..18 * 3_600_000)
    }
}

/// `YYYY-MM` of a day number (days since the epoch).
fn month_of_days(z: i64) -> String {
    // Inverse of days_from_civil (H. Hinnant's algorithm).
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    month_label(y, m as u32)
}

/// Count and amount per kind, for one month.
pub type MonthTotals = BTreeMap<String, (u64, Decimal)>;

/// Adds an account's records of `month` to `totals`.
pub fn add_month_totals(totals: &mut MonthTotals, data: &AccountData, month: &str) {
    for (m, kind, amount) in &data.sums {
        if m == month {
            let e = totals
                .entry((*kind).to_string())
                .or_insert((0, Decimal::ZERO));
            e.0 += 1;
            e.1 += *amount;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            seed,
            accounts: 20,
            years: 7,
            per_year: 12,
            payments_per_year: 1,
            end_month: "2026-10".into(),
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = spec(7);
        let b = spec(7);
        let c = spec(8);
        for i in 0..a.accounts {
            let (x, y) = (a.account(i), b.account(i));
            assert_eq!(x.account, y.account);
            assert_eq!(x.records, y.records);
        }
        let differs = (0..a.accounts).any(|i| a.account(i).records != c.account(i).records);
        assert!(differs, "another seed must give other data");
    }

    #[test]
    fn counts_follow_the_scale_flags() {
        let s = spec(1);
        assert_eq!(s.records_per_account(), 7 * 13);
        assert_eq!(s.total_records(), 20 * 91);
        let mut purchases = 0;
        let mut payments = 0;
        let mut branches = std::collections::BTreeSet::new();
        let mut tariff_ids = std::collections::BTreeSet::new();
        for i in 0..s.accounts {
            let d = s.account(i);
            assert_eq!(d.records.len() as u64, s.records_per_account());
            branches.insert(d.account["branch"].as_str().unwrap_or("").to_string());
            tariff_ids.insert(d.account["tariff_id"].as_str().unwrap_or("").to_string());
            let mut last_ts = i64::MIN;
            let mut last_seq = 0;
            for r in &d.records {
                let ts = r["ts_ms"].as_i64().unwrap_or(0);
                assert!(ts >= last_ts, "records oldest first");
                last_ts = ts;
                match r["kind"].as_str() {
                    Some("purchase") => {
                        purchases += 1;
                        let seq = r["card_seq"].as_u64().unwrap_or(0);
                        assert_eq!(seq, last_seq + 1, "card sequence numbers in order");
                        last_seq = seq;
                    }
                    Some("payment") => payments += 1,
                    other => panic!("unexpected kind {other:?}"),
                }
            }
        }
        assert_eq!(purchases, 20 * 7 * 12);
        assert_eq!(payments, 20 * 7);
        assert!(branches.len() >= 4, "{branches:?}");
        assert!(tariff_ids.len() >= 3, "{tariff_ids:?}");
        let months = s.months();
        assert_eq!(months.len(), 84);
        assert_eq!(months[0], "2019-11");
        assert_eq!(months[83], "2026-10");
        // Every record falls in a month of the span; the last month has data.
        let mut t = MonthTotals::new();
        for i in 0..s.accounts {
            let d = s.account(i);
            assert!(d.sums.iter().all(|(m, _, _)| months.contains(m)));
            add_month_totals(&mut t, &d, "2026-10");
        }
        assert_eq!(
            t["purchase"].0, 20,
            "one purchase per account in the last month"
        );
        let small = Spec {
            accounts: 3,
            years: 1,
            per_year: 4,
            payments_per_year: 0,
            ..spec(1)
        };
        assert_eq!(small.total_records(), 12);
        assert_eq!(small.account(2).records.len(), 4);
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(month_start_ms(2026, 10), 1_790_812_800_000);
        assert_eq!(month_of_days(days_from_civil(2024, 2, 29)), "2024-02");
        assert_eq!(add_months(2026, 10, -83), (2019, 11));
        assert!(parse_month("2026-13").is_err());
    }
}
