//! A small Azure Blob Storage REST client for one container: what the checkpoint store, the
//! Storage-account export reader and the Parquet tables writer need, nothing more.
//!
//! Every call is one REST request (`x-ms-version: 2021-08-06`) over reqwest with rustls, authorized
//! with Shared Key or a SAS token. Works against Azure and Azurite (path-style URLs). No retries:
//! callers decide (see [`BlobError::is_transient`]).
//!
//! etags: the service quotes them in response headers (`"0x8D..."`) and not in listings
//! (`0x8D...`). This client always hands them out quoted and accepts either form in conditions.

mod credential;
mod error;
pub(crate) mod signing;
mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

pub use credential::{
    DEVELOPMENT_ACCOUNT, DEVELOPMENT_ACCOUNT_KEY, SasToken, SharedKeyCredential, StorageConnectionString,
    StorageCredential,
};
pub use error::{BlobError, BlobErrorKind};

/// The REST API version sent with every request.
pub const API_VERSION: &str = "2021-08-06";

/// A condition on a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// `If-None-Match: *`: only if the blob does not exist yet (create-only).
    IfNotExists,
    /// `If-Match: <etag>`: only if the blob still has this etag (quoted or not).
    IfMatch(String),
}

/// What a write returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// The new etag, quoted.
    pub etag: String,
    /// The new `Last-Modified` (1-second resolution).
    pub last_modified: DateTime<Utc>,
}

/// What Get Blob Properties returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    /// etag, quoted.
    pub etag: String,
    /// `Last-Modified`.
    pub last_modified: DateTime<Utc>,
    /// Size in bytes.
    pub content_length: u64,
    /// `BlockBlob`, `AppendBlob`, `PageBlob`.
    pub blob_type: Option<String>,
    /// User metadata (`x-ms-meta-*`), names as the service returns them.
    pub metadata: BTreeMap<String, String>,
}

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    /// The full blob name.
    pub name: String,
    /// etag, quoted (listings send it unquoted; this client adds the quotes).
    pub etag: String,
    /// `Last-Modified`.
    pub last_modified: DateTime<Utc>,
    /// Size in bytes.
    pub content_length: u64,
    /// User metadata (listed with `include=metadata`).
    pub metadata: BTreeMap<String, String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPage {
    /// The blobs of this page, in name order.
    pub blobs: Vec<BlobItem>,
    /// Where the next page starts; `None` on the last page.
    pub next_marker: Option<String>,
}

/// A byte range read with [`BlobClient::get_range`].
#[derive(Clone, PartialEq, Eq)]
pub struct BlobRange {
    /// The bytes read (fewer than asked when the blob ends first; empty past the end).
    pub data: Vec<u8>,
    /// The blob's total length at the time of the read.
    pub total_length: u64,
    /// The blob's etag at the time of the read, quoted.
    pub etag: String,
}

impl fmt::Debug for BlobRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRange")
            .field("data_len", &self.data.len())
            .field("total_length", &self.total_length)
            .field("etag", &self.etag)
            .finish()
    }
}

/// What Append Block returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The new etag, quoted.
    pub etag: String,
    /// `Last-Modified`.
    pub last_modified: DateTime<Utc>,
    /// Where the appended block starts (`x-ms-blob-append-offset`).
    pub append_offset: u64,
    /// Number of committed blocks (`x-ms-blob-committed-block-count`).
    pub committed_block_count: u64,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct BlobClientOptions {
    /// Time allowed to open a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, body included.
    pub request_timeout: Duration,
}

impl Default for BlobClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A client for one Blob container. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct BlobClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Container URL without query, no trailing slash.
    container_url: Url,
    container: String,
    credential: StorageCredential,
}

impl fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobClient")
            .field("container_url", &self.inner.container_url.as_str())
            .field("credential", &self.inner.credential)
            .finish_non_exhaustive()
    }
}

