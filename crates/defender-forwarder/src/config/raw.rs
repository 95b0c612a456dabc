//! The file as written: every `[[sources]]` and `[[sinks]]` entry is one flat table whatever its
//! `kind`, so that the TOML parser can point at the exact key of any bad value. The `kind` then
//! picks the typed entry, and keys that belong to another kind are refused by name.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Checkpoints, Config, ConfigError, Credential, EventHubSource, FilesSink, Flag, Hubs, Num, SecretText, SekoiaSink,
    Sink, Source, Span, StdoutSink, StorageSource, TablesConfig, Text, Tuning,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    state_dir: Text,
    #[serde(default)]
    forwarder: Tuning,
    #[serde(default)]
    checkpoints: Checkpoints,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    sinks: Vec<RawSink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: Text,
    name: Option<Text>,
    connection_string: Option<SecretText>,
    namespace: Option<Text>,
    credential: Option<Credential>,
    hub: Option<Text>,
    hubs: Option<RawHubs>,
    tables: Option<Vec<Text>>,
    hub_prefix: Option<Text>,
    missing_hub_retry: Option<Span>,
    consumer_group: Option<Text>,
    start: Option<Text>,
    prefetch: Option<Num>,
    owner_id: Option<Text>,
    ownership_update_interval: Option<Span>,
    ownership_expiry: Option<Span>,
    // storage
    account_url: Option<Text>,
    account_name: Option<Text>,
    shared_key: Option<SecretText>,
    sas: Option<SecretText>,
    container_prefix: Option<Text>,
    poll_interval: Option<Span>,
    until: Option<Text>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHubs {
    One(Text),
    Many(Vec<Text>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: Text,
    name: Option<Text>,
    #[serde(default)]
    tables: TablesConfig,
    // sekoia
    url: Option<Text>,
    intake_key: Option<SecretText>,
    batch_events: Option<Num>,
    batch_bytes: Option<Num>,
    linger: Option<Span>,
    concurrency: Option<Num>,
    timeout: Option<Span>,
    gzip: Option<Flag>,
    max_backoff: Option<Span>,
    danger_accept_invalid_certs: Option<Flag>,
    // files
    dir: Option<Text>,
    retention_days: Option<Num>,
    retention: Option<BTreeMap<String, Num>>,
    flush_interval: Option<Span>,
    segment_mib: Option<Num>,
    segment_age: Option<Span>,
    zstd_level: Option<Num>,
}

/// Refuses keys that were given but mean nothing for this kind.
fn only(field: &str, kind: &str, given: &[(&str, bool)]) -> Result<(), ConfigError> {
    match given.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ConfigError::invalid(
            format!("{field}.{key}"),
            format!("does not apply to `kind = \"{kind}\"`"),
        )),
        None => Ok(()),
    }
}

