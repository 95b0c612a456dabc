//! How a kind reaches an Azure Storage account: a connection string, or an account URL with a
//! shared key (and the account name) or a SAS token. The flat keys a kind's entry has are read
//! into one [`BlobAccess`] once, at load.

use defender_eventhub::Secret;
use defender_eventhub::blob::{StorageConnectionString, StorageCredential};
use url::Url;

use super::Invalid;

/// An account's blob endpoint and the credential for it.
#[derive(Debug, Clone)]
pub struct BlobAccess {
    /// `https://acct.blob.core.windows.net`, or path-style for Azurite
    /// (`http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: Url,
    /// How requests are authorized.
    pub credential: StorageCredential,
}

/// The keys an entry may give for its account, as written.
#[derive(Debug, Default)]
pub struct BlobAccessFields {
    /// `connection_string`.
    pub connection_string: Option<Secret>,
    /// `account_url`.
    pub account_url: Option<Url>,
    /// `account_name` (with `shared_key`).
    pub account_name: Option<String>,
    /// `shared_key`.
    pub shared_key: Option<Secret>,
    /// `sas`.
    pub sas: Option<Secret>,
}

impl BlobAccess {
    /// Reads the keys into an account and credential; errors name the key.
    pub fn from_fields(f: BlobAccessFields) -> Result<BlobAccess, Invalid> {
        match (f.connection_string, f.account_url) {
            (Some(_), Some(_)) => Err(Invalid::new(
                "account_url",
                "give either `connection_string` or `account_url` with `shared_key` or `sas`, not both",
            )),
            (None, None) => Err(Invalid::new(
                "account_url",
                "missing: give `account_url` with `shared_key` (and `account_name`) or `sas`, or `connection_string`",
            )),
            (Some(cs), None) => {
                for (key, given) in [
                    ("shared_key", f.shared_key.is_some()),
                    ("sas", f.sas.is_some()),
                    ("account_name", f.account_name.is_some()),
                ] {
                    if given {
                        return Err(Invalid::new(
                            key,
                            "only applies with `account_url` (the connection string carries the credential)",
                        ));
                    }
                }
                let parsed = StorageConnectionString::parse(cs.expose())
                    .map_err(|e| Invalid::new("connection_string", e.to_string()))?;
                Ok(BlobAccess {
                    endpoint: parsed.blob_endpoint().clone(),
                    credential: parsed.credential().clone(),
                })
            }
            (None, Some(url)) => Self::from_url(url, f.account_name, f.shared_key, f.sas),
        }
    }

    fn from_url(
        url: Url,
        account: Option<String>,
        key: Option<Secret>,
        sas: Option<Secret>,
    ) -> Result<BlobAccess, Invalid> {
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Invalid::new("account_url", "must be an http:// or https:// URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Invalid::new(
                "account_url",
                "must not carry a query string: put a SAS token in `sas`",
            ));
        }
        let credential = match (key, sas) {
            (Some(_), Some(_)) => return Err(Invalid::new("sas", "give either `shared_key` or `sas`, not both")),
            (None, None) => {
                return Err(Invalid::new(
                    "shared_key",
                    "missing: `account_url` needs `shared_key` (with `account_name`) or `sas`",
                ));
            }
            (Some(key), None) => {
                let Some(account) = account.filter(|a| !a.trim().is_empty()) else {
                    return Err(Invalid::new(
                        "account_name",
                        "missing: `shared_key` needs the account name",
                    ));
                };
                StorageCredential::shared_key(account.trim(), key.expose())
                    .map_err(|e| Invalid::new("shared_key", e.to_string()))?
            }
            (None, Some(sas)) => {
                if account.is_some() {
                    return Err(Invalid::new("account_name", "only applies with `shared_key`"));
                }
                StorageCredential::sas(sas.expose()).map_err(|e| Invalid::new("sas", e.to_string()))?
            }
        };
        Ok(BlobAccess {
            endpoint: url,
            credential,
        })
    }

    /// The account's name in checkpoint and ownership records: the endpoint's host (and port),
    /// then its path segments (the account, for path-style emulator URLs), joined by `_`:
    /// `acct.blob.core.windows.net`, `127.0.0.1:10000_devstoreaccount1`.
    pub fn namespace(&self) -> String {
        let mut ns = self.endpoint.host_str().unwrap_or("storage").to_ascii_lowercase();
        if let Some(port) = self.endpoint.port() {
            ns.push(':');
            ns.push_str(&port.to_string());
        }
        for segment in self
            .endpoint
            .path_segments()
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
        {
            ns.push('_');
            ns.push_str(segment);
        }
        ns
    }
}