/// One request, before signing.
struct Request<'a> {
    operation: &'static str,
    method: Method,
    /// `None`: a container-level request.
    blob: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl<'a> Request<'a> {
    fn new(operation: &'static str, method: Method, blob: Option<&'a str>) -> Self {
        Self {
            operation,
            method,
            blob,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    fn query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.push((name.to_owned(), value.into()));
        self
    }

    fn target(&self, container: &str) -> String {
        self.blob.map_or_else(|| container.to_owned(), ToOwned::to_owned)
    }

    fn header(&mut self, name: &'static str, value: &str, container: &str) -> Result<(), BlobError> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            BlobError::invalid_input(
                self.operation,
                &self.target(container),
                format!("the value of header {name} is not a valid header value (visible ASCII only)"),
            )
        })?;
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(())
    }

    fn condition(&mut self, condition: &Condition, container: &str) -> Result<(), BlobError> {
        match condition {
            Condition::None => Ok(()),
            Condition::IfNotExists => self.header("if-none-match", "*", container),
            Condition::IfMatch(etag) => self.header("if-match", &quote_etag(etag), container),
        }
    }

    fn metadata(&mut self, metadata: &[(&str, &str)], container: &str) -> Result<(), BlobError> {
        for (name, value) in metadata {
            let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return Err(BlobError::invalid_input(
                    self.operation,
                    &self.target(container),
                    format!("metadata name {name:?} is not a C# identifier"),
                ));
            }
            let header_name = HeaderName::from_bytes(format!("x-ms-meta-{name}").to_ascii_lowercase().as_bytes())
                .map_err(|_| BlobError::invalid_input(self.operation, &self.target(container), "bad metadata name"))?;
            let header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
                BlobError::invalid_input(
                    self.operation,
                    &self.target(container),
                    format!("metadata {name} is not a valid header value (visible ASCII only)"),
                )
            })?;
            self.headers.insert(header_name, header_value);
        }
        Ok(())
    }
}

impl BlobClient {
    /// A client for the container at `container_url` (e.g. `https://acct.blob.core.windows.net/checkpoints`
    /// or, path-style, `http://127.0.0.1:10000/devstoreaccount1/checkpoints`).
    ///
    /// The URL must not carry a query string: pass a SAS as [`StorageCredential::Sas`].
    pub fn new(container_url: &str, credential: StorageCredential) -> Result<Self, BlobError> {
        Self::with_options(container_url, credential, &BlobClientOptions::default())
    }

