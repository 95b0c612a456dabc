//! The forwarder's configuration file (TOML), field by field in `docs/configuration.md`.
//!
//! Every string, number, flag and duration may be written as `${VAR}` or `${VAR:-default}` to
//! come from the environment. Secrets are read into types that never print them.

mod env;
mod raw;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use defender_schema::Table;
use serde::Deserialize;

pub use env::{Flag, Num, SecretText, Span, Text, expand, with_vars};

/// The whole file.
#[derive(Debug)]
pub struct Config {
    /// Where file checkpoints and dead letters live.
    pub state_dir: Text,
    /// Tuning of the pipeline.
    pub forwarder: Tuning,
    /// Where checkpoints and ownership go (default: files under `state_dir/checkpoints`).
    pub checkpoints: Checkpoints,
    /// What to read.
    pub sources: Vec<Source>,
    /// Where records go.
    pub sinks: Vec<Sink>,
}

/// `[forwarder]`: pipeline tuning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Message bytes read but not yet delivered by every sink, in MiB (default 8). Reading
    /// pauses at this bound: the memory ceiling when a sink is slow or down.
    pub max_in_flight_mib: Option<Num>,
    /// How often delivered positions are checkpointed (default 1s).
    pub checkpoint_interval: Option<Span>,
    /// How long a shutdown may take to deliver and checkpoint what is in flight (default 30s).
    pub shutdown_timeout: Option<Span>,
    /// Decode every record into its typed model and count type drift per table and column
    /// (records are forwarded either way; default false).
    pub check_records: Option<Flag>,
}

/// `[checkpoints]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoints {
    /// `file` (default) or `blob`.
    pub kind: Option<Text>,
    /// `file`: the directory (default `state_dir/checkpoints`).
    pub dir: Option<Text>,
    /// `blob`: a storage connection string.
    pub connection_string: Option<SecretText>,
    /// `blob`: the container.
    pub container: Option<Text>,
}

/// One `[[sources]]` entry.
#[derive(Debug)]
pub enum Source {
    /// An Event Hub (or several, one per table).
    Eventhub(EventHubSource),
    /// The Storage-account export: one container per table, one append blob per hour.
    Storage(StorageSource),
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            Source::Eventhub(s) => s.name.as_deref().unwrap_or("eventhub"),
            Source::Storage(s) => s.name.as_deref().unwrap_or("storage"),
        }
    }
}

/// `kind = "eventhub"`.
#[derive(Debug)]
pub struct EventHubSource {
    /// Name in logs, metrics and dead letters (default `eventhub`).
    pub name: Option<Text>,
    /// A namespace or hub connection string.
    pub connection_string: Option<SecretText>,
    /// Or: the namespace (`myns.servicebus.windows.net`), with `credential`.
    pub namespace: Option<Text>,
    /// The Entra ID identity used with `namespace`.
    pub credential: Option<Credential>,
    /// The hub, unless the connection string names it.
    pub hub: Option<Text>,
    /// Several hubs of the namespace instead of one: `per-table` (one per table, as Defender
    /// names them) or an explicit list.
    pub hubs: Option<Hubs>,
    /// With `hubs = "per-table"`: the tables to read (default: every table the schema knows).
    pub tables: Option<Vec<Text>>,
    /// With `hubs = "per-table"`: the hub name prefix (default `insights-logs-advancedhunting-`).
    pub hub_prefix: Option<Text>,
    /// How often a configured hub that does not exist (yet) is tried again (default 60s).
    pub missing_hub_retry: Option<Span>,
    /// Consumer group (default `$Default`; give each deployment its own).
    pub consumer_group: Option<Text>,
    /// Where to start without a checkpoint: `earliest` (default), `latest`, or an RFC 3339 time.
    pub start: Option<Text>,
    /// Events fetched ahead per partition (default 32; a Defender event holds up to 1 MB).
    pub prefetch: Option<Num>,
    /// This instance's name in ownership records (default: host, pid and a random suffix).
    pub owner_id: Option<Text>,
    /// How often ownership is renewed (default 10s).
    pub ownership_update_interval: Option<Span>,
    /// An ownership not renewed for this long is taken over (default 60s).
    pub ownership_expiry: Option<Span>,
}

