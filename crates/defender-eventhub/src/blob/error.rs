//! Errors of the Blob REST client.

use std::fmt;

/// What went wrong, coarsely: enough for callers to decide between "lost a race", "missing" and "broken".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlobErrorKind {
    /// HTTP 404: container or blob not found (`BlobNotFound`, `ContainerNotFound`).
    NotFound,
    /// HTTP 409: e.g. `BlobAlreadyExists` after `If-None-Match: *`, `ContainerAlreadyExists`.
    Conflict,
    /// HTTP 412: an `If-Match` / `If-None-Match` condition was not met (`ConditionNotMet`).
    PreconditionFailed,
    /// HTTP 416: the requested range starts past the end of the blob.
    RangeNotSatisfiable,
    /// HTTP 401 / 403: bad key, expired or insufficient SAS, clock skew.
    AuthenticationFailed,
    /// HTTP 429 / 503: the service asks to slow down (`ServerBusy`).
    Throttled,
    /// Any other HTTP 5xx.
    ServerError,
    /// Any other unexpected HTTP status.
    UnexpectedStatus,
    /// The service could not be reached (connection refused or reset, DNS failure).
    Connection,
    /// The request or the connection attempt timed out.
    Timeout,
    /// The service answered something this client cannot read (bad XML, missing etag header ...).
    InvalidResponse,
    /// The caller passed something unusable (bad URL, bad metadata value, bad connection string ...).
    InvalidInput,
}

impl BlobErrorKind {
    fn from_status(status: u16) -> Self {
        match status {
            404 => Self::NotFound,
            409 => Self::Conflict,
            412 => Self::PreconditionFailed,
            416 => Self::RangeNotSatisfiable,
            401 | 403 => Self::AuthenticationFailed,
            429 | 503 => Self::Throttled,
            500..=599 => Self::ServerError,
            _ => Self::UnexpectedStatus,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::PreconditionFailed => "precondition failed",
            Self::RangeNotSatisfiable => "range not satisfiable",
            Self::AuthenticationFailed => "authentication failed",
            Self::Throttled => "throttled",
            Self::ServerError => "server error",
            Self::UnexpectedStatus => "unexpected status",
            Self::Connection => "cannot reach the storage service",
            Self::Timeout => "timed out",
            Self::InvalidResponse => "invalid response",
            Self::InvalidInput => "invalid input",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from [`BlobClient`](super::BlobClient) or from parsing storage credentials.
///
/// Never contains an account key or a SAS token: URLs are stripped from transport errors and only
/// the operation and the blob name are kept.
#[derive(Debug, thiserror::Error)]
pub struct BlobError {
    kind: BlobErrorKind,
    operation: &'static str,
    target: String,
    status: Option<u16>,
    error_code: Option<String>,
    message: Option<String>,
    #[source]
    source: Option<BoxError>,
}

impl BlobError {
    pub(crate) fn status(
        operation: &'static str,
        target: &str,
        status: u16,
        error_code: Option<String>,
        message: Option<String>,
    ) -> Self {
        Self {
            kind: BlobErrorKind::from_status(status),
            operation,
            target: target.to_owned(),
            status: Some(status),
            error_code,
            message,
            source: None,
        }
    }

    pub(crate) fn transport(operation: &'static str, target: &str, error: reqwest::Error) -> Self {
        // Refused, reset or truncated connections all mean the service is not answering properly.
        let kind = if error.is_timeout() {
            BlobErrorKind::Timeout
        } else {
            BlobErrorKind::Connection
        };
        // `without_url`: the URL may carry a SAS token.
        let error = error.without_url();
        Self {
            kind,
            operation,
            target: target.to_owned(),
            status: None,
            error_code: None,
            message: Some(error_chain(&error)),
            source: Some(Box::new(error)),
        }
    }

    pub(crate) fn invalid_response(operation: &'static str, target: &str, message: impl Into<String>) -> Self {
        Self::simple(BlobErrorKind::InvalidResponse, operation, target, message)
    }

    pub(crate) fn invalid_input(operation: &'static str, target: &str, message: impl Into<String>) -> Self {
        Self::simple(BlobErrorKind::InvalidInput, operation, target, message)
    }

    fn simple(kind: BlobErrorKind, operation: &'static str, target: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            target: target.to_owned(),
            status: None,
            error_code: None,
            message: Some(message.into()),
            source: None,
        }
    }

    /// The coarse kind.
    pub fn kind(&self) -> BlobErrorKind {
        self.kind
    }

    /// The HTTP status, when the service answered.
    pub fn http_status(&self) -> Option<u16> {
        self.status
    }

    /// The service's `x-ms-error-code` (e.g. `BlobAlreadyExists`, `ConditionNotMet`), when it sent one.
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }

    /// The operation that failed (`put_blob`, `set_metadata`, `list_blobs` ...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The blob (or container) the operation was about.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// True for failures worth retrying later: unreachable service, timeouts, throttling, 5xx.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            BlobErrorKind::Connection | BlobErrorKind::Timeout | BlobErrorKind::Throttled | BlobErrorKind::ServerError
        )
    }
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blob storage {}", self.operation)?;
        if !self.target.is_empty() {
            write!(f, " `{}`", self.target)?;
        }
        write!(f, ": {}", self.kind.describe())?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status}")?;
            if let Some(code) = &self.error_code {
                write!(f, " {code}")?;
            }
            f.write_str(")")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// `error: cause: cause ...` on one line (reqwest's own Display stops at the first level).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}
