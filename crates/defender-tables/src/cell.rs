//! One value: how it arrived (JSON text), what its typed column holds, and whether that typed
//! value re-encodes to the same JSON value. When it does not, the original goes to `_Drift`.
//!
//! The canonical re-encoding of each kind (what [`reencode`] gives):
//! - timestamp: `YYYY-MM-DDTHH:MM:SS.fffffffZ` (7 digits, Defender's form), 9 digits when the
//!   instant has sub-100 ns digits;
//! - long/int: a JSON integer; real: a JSON float; bool: `true`/`false`;
//! - string, guid, and JSON-content strings: a JSON string of the text;
//! - dynamic: the JSON value the text parses to, or the text as a JSON string when it is no JSON;
//! - null: `null`.
//!
//! A value whose arrival differs from that (another fraction width, `"3"` in a long, `1` in a
//! bool, an object in a JSON-content string, a string in a dynamic) keeps its typed value when
//! the coercion is unambiguous and is recorded as drift; a value that does not fit at all
//! (`"N/A"` in a long, an array in a plain string) leaves the typed column null and is drift.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use defender_schema::{Column, KqlType, Timestamp};
use serde_json::{Number, Value};

/// How a column is typed in Arrow and re-encoded to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `datetime`: nanoseconds since the epoch, UTC.
    Timestamp,
    /// `long`
    Int64,
    /// `int`
    Int32,
    /// `bool`
    Bool,
    /// `real`
    Float64,
    /// `string`, `guid`
    Text,
    /// A `string` column whose content is JSON: the text, canonical as a JSON string.
    JsonText,
    /// `dynamic`: JSON text, canonical as the value it parses to.
    Dynamic,
}

impl Kind {
    pub(crate) fn of(column: &Column) -> Kind {
        match column.kql_type {
            KqlType::Datetime => Kind::Timestamp,
            KqlType::Long => Kind::Int64,
            KqlType::Int => Kind::Int32,
            KqlType::Bool => Kind::Bool,
            KqlType::Real => Kind::Float64,
            KqlType::Dynamic => Kind::Dynamic,
            _ if column.json_content => Kind::JsonText,
            _ => Kind::Text,
        }
    }
}

/// A typed column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed<'a> {
    Null,
    /// Nanoseconds since the Unix epoch.
    Ts(i64),
    I64(i64),
    I32(i32),
    Bool(bool),
    F64(f64),
    Str(Cow<'a, str>),
}

/// A classified value: the typed value, and whether the arrival must be kept in `_Drift`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cell<'a> {
    pub typed: Typed<'a>,
    pub drift: bool,
}

const fn exact(typed: Typed<'_>) -> Cell<'_> {
    Cell { typed, drift: false }
}

const fn coerced(typed: Typed<'_>) -> Cell<'_> {
    Cell { typed, drift: true }
}

const MISFIT: Cell<'static> = Cell {
    typed: Typed::Null,
    drift: true,
};

/// Classifies `raw`, one JSON value's text exactly as it arrived (checked JSON).
pub(crate) fn classify(kind: Kind, raw: &str) -> Cell<'_> {
    match raw.as_bytes().first() {
        Some(b'n') => exact(Typed::Null),
        Some(b'"') => classify_string(kind, unescape(raw)),
        Some(b't' | b'f') => {
            let b = raw.starts_with('t');
            match kind {
                Kind::Bool => exact(Typed::Bool(b)),
                Kind::Dynamic => exact(Typed::Str(Cow::Borrowed(raw))),
                Kind::JsonText => coerced(Typed::Str(Cow::Borrowed(raw))),
                _ => MISFIT,
            }
        }
        Some(b'{' | b'[') => match kind {
            Kind::Dynamic => exact(Typed::Str(Cow::Borrowed(raw))),
            Kind::JsonText => coerced(Typed::Str(Cow::Borrowed(raw))),
            _ => MISFIT,
        },
        _ => match serde_json::from_str::<Number>(raw) {
            Ok(n) => classify_number(kind, raw, &n),
            Err(_) => MISFIT,
        },
    }
}

