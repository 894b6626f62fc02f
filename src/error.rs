//! Errors of the caller's making: bad requests and bad configuration.

use std::fmt;

use crate::partition::Partition;
use crate::request::RequestId;

/// Why a request cannot be fetched at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// The text is not a URL.
    #[error("`{input}` is not a valid URL: {source}")]
    Unparsable {
        /// The text as given.
        input: String,
        /// What the URL parser said.
        source: url::ParseError,
    },
    /// Only `http` and `https` are fetched.
    #[error("unsupported URL scheme `{scheme}` in {url} (only http and https can be fetched)")]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL names no host to connect to.
    #[error("URL {url} has no host")]
    NoHost {
        /// The URL.
        url: String,
    },
    /// Durable storage (Redis) holds requests serialized, and this one failed to serialize.
    #[error("the request for {url} cannot be serialized for storage: {message}")]
    Unserializable {
        /// The URL.
        url: String,
        /// What the serializer said.
        message: String,
    },
}

/// A request was refused; it is handed back so that nothing is lost.
pub struct EnqueueError<R> {
    /// Why it was refused.
    pub reason: InvalidRequest,
    /// The request, unchanged.
    pub request: R,
}

impl<R> fmt::Debug for EnqueueError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnqueueError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<R> fmt::Display for EnqueueError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request refused: {}", self.reason)
    }
}

impl<R> std::error::Error for EnqueueError<R> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reason)
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `concurrency` is 0: nothing could ever be fetched.
    #[error("concurrency must be at least 1 (nothing could be fetched with 0)")]
    ZeroConcurrency,
    /// The polite policy's `per_host` is 0.
    #[error("per_host must be at least 1 (no host could be fetched with 0)")]
    ZeroPerHost,
    /// A size limit is 0.
    #[error("{name} must be at least 1 byte")]
    ZeroLimit {
        /// Which limit.
        name: &'static str,
    },
    /// A timeout is 0.
    #[error("{name} must be longer than zero")]
    ZeroTimeout {
        /// Which timeout.
        name: &'static str,
    },
    /// The user agent cannot be sent as a header value.
    #[error("user agent {0:?} is not a valid header value")]
    BadUserAgent(String),
    /// The robots cache cannot hold any host.
    #[error("robots cache size must be at least 1")]
    ZeroRobotsCache,
    /// The partition's index is not below its count.
    #[error("partition {} of {} does not exist: partitions are numbered from 0 to the count less one", .0.index, .0.count)]
    BadPartition(Partition),
}

/// An input named a fetch or callback the scheduler is not waiting for (already handled, or
/// never issued). The input is ignored; this usually means a driver bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no fetch or callback of request {0} is outstanding")]
pub struct Unexpected(pub RequestId);