    /// As [`BlobClient::new`], with timeouts.
    pub fn with_options(
        container_url: &str,
        credential: StorageCredential,
        options: &BlobClientOptions,
    ) -> Result<Self, BlobError> {
        let invalid = |message: &str| BlobError::invalid_input("blob client", "", message);
        let mut url = Url::parse(container_url).map_err(|e| invalid(&format!("not a URL: {e}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid("the container URL must be http or https"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "the container URL must not carry a query string (pass a SAS token as the credential)",
            ));
        }
        let path = url.path().trim_end_matches('/').to_owned();
        let container = path.rsplit('/').next().unwrap_or_default().to_owned();
        if container.is_empty() {
            return Err(invalid("the container URL has no container name in its path"));
        }
        url.set_path(&path);
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| invalid(&format!("cannot build the HTTP client: {}", e.without_url())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                container: signing::percent_decode(&container),
                container_url: url,
                credential,
            }),
        })
    }

    /// A client for `container` under an account (blob service) URL such as `https://acct.blob.core.windows.net`.
    pub fn for_account(account_url: &str, container: &str, credential: StorageCredential) -> Result<Self, BlobError> {
        let endpoint = Url::parse(account_url)
            .map_err(|e| BlobError::invalid_input("blob client", "", format!("not a URL: {e}")))?;
        let url = credential::container_url(&endpoint, container)?;
        Self::new(url.as_str(), credential)
    }

    /// A client for `container` from an Azure Storage connection string.
    pub fn from_connection_string(connection_string: &str, container: &str) -> Result<Self, BlobError> {
        let parsed = StorageConnectionString::parse(connection_string)?;
        Self::new(parsed.container_url(container)?.as_str(), parsed.credential().clone())
    }

    /// The container's URL (no credentials in it).
    pub fn container_url(&self) -> &Url {
        &self.inner.container_url
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// Creates the container. `Ok(true)` if created, `Ok(false)` if it already existed.
    pub async fn create_container(&self) -> Result<bool, BlobError> {
        let request = Request::new("create_container", Method::PUT, None).query("restype", "container");
        match self.send(request, &[StatusCode::CREATED]).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == BlobErrorKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Put Blob: an empty block blob with `metadata`, under `condition`
    /// (`IfNotExists` fails with [`BlobErrorKind::Conflict`] when it exists).
    pub async fn put_empty_block_blob(
        &self,
        blob: &str,
        metadata: &[(&str, &str)],
        condition: &Condition,
    ) -> Result<WriteResult, BlobError> {
        self.put_blob("put_blob", blob, "BlockBlob", metadata, condition).await
    }

    /// Put Blob for an (empty) append blob.
    pub async fn create_append_blob(
        &self,
        blob: &str,
        metadata: &[(&str, &str)],
        condition: &Condition,
    ) -> Result<WriteResult, BlobError> {
        self.put_blob("create_append_blob", blob, "AppendBlob", metadata, condition)
            .await
    }

    async fn put_blob(
        &self,
        operation: &'static str,
        blob: &str,
        blob_type: &str,
        metadata: &[(&str, &str)],
        condition: &Condition,
    ) -> Result<WriteResult, BlobError> {
        let mut request = Request::new(operation, Method::PUT, Some(blob));
        let container = self.container();
        request.header("x-ms-blob-type", blob_type, container)?;
        request.metadata(metadata, container)?;
        request.condition(condition, container)?;
        let response = self.send(request, &[StatusCode::CREATED]).await?;
        write_result(operation, blob, response.headers())
    }

    /// Set Blob Metadata: replaces all metadata, under `condition` (`IfMatch` fails with
    /// [`BlobErrorKind::PreconditionFailed`], or [`BlobErrorKind::NotFound`] when the blob is gone).
    pub async fn set_metadata(
        &self,
        blob: &str,
        metadata: &[(&str, &str)],
        condition: &Condition,
    ) -> Result<WriteResult, BlobError> {
        let mut request = Request::new("set_metadata", Method::PUT, Some(blob)).query("comp", "metadata");
        let container = self.container();
        request.metadata(metadata, container)?;
        request.condition(condition, container)?;
        let response = self.send(request, &[StatusCode::OK]).await?;
        write_result("set_metadata", blob, response.headers())
    }

    /// Get Blob Properties (a `HEAD`): etag, size, type and metadata.
    pub async fn get_properties(&self, blob: &str) -> Result<BlobProperties, BlobError> {
        let request = Request::new("get_properties", Method::HEAD, Some(blob));
        let response = self.send(request, &[StatusCode::OK]).await?;
        let headers = response.headers();
        let written = write_result("get_properties", blob, headers)?;
        let content_length = header_u64(headers, "content-length").unwrap_or(0);
        let mut metadata = BTreeMap::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("x-ms-meta-") {
                metadata.insert(key.to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
        }
        Ok(BlobProperties {
            etag: written.etag,
            last_modified: written.last_modified,
            content_length,
            blob_type: header_str(headers, "x-ms-blob-type").map(ToOwned::to_owned),
            metadata,
        })
    }

    /// Lists every blob whose name starts with `prefix`, with metadata, following `NextMarker`.
    pub async fn list_blobs(&self, prefix: &str) -> Result<Vec<BlobItem>, BlobError> {
        self.list_blobs_paged(prefix, None).await
    }

    /// As [`BlobClient::list_blobs`], asking for pages of at most `page_size` blobs.
    pub async fn list_blobs_paged(&self, prefix: &str, page_size: Option<u32>) -> Result<Vec<BlobItem>, BlobError> {
        let mut blobs = Vec::new();
        let mut marker = None;
        loop {
            let page = self.list_blobs_page(prefix, marker.as_deref(), page_size).await?;
            blobs.extend(page.blobs);
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(blobs),
            }
        }
    }

    /// One page of List Blobs (`include=metadata`), starting at `marker`, at most `max_results` blobs
    /// (the service's default, 5000, when `None`).
    pub async fn list_blobs_page(
        &self,
        prefix: &str,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<BlobPage, BlobError> {
        let mut request = Request::new("list_blobs", Method::GET, None)
            .query("restype", "container")
            .query("comp", "list")
            .query("include", "metadata");
        if !prefix.is_empty() {
            request = request.query("prefix", prefix);
        }
        if let Some(marker) = marker.filter(|m| !m.is_empty()) {
            request = request.query("marker", marker);
        }
        if let Some(max) = max_results {
            request = request.query("maxresults", max.to_string());
        }
        let response = self.send(request, &[StatusCode::OK]).await?;
        let body = response
            .text()
            .await
            .map_err(|e| BlobError::transport("list_blobs", prefix, e))?;
        let raw = xml::parse_list_blobs(&body).map_err(|e| BlobError::invalid_response("list_blobs", prefix, e))?;
        let mut blobs = Vec::with_capacity(raw.blobs.len());
        for blob in raw.blobs {
            let etag =
                blob.properties.get("Etag").map(|e| quote_etag(e)).ok_or_else(|| {
                    BlobError::invalid_response("list_blobs", &blob.name, "a listed blob has no Etag")
                })?;
            let last_modified = blob
                .properties
                .get("Last-Modified")
                .and_then(|d| parse_http_date(d))
                .ok_or_else(|| {
                    BlobError::invalid_response("list_blobs", &blob.name, "a listed blob has no valid Last-Modified")
                })?;
            let content_length = blob
                .properties
                .get("Content-Length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            blobs.push(BlobItem {
                name: blob.name,
                etag,
                last_modified,
                content_length,
                metadata: blob.metadata,
            });
        }
        Ok(BlobPage {
            blobs,
            next_marker: raw.next_marker,
        })
    }

    /// Reads bytes `start..=end` (`Range: bytes=start-end`). Returns fewer bytes when the blob is
    /// shorter, and no bytes (with the current length) when `start` is at or past the end.
    pub async fn get_range(&self, blob: &str, start: u64, end_inclusive: u64) -> Result<BlobRange, BlobError> {
        if end_inclusive < start {
            return Err(BlobError::invalid_input(
                "get_range",
                blob,
                "the range ends before it starts",
            ));
        }
        let mut request = Request::new("get_range", Method::GET, Some(blob));
        request.header("range", &format!("bytes={start}-{end_inclusive}"), self.container())?;
        let response = match self.send(request, &[StatusCode::PARTIAL_CONTENT, StatusCode::OK]).await {
            Ok(response) => response,
            Err(e) if e.kind() == BlobErrorKind::RangeNotSatisfiable => {
                // Past the end (or an empty blob): report the length instead of failing.
                let properties = self.get_properties(blob).await?;
                if start < properties.content_length {
                    return Err(e);
                }
                return Ok(BlobRange {
                    data: Vec::new(),
                    total_length: properties.content_length,
                    etag: properties.etag,
                });
            }
            Err(e) => return Err(e),
        };
        let headers = response.headers();
        let etag = header_str(headers, "etag")
            .map(quote_etag)
            .ok_or_else(|| BlobError::invalid_response("get_range", blob, "no ETag header"))?;
        let total_length = if response.status() == StatusCode::PARTIAL_CONTENT {
            header_str(headers, "content-range")
                .and_then(|r| r.rsplit_once('/'))
                .and_then(|(_, total)| total.trim().parse::<u64>().ok())
                .ok_or_else(|| BlobError::invalid_response("get_range", blob, "no valid Content-Range header"))?
        } else {
            header_u64(headers, "content-length").unwrap_or(0)
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BlobError::transport("get_range", blob, e))?;
        Ok(BlobRange {
            data: Vec::from(bytes),
            total_length,
            etag,
        })
    }

    /// Append Block: adds `data` (at most 4 MiB with 2021-08-06) at the end of an append blob.
    pub async fn append_block(&self, blob: &str, data: Vec<u8>) -> Result<AppendResult, BlobError> {
        self.append_block_with(blob, data, None).await
    }

    /// Append Block, only if the blob's length is `position` (`x-ms-blob-condition-appendpos`):
    /// a retry after an unanswered request fails with [`BlobErrorKind::PreconditionFailed`]
    /// instead of appending twice.
    pub async fn append_block_at(&self, blob: &str, data: Vec<u8>, position: u64) -> Result<AppendResult, BlobError> {
        self.append_block_with(blob, data, Some(position)).await
    }

    async fn append_block_with(
        &self,
        blob: &str,
        data: Vec<u8>,
        position: Option<u64>,
    ) -> Result<AppendResult, BlobError> {
        let mut request = Request::new("append_block", Method::PUT, Some(blob)).query("comp", "appendblock");
        if let Some(position) = position {
            request.header("x-ms-blob-condition-appendpos", &position.to_string(), self.container())?;
        }
        request.body = data;
        let response = self.send(request, &[StatusCode::CREATED]).await?;
        let headers = response.headers();
        let written = write_result("append_block", blob, headers)?;
        Ok(AppendResult {
            etag: written.etag,
            last_modified: written.last_modified,
            append_offset: header_u64(headers, "x-ms-blob-append-offset").ok_or_else(|| {
                BlobError::invalid_response("append_block", blob, "no x-ms-blob-append-offset header")
            })?,
            committed_block_count: header_u64(headers, "x-ms-blob-committed-block-count").unwrap_or(0),
        })
    }

    /// Put Block: stages `data` as an uncommitted block of a block blob (invisible to readers and
    /// listings until [`BlobClient::put_block_list`] commits it). `block_id` is any string of up to
    /// 48 bytes, the same length for every block of the blob; it is base64-encoded here.
    pub async fn put_block(&self, blob: &str, block_id: &str, data: Vec<u8>) -> Result<(), BlobError> {
        use base64::Engine as _;
        let id = base64::engine::general_purpose::STANDARD.encode(block_id);
        let mut request = Request::new("put_block", Method::PUT, Some(blob))
            .query("comp", "block")
            .query("blockid", id);
        request.body = data;
        self.send(request, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Put Block List: commits the staged blocks `block_ids` (as given to
    /// [`BlobClient::put_block`]), in order, as the blob's whole content, atomically, under
    /// `condition` (`IfNotExists` fails with [`BlobErrorKind::Conflict`] or
    /// [`BlobErrorKind::PreconditionFailed`] when the blob exists).
    pub async fn put_block_list(
        &self,
        blob: &str,
        block_ids: &[String],
        condition: &Condition,
    ) -> Result<WriteResult, BlobError> {
        use base64::Engine as _;
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in block_ids {
            body.push_str("<Latest>");
            body.push_str(&base64::engine::general_purpose::STANDARD.encode(id));
            body.push_str("</Latest>");
        }
        body.push_str("</BlockList>");
        let mut request = Request::new("put_block_list", Method::PUT, Some(blob)).query("comp", "blocklist");
        request.condition(condition, self.container())?;
        request.body = body.into_bytes();
        let response = self.send(request, &[StatusCode::CREATED]).await?;
        write_result("put_block_list", blob, response.headers())
    }

    /// Reads a whole blob.
    pub async fn get_blob(&self, blob: &str) -> Result<Vec<u8>, BlobError> {
        let request = Request::new("get_blob", Method::GET, Some(blob));
        let response = self.send(request, &[StatusCode::OK]).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BlobError::transport("get_blob", blob, e))?;
        Ok(Vec::from(bytes))
    }

    /// Delete Blob, under `condition`.
    pub async fn delete_blob(&self, blob: &str, condition: &Condition) -> Result<(), BlobError> {
        let mut request = Request::new("delete_blob", Method::DELETE, Some(blob));
        request.condition(condition, self.container())?;
        self.send(request, &[StatusCode::ACCEPTED]).await?;
        Ok(())
    }

    /// Signs and sends one request; maps any status outside `expected` to a [`BlobError`].
    async fn send(&self, request: Request<'_>, expected: &[StatusCode]) -> Result<reqwest::Response, BlobError> {
        let inner = &*self.inner;
        let target = request.target(&inner.container);
        let operation = request.operation;
        let url = self.url_of(&request)?;
        let headers = self.headers_of(&request, url.path(), &target)?;
        tracing::trace!(operation, target = %target, method = %request.method, "blob request");
        let mut builder = inner.http.request(request.method.clone(), url).headers(headers);
        if !request.body.is_empty() {
            builder = builder.body(request.body);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| BlobError::transport(operation, &target, e))?;
        let status = response.status();
        if expected.contains(&status) {
            return Ok(response);
        }
        let code = header_str(response.headers(), "x-ms-error-code").map(ToOwned::to_owned);
        let message = if request.method == Method::HEAD {
            None
        } else {
            response.text().await.ok().and_then(|body| xml::error_message(&body))
        };
        tracing::debug!(operation, target = %target, status = status.as_u16(), code = ?code, "blob request failed");
        Err(BlobError::status(operation, &target, status.as_u16(), code, message))
    }

    /// The request's URL: the container's, the blob's encoded path, the query (and the SAS).
    fn url_of(&self, request: &Request<'_>) -> Result<Url, BlobError> {
        let inner = &*self.inner;
        let mut path = inner.container_url.path().trim_end_matches('/').to_owned();
        if let Some(blob) = request.blob {
            if blob.is_empty() {
                return Err(BlobError::invalid_input(
                    request.operation,
                    blob,
                    "the blob name is empty",
                ));
            }
            path.push('/');
            path.push_str(&signing::encode_blob_path(blob));
        }
        let mut query: String = request
            .query
            .iter()
            .map(|(name, value)| format!("{name}={}", signing::percent_encode(value, false)))
            .collect::<Vec<_>>()
            .join("&");
        if let StorageCredential::Sas(sas) = &inner.credential {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(sas.query());
        }
        let mut url = inner.container_url.clone();
        url.set_path(&path);
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        Ok(url)
    }

    /// The request's headers with version, date, length and (Shared Key) the signature over
    /// `encoded_path`, exactly as it goes on the wire (`Url` may normalise the path).
    fn headers_of(&self, request: &Request<'_>, encoded_path: &str, target: &str) -> Result<HeaderMap, BlobError> {
        let mut headers = request.headers.clone();
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        let date = DateTime::<Utc>::from(std::time::SystemTime::now())
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        headers.insert(
            "x-ms-date",
            HeaderValue::from_str(&date).expect("an HTTP date is ASCII"),
        );
        if let StorageCredential::SharedKey(key) = &self.inner.credential {
            let to_sign = signing::string_to_sign(
                request.method.as_str(),
                &headers,
                request.body.len(),
                key.account(),
                encoded_path,
                &request.query,
            );
            let signature = signing::sign(key.key(), &to_sign);
            let value = HeaderValue::from_str(&format!("SharedKey {}:{signature}", key.account()))
                .map_err(|_| BlobError::invalid_input(request.operation, target, "the account name is not ASCII"))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        if request.method == Method::PUT || !request.body.is_empty() {
            // hyper sends no Content-Length for an empty body, but Put Blob requires one.
            headers.insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(request.body.len()));
        }
        Ok(headers)
    }
}

/// Quotes an etag unless it already is quoted (or is `*`).
pub fn quote_etag(etag: &str) -> String {
    let etag = etag.trim();
    if etag == "*" || (etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"')) || etag.starts_with("W/\"") {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

/// Removes the quotes of an etag, for comparing a listed one with a header one.
pub fn unquote_etag(etag: &str) -> &str {
    let etag = etag.trim();
    etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(etag)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn write_result(operation: &'static str, blob: &str, headers: &HeaderMap) -> Result<WriteResult, BlobError> {
    let etag = header_str(headers, "etag")
        .map(quote_etag)
        .ok_or_else(|| BlobError::invalid_response(operation, blob, "no ETag header"))?;
    let last_modified = header_str(headers, "last-modified")
        .and_then(parse_http_date)
        .ok_or_else(|| BlobError::invalid_response(operation, blob, "no valid Last-Modified header"))?;
    Ok(WriteResult { etag, last_modified })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(quote_etag("0x8D1"), "\"0x8D1\"");
        assert_eq!(quote_etag("\"0x8D1\""), "\"0x8D1\"");
        assert_eq!(quote_etag("*"), "*");
        assert_eq!(unquote_etag("\"0x8D1\""), "0x8D1");
        assert_eq!(unquote_etag("0x8D1"), "0x8D1");
    }

    #[test]
    fn parses_http_dates() {
        let date = parse_http_date("Tue, 24 Nov 2026 10:00:01 GMT").unwrap();
        assert_eq!(date.to_rfc3339(), "2026-11-24T10:00:01+00:00");
    }

    #[test]
    fn client_urls() {
        let credential = StorageCredential::SharedKey(SharedKeyCredential::development());
        let client = BlobClient::new(
            "http://127.0.0.1:10000/devstoreaccount1/checkpoints/",
            credential.clone(),
        )
        .unwrap();
        assert_eq!(client.container(), "checkpoints");
        assert_eq!(
            client.container_url().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/checkpoints"
        );
        let client = BlobClient::for_account("https://acct.blob.core.windows.net/", "c", credential.clone()).unwrap();
        assert_eq!(client.container_url().as_str(), "https://acct.blob.core.windows.net/c");
        assert!(BlobClient::new("https://acct.blob.core.windows.net/c?sig=x", credential.clone()).is_err());
        assert!(BlobClient::new("https://acct.blob.core.windows.net/", credential).is_err());
    }
}