/// `kind = "storage"`: Defender's export to a Storage account.
#[derive(Debug)]
pub struct StorageSource {
    /// Name in logs, metrics and dead letters (default `storage`).
    pub name: Option<Text>,
    /// The blob service URL: `https://acct.blob.core.windows.net`, or path-style for Azurite
    /// (`http://127.0.0.1:10000/devstoreaccount1`). Not with `connection_string`.
    pub account_url: Option<Text>,
    /// Or: a storage account connection string (secret).
    pub connection_string: Option<SecretText>,
    /// With `account_url` and `shared_key`: the account name.
    pub account_name: Option<Text>,
    /// With `account_url`: the account key (secret).
    pub shared_key: Option<SecretText>,
    /// With `account_url`: a SAS token with read and list rights (secret).
    pub sas: Option<SecretText>,
    /// The tables to read (default: every table the schema knows).
    pub tables: Option<Vec<Text>>,
    /// The container name prefix (default `insights-logs-advancedhunting-`).
    pub container_prefix: Option<Text>,
    /// Which hour blobs a container without checkpoints starts with: `earliest` (default), `now`
    /// (or `latest`), or an RFC 3339 time.
    pub start: Option<Text>,
    /// How often containers are listed for new blobs and appended lines (default 30s).
    pub poll_interval: Option<Span>,
    /// Read only hour blobs that begin before this RFC 3339 time (for backfills; default: no end).
    pub until: Option<Text>,
    /// This instance's name in ownership records (default: host, pid and a random suffix).
    pub owner_id: Option<Text>,
    /// How often container ownership is renewed (default 10s).
    pub ownership_update_interval: Option<Span>,
    /// A container ownership not renewed for this long is taken over (default 60s).
    pub ownership_expiry: Option<Span>,
}

impl StorageSource {
    /// The containers to read: `<container_prefix><table in lower case>`.
    pub fn container_names(&self) -> Vec<String> {
        let prefix = self.container_prefix.as_deref().unwrap_or(DEFAULT_HUB_PREFIX);
        let tables: Vec<Table> = match &self.tables {
            Some(names) => names.iter().filter_map(|n| Table::from_name(n)).collect(),
            None => Table::ALL.to_vec(),
        };
        let mut names: Vec<String> = tables
            .into_iter()
            .map(|t| format!("{prefix}{}", t.name().to_lowercase()))
            .collect();
        names.dedup();
        names
    }
}

/// Where a `storage` source starts in a container that has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageStart {
    /// Every hour blob the container holds.
    Earliest,
    /// The hour blob of the moment the forwarder first sees the container, and later ones.
    Now,
    /// The hour blob holding this time, and later ones.
    Time(chrono::DateTime<chrono::Utc>),
}

/// Reads `earliest`, `now` (or `latest`) or an RFC 3339 time, for a `storage` source.
pub fn parse_storage_start(s: &str) -> Result<StorageStart, String> {
    match s.trim() {
        "earliest" => Ok(StorageStart::Earliest),
        "now" | "latest" => Ok(StorageStart::Now),
        other => chrono::DateTime::parse_from_rfc3339(other)
            .map(|t| StorageStart::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|_| format!("`{other}` is not `earliest`, `now` or an RFC 3339 time")),
    }
}

/// Which hubs an `eventhub` source reads besides (or instead of) `hub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hubs {
    /// One hub per table: `<hub_prefix><table in lower case>`.
    PerTable,
    /// These hubs.
    Names(Vec<String>),
}

/// The hub name prefix Defender uses for per-table hubs (and Storage containers).
pub const DEFAULT_HUB_PREFIX: &str = "insights-logs-advancedhunting-";