fn classify_number<'a>(kind: Kind, raw: &'a str, n: &Number) -> Cell<'a> {
    match kind {
        Kind::Int64 => match (n.as_i64(), n.as_f64()) {
            (Some(v), _) => exact(Typed::I64(v)),
            (None, Some(f)) if !n.is_u64() => whole(f).map_or(MISFIT, |v| coerced(Typed::I64(v))),
            _ => MISFIT,
        },
        Kind::Int32 => match (n.as_i64(), n.as_f64()) {
            (Some(v), _) => i32::try_from(v).map_or(MISFIT, |v| exact(Typed::I32(v))),
            (None, Some(f)) if !n.is_u64() => whole(f)
                .and_then(|v| i32::try_from(v).ok())
                .map_or(MISFIT, |v| coerced(Typed::I32(v))),
            _ => MISFIT,
        },
        Kind::Float64 => match n.as_f64() {
            Some(f) if n.is_f64() => exact(Typed::F64(f)),
            Some(f) => coerced(Typed::F64(f)),
            None => MISFIT,
        },
        Kind::Bool => match n.as_u64() {
            Some(0) => coerced(Typed::Bool(false)),
            Some(1) => coerced(Typed::Bool(true)),
            _ => MISFIT,
        },
        Kind::Dynamic => exact(Typed::Str(Cow::Borrowed(raw))),
        Kind::JsonText => coerced(Typed::Str(Cow::Borrowed(raw))),
        Kind::Timestamp | Kind::Text => MISFIT,
    }
}

/// A whole number well inside i64 (`12.0`, `1e3`).
#[allow(clippy::cast_possible_truncation)]
fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

fn classify_string(kind: Kind, s: Cow<'_, str>) -> Cell<'_> {
    match kind {
        Kind::Text | Kind::JsonText => exact(Typed::Str(s)),
        // The text is kept (readers can still parse it); a string holding JSON is not what that
        // JSON parses to, while other text re-encodes as the string it is.
        Kind::Dynamic => {
            let drift = serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok();
            Cell {
                typed: Typed::Str(s),
                drift,
            }
        }
        Kind::Timestamp => match parse_timestamp(&s) {
            Some((nanos, canonical)) => Cell {
                typed: Typed::Ts(nanos),
                drift: !canonical,
            },
            None => MISFIT,
        },
        Kind::Int64 => s.parse::<i64>().map_or(MISFIT, |v| coerced(Typed::I64(v))),
        Kind::Int32 => s.parse::<i32>().map_or(MISFIT, |v| coerced(Typed::I32(v))),
        Kind::Bool => match &*s {
            "true" | "True" | "1" => coerced(Typed::Bool(true)),
            "false" | "False" | "0" => coerced(Typed::Bool(false)),
            _ => MISFIT,
        },
        Kind::Float64 => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => coerced(Typed::F64(f)),
            _ => MISFIT,
        },
    }
}

/// A JSON string's content, borrowed when it has no escapes.
pub(crate) fn unescape(raw: &str) -> Cow<'_, str> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        Cow::Owned(serde_json::from_str::<String>(raw).expect("checked JSON string"))
    } else {
        Cow::Borrowed(inner)
    }
}

/// An RFC 3339 timestamp as nanoseconds since the epoch, and whether it is written exactly as
/// [`format_timestamp`] writes that instant. `None` when it is no timestamp or is outside the
/// range of i64 nanoseconds (1677-09-21 to 2262-04-11).
pub(crate) fn parse_timestamp(s: &str) -> Option<(i64, bool)> {
    let ts = Timestamp::parse_canonical(s).or_else(|| Timestamp::parse_lenient(s))?;
    let nanos = ts.as_datetime().timestamp_nanos_opt()?;
    // Defender's own form (canonical, 7 digits) needs no formatting to compare.
    let seven = s.len() == 28 && s.ends_with('Z') && ts.frac_digits() == 7 && s.as_bytes()[19] == b'.';
    let canonical = seven || (s.len() == 30 && format_timestamp(nanos) == s);
    Some((nanos, canonical))
}

