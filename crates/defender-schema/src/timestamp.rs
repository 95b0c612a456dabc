//! [`Timestamp`]: a UTC instant that remembers how many fractional digits it was written with.
//!
//! Defender writes `2024-05-14T09:31:07.4473310Z`: seven digits, trailing zero included. chrono
//! keeps the nanoseconds but not the digit count, so re-serialising through `DateTime<Utc>` alone
//! would print `.447331Z`. `Timestamp` keeps both.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde::{Serialize, Serializer};

/// A UTC timestamp as written by Defender, with its fractional precision (0 to 9 digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    utc: DateTime<Utc>,
    frac_digits: u8,
}

impl Timestamp {
    /// A timestamp printed with `frac_digits` fractional digits (clamped to 9). Digits beyond
    /// what `frac_digits` can show are truncated.
    pub fn new(utc: DateTime<Utc>, frac_digits: u8) -> Self {
        let frac_digits = frac_digits.min(9);
        let step = 10u32.pow(9 - u32::from(frac_digits));
        let nanos = utc.nanosecond() % 1_000_000_000;
        let utc = utc
            .with_nanosecond(nanos - nanos % step)
            .expect("nanoseconds below one second are always valid");
        Self { utc, frac_digits }
    }

    /// The instant.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.utc
    }

    /// How many fractional digits it is written with.
    pub fn frac_digits(&self) -> u8 {
        self.frac_digits
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the only form Defender writes. Every string
    /// this accepts is printed back identically.
    pub fn parse_canonical(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let second = digits(&b[17..19])?;
        let (nanos, frac_digits) = match (b[19], b.len()) {
            (b'Z', 20) => (0, 0),
            (b'.', n) if (22..=30).contains(&n) && b[n - 1] == b'Z' => {
                let frac = &b[20..n - 1];
                let width = u32::try_from(frac.len()).ok()?;
                (digits(frac)? * 10u32.pow(9 - width), u8::try_from(frac.len()).ok()?)
            }
            _ => return None,
        };
        if second > 59 {
            return None; // leap seconds go through the lenient path
        }
        let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
        let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
        Some(Self {
            utc: NaiveDateTime::new(date, time).and_utc(),
            frac_digits,
        })
    }

    /// Parses the other forms RFC 3339 allows with a `T` separator: any offset (`+00:00`,
    /// `+02:00`), lower-case `t` or `z`. The digit count is kept; the form is not, so a caller
    /// that needs the original text keeps it (as [`crate::Col::Coerced`] does).
    pub fn parse_lenient(s: &str) -> Option<Self> {
        // chrono also takes a space for `T`; JSON Schema's `date-time` does not, and the two agree.
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return None;
        }
        let dt = DateTime::parse_from_rfc3339(s).ok()?;
        let frac_digits = s
            .find('.')
            .map_or(0, |dot| s[dot + 1..].bytes().take_while(u8::is_ascii_digit).count());
        Some(Self::new(
            dt.with_timezone(&Utc),
            u8::try_from(frac_digits.min(9)).ok()?,
        ))
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

impl From<DateTime<Utc>> for Timestamp {
    /// Keeps the instant as is, printed with 7 digits when it fits in them (Defender's style),
    /// 9 otherwise.
    fn from(utc: DateTime<Utc>) -> Self {
        let frac_digits = if utc.nanosecond().is_multiple_of(100) { 7 } else { 9 };
        Self { utc, frac_digits }
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(ts: Timestamp) -> Self {
        ts.utc
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = String::with_capacity(30);
        let d = self.utc.date_naive();
        let t = self.utc.time();
        write!(
            buf,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            chrono::Datelike::year(&d),
            chrono::Datelike::month(&d),
            chrono::Datelike::day(&d),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        if self.frac_digits > 0 {
            let nanos = format!("{:09}", t.nanosecond() % 1_000_000_000);
            buf.push('.');
            buf.push_str(&nanos[..usize::from(self.frac_digits)]);
        }
        buf.push('Z');
        f.write_str(&buf)
    }
}

/// The error for a string that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 timestamp")]
pub struct TimestampError(String);

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_canonical(s)
            .or_else(|| Self::parse_lenient(s))
            .ok_or_else(|| TimestampError(s.chars().take(64).collect()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_print_back_identically() {
        for s in [
            "2024-05-14T09:31:07.4473310Z",
            "2024-05-14T09:31:07.0000000Z",
            "2024-05-14T09:31:07.447Z",
            "2024-05-14T09:31:07Z",
            "2024-02-29T23:59:59.999999999Z",
            "0001-01-01T00:00:00.1Z",
        ] {
            let ts = Timestamp::parse_canonical(s).unwrap_or_else(|| panic!("{s} should parse"));
            assert_eq!(ts.to_string(), s);
        }
    }

    #[test]
    fn canonical_rejects_other_forms() {
        for s in [
            "2024-05-14T09:31:07+00:00",
            "2024-05-14 09:31:07Z",
            "2024-05-14T09:31:07.Z",
            "2024-05-14T09:31:07.1234567890Z",
            "2023-02-29T00:00:00Z",
            "2024-05-14T24:00:00Z",
            "2024-05-14T09:31:60Z",
            "not a date",
            "",
        ] {
            assert!(Timestamp::parse_canonical(s).is_none(), "{s} should not be canonical");
        }
    }

    #[test]
    fn lenient_reads_offsets_and_keeps_digits() {
        let ts = Timestamp::parse_lenient("2024-05-14T11:31:07.12+02:00").unwrap();
        assert_eq!(ts.to_string(), "2024-05-14T09:31:07.12Z");
        let ts = Timestamp::parse_lenient("2024-05-14t09:31:07z").unwrap();
        assert_eq!(ts.to_string(), "2024-05-14T09:31:07Z");
        assert!(Timestamp::parse_lenient("2024-05-14 09:31:07Z").is_none());
        assert!(Timestamp::parse_lenient("yesterday").is_none());
    }

    #[test]
    fn from_datetime_uses_seven_digits_when_exact() {
        let dt = Timestamp::parse_canonical("2024-05-14T09:31:07.4473310Z")
            .unwrap()
            .as_datetime();
        assert_eq!(Timestamp::from(dt).to_string(), "2024-05-14T09:31:07.4473310Z");
        assert_eq!(Timestamp::new(dt, 3).to_string(), "2024-05-14T09:31:07.447Z");
    }
}