impl EventHubSource {
    /// The hubs to read when several are configured (`None`: the one hub of `hub` or `EntityPath`).
    pub fn hub_names(&self) -> Option<Vec<String>> {
        match self.hubs.as_ref()? {
            Hubs::Names(names) => Some(names.clone()),
            Hubs::PerTable => {
                let prefix = self.hub_prefix.as_deref().unwrap_or(DEFAULT_HUB_PREFIX);
                let tables: Vec<Table> = match &self.tables {
                    Some(names) => names.iter().filter_map(|n| Table::from_name(n)).collect(),
                    None => Table::ALL.to_vec(),
                };
                Some(
                    tables
                        .into_iter()
                        .map(|t| format!("{prefix}{}", t.name().to_lowercase()))
                        .collect(),
                )
            }
        }
    }
}

/// `credential = { kind = "...", ... }` for a namespace.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Credential {
    /// The host's managed identity (user-assigned with `client_id`).
    ManagedIdentity {
        /// User-assigned identity's client ID.
        client_id: Option<Text>,
    },
    /// Kubernetes workload identity.
    WorkloadIdentity {
        /// Tenant ID (default from `AZURE_TENANT_ID`).
        tenant_id: Option<Text>,
        /// Client ID (default from `AZURE_CLIENT_ID`).
        client_id: Option<Text>,
        /// Token file (default from `AZURE_FEDERATED_TOKEN_FILE`).
        token_file: Option<Text>,
    },
    /// An app registration's client secret.
    ClientSecret {
        /// Tenant ID.
        tenant_id: Text,
        /// Client ID.
        client_id: Text,
        /// The secret.
        secret: SecretText,
    },
}

/// Which tables a sink takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// Only these tables (default: all).
    pub include: Option<Vec<Text>>,
    /// Not these tables.
    pub exclude: Option<Vec<Text>>,
    /// Records of tables the schema crate does not know (default true: pass them on).
    pub unknown: Option<Flag>,
}

/// One `[[sinks]]` entry.
#[derive(Debug)]
pub enum Sink {
    /// The Sekoia.io HTTP intake.
    Sekoia(SekoiaSink),
    /// The local archive.
    Files(FilesSink),
    /// NDJSON on standard output.
    Stdout(StdoutSink),
}

impl Sink {
    /// The sink's name (default: its kind).
    pub fn name(&self) -> &str {
        match self {
            Sink::Sekoia(s) => s.name.as_deref().unwrap_or("sekoia"),
            Sink::Files(s) => s.name.as_deref().unwrap_or("files"),
            Sink::Stdout(s) => s.name.as_deref().unwrap_or("stdout"),
        }
    }

    /// Its table selection.
    pub fn tables(&self) -> &TablesConfig {
        match self {
            Sink::Sekoia(s) => &s.tables,
            Sink::Files(s) => &s.tables,
            Sink::Stdout(s) => &s.tables,
        }
    }
}

/// `kind = "sekoia"`.
#[derive(Debug)]
pub struct SekoiaSink {
    /// Name in logs, metrics and dead letters.
    pub name: Option<Text>,
    /// Intake base URL (default `https://intake.sekoia.io`); `/batch` is appended.
    pub url: Option<Text>,
    /// The intake key.
    pub intake_key: SecretText,
    /// Tables to send.
    pub tables: TablesConfig,
    /// Events per request (default 1000).
    pub batch_events: Option<Num>,
    /// Uncompressed bytes per request (default 4 MiB; the intake takes at most 10 MiB).
    pub batch_bytes: Option<Num>,
    /// How long a partly filled request waits for more events (default 200ms).
    pub linger: Option<Span>,
    /// Requests in flight at once (default 4).
    pub concurrency: Option<Num>,
    /// Per-request timeout (default 30s).
    pub timeout: Option<Span>,
    /// Gzip request bodies (default true).
    pub gzip: Option<Flag>,
    /// Longest wait between retries (default 60s).
    pub max_backoff: Option<Span>,
    /// Accept invalid TLS certificates. Only for testing; logged loudly (default false).
    pub danger_accept_invalid_certs: Option<Flag>,
}

