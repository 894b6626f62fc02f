//! How a request ended: the final response or the error, and its history.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use url::Url;

use crate::fetch::{TransportError, TransportErrorKind};

/// The final response of a request, after redirects.
#[derive(Debug, Clone)]
pub struct Response {
    /// The URL that gave this response (the last hop's).
    pub url: Url,
    /// The status.
    pub status: StatusCode,
    /// The HTTP version.
    pub version: Version,
    /// The headers (lower-case names, repeated values kept).
    pub headers: HeaderMap,
    /// The decoded body.
    pub body: Bytes,
}

/// Why a request failed. A failed fetch is data, never a panic.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server answered with a status that is not a success (4xx, 5xx, or a retried
    /// 429/503 that never cleared). The response is kept.
    #[error("HTTP {}", .0.status)]
    Status(Box<Response>),
    /// No usable response (after retries, for the kinds that are retried).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The body was larger than the configured maximum.
    #[error("body larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// robots.txt forbids this URL; it was never fetched.
    #[error("{url} is disallowed by robots.txt")]
    Disallowed {
        /// The URL robots.txt forbids (a redirect target, possibly).
        url: Url,
    },
    /// robots.txt of the origin could not be fetched (5xx or unreachable), repeatedly, so
    /// the origin is treated as disallowing everything for a while.
    #[error("robots.txt of {origin} is unavailable ({reason}); the origin is off-limits for now")]
    RobotsUnavailable {
        /// The origin (`scheme://host:port`).
        origin: String,
        /// The last robots.txt failure.
        reason: String,
    },
    /// More redirects than allowed.
    #[error("more than {limit} redirects")]
    TooManyRedirects {
        /// The limit.
        limit: u32,
    },
    /// A redirect led back to a URL already visited by this request.
    #[error("redirect loop back to {url}")]
    RedirectLoop {
        /// The URL visited twice.
        url: Url,
    },
    /// A redirect's `Location` could not be followed.
    #[error("cannot follow redirect to {location:?}: {reason}")]
    BadRedirect {
        /// The `Location` header as sent.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server asked to retry later than the configured limit allows waiting.
    #[error("server asked to retry after {retry_after:?}, beyond the limit of {limit:?}")]
    RetryAfterTooLong {
        /// What the server asked for.
        retry_after: Duration,
        /// The configured limit.
        limit: Duration,
        /// The response that asked.
        response: Box<Response>,
    },
    /// The request was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A callback of this request panicked.
    #[error("callback {callback} panicked: {message}")]
    CallbackPanicked {
        /// Which callback.
        callback: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl FetchError {
    /// A short stable name for the kind of error, for logs and machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Status(_) => "status",
            FetchError::Transport(e) => match e.kind {
                TransportErrorKind::Dns => "dns",
                TransportErrorKind::Connect => "connect",
                TransportErrorKind::Timeout => "timeout",
                TransportErrorKind::Reset => "reset",
                TransportErrorKind::Tls => "tls",
                TransportErrorKind::Protocol => "protocol",
                TransportErrorKind::Decode => "decode",
                TransportErrorKind::Proxy => "proxy",
                TransportErrorKind::Other => "transport",
            },
            FetchError::BodyTooLarge { .. } => "body_too_large",
            FetchError::Disallowed { .. } => "disallowed",
            FetchError::RobotsUnavailable { .. } => "robots_unavailable",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::RedirectLoop { .. } => "redirect_loop",
            FetchError::BadRedirect { .. } => "bad_redirect",
            FetchError::RetryAfterTooLong { .. } => "retry_after_too_long",
            FetchError::Cancelled => "cancelled",
            FetchError::CallbackPanicked { .. } => "callback_panicked",
        }
    }

    /// The response that came with the error, if there was one.
    pub fn response(&self) -> Option<&Response> {
        match self {
            FetchError::Status(r) => Some(r),
            FetchError::RetryAfterTooLong { response, .. } => Some(response),
            _ => None,
        }
    }
}

/// How a request ended, with its history. Given to [`Request::on_done`](crate::Request::on_done).
#[derive(Debug)]
pub struct Outcome {
    /// The final response, or why there is none.
    pub result: Result<Response, FetchError>,
    /// The last URL tried when the result holds no response (a successful response holds
    /// its own): one copy of the URL, not two.
    pub(crate) last_url: Option<Url>,
    /// Redirects followed.
    pub redirects: u32,
    /// Attempts retried.
    pub retries: u32,
    /// When the request was accepted.
    pub enqueued_at: Instant,
    /// When its first hop started, if any did.
    pub started_at: Option<Instant>,
    /// When it finished.
    pub finished_at: Instant,
}

impl Outcome {
    /// The last URL tried (after redirects).
    pub fn url(&self) -> &Url {
        match (&self.result, &self.last_url) {
            (_, Some(url)) => url,
            (Ok(response), None) => &response.url,
            (Err(error), None) => match error.response() {
                Some(response) => &response.url,
                None => unreachable!("an outcome without a response keeps its URL"),
            },
        }
    }

    /// Turns a result into an error, keeping the URL it reached.
    pub(crate) fn fail(&mut self, error: FetchError) {
        let previous = std::mem::replace(&mut self.result, Err(error));
        if self.last_url.is_none() {
            self.last_url = Some(match previous {
                Ok(response) => response.url,
                Err(e) => e
                    .response()
                    .map(|r| r.url.clone())
                    .expect("an outcome without a response keeps its URL"),
            });
        }
    }

    /// Whether the request succeeded.
    pub fn is_success(&self) -> bool {
        self.result.is_ok()
    }

    /// The status of the final response, if one arrived.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.result {
            Ok(r) => Some(r.status),
            Err(e) => e.response().map(|r| r.status),
        }
    }
}
