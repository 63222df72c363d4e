//! Wall-clock times as findings carry them: RFC 3339 in UTC
//! (`2026-12-07T17:04:21.123Z`), written when a finding is reported and
//! read back by `locktrace report --since`.

use std::time::{Duration, SystemTime};

/// Nanoseconds since the Unix epoch (negative before it): what times are
/// compared as.
pub type Nanos = i128;

/// `t` as nanoseconds since the epoch.
pub fn nanos(t: SystemTime) -> Nanos {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(e) => -(e.duration().as_nanos() as Nanos),
    }
}

/// Now, as a finding's `time`: `2026-12-07T17:04:21.123Z`.
pub fn now() -> String {
    millis(SystemTime::now())
}

/// `2026-12-07T05:31:48Z` (whole seconds: Alertmanager's `startsAt`).
pub fn seconds(t: SystemTime) -> String {
    let (date, secs, _) = civil(nanos(t));
    format!("{date}T{}Z", clock(secs))
}

/// `2026-12-07T05:31:48.123Z`.
pub fn millis(t: SystemTime) -> String {
    let (date, secs, sub) = civil(nanos(t));
    format!("{date}T{}.{:03}Z", clock(secs), sub / 1_000_000)
}

fn clock(secs: i64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The date (`YYYY-MM-DD`), the second of the day and the nanoseconds into
/// that second, of `n`.
fn civil(n: Nanos) -> (String, i64, i64) {
    let secs = n.div_euclid(1_000_000_000) as i64;
    let sub = n.rem_euclid(1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), rem, sub)
}

/// Howard Hinnant's days_from_civil.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads an RFC 3339 date-time: `2026-12-07T17:04:21Z`, with optional
/// fractional seconds, `Z` or an offset (`+02:00`), `T` or a space between
/// date and time (either case). `None` for anything else.
pub fn parse(s: &str) -> Option<Nanos> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from + n)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[month as usize - 1]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut sub: i128 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Nanoseconds: the first nine digits count.
        for k in 0..9 {
            let d = b
                .get(start + k)
                .filter(|_| start + k < i)
                .map_or(0, |d| d - b'0');
            sub = sub * 10 + i128::from(d);
        }
    }
    let offset_s = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let h = digits(i + 1, 2)?;
            let m = digits(i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs as i128 * 1_000_000_000 + sub)
}

/// `--since` (`cli::parse_since`): a time, or how long before now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    At(Nanos),
    Ago(Duration),
}

impl Since {
    /// The time meant, `now` being now.
    pub fn at(self, now: SystemTime) -> Nanos {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => nanos(now) - d.as_nanos() as Nanos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn formats() {
        assert_eq!(seconds(at(1_796_621_508, 0)), "2026-12-07T05:31:48Z");
        assert_eq!(seconds(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(millis(at(1_796_621_508, 7)), "2026-12-07T05:31:48.007Z");
        assert_eq!(millis(at(951_782_400, 999)), "2000-02-29T00:00:00.999Z");
    }

    #[test]
    fn since_is_a_time_or_how_long_before_now() {
        let t = at(1_796_621_508, 0);
        assert_eq!(Since::At(nanos(t)).at(SystemTime::now()), nanos(t));
        assert_eq!(
            Since::Ago(Duration::from_secs(7200)).at(t),
            nanos(at(1_796_621_508 - 7200, 0))
        );
    }

    #[test]
    fn reads_what_it_writes_and_rfc_3339() {
        let t = at(1_796_621_508, 123);
        assert_eq!(parse(&millis(t)), Some(nanos(t)));
        assert_eq!(parse(&seconds(t)), Some(nanos(at(1_796_621_508, 0))));
        assert_eq!(parse("2026-12-07T07:31:48.123+02:00"), Some(nanos(t)));
        assert_eq!(parse("2026-12-07 05:31:48.123z"), Some(nanos(t)));
        assert_eq!(
            parse("2026-12-07T05:31:48.123456789Z"),
            Some(nanos(at(1_796_621_508, 123)) + 456_789)
        );
        assert_eq!(
            parse("2024-02-29T00:00:00Z"),
            Some(1_709_164_800 * 1_000_000_000)
        );
        for bad in [
            "",
            "2026-12-07",
            "2026-12-07T05:31:48",
            "2026-13-07T05:31:48Z",
            "2026-02-30T05:31:48Z",
            "2025-02-29T00:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T05:31:48.Z",
            "2026-12-07T05:31:48+2:00",
            "2026-12-07T05:31:48Z ",
            "2026-12-07T05:31:48ZZ",
            "２026-12-07T05:31:48Z",
            "2026-12-07T05:31:48+é:00",
            "30m",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
