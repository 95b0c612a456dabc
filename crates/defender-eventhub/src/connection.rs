//! How to reach an Event Hub: a connection string (kept secret) or namespace + Azure credential.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_messaging_eventhubs::{ConnectionString, ConsumerClient, ProducerClient, RetryOptions};

/// A secret string: never printed, in `Debug` or anywhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the Event Hub is and how to authenticate.
#[derive(Clone)]
pub enum Connection {
    /// An Event Hubs connection string (`Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`,
    /// with or without `EntityPath`). `UseDevelopmentEmulator=true` makes the client speak plain
    /// AMQP to the endpoint's host and port, for a local emulator.
    ConnectionString(Secret),
    /// A namespace (`myns.servicebus.windows.net`) and an Entra ID credential (managed identity,
    /// workload identity, client secret, ...).
    Credential {
        /// The fully qualified namespace.
        namespace: String,
        /// The credential.
        credential: Arc<dyn TokenCredential>,
    },
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connection::ConnectionString(_) => f.write_str("ConnectionString(<redacted>)"),
            Connection::Credential { namespace, .. } => f
                .debug_struct("Credential")
                .field("namespace", namespace)
                .finish_non_exhaustive(),
        }
    }
}

/// A connection string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// Not a valid Event Hubs connection string (the message never repeats the string).
    #[error("invalid Event Hubs connection string: {0}")]
    Invalid(String),
    /// No hub named in the configuration or by the connection string's `EntityPath`.
    #[error("no Event Hub name: give one, or use a connection string with `EntityPath`")]
    NoHub,
    /// The configured hub and the connection string's `EntityPath` differ.
    #[error("the hub `{configured}` differs from the connection string's EntityPath `{entity_path}`")]
    HubMismatch {
        /// From the configuration.
        configured: String,
        /// From the connection string.
        entity_path: String,
    },
}

/// What a connection resolves to before opening anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The fully qualified namespace (checkpoint keys use it).
    pub namespace: String,
    /// The hub.
    pub hub: String,
    /// `amqp://host:port` when talking to a local emulator.
    pub custom_endpoint: Option<String>,
}

impl Connection {
    /// Resolves namespace, hub and endpoint; `hub` overrides nothing, it must agree with `EntityPath`.
    pub fn target(&self, hub: Option<&str>) -> Result<Target, ConnectionError> {
        match self {
            Connection::ConnectionString(secret) => {
                let parsed: ConnectionString = secret
                    .expose()
                    .parse()
                    .map_err(|e: azure_core::Error| ConnectionError::Invalid(redacted_reason(&e)))?;
                let hub = match (hub, parsed.entity_path.as_deref()) {
                    (Some(h), Some(e)) if h != e => {
                        return Err(ConnectionError::HubMismatch {
                            configured: h.to_owned(),
                            entity_path: e.to_owned(),
                        });
                    }
                    (Some(h), _) | (None, Some(h)) => h.to_owned(),
                    (None, None) => return Err(ConnectionError::NoHub),
                };
                let custom_endpoint = emulator_endpoint(secret.expose(), &parsed.endpoint)?;
                Ok(Target {
                    namespace: parsed.fully_qualified_namespace,
                    hub,
                    custom_endpoint,
                })
            }
            Connection::Credential { namespace, .. } => Ok(Target {
                namespace: namespace.clone(),
                hub: hub.ok_or(ConnectionError::NoHub)?.to_owned(),
                custom_endpoint: None,
            }),
        }
    }

    /// Opens a consumer client on `hub` for `consumer_group`.
    pub async fn open_consumer(
        &self,
        target: &Target,
        consumer_group: &str,
    ) -> Result<ConsumerClient, azure_messaging_eventhubs::EventHubsError> {
        let mut builder = ConsumerClient::builder().with_consumer_group(consumer_group.to_owned());
        if let Some(endpoint) = &target.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        match self {
            Connection::ConnectionString(secret) => {
                builder
                    .open_with_connection_string(secret.expose(), Some(&target.hub))
                    .await
            }
            Connection::Credential { namespace, credential } => {
                builder.open(namespace, target.hub.clone(), credential.clone()).await
            }
        }
    }