/// `kind = "files"`.
#[derive(Debug)]
pub struct FilesSink {
    /// Name in logs, metrics and dead letters.
    pub name: Option<Text>,
    /// The archive directory.
    pub dir: Text,
    /// Tables to archive.
    pub tables: TablesConfig,
    /// Days kept (default 90).
    pub retention_days: Option<Num>,
    /// Days kept per table, e.g. `{ DeviceProcessEvents = 30 }`.
    pub retention: BTreeMap<String, Num>,
    /// How often buffered records are written and fsynced (default 1s).
    pub flush_interval: Option<Span>,
    /// Segment size at which a new one starts, in MiB (default 128).
    pub segment_mib: Option<Num>,
    /// Segment age at which a new one starts (default 1h).
    pub segment_age: Option<Span>,
    /// zstd level (default 3).
    pub zstd_level: Option<Num>,
}

/// `kind = "stdout"`.
#[derive(Debug)]
pub struct StdoutSink {
    /// Name in logs and metrics.
    pub name: Option<Text>,
    /// Tables to print.
    pub tables: TablesConfig,
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
    /// The TOML is malformed or a field is wrong (the message names line and field).
    #[error("invalid configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field's value cannot work.
    #[error("invalid configuration: {field}: {message}")]
    Invalid {
        /// Which field, e.g. `sinks[1].tables.include`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let config = raw.into_config()?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.state_dir.trim().is_empty() {
            return Err(ConfigError::invalid("state_dir", "is empty"));
        }
        if self.sources.is_empty() {
            return Err(ConfigError::invalid("sources", "at least one [[sources]] is needed"));
        }
        if self.sinks.is_empty() {
            return Err(ConfigError::invalid("sinks", "at least one [[sinks]] is needed"));
        }
        match self.checkpoints.kind.as_deref().unwrap_or("file") {
            "file" => {}
            "blob" => {
                if self.checkpoints.connection_string.is_none() {
                    return Err(ConfigError::invalid(
                        "checkpoints.connection_string",
                        "`kind = \"blob\"` needs a storage connection string",
                    ));
                }
                if self.checkpoints.container.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::invalid(
                        "checkpoints.container",
                        "`kind = \"blob\"` needs a container",
                    ));
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    "checkpoints.kind",
                    format!("`{other}` is not a checkpoint store (use `file` or `blob`)"),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let field = format!("sources[{i}]");
            if !names.insert(source.name().to_owned()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("another source is also named `{}`", source.name()),
                ));
            }
            match source {
                Source::Eventhub(s) => check_eventhub(&field, s)?,
                Source::Storage(s) => check_storage(&field, s)?,
            }
        }
        let mut names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            if !names.insert(sink.name().to_owned()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("another sink is also named `{}`; give each one a `name`", sink.name()),
                ));
            }
            check_tables(&format!("{field}.tables"), sink.tables())?;
            match sink {
                Sink::Sekoia(s) => {
                    let url = s.url.as_deref().unwrap_or(DEFAULT_SEKOIA_URL);
                    let parsed = url::Url::parse(url)
                        .map_err(|e| ConfigError::invalid(format!("{field}.url"), format!("`{url}`: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(ConfigError::invalid(
                            format!("{field}.url"),
                            "must be http:// or https://",
                        ));
                    }
                    if let Some(n) = s.batch_bytes
                        && n.0 > 9 * 1024 * 1024
                    {
                        return Err(ConfigError::invalid(
                            format!("{field}.batch_bytes"),
                            "the intake refuses requests over 10 MiB; keep batches at most 9 MiB",
                        ));
                    }
                    for (key, v) in [("batch_events", s.batch_events), ("concurrency", s.concurrency)] {
                        if v.is_some_and(|n| n.0 == 0) {
                            return Err(ConfigError::invalid(format!("{field}.{key}"), "must be at least 1"));
                        }
                    }
                }
                Sink::Files(s) => {
                    if s.dir.trim().is_empty() {
                        return Err(ConfigError::invalid(format!("{field}.dir"), "is empty"));
                    }
                    for table in s.retention.keys() {
                        if Table::from_name(table).is_none() {
                            return Err(ConfigError::invalid(
                                format!("{field}.retention.{table}"),
                                format!("`{table}` is not a known table (see `defender tables`)"),
                            ));
                        }
                    }
                }
                Sink::Stdout(_) => {}
            }
        }
        Ok(())
    }
}

