//! Entra ID credentials for `Connection::Credential`, from what a configuration file can say.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    ClientSecretCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use crate::connection::Secret;

/// Which Entra ID identity the reader uses (the role it needs on the hub: *Azure Event Hubs Data
/// Receiver*).
#[derive(Clone)]
pub enum Identity {
    /// The managed identity of the VM, App Service, Container App...: system-assigned, or the
    /// user-assigned one with this client ID.
    ManagedIdentity {
        /// Client ID of a user-assigned identity.
        client_id: Option<String>,
    },
    /// Kubernetes workload identity: tenant, client ID and token file come from the pod's
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` unless given.
    WorkloadIdentity {
        /// Tenant ID.
        tenant_id: Option<String>,
        /// Client ID.
        client_id: Option<String>,
        /// Projected service account token file.
        token_file: Option<PathBuf>,
    },
    /// An app registration with a client secret.
    ClientSecret {
        /// Tenant ID.
        tenant_id: String,
        /// Client (application) ID.
        client_id: String,
        /// The secret.
        secret: Secret,
    },
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::ManagedIdentity { client_id } => {
                f.debug_struct("ManagedIdentity").field("client_id", client_id).finish()
            }
            Identity::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            Identity::ClientSecret {
                tenant_id, client_id, ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

impl Identity {
    /// The credential. Fails on settings that cannot work (an empty or malformed tenant ID, a
    /// missing workload identity environment); it does not contact Entra ID yet.
    pub fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        Ok(match self {
            Identity::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                }))?
            }
            Identity::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                token_file_path: token_file.clone(),
                ..Default::default()
            }))?,
            Identity::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(tenant_id, client_id.clone(), secret.expose().to_owned().into(), None)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_credentials_without_contacting_anyone() {
        assert!(Identity::ManagedIdentity { client_id: None }.credential().is_ok());
        let id = Identity::ClientSecret {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "0c9e6b1a-7d42-4f7e-9a61-000000000001".into(),
            secret: Secret::new("s3cr3t-value"),
        };
        assert!(id.credential().is_ok());
        assert!(!format!("{id:?}").contains("s3cr3t-value"));
        let bad = Identity::ClientSecret {
            tenant_id: "not a tenant!".into(),
            client_id: "c".into(),
            secret: Secret::new("x"),
        };
        assert!(bad.credential().is_err());
        let token = tempfile_path();
        let wi = Identity::WorkloadIdentity {
            tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            client_id: Some("0c9e6b1a-7d42-4f7e-9a61-000000000001".into()),
            token_file: Some(token),
        };
        assert!(wi.credential().is_ok());
    }

    fn tempfile_path() -> PathBuf {
        let p = std::env::temp_dir().join(format!("defender-wi-token-{}", std::process::id()));
        std::fs::write(&p, "token").unwrap();
        p
    }
}
