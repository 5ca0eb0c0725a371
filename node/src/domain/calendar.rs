//! UTC civil dates from Unix milliseconds (proleptic Gregorian), for the
//! calendar year of ladder tariffs and the month/day of reports. Pure
//! integer arithmetic (Howard Hinnant's `civil_from_days`); no clock, no
//! time zone database.

/// (year, month 1..=12, day 1..=31) of `ts_ms` in UTC.
pub fn civil(ts_ms: i64) -> (i32, u32, u32) {
    let days = ts_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y.clamp(i32::MIN as i64, i32::MAX as i64) as i32, m, d)
}

/// Milliseconds of 00:00 UTC on (year, month, day).
pub fn days_ms(year: i32, month: u32, day: u32) -> i64 {
    let y = if month <= 2 {
        year as i64 - 1
    } else {
        year as i64
    };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400_000
}

pub fn year(ts_ms: i64) -> i32 {
    civil(ts_ms).0
}

/// `YYYY-MM`.
pub fn month_str(ts_ms: i64) -> String {
    let (y, m, _) = civil(ts_ms);
    format!("{y:04}-{m:02}")
}

/// `YYYY-MM-DD`.
pub fn day_str(ts_ms: i64) -> String {
    let (y, m, d) = civil(ts_ms);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Timestamps the domain accepts: years 1970..=9999, so month and day
/// strings have a fixed width.
pub const TS_MIN_MS: i64 = 0;
pub const TS_MAX_MS: i64 = 253_402_300_799_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(1_700_000_000_000), (2023, 11, 14));
        assert_eq!(civil(days_ms(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil(days_ms(2025, 1, 1) - 1), (2024, 12, 31));
        assert_eq!(month_str(days_ms(2026, 12, 31) + 86_399_999), "2026-12");
        assert_eq!(day_str(days_ms(2000, 3, 1)), "2000-03-01");
        assert_eq!(civil(TS_MAX_MS), (9999, 12, 31));
        for d in (0..3_000_000i64).step_by(997) {
            let ms = d * 86_400_000;
            let (y, m, dd) = civil(ms);
            assert_eq!(days_ms(y, m, dd), ms);
        }
    }
}