/// Where records go when a `sekoia` sink gives no `url`.
pub const DEFAULT_SEKOIA_URL: &str = "https://intake.sekoia.io";

fn check_eventhub(field: &str, s: &EventHubSource) -> Result<(), ConfigError> {
    match (&s.connection_string, &s.namespace, &s.credential) {
        (Some(_), None, None) | (None, Some(_), Some(_)) => {}
        (Some(_), _, _) => {
            return Err(ConfigError::invalid(
                field,
                "give either `connection_string` or `namespace` + `credential`, not both",
            ));
        }
        (None, None, _) => {
            return Err(ConfigError::invalid(
                format!("{field}.connection_string"),
                "missing: give `connection_string`, or `namespace` + `credential`",
            ));
        }
        (None, Some(_), None) => {
            return Err(ConfigError::invalid(
                format!("{field}.credential"),
                "`namespace` needs a `credential` (e.g. `{ kind = \"managed-identity\" }`)",
            ));
        }
    }
    match (&s.hub, &s.hubs) {
        (Some(h), Some(_)) if !h.trim().is_empty() => {
            return Err(ConfigError::invalid(
                format!("{field}.hubs"),
                "give either `hub` (one hub) or `hubs` (several), not both",
            ));
        }
        (_, Some(Hubs::Names(names))) if names.is_empty() => {
            return Err(ConfigError::invalid(format!("{field}.hubs"), "is empty"));
        }
        _ => {}
    }
    if s.hubs != Some(Hubs::PerTable) {
        for (key, given) in [("tables", s.tables.is_some()), ("hub_prefix", s.hub_prefix.is_some())] {
            if given {
                return Err(ConfigError::invalid(
                    format!("{field}.{key}"),
                    "only applies with `hubs = \"per-table\"`",
                ));
            }
        }
    }
    for (i, name) in s.tables.iter().flatten().enumerate() {
        if Table::from_name(name).is_none() {
            return Err(ConfigError::invalid(
                format!("{field}.tables[{i}]"),
                format!("`{}` is not a known table (see `defender tables`)", &**name),
            ));
        }
    }
    if let Some(start) = &s.start {
        parse_start(start).map_err(|e| ConfigError::invalid(format!("{field}.start"), e))?;
    }
    if s.prefetch.is_some_and(|n| n.0 == 0 || n.0 > u64::from(u32::MAX)) {
        return Err(ConfigError::invalid(
            format!("{field}.prefetch"),
            "must be between 1 and 2^32-1",
        ));
    }
    Ok(())
}

