//! Storage credentials and connection strings. None of these types ever prints a secret.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use url::Url;

use super::error::BlobError;

/// The account of the storage emulators (Azurite, the old Storage Emulator).
pub const DEVELOPMENT_ACCOUNT: &str = "devstoreaccount1";

/// The published, well-known key of [`DEVELOPMENT_ACCOUNT`]. Not a secret: every emulator uses it.
pub const DEVELOPMENT_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const REDACTED: &str = "<redacted>";

/// An account name and its (decoded) account key, for Shared Key authorization.
#[derive(Clone)]
pub struct SharedKeyCredential {
    account: String,
    key: Vec<u8>,
}

impl SharedKeyCredential {
    /// `key` is the base64 account key as the portal shows it.
    pub fn new(account: impl Into<String>, key: &str) -> Result<Self, BlobError> {
        let account = account.into();
        if account.is_empty() {
            return Err(BlobError::invalid_input("credential", "", "the account name is empty"));
        }
        // Never echo the key, not even in part.
        let key = STANDARD
            .decode(key.trim())
            .map_err(|_| BlobError::invalid_input("credential", &account, "the account key is not valid base64"))?;
        if key.is_empty() {
            return Err(BlobError::invalid_input(
                "credential",
                &account,
                "the account key is empty",
            ));
        }
        Ok(Self { account, key })
    }

    /// The development account with its published key (Azurite).
    pub fn development() -> Self {
        Self::new(DEVELOPMENT_ACCOUNT, DEVELOPMENT_ACCOUNT_KEY).expect("the published emulator key is valid base64")
    }

    /// The storage account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for SharedKeyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyCredential")
            .field("account", &self.account)
            .field("key", &REDACTED)
            .finish()
    }
}

/// A shared access signature: the query string (`sv=...&sig=...`), with or without its leading `?`.
#[derive(Clone)]
pub struct SasToken(String);