/// The canonical text of an instant: 7 fractional digits, or 9 when the last two are not zero.
pub(crate) fn format_timestamp(nanos: i64) -> String {
    let dt = DateTime::<Utc>::from_timestamp_nanos(nanos);
    let frac = dt.nanosecond() % 1_000_000_000;
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if frac.is_multiple_of(100) {
        let _ = write!(out, "{:07}", frac / 100);
    } else {
        let _ = write!(out, "{frac:09}");
    }
    out.push('Z');
    out
}

/// The JSON value a typed value re-encodes to (see the module docs).
pub(crate) fn reencode(kind: Kind, typed: &Typed<'_>) -> Value {
    match typed {
        Typed::Null => Value::Null,
        Typed::Ts(n) => Value::String(format_timestamp(*n)),
        Typed::I64(v) => Value::from(*v),
        Typed::I32(v) => Value::from(*v),
        Typed::Bool(b) => Value::Bool(*b),
        Typed::F64(f) => Value::from(*f),
        Typed::Str(s) if kind == Kind::Dynamic => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone().into_owned()))
        }
        Typed::Str(s) => Value::String(s.clone().into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 8] = [
        Kind::Timestamp,
        Kind::Int64,
        Kind::Int32,
        Kind::Bool,
        Kind::Float64,
        Kind::Text,
        Kind::JsonText,
        Kind::Dynamic,
    ];

    /// Drift is recorded exactly when the typed value does not re-encode to what arrived.
    #[test]
    fn drift_is_exactly_a_re_encoding_mismatch() {
        let samples = [
            "null",
            "true",
            "false",
            "0",
            "1",
            "-0",
            "3",
            "-7",
            "12.0",
            "1e3",
            "1.5",
            "2.5e-3",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "2147483648",
            r#""3""#,
            r#""""#,
            r#""N/A""#,
            r#""True""#,
            r#""0""#,
            r#""1.25""#,
            r#""inf""#,
            r#""2024-05-14T09:31:07.4473310Z""#,
            r#""2024-05-14T09:31:07.447331Z""#,
            r#""2024-05-14T09:31:07Z""#,
            r#""2024-05-14T09:31:07.123456789Z""#,
            r#""2024-05-14T09:31:07.123456700Z""#,
            r#""2024-05-14T11:31:07.4473310+02:00""#,
            r#""0001-01-01T00:00:00Z""#,
            r#""{\"a\":1}""#,
            r#""[1,2]""#,
            r#""a\"b\\c\u00e9""#,
            r#"{"a":[1,{"b":null}]}"#,
            "[]",
            r#"["x", 2]"#,
        ];
        for kind in ALL {
            for raw in samples {
                let arrived: Value = serde_json::from_str(raw).unwrap();
                let cell = classify(kind, raw);
                let again = reencode(kind, &cell.typed);
                assert_eq!(
                    cell.drift,
                    again != arrived,
                    "{kind:?} {raw}: typed {:?} re-encodes to {again}",
                    cell.typed
                );
            }
        }
    }

    #[test]
    fn timestamps_keep_ticks() {
        let (n, canonical) = parse_timestamp("2024-05-14T09:31:07.4473310Z").unwrap();
        assert!(canonical);
        assert_eq!(format_timestamp(n), "2024-05-14T09:31:07.4473310Z");
        let (n, canonical) = parse_timestamp("2024-05-14T09:31:07.447331Z").unwrap();
        assert!(!canonical);
        assert_eq!(format_timestamp(n), "2024-05-14T09:31:07.4473310Z");
        assert!(parse_timestamp("0001-01-01T00:00:00Z").is_none());
        assert_eq!(
            classify(Kind::Int64, r#""3""#),
            Cell {
                typed: Typed::I64(3),
                drift: true
            }
        );
        assert_eq!(classify(Kind::Text, "[1]"), MISFIT);
    }
}