    /// Opens a producer client on `hub`, with the client's own retry policy unless `retry` is
    /// given (a short one makes an unreachable hub fail fast, with the connection error as cause).
    pub async fn open_producer(
        &self,
        target: &Target,
        retry: Option<RetryOptions>,
    ) -> Result<ProducerClient, azure_messaging_eventhubs::EventHubsError> {
        let mut builder = ProducerClient::builder();
        if let Some(endpoint) = &target.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        if let Some(retry) = retry {
            builder = builder.with_retry_options(retry);
        }
        match self {
            Connection::ConnectionString(secret) => {
                builder
                    .open_with_connection_string(secret.expose(), Some(&target.hub))
                    .await
            }
            Connection::Credential { namespace, credential } => {
                builder.open(namespace, &target.hub, credential.clone()).await
            }
        }
    }
}

/// `UseDevelopmentEmulator=true`: plain AMQP to the endpoint's host and port (5672 by default).
fn emulator_endpoint(connection_string: &str, endpoint: &str) -> Result<Option<String>, ConnectionError> {
    let emulator = connection_string.split(';').any(|part| {
        part.trim()
            .split_once('=')
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("UseDevelopmentEmulator") && v.eq_ignore_ascii_case("true"))
    });
    if !emulator {
        return Ok(None);
    }
    let url = url::Url::parse(endpoint).map_err(|_| ConnectionError::Invalid("`Endpoint` is not a URL".into()))?;
    let host = url
        .host_str()
        .ok_or_else(|| ConnectionError::Invalid("`Endpoint` has no host".into()))?;
    Ok(Some(format!("amqp://{host}:{}", url.port().unwrap_or(5672))))
}

/// The `azure_core` message for a bad connection string names the problem, never the value; keep
/// only its first line in case that ever changes.
fn redacted_reason(e: &azure_core::Error) -> String {
    e.to_string().lines().next().unwrap_or("unreadable").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS12YWx1ZQ==";

    fn cs(s: &str) -> Connection {
        Connection::ConnectionString(Secret::new(s))
    }

    #[test]
    fn resolves_hub_and_endpoint() {
        let c = cs(&format!(
            "Endpoint=sb://127.0.0.1:5673;SharedAccessKeyName=k;SharedAccessKey={KEY};EntityPath=hub1;UseDevelopmentEmulator=true"
        ));
        let t = c.target(None).unwrap();
        assert_eq!(t.hub, "hub1");
        assert_eq!(t.namespace, "127.0.0.1");
        assert_eq!(t.custom_endpoint.as_deref(), Some("amqp://127.0.0.1:5673"));
        assert_eq!(c.target(Some("hub1")).unwrap().hub, "hub1");
        assert!(matches!(
            c.target(Some("other")),
            Err(ConnectionError::HubMismatch { .. })
        ));

        let c = cs(&format!(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={KEY}"
        ));
        assert_eq!(c.target(None), Err(ConnectionError::NoHub));
        let t = c.target(Some("h")).unwrap();
        assert_eq!(t.namespace, "ns.servicebus.windows.net");
        assert_eq!(t.custom_endpoint, None);
    }

    #[test]
    fn secrets_never_show() {
        let c = cs(&format!(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={KEY}"
        ));
        assert!(!format!("{c:?}").contains(KEY));
        let bad = cs(&format!("SharedAccessKeyName=k;SharedAccessKey={KEY}"));
        let err = bad.target(Some("h")).unwrap_err();
        assert!(!err.to_string().contains(KEY), "{err}");
        assert!(!format!("{err:?}").contains(KEY));
    }
}
