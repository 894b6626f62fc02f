//! One hop: what the driver is asked to fetch, and what it reports back.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use url::Url;

use crate::request::RequestId;

/// Identifies one hop in flight. Hand it back with the hop's result.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchId {
    pub(crate) request: RequestId,
    pub(crate) hop: u32,
}

impl FetchId {
    /// The request (or internal robots.txt job) this hop belongs to.
    pub fn request(self) -> RequestId {
        self.request
    }
}

impl fmt::Debug for FetchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FetchId({}.{}/{})",
            self.request.index, self.request.generation, self.hop
        )
    }
}

/// Why a hop is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// For a user's request.
    Request(RequestId),
    /// The `/robots.txt` of an origin, fetched before that origin's first request.
    Robots,
}

/// Fetch exactly one hop: do not follow redirects, do not retry. The scheduler does both.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Give it back to [`Scheduler::handle_fetch`](crate::Scheduler::handle_fetch).
    pub id: FetchId,
    /// Why this hop is fetched.
    pub purpose: Purpose,
    /// The method.
    pub method: Method,
    /// The URL.
    pub url: Url,
    /// Request headers (add `User-Agent` from the config when absent).
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// The whole hop (connect, send, receive the full body) must finish within this.
    pub timeout: Duration,
    /// Read at most this many (decoded) body bytes; stop there and set
    /// [`HopResponse::truncated`].
    pub max_body_size: u64,
    /// Fail the hop with [`TransportErrorKind::Protocol`] when the response head is larger.
    pub max_header_size: usize,
    /// A proxy the request asked for, overriding the environment's.
    pub proxy: Option<Url>,
}

/// The result of one hop, as the driver saw it.
#[derive(Debug)]
pub enum HopResult {
    /// A response arrived (any status).
    Response(HopResponse),
    /// No usable response: the connection, TLS, timeout, or the response itself failed.
    Failed(TransportError),
}

/// A response to one hop.
#[derive(Debug, Clone)]
pub struct HopResponse {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, decoded (gzip, deflate, brotli), at most `max_body_size` bytes.
    pub body: Bytes,
    /// The body was longer than `max_body_size` and was cut there.
    pub truncated: bool,
}

impl HopResponse {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: StatusCode) -> Self {
        HopResponse {
            status,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            truncated: false,
        }
    }
}

/// What kind of failure ended a hop without a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    /// The host name did not resolve.
    Dns,
    /// The connection was refused or could not be made.
    Connect,
    /// The hop took longer than its timeout.
    Timeout,
    /// The connection was reset or closed early (for example mid-body).
    Reset,
    /// TLS failed (handshake, certificate).
    Tls,
    /// The peer did not speak HTTP correctly (malformed status line or headers, a head
    /// larger than the limit).
    Protocol,
    /// The body could not be decoded (bad gzip, deflate, brotli).
    Decode,
    /// The proxy refused or failed.
    Proxy,
    /// Anything else.
    Other,
}

impl TransportErrorKind {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            TransportErrorKind::Connect | TransportErrorKind::Timeout | TransportErrorKind::Reset
        )
    }

    /// A short stable name, for logs and machine-readable output.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Dns => "dns",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Reset => "reset",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::Protocol => "protocol",
            TransportErrorKind::Decode => "decode",
            TransportErrorKind::Proxy => "proxy",
            TransportErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hop that failed without a usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct TransportError {
    /// What kind of failure.
    pub kind: TransportErrorKind,
    /// What happened, in words (never containing proxy credentials).
    pub message: String,
}

impl TransportError {
    /// A failure of this kind.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        TransportError {
            kind,
            message: message.into(),
        }
    }
}
