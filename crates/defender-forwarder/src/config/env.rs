//! `${VAR}` and `${VAR:-default}` in configuration values, expanded while the file is read, so
//! that any value (secrets above all) can come from the environment.
//!
//! Errors name the variable, never its value; the TOML parser adds the line and key.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use defender_eventhub::Secret;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_with::DeserializeAs;

thread_local! {
    /// Variables to use instead of the process environment (tests; see [`with_vars`]).
    static VARS: std::cell::RefCell<Option<std::collections::BTreeMap<String, String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `vars` standing in for the process environment on this thread.
pub fn with_vars<T>(vars: std::collections::BTreeMap<String, String>, f: impl FnOnce() -> T) -> T {
    VARS.with(|v| *v.borrow_mut() = Some(vars));
    let out = f();
    VARS.with(|v| *v.borrow_mut() = None);
    out
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) in `input`; any other `$` stays.
pub fn expand(input: &str) -> Result<String, String> {
    let overridden = VARS.with(|v| v.borrow().clone());
    match overridden {
        Some(vars) => expand_with(input, |name| vars.get(name).cloned()),
        None => expand_with(input, |name| std::env::var(name).ok()),
    }
}

fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("`${{` without a closing `}}` in `{input}`"))?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid environment variable reference"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// The adapters below turn what the file says (after `${VAR}` expansion) into final types while
// the file is read, with `#[serde_as(as = "...")]`: numbers, flags and durations may be written as
// TOML values or as strings (`"${PREFETCH:-300}"`).

/// A string, environment references expanded.
#[derive(Debug)]
pub struct Text;

impl<'de> DeserializeAs<'de, String> for Text {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw).map_err(de::Error::custom)
    }
}

/// A secret (connection string, key, SAS): expanded like [`Text`], kept in a [`Secret`] that
/// never prints; an empty value is refused.
#[derive(Debug)]
pub struct SecretText;

impl<'de> DeserializeAs<'de, Secret> for SecretText {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let raw = String::deserialize(d)?;
        let value = expand(&raw).map_err(de::Error::custom)?;
        if value.trim().is_empty() {
            return Err(de::Error::custom("is empty"));
        }
        Ok(Secret::new(value))
    }
}

/// A non-negative whole number.
#[derive(Debug)]
pub struct Num;

macro_rules! num_as {
    ($($t:ty),*) => {$(
        impl<'de> DeserializeAs<'de, $t> for Num {
            fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let n = d.deserialize_any(Parsed::<u64>::new("a non-negative whole number"))?;
                <$t>::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large (at most {})", <$t>::MAX)))
            }
        }
    )*};
}
num_as!(u64, u32, usize, i32);

/// `true` or `false`.
#[derive(Debug)]
pub struct Flag;

impl<'de> DeserializeAs<'de, bool> for Flag {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        d.deserialize_any(Parsed::<bool>::new("true or false"))
    }
}

/// A duration: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`, or a number of seconds.
#[derive(Debug)]
pub struct Span;

impl<'de> DeserializeAs<'de, Duration> for Span {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Parsed::<Seconds>::new("a duration such as 500ms, 30s, 5m or 1h"))
            .map(|s| s.0)
    }
}

/// Any type read from text with [`FromStr`] (a table name, a URL, a start position), after
/// expansion: `serde_with`'s `DisplayFromStr` with `${VAR}` support.
#[derive(Debug)]
pub struct FromText;

impl<'de, T> DeserializeAs<'de, T> for FromText
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let raw = String::deserialize(d)?;
        let value = expand(&raw).map_err(de::Error::custom)?;
        value.trim().parse().map_err(de::Error::custom)
    }
}

/// A list whose items are read with the adapter `A`; an item's error names its index
/// (`[2]: ...`), which the loader turns into the field's path.
#[derive(Debug)]
pub struct ListOf<A>(std::marker::PhantomData<A>);

impl<'de, T, A> DeserializeAs<'de, Vec<T>> for ListOf<A>
where
    A: DeserializeAs<'de, T>,
{
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        struct Items<T, A>(std::marker::PhantomData<(T, A)>);
        impl<'de, T, A: DeserializeAs<'de, T>> Visitor<'de> for Items<T, A> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<T>, S::Error> {
                let mut out = Vec::new();
                loop {
                    let i = out.len();
                    match seq.next_element::<serde_with::de::DeserializeAsWrap<T, A>>() {
                        Ok(Some(v)) => out.push(v.into_inner()),
                        Ok(None) => return Ok(out),
                        Err(e) => return Err(de::Error::custom(format!("[{i}]: {e}"))),
                    }
                }
            }
        }
        d.deserialize_seq(Items::<T, A>(std::marker::PhantomData))
    }
}

/// Parses a duration as [`Span`] does.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<Seconds>().map(|d| d.0)
}

/// A parsed duration (the `FromStr` behind [`Span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seconds(Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (write e.g. 500ms, 30s, 5m, 1h)"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
                ));
            }
        };
        Ok(Seconds(d))
    }
}

struct Parsed<T> {
    expected: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> Parsed<T> {
    fn new(expected: &'static str) -> Self {
        Self {
            expected,
            _t: std::marker::PhantomData,
        }
    }
}

trait FromNative: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

impl FromNative for u64 {
    fn from_u64(v: u64) -> Option<Self> {
        Some(v)
    }
}
impl FromNative for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}
impl FromNative for Seconds {
    fn from_u64(v: u64) -> Option<Self> {
        Some(Seconds(Duration::from_secs(v)))
    }
}

impl<T> Visitor<'_> for Parsed<T>
where
    T: FromStr + FromNative,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::from_u64(v).ok_or_else(|| E::custom(format!("expected {}", self.expected)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("expected {}", self.expected)))?;
        self.visit_u64(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::from_bool(v).ok_or_else(|| E::custom(format!("expected {}", self.expected)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let expanded = expand(v).map_err(E::custom)?;
        expanded
            .trim()
            .parse()
            .map_err(|e| E::custom(format!("expected {}, got `{}` ({e})", self.expected, expanded.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HUB" => Some("defender".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_with_defaults() {
        assert_eq!(expand_with("a-${HUB}-b", env).unwrap(), "a-defender-b");
        assert_eq!(expand_with("${MISSING:-$Default}", env).unwrap(), "$Default");
        assert_eq!(expand_with("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(expand_with("cost $$5 and $HOME", env).unwrap(), "cost $5 and $HOME");
    }

    #[test]
    fn missing_variables_are_named() {
        let e = expand_with("${SEKOIA_INTAKE_KEY}", env).unwrap_err();
        assert_eq!(e, "environment variable `SEKOIA_INTAKE_KEY` is not set");
        assert!(expand_with("${A-B}", env).is_err());
        assert!(expand_with("${OPEN", env).is_err());
    }

    #[test]
    fn durations_read_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("7 weeks").is_err());
    }
}
