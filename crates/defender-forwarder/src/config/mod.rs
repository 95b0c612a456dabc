//! The forwarder's configuration file (TOML), field by field in `docs/configuration.md`.
//!
//! The file is parsed once into final types: each `[[sources]]` and `[[sinks]]` entry into the
//! config struct of its `kind` (found in [`crate::source::KINDS`] / [`crate::sink::KINDS`]),
//! durations, URLs, tables, times and secrets into what they mean. Every error names the field
//! (`sinks[1].flush_interval`) with its line and column. Every string, number, flag and duration
//! may be written as `${VAR}` or `${VAR:-default}` to come from the environment; secrets are read
//! into types that never print them.
//!
//! A [`Config`] can as well be built in code: every kind's config is a plain struct.

mod blob;
mod credential;
mod env;
mod locate;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_with::serde_as;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use blob::{BlobAccess, BlobAccessFields};
pub use credential::Credential;
pub use env::{Flag, FromText, ListOf, Num, SecretText, Span, Text, expand, parse_duration, with_vars};

use crate::checkpoints::CheckpointsConfig;
use crate::sink::SinkConfig;
use crate::source::SourceConfig;

/// The whole file.
#[derive(Debug)]
pub struct Config {
    /// Where file checkpoints, dead letters and this instance's identity live.
    pub state_dir: PathBuf,
    /// Tuning of the pipeline.
    pub forwarder: Tuning,
    /// Where checkpoints and ownership go (default: files under `state_dir/checkpoints`).
    pub checkpoints: CheckpointsConfig,
    /// What to read.
    pub sources: Vec<Box<dyn SourceConfig>>,
    /// Where records go.
    pub sinks: Vec<Box<dyn SinkConfig>>,
}

/// `[forwarder]`: pipeline tuning.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Message bytes read but not yet delivered by every sink, in MiB. Reading pauses at this
    /// bound: the memory ceiling when a sink is slow or down.
    #[serde(default = "Tuning::default_max_in_flight_mib")]
    #[serde_as(as = "Num")]
    pub max_in_flight_mib: u64,
    /// How often delivered positions are checkpointed. Also what a crash may read twice: at most
    /// what was delivered in one interval plus what was in flight.
    #[serde(default = "Tuning::default_checkpoint_interval")]
    #[serde_as(as = "Span")]
    pub checkpoint_interval: Duration,
    /// How long a shutdown may take to deliver and checkpoint what is in flight.
    #[serde(default = "Tuning::default_shutdown_timeout")]
    #[serde_as(as = "Span")]
    pub shutdown_timeout: Duration,
    /// Decode every record into its typed model and count type drift per table and column
    /// (records are forwarded either way).
    #[serde(default)]
    #[serde_as(as = "Flag")]
    pub check_records: bool,
}

impl Tuning {
    /// 8 MiB.
    pub const fn default_max_in_flight_mib() -> u64 {
        8
    }
    /// 1 s.
    pub const fn default_checkpoint_interval() -> Duration {
        Duration::from_secs(1)
    }
    /// 30 s.
    pub const fn default_shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_in_flight_mib: Self::default_max_in_flight_mib(),
            checkpoint_interval: Self::default_checkpoint_interval(),
            shutdown_timeout: Self::default_shutdown_timeout(),
            check_records: false,
        }
    }
}

impl Config {
    /// A configuration with defaults, no sources and no sinks (add them, then [`Config::check`]).
    pub fn new(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            state_dir: state_dir.into(),
            forwarder: Tuning::default(),
            checkpoints: CheckpointsConfig::default(),
            sources: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| e.in_file(path))
    }

    /// [`parse`](Self::parse) with `vars` instead of the process environment.
    pub fn parse_with_vars(
        text: &str,
        vars: std::collections::BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        with_vars(vars, || Config::parse(text))
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| ConfigError::syntax(text, &e))?;
        let file = File { text, doc: &doc };
        let root = doc.get_ref();
        file.refuse_unknown_keys(root, "", &["state_dir", "forwarder", "checkpoints", "sources", "sinks"])?;
        let state_dir: String = match root.get("state_dir") {
            Some(v) => file.value::<Text, String>(v, "state_dir")?,
            None => {
                return Err(File::invalid(
                    "state_dir",
                    "missing: where checkpoints and dead letters live",
                ));
            }
        };
        let forwarder = match root.get("forwarder") {
            Some(v) => file.deserialize::<Tuning>(v, "forwarder")?,
            None => Tuning::default(),
        };
        let checkpoints = match root.get("checkpoints") {
            Some(v) => CheckpointsConfig::parse(&file, v)?,
            None => CheckpointsConfig::default(),
        };
        let config = Config {
            state_dir: PathBuf::from(state_dir),
            forwarder,
            checkpoints,
            sources: file.entries(root.get("sources"), "sources", crate::source::KINDS)?,
            sinks: file.entries(root.get("sinks"), "sinks", crate::sink::KINDS)?,
        };
        config.check().map_err(|e| file.place(e))?;
        Ok(config)
    }

    /// Checks what the types alone cannot: at least one source and one sink, unique names, and
    /// each kind's own rules. Errors name the field (`sinks[1].url`).
    pub fn check(&self) -> Result<(), Invalid> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(Invalid::new("state_dir", "is empty"));
        }
        if self.sources.is_empty() {
            return Err(Invalid::new("sources", "at least one [[sources]] is needed"));
        }
        if self.sinks.is_empty() {
            return Err(Invalid::new("sinks", "at least one [[sinks]] is needed"));
        }
        self.checkpoints.check().map_err(|e| e.under("checkpoints"))?;
        let mut names = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            if !names.insert(s.name().to_owned()) {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    format!("another source is also named `{}`", s.name()),
                ));
            }
            s.check().map_err(|e| e.under(&at))?;
        }
        let mut names = HashSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let at = format!("sinks[{i}]");
            if !names.insert(s.name().to_owned()) {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    format!("another sink is also named `{}`; give each one a `name`", s.name()),
                ));
            }
            s.tables().check().map_err(|e| e.under(&format!("{at}.tables")))?;
            s.check().map_err(|e| e.under(&at))?;
        }
        Ok(())
    }
}