fn check_storage(field: &str, s: &StorageSource) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: &str| ConfigError::invalid(format!("{field}.{key}"), message);
    match (&s.connection_string, &s.account_url) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "account_url",
                "give either `connection_string` or `account_url` with `shared_key` or `sas`, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "account_url",
                "missing: give `account_url` with `shared_key` (and `account_name`) or `sas`, or `connection_string`",
            ));
        }
        (Some(cs), None) => {
            for (key, given) in [
                ("shared_key", s.shared_key.is_some()),
                ("sas", s.sas.is_some()),
                ("account_name", s.account_name.is_some()),
            ] {
                if given {
                    return Err(invalid(
                        key,
                        "only applies with `account_url` (the connection string carries the credential)",
                    ));
                }
            }
            defender_eventhub::blob::StorageConnectionString::parse(cs.0.expose())
                .map_err(|e| invalid("connection_string", &e.to_string()))?;
        }
        (None, Some(url)) => {
            let parsed = url::Url::parse(url).map_err(|e| invalid("account_url", &format!("`{}`: {e}", &**url)))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(invalid("account_url", "must be an http:// or https:// URL"));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(invalid(
                    "account_url",
                    "must not carry a query string: put a SAS token in `sas`",
                ));
            }
            match (&s.shared_key, &s.sas) {
                (Some(_), Some(_)) => {
                    return Err(invalid("sas", "give either `shared_key` or `sas`, not both"));
                }
                (None, None) => {
                    return Err(invalid(
                        "shared_key",
                        "missing: `account_url` needs `shared_key` (with `account_name`) or `sas`",
                    ));
                }
                (Some(key), None) => {
                    let Some(account) = s.account_name.as_deref().filter(|a| !a.trim().is_empty()) else {
                        return Err(invalid("account_name", "missing: `shared_key` needs the account name"));
                    };
                    defender_eventhub::blob::StorageCredential::shared_key(account.trim(), key.0.expose())
                        .map_err(|e| invalid("shared_key", &e.to_string()))?;
                }
                (None, Some(sas)) => {
                    if s.account_name.is_some() {
                        return Err(invalid("account_name", "only applies with `shared_key`"));
                    }
                    defender_eventhub::blob::StorageCredential::sas(sas.0.expose())
                        .map_err(|e| invalid("sas", &e.to_string()))?;
                }
            }
        }
    }
    for (i, name) in s.tables.iter().flatten().enumerate() {
        if Table::from_name(name).is_none() {
            return Err(ConfigError::invalid(
                format!("{field}.tables[{i}]"),
                format!("`{}` is not a known table (see `defender tables`)", &**name),
            ));
        }
    }
    if s.tables.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid("tables", "is empty; leave it out to read every table"));
    }
    if let Some(prefix) = &s.container_prefix {
        let ok = prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(invalid(
                "container_prefix",
                "container names hold lower-case letters, digits and `-` only",
            ));
        }
    }
    for name in s.container_names() {
        if name.len() > 63 {
            return Err(invalid(
                "container_prefix",
                &format!("`{name}` is longer than the 63 characters a container name may have"),
            ));
        }
    }
    if let Some(start) = &s.start {
        parse_storage_start(start).map_err(|e| invalid("start", &e))?;
    }
    if let Some(until) = &s.until {
        chrono::DateTime::parse_from_rfc3339(until.trim())
            .map_err(|_| invalid("until", &format!("`{}` is not an RFC 3339 time", &**until)))?;
    }
    for (key, span) in [
        ("poll_interval", s.poll_interval),
        ("ownership_update_interval", s.ownership_update_interval),
        ("ownership_expiry", s.ownership_expiry),
    ] {
        if span.is_some_and(|s| s.0.is_zero()) {
            return Err(invalid(key, "must be longer than 0s"));
        }
    }
    Ok(())
}

/// Reads `earliest`, `latest` or an RFC 3339 time.
pub fn parse_start(s: &str) -> Result<defender_eventhub::StartFrom, String> {
    match s.trim() {
        "earliest" => Ok(defender_eventhub::StartFrom::Earliest),
        "latest" => Ok(defender_eventhub::StartFrom::Latest),
        other => chrono::DateTime::parse_from_rfc3339(other)
            .map(|t| defender_eventhub::StartFrom::EnqueuedTime(t.with_timezone(&chrono::Utc).into()))
            .map_err(|_| format!("`{other}` is not `earliest`, `latest` or an RFC 3339 time")),
    }
}

fn check_tables(field: &str, t: &TablesConfig) -> Result<(), ConfigError> {
    for (key, list) in [("include", &t.include), ("exclude", &t.exclude)] {
        for (i, name) in list.iter().flatten().enumerate() {
            if Table::from_name(name).is_none() {
                return Err(ConfigError::invalid(
                    format!("{field}.{key}[{i}]"),
                    format!(
                        "`{}` is not a known table (see `defender tables`; records of unknown tables follow `unknown`)",
                        &**name
                    ),
                ));
            }
        }
    }
    if t.include.as_ref().is_some_and(Vec::is_empty) {
        return Err(ConfigError::invalid(
            format!("{field}.include"),
            "is empty, so the sink would get nothing; leave it out to take every table",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
