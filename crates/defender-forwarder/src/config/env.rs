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

/// A string value, environment references expanded.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw).map(Text).map_err(de::Error::custom)
    }
}

/// A secret value (connection string, key): expanded like [`Text`], never printed.
#[derive(Clone)]
pub struct SecretText(pub Secret);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let value = expand(&raw).map_err(de::Error::custom)?;
        if value.trim().is_empty() {
            return Err(de::Error::custom("is empty"));
        }
        Ok(SecretText(Secret::new(value)))
    }
}

/// A number, written as one or as a string (`"${PREFETCH:-300}"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed::<u64>::new("a non-negative whole number"))
            .map(Num)
    }
}

/// A boolean, written as one or as a string (`"${CHECK:-false}"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed::<bool>::new("true or false")).map(Flag)
    }
}

/// A duration: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
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
        Ok(Span(d))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsed::<Span>::new("a duration such as 500ms, 30s, 5m or 1h"))
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
impl FromNative for Span {
    fn from_u64(v: u64) -> Option<Self> {
        Some(Span(Duration::from_secs(v)))
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
        assert_eq!("500ms".parse::<Span>().unwrap().0, Duration::from_millis(500));
        assert_eq!("2m".parse::<Span>().unwrap().0, Duration::from_secs(120));
        assert_eq!("7".parse::<Span>().unwrap().0, Duration::from_secs(7));
        assert!("7 weeks".parse::<Span>().is_err());
    }
}
