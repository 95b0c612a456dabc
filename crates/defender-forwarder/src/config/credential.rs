//! `credential = { kind = "...", ... }`: an Entra ID identity, for sources that take one.

use defender_eventhub::{Identity, Secret};
use serde::Deserialize;
use serde_with::serde_as;

use super::{SecretText, Text};

/// An Entra ID identity as the configuration writes it.
#[serde_as]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Credential {
    /// The host's managed identity (user-assigned with `client_id`).
    ManagedIdentity {
        /// User-assigned identity's client ID.
        #[serde(default)]
        #[serde_as(as = "Option<Text>")]
        client_id: Option<String>,
    },
    /// Kubernetes workload identity.
    WorkloadIdentity {
        /// Tenant ID (default from `AZURE_TENANT_ID`).
        #[serde(default)]
        #[serde_as(as = "Option<Text>")]
        tenant_id: Option<String>,
        /// Client ID (default from `AZURE_CLIENT_ID`).
        #[serde(default)]
        #[serde_as(as = "Option<Text>")]
        client_id: Option<String>,
        /// Token file (default from `AZURE_FEDERATED_TOKEN_FILE`).
        #[serde(default)]
        #[serde_as(as = "Option<Text>")]
        token_file: Option<String>,
    },
    /// An app registration's client secret.
    ClientSecret {
        /// Tenant ID.
        #[serde_as(as = "Text")]
        tenant_id: String,
        /// Client ID.
        #[serde_as(as = "Text")]
        client_id: String,
        /// The secret.
        #[serde_as(as = "SecretText")]
        secret: Secret,
    },
}

impl Credential {
    /// The identity it names.
    pub fn identity(&self) -> Identity {
        match self {
            Credential::ManagedIdentity { client_id } => Identity::ManagedIdentity {
                client_id: client_id.clone(),
            },
            Credential::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => Identity::WorkloadIdentity {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                token_file: token_file.clone().map(Into::into),
            },
            Credential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => Identity::ClientSecret {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                secret: secret.clone(),
            },
        }
    }
}