impl SasToken {
    /// Wraps a SAS query string.
    pub fn new(token: impl Into<String>) -> Result<Self, BlobError> {
        let token = token.into();
        let trimmed = token.trim().trim_start_matches('?');
        if trimmed.is_empty() {
            return Err(BlobError::invalid_input("credential", "", "the SAS token is empty"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(BlobError::invalid_input(
                "credential",
                "",
                "the SAS token is not a URL query string",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub(crate) fn query(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SasToken").field(&REDACTED).finish()
    }
}

/// How requests are authorized.
#[derive(Clone, Debug)]
pub enum StorageCredential {
    /// `Authorization: SharedKey account:signature` on every request.
    SharedKey(SharedKeyCredential),
    /// A SAS token appended to every request's query string.
    Sas(SasToken),
}

impl StorageCredential {
    /// Shared Key from an account name and a base64 key.
    pub fn shared_key(account: impl Into<String>, key: &str) -> Result<Self, BlobError> {
        SharedKeyCredential::new(account, key).map(Self::SharedKey)
    }

    /// A SAS token (query string).
    pub fn sas(token: impl Into<String>) -> Result<Self, BlobError> {
        SasToken::new(token).map(Self::Sas)
    }
}

impl From<SharedKeyCredential> for StorageCredential {
    fn from(value: SharedKeyCredential) -> Self {
        Self::SharedKey(value)
    }
}

impl From<SasToken> for StorageCredential {
    fn from(value: SasToken) -> Self {
        Self::Sas(value)
    }
}

fn invalid_connection(message: &str) -> BlobError {
    BlobError::invalid_input("connection string", "", message.to_owned())
}

/// The keys of a connection string we understand, as given.
#[derive(Default)]
struct ConnectionFields {
    protocol: Option<String>,
    account: Option<String>,
    key: Option<String>,
    suffix: Option<String>,
    blob_endpoint: Option<String>,
    sas: Option<String>,
    development: bool,
}

impl ConnectionFields {
    /// Keys are case-insensitive; unknown ones are ignored.
    fn read(text: &str) -> Result<Self, BlobError> {
        let mut f = ConnectionFields::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                // Could be a pasted secret: do not echo it.
                return Err(invalid_connection("a part is not of the form Key=Value"));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => f.protocol = Some(value.to_ascii_lowercase()),
                "accountname" => f.account = Some(value.to_owned()),
                "accountkey" => f.key = Some(value.to_owned()),
                "endpointsuffix" => f.suffix = Some(value.to_owned()),
                "blobendpoint" => f.blob_endpoint = Some(value.to_owned()),
                "sharedaccesssignature" => f.sas = Some(value.to_owned()),
                "usedevelopmentstorage" if value.eq_ignore_ascii_case("true") => f.development = true,
                "usedevelopmentstorage" if value.eq_ignore_ascii_case("false") => {}
                "usedevelopmentstorage" => {
                    return Err(invalid_connection("UseDevelopmentStorage must be true or false"));
                }
                "developmentstorageproxyuri" => {
                    return Err(invalid_connection("DevelopmentStorageProxyUri is not supported"));
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// A parsed Azure Storage connection string.
///
/// Understands `DefaultEndpointsProtocol`, `AccountName`, `AccountKey`, `EndpointSuffix`, `BlobEndpoint`,
/// `SharedAccessSignature` and `UseDevelopmentStorage=true` (keys are case-insensitive, like the SDKs).
/// Other keys (`QueueEndpoint`, `TableEndpoint`, `FileEndpoint` ...) are ignored.
#[derive(Clone)]
pub struct StorageConnectionString {
    blob_endpoint: Url,
    credential: StorageCredential,
}

impl StorageConnectionString {
    /// Parses a connection string. Errors name the offending key, never a value.
    pub fn parse(text: &str) -> Result<Self, BlobError> {
        let f = ConnectionFields::read(text)?;
        if f.development {
            let endpoint = f
                .blob_endpoint
                .unwrap_or_else(|| format!("http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT}"));
            return Ok(Self {
                blob_endpoint: parse_endpoint(&endpoint)?,
                credential: StorageCredential::SharedKey(SharedKeyCredential::development()),
            });
        }
        let blob_endpoint = if let Some(endpoint) = f.blob_endpoint {
            endpoint
        } else {
            let Some(account) = &f.account else {
                return Err(invalid_connection("neither BlobEndpoint nor AccountName is set"));
            };
            let protocol = f.protocol.as_deref().unwrap_or("https");
            if protocol != "https" && protocol != "http" {
                return Err(invalid_connection("DefaultEndpointsProtocol must be https or http"));
            }
            let suffix = f.suffix.as_deref().unwrap_or("core.windows.net");
            format!("{protocol}://{account}.blob.{suffix}")
        };
        let credential = match (f.key, f.sas) {
            (Some(_), Some(_)) => return Err(invalid_connection("both AccountKey and SharedAccessSignature are set")),
            (Some(key), None) => {
                let Some(account) = f.account else {
                    return Err(invalid_connection("AccountKey needs AccountName"));
                };
                StorageCredential::shared_key(account, &key)?
            }
            (None, Some(sas)) => StorageCredential::sas(sas)?,
            (None, None) => {
                return Err(invalid_connection(
                    "neither AccountKey nor SharedAccessSignature is set",
                ));
            }
        };
        Ok(Self {
            blob_endpoint: parse_endpoint(&blob_endpoint)?,
            credential,
        })
    }

    /// `UseDevelopmentStorage=true` on a given blob endpoint (e.g. `http://127.0.0.1:PORT/devstoreaccount1`).
    pub fn development(blob_endpoint: &str) -> Result<Self, BlobError> {
        Ok(Self {
            blob_endpoint: parse_endpoint(blob_endpoint)?,
            credential: StorageCredential::SharedKey(SharedKeyCredential::development()),
        })
    }

    /// The blob service endpoint (`https://account.blob.core.windows.net/`, or path-style for emulators).
    pub fn blob_endpoint(&self) -> &Url {
        &self.blob_endpoint
    }

    /// The credential.
    pub fn credential(&self) -> &StorageCredential {
        &self.credential
    }

    /// The URL of a container under the blob endpoint.
    pub fn container_url(&self, container: &str) -> Result<Url, BlobError> {
        container_url(&self.blob_endpoint, container)
    }
}

impl FromStr for StorageConnectionString {
    type Err = BlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for StorageConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConnectionString")
            .field("blob_endpoint", &self.blob_endpoint.as_str())
            .field("credential", &self.credential)
            .finish()
    }
}

fn parse_endpoint(endpoint: &str) -> Result<Url, BlobError> {
    let url = Url::parse(endpoint)
        .map_err(|e| BlobError::invalid_input("connection string", "", format!("BlobEndpoint is not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(BlobError::invalid_input(
            "connection string",
            "",
            "BlobEndpoint must be an http or https URL",
        ));
    }
    if url.query().is_some() {
        return Err(BlobError::invalid_input(
            "connection string",
            "",
            "BlobEndpoint must not carry a query string (put a SAS into SharedAccessSignature)",
        ));
    }
    Ok(url)
}

/// `endpoint` + `/container`, whatever trailing slash the endpoint has.
pub(crate) fn container_url(endpoint: &Url, container: &str) -> Result<Url, BlobError> {
    if container.is_empty() || container.contains('/') {
        return Err(BlobError::invalid_input(
            "container url",
            container,
            "a container name is one non-empty path segment",
        ));
    }
    let mut url = endpoint.clone();
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| BlobError::invalid_input("container url", container, "the endpoint cannot be a base URL"))?;
        segments.pop_if_empty().push(container);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_KEY: &str = "c2VjcmV0LWtleS1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs=";

    #[test]
    fn parses_account_key_connection_strings() {
        let cs = StorageConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRET_KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(cs.blob_endpoint().as_str(), "https://acct.blob.core.windows.net/");
        assert_eq!(
            cs.container_url("c1").unwrap().as_str(),
            "https://acct.blob.core.windows.net/c1"
        );
        let StorageCredential::SharedKey(key) = cs.credential() else {
            panic!("expected a shared key")
        };
        assert_eq!(key.account(), "acct");
        assert_eq!(key.key(), b"secret-key-bytes-that-must-not-leak");
    }

    #[test]
    fn parses_development_storage() {
        let cs = StorageConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(cs.blob_endpoint().as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(
            cs.container_url("c").unwrap().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/c"
        );
        let cs = StorageConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEVELOPMENT_ACCOUNT_KEY};\
             BlobEndpoint=http://127.0.0.1:12345/devstoreaccount1;"
        ))
        .unwrap();
        assert_eq!(
            cs.container_url("c").unwrap().as_str(),
            "http://127.0.0.1:12345/devstoreaccount1/c"
        );
    }

    #[test]
    fn parses_sas_connection_strings() {
        let cs = StorageConnectionString::parse(
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2021-08-06&sig=abc%3D",
        )
        .unwrap();
        let StorageCredential::Sas(sas) = cs.credential() else {
            panic!("expected a SAS")
        };
        assert_eq!(sas.query(), "sv=2021-08-06&sig=abc%3D");
    }

    #[test]
    fn rejects_bad_connection_strings_without_echoing_secrets() {
        for bad in [
            format!("AccountName=a;AccountKey=!!{SECRET_KEY}"),
            format!("AccountKey={SECRET_KEY}"),
            format!("AccountName=a;{SECRET_KEY}"),
            format!("AccountName=a;AccountKey={SECRET_KEY};SharedAccessSignature=sig={SECRET_KEY}"),
            "AccountName=a".to_owned(),
            format!("BlobEndpoint=ftp://x;SharedAccessSignature=sig={SECRET_KEY}"),
        ] {
            let error = StorageConnectionString::parse(&bad).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(SECRET_KEY), "{shown}");
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
            assert_eq!(error.kind(), super::super::BlobErrorKind::InvalidInput);
        }
    }
}
