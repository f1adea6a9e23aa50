//! Timestamps of the files: ISO 8601 datetimes and Unix times of any unit.

/// A timestamp as Unix nanoseconds: an ISO 8601 datetime (see [`parse_datetime_ns`]) or a
/// Unix time whose unit is told by magnitude (see [`parse_unix_ns`]).
pub(super) fn parse_timestamp_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() >= 10 && b[4] == b'-' {
        parse_datetime_ns(s)
    } else {
        parse_unix_ns(s)
    }
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fffffffff][Z|+HH:MM|-HH:MM|+HHMM|+HH]`, no offset meaning UTC;
/// fractional digits past nanoseconds are truncated. Hand-written so the crate needs no date
/// library; calendar arithmetic by Howard Hinnant's days-from-civil.
pub(super) fn parse_datetime_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let mut i = 19;
    let mut frac_ns = 0u64;
    if i < b.len() && matches!(b[i], b'.' | b',') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000u64;
        while i < b.len() && b[i].is_ascii_digit() {
            frac_ns += u64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (oh, om, used) = match rest.len() {
                2 => (digits(rest)?, 0, 2),
                4 => (digits(&rest[..2])?, digits(&rest[2..])?, 4),
                5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?, 5),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            i += 1 + used;
            let secs = (oh * 3600 + om * 60) as i64;
            if sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        Some(_) => return None,
    };
    if i != b.len()
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac_ns)
}

/// A Unix time with an optional fraction, its unit told by magnitude: below 1e11 seconds
/// (1e11 s is year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
pub(super) fn parse_unix_ns(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = digits(int.as_bytes())?;
    let unit_ns: u64 = if whole < 100_000_000_000 {
        1_000_000_000
    } else if whole < 100_000_000_000_000 {
        1_000_000
    } else if whole < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    };
    let mut ns = whole.checked_mul(unit_ns)?;
    let mut scale = unit_ns / 10;
    for d in frac.bytes() {
        ns = ns.checked_add(u64::from(d - b'0') * scale)?;
        scale /= 10;
    }
    Some(ns)
}

/// An unsigned decimal made only of ASCII digits (at most 19, so it cannot overflow).
pub(super) fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

pub(super) fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant, "chrono-Compatible Low-Level
/// Date Algorithms").
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
