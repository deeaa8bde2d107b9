//! RFC 3339 timestamps in UTC (runc's log lines and `list`'s CREATED column), without a date
//! library.

use std::time::{SystemTime, UNIX_EPOCH};

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, with `.nnnnnnnnn` when `nanos` is given.
pub fn rfc3339(secs: u64, nanos: Option<u32>) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let frac = nanos.map(|n| format!(".{n:09}")).unwrap_or_default();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Now, to the second.
pub fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs, None)
}

/// Howard Hinnant's days-to-civil: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, None), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, Some(5)),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(rfc3339(4_102_444_799, None), "2099-12-31T23:59:59Z");
    }
}