impl RawConfig {
    pub(super) fn into_config(self) -> Result<Config, ConfigError> {
        let mut sources = Vec::new();
        for (i, s) in self.sources.into_iter().enumerate() {
            let field = format!("sources[{i}]");
            let eventhub_keys = [
                ("namespace", s.namespace.is_some()),
                ("credential", s.credential.is_some()),
                ("hub", s.hub.is_some()),
                ("hubs", s.hubs.is_some()),
                ("hub_prefix", s.hub_prefix.is_some()),
                ("missing_hub_retry", s.missing_hub_retry.is_some()),
                ("consumer_group", s.consumer_group.is_some()),
                ("prefetch", s.prefetch.is_some()),
            ];
            let storage_keys = [
                ("account_url", s.account_url.is_some()),
                ("account_name", s.account_name.is_some()),
                ("shared_key", s.shared_key.is_some()),
                ("sas", s.sas.is_some()),
                ("container_prefix", s.container_prefix.is_some()),
                ("poll_interval", s.poll_interval.is_some()),
                ("until", s.until.is_some()),
            ];
            if &*s.kind == "storage" {
                only(&field, "storage", &eventhub_keys)?;
                sources.push(Source::Storage(StorageSource {
                    name: s.name,
                    account_url: s.account_url,
                    connection_string: s.connection_string,
                    account_name: s.account_name,
                    shared_key: s.shared_key,
                    sas: s.sas,
                    tables: s.tables,
                    container_prefix: s.container_prefix,
                    start: s.start,
                    poll_interval: s.poll_interval,
                    until: s.until,
                    owner_id: s.owner_id,
                    ownership_update_interval: s.ownership_update_interval,
                    ownership_expiry: s.ownership_expiry,
                }));
                continue;
            }
            let hubs = match s.hubs {
                None => None,
                Some(RawHubs::One(t)) if &*t == "per-table" => Some(Hubs::PerTable),
                Some(RawHubs::One(t)) => {
                    return Err(ConfigError::invalid(
                        format!("{field}.hubs"),
                        format!("`{}`: write `hubs = \"per-table\"` or a list of hub names", &*t),
                    ));
                }
                Some(RawHubs::Many(names)) => Some(Hubs::Names(names.into_iter().map(|t| t.0).collect())),
            };
            match &*s.kind {
                "eventhub" => {
                    only(&field, "eventhub", &storage_keys)?;
                    sources.push(Source::Eventhub(EventHubSource {
                        name: s.name,
                        connection_string: s.connection_string,
                        namespace: s.namespace,
                        credential: s.credential,
                        hub: s.hub,
                        hubs,
                        tables: s.tables,
                        hub_prefix: s.hub_prefix,
                        missing_hub_retry: s.missing_hub_retry,
                        consumer_group: s.consumer_group,
                        start: s.start,
                        prefetch: s.prefetch,
                        owner_id: s.owner_id,
                        ownership_update_interval: s.ownership_update_interval,
                        ownership_expiry: s.ownership_expiry,
                    }));
                }
                other => {
                    return Err(ConfigError::invalid(
                        format!("{field}.kind"),
                        format!("`{other}` is not a source kind (use `eventhub` or `storage`)"),
                    ));
                }
            }
        }
        let mut sinks = Vec::new();
        for (i, s) in self.sinks.into_iter().enumerate() {
            let field = format!("sinks[{i}]");
            let sekoia_keys = [
                ("url", s.url.is_some()),
                ("intake_key", s.intake_key.is_some()),
                ("batch_events", s.batch_events.is_some()),
                ("batch_bytes", s.batch_bytes.is_some()),
                ("linger", s.linger.is_some()),
                ("concurrency", s.concurrency.is_some()),
                ("timeout", s.timeout.is_some()),
                ("gzip", s.gzip.is_some()),
                ("max_backoff", s.max_backoff.is_some()),
                ("danger_accept_invalid_certs", s.danger_accept_invalid_certs.is_some()),
            ];
            let files_keys = [
                ("dir", s.dir.is_some()),
                ("retention_days", s.retention_days.is_some()),
                ("retention", s.retention.is_some()),
                ("flush_interval", s.flush_interval.is_some()),
                ("segment_mib", s.segment_mib.is_some()),
                ("segment_age", s.segment_age.is_some()),
                ("zstd_level", s.zstd_level.is_some()),
            ];
            let kind = s.kind.0.clone();
            match kind.as_str() {
                "sekoia" => {
                    only(&field, &kind, &files_keys)?;
                    sinks.push(Sink::Sekoia(SekoiaSink {
                        name: s.name,
                        url: s.url,
                        intake_key: s.intake_key.ok_or_else(|| {
                            ConfigError::invalid(
                                format!("{field}.intake_key"),
                                "missing (write `intake_key = \"${SEKOIA_INTAKE_KEY}\"`)",
                            )
                        })?,
                        tables: s.tables,
                        batch_events: s.batch_events,
                        batch_bytes: s.batch_bytes,
                        linger: s.linger,
                        concurrency: s.concurrency,
                        timeout: s.timeout,
                        gzip: s.gzip,
                        max_backoff: s.max_backoff,
                        danger_accept_invalid_certs: s.danger_accept_invalid_certs,
                    }));
                }
                "files" => {
                    only(&field, &kind, &sekoia_keys)?;
                    sinks.push(Sink::Files(FilesSink {
                        name: s.name,
                        dir: s.dir.ok_or_else(|| {
                            ConfigError::invalid(format!("{field}.dir"), "missing: where the archive goes")
                        })?,
                        tables: s.tables,
                        retention_days: s.retention_days,
                        retention: s.retention.unwrap_or_default(),
                        flush_interval: s.flush_interval,
                        segment_mib: s.segment_mib,
                        segment_age: s.segment_age,
                        zstd_level: s.zstd_level,
                    }));
                }
                "stdout" => {
                    only(&field, &kind, &sekoia_keys)?;
                    only(&field, &kind, &files_keys)?;
                    sinks.push(Sink::Stdout(StdoutSink {
                        name: s.name,
                        tables: s.tables,
                    }));
                }
                other => {
                    return Err(ConfigError::invalid(
                        format!("{field}.kind"),
                        format!("`{other}` is not a sink kind (use `sekoia`, `files` or `stdout`)"),
                    ));
                }
            }
        }
        Ok(Config {
            state_dir: self.state_dir,
            forwarder: self.forwarder,
            checkpoints: self.checkpoints,
            sources,
            sinks,
        })
    }
}