/// A value that cannot work, found after parsing: the field (relative to where it was found) and
/// why. [`Invalid::under`] prefixes the path of the entry it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, e.g. `tables.include[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// `field` is wrong: `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its field inside `parent`.
    #[must_use]
    pub fn under(self, parent: &str) -> Self {
        let field = match (parent.is_empty(), self.field.is_empty(), self.field.starts_with('[')) {
            (true, _, _) => self.field,
            (false, true, _) => parent.to_owned(),
            (false, false, true) => format!("{parent}{}", self.field),
            (false, false, false) => format!("{parent}.{}", self.field),
        };
        Self { field, ..self }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML (the message shows the line).
    #[error("invalid configuration {}: {message}", file_name(path.as_deref()))]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The parser's message.
        message: String,
    },
    /// A field's value is wrong or cannot work.
    #[error("invalid configuration{}: {field}{}: {message}", in_file(path.as_deref()), at(*line, *column))]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Which field, e.g. `sinks[1].tables.include`.
        field: String,
        /// Its line (1-based), when known.
        line: Option<usize>,
        /// Its column (1-based), when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

fn file_name(path: Option<&Path>) -> String {
    path.map_or_else(|| "<text>".to_owned(), |p| p.display().to_string())
}

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display())).unwrap_or_default()
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

impl ConfigError {
    fn syntax(text: &str, e: &toml::de::Error) -> ConfigError {
        let mut e = e.clone();
        e.set_input(Some(text));
        ConfigError::Parse {
            path: None,
            message: e.to_string().trim_end().to_owned(),
        }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(file.to_owned()),
                message,
            },
            ConfigError::Invalid {
                field,
                line,
                column,
                message,
                ..
            } => ConfigError::Invalid {
                path: Some(file.to_owned()),
                field,
                line,
                column,
                message,
            },
            other @ ConfigError::Read { .. } => other,
        }
    }

    /// The field an error is about (`sinks[0].url`), when it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// One `kind` of source or sink as the configuration knows it: its name and how to read its
/// entry. The kinds are listed once, in [`crate::source::KINDS`] and [`crate::sink::KINDS`].
pub struct Kind<T: ?Sized> {
    /// The `kind = "..."` value.
    pub name: &'static str,
    /// Reads an entry (without its `kind` key) into the kind's config.
    pub parse: for<'de> fn(ValueDeserializer<'de>) -> Result<Box<T>, toml::de::Error>,
}

impl<T: ?Sized> fmt::Debug for Kind<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kind").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `[3]: rest` -> (`[3]`, rest); `shared_key: rest` -> (`.shared_key`, rest).
fn leading_segment(message: &str) -> Option<(String, String)> {
    let (head, rest) = message.split_once(": ")?;
    let is_index =
        head.starts_with('[') && head.ends_with(']') && head[1..head.len() - 1].bytes().all(|b| b.is_ascii_digit());
    let is_key = !head.is_empty()
        && head.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match (is_index, is_key) {
        (true, _) => Some((head.to_owned(), rest.to_owned())),
        (_, true) => Some((format!(".{head}"), rest.to_owned())),
        _ => None,
    }
}

/// The text being parsed, for reading values and placing errors.
pub(crate) struct File<'a, 'i> {
    text: &'a str,
    doc: &'a Spanned<DeTable<'i>>,
}

impl<'i> File<'_, 'i> {
    /// Reads `value` at `field` as `T`, naming the field on error.
    pub(crate) fn deserialize<T: Deserialize<'i>>(
        &self,
        value: &Spanned<DeValue<'i>>,
        field: &str,
    ) -> Result<T, ConfigError> {
        T::deserialize(ValueDeserializer::from(value.clone())).map_err(|e| self.serde_error(&e, field, None))
    }

    /// Reads `value` through a `serde_with` adapter.
    pub(crate) fn value<A, T>(&self, value: &Spanned<DeValue<'i>>, field: &str) -> Result<T, ConfigError>
    where
        A: serde_with::DeserializeAs<'i, T>,
    {
        A::deserialize_as(ValueDeserializer::from(value.clone())).map_err(|e| self.serde_error(&e, field, None))
    }

    /// Reads an array of tables, each by the kind its `kind` key names.
    fn entries<T: ?Sized>(
        &self,
        value: Option<&Spanned<DeValue<'i>>>,
        section: &str,
        kinds: &[Kind<T>],
    ) -> Result<Vec<Box<T>>, ConfigError> {
        let Some(value) = value else { return Ok(Vec::new()) };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.invalid_at(section, value.span(), &format!("expected [[{section}]] tables")));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("{section}[{i}]");
                let (kind, rest) = self.kind_of(item, &field, kinds)?;
                (kind.parse)(ValueDeserializer::from(rest)).map_err(|e| self.serde_error(&e, &field, Some(kind.name)))
            })
            .collect()
    }

    /// The kind an entry names, and the entry without its `kind` key.
    pub(crate) fn kind_of<'k, T: ?Sized>(
        &self,
        item: &Spanned<DeValue<'i>>,
        field: &str,
        kinds: &'k [Kind<T>],
    ) -> Result<(&'k Kind<T>, Spanned<DeValue<'i>>), ConfigError> {
        let DeValue::Table(table) = item.get_ref() else {
            return Err(self.invalid_at(field, item.span(), "expected a table"));
        };
        let mut rest = table.clone();
        let names = || {
            kinds
                .iter()
                .map(|k| format!("`{}`", k.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(kind) = rest.remove("kind") else {
            return Err(self.invalid_at(field, item.span(), &format!("missing `kind` (one of {})", names())));
        };
        let name: String = self.value::<Text, String>(&kind, &format!("{field}.kind"))?;
        let Some(found) = kinds.iter().find(|k| k.name == name.trim()) else {
            let what = field.split('[').next().unwrap_or(field).trim_end_matches('s');
            return Err(self.invalid_at(
                &format!("{field}.kind"),
                kind.span(),
                &format!("`{name}` is not a {what} kind (use {})", names()),
            ));
        };
        Ok((found, Spanned::new(item.span(), DeValue::Table(rest))))
    }

    /// Refuses keys of `table` outside `known`.
    fn refuse_unknown_keys(&self, table: &DeTable<'i>, prefix: &str, known: &[&str]) -> Result<(), ConfigError> {
        for (key, _) in table {
            if !known.contains(&key.get_ref().as_ref()) {
                let field = format!("{prefix}{}", key.get_ref());
                return Err(self.invalid_at(
                    &field,
                    key.span(),
                    &format!("unknown key (expected one of {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn serde_error(&self, e: &toml::de::Error, field: &str, kind: Option<&str>) -> ConfigError {
        let mut message = e.message().trim_end().to_owned();
        let span = e.span();
        let mut path = span
            .as_ref()
            .and_then(|s| locate::path_at(self.doc, s.start))
            .unwrap_or_else(|| field.to_owned());
        if !path.starts_with(field) {
            field.clone_into(&mut path);
        }
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            path = format!("{path}.{missing}");
        }
        // Errors of lists and of kinds that read several keys at once name the item or key first.
        while let Some((segment, rest)) = leading_segment(&message) {
            if !path.ends_with(&segment) {
                path.push_str(&segment);
            }
            message = rest;
        }
        if let (Some(kind), true) = (kind, message.starts_with("unknown field")) {
            message = format!("{message} (not a setting of `kind = \"{kind}\"`)");
        }
        let (line, column) = span.map_or((None, None), |s| locate::line_column(self.text, s.start));
        ConfigError::Invalid {
            path: None,
            field: path,
            line,
            column,
            message,
        }
    }

    pub(crate) fn invalid_at(&self, field: &str, span: std::ops::Range<usize>, message: &str) -> ConfigError {
        let (line, column) = locate::line_column(self.text, span.start);
        ConfigError::Invalid {
            path: None,
            field: field.to_owned(),
            line,
            column,
            message: message.to_owned(),
        }
    }

    fn invalid(field: &str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: None,
            field: field.to_owned(),
            line: None,
            column: None,
            message: message.to_owned(),
        }
    }

    /// A check's error, with the line of the field it names (or of the nearest entry above it).
    fn place(&self, e: Invalid) -> ConfigError {
        let span = locate::span_of(self.doc, &e.field);
        let (line, column) = span.map_or((None, None), |s| locate::line_column(self.text, s.start));
        ConfigError::Invalid {
            path: None,
            field: e.field,
            line,
            column,
            message: e.message,
        }
    }
}

#[cfg(test)]
mod tests;
