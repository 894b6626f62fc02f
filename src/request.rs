//! The user's request type and the context its callbacks get.

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;
use url::Url;

use crate::error::{EnqueueError, InvalidRequest};
use crate::outcome::{FetchError, Outcome, Response};

/// Identifies a request for as long as the scheduler knows it.
///
/// Ids are never reused by one [`Scheduler`](crate::Scheduler).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl RequestId {
    /// A stable number for logs and persistence keys.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({}.{})", self.index, self.generation)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.as_u64())
    }
}

/// A URL to fetch, with what to do as its fetch progresses.
///
/// Implement it on your own type. Only [`url`](Request::url) is required; the rest have
/// defaults (a `GET` with no extra headers, and callbacks that do nothing). Callbacks are
/// called in this order, per request:
///
/// 1. for every response received (each redirect hop and each retried attempt):
///    [`on_status`](Request::on_status), then [`on_headers`](Request::on_headers), then,
///    when the response redirects, [`on_url`](Request::on_url) with the new URL;
/// 2. exactly one of [`on_success`](Request::on_success) or [`on_error`](Request::on_error);
/// 3. [`on_done`](Request::on_done), exactly once, always last.
///
/// Callbacks may enqueue follow-up requests (links a crawler discovered) through the
/// [`Context`]. A callback that panics is trapped and nothing else is disturbed: a panic in
/// `on_status`, `on_headers` or `on_url` ends the request with
/// [`FetchError::CallbackPanicked`] (through `on_error`, then `on_done`); a panic in
/// `on_success` or `on_error` leaves the outcome as it was (the request already got exactly
/// one of them) and `on_done` still runs. Every panic is counted in
/// [`Stats::callback_panics`](crate::Stats::callback_panics).
///
/// Requests are serializable so that a persistent queue (Redis) can hold them.
///
/// ```
/// use downpour::{Context, Request, Response};
/// use serde::{Deserialize, Serialize};
/// use url::Url;
///
/// #[derive(Serialize, Deserialize)]
/// struct Page {
///     url: Url,
/// }
///
/// impl Request for Page {
///     fn url(&self) -> &Url {
///         &self.url
///     }
///     fn on_success(&mut self, _ctx: &mut Context<Self>, response: &Response) {
///         println!("{} -> {} ({} bytes)", self.url, response.status, response.body.len());
///     }
/// }
/// ```
pub trait Request: Serialize + DeserializeOwned + Sized {
    /// The URL to fetch (`http` or `https`, with a host).
    fn url(&self) -> &Url;

    /// The method of the first hop. Redirects may turn it into `GET` (303, or 301/302 of a
    /// non-`GET`), as browsers do.
    fn method(&self) -> Method {
        Method::GET
    }

    /// Extra request headers. The driver adds `User-Agent` when absent.
    fn headers(&self) -> HeaderMap {
        HeaderMap::new()
    }

    /// The request body (empty by default). Dropped when a redirect turns the method into `GET`.
    fn body(&self) -> Bytes {
        Bytes::new()
    }

    /// Higher goes first among the requests queued for the same host (or, under
    /// [`Fifo`](crate::Fifo), among all queued requests). Default 0.
    fn priority(&self) -> i32 {
        0
    }

    /// A proxy for this request only, overriding the driver's (`http_proxy`, …).
    fn proxy(&self) -> Option<Url> {
        None
    }

    /// A response redirected; this is the URL fetched next.
    fn on_url(&mut self, ctx: &mut Context<Self>, url: &Url) {
        let _ = (ctx, url);
    }

    /// A response arrived with this status.
    fn on_status(&mut self, ctx: &mut Context<Self>, version: Version, status: StatusCode) {
        let _ = (ctx, version, status);
    }

    /// A response arrived with these headers (names are lower-case, repeated values kept).
    fn on_headers(&mut self, ctx: &mut Context<Self>, headers: &HeaderMap) {
        let _ = (ctx, headers);
    }

    /// The request succeeded: the final response, after redirects, with a 2xx (or a 3xx
    /// without `Location`) status.
    fn on_success(&mut self, ctx: &mut Context<Self>, response: &Response) {
        let _ = (ctx, response);
    }

    /// The request failed, after any retries.
    fn on_error(&mut self, ctx: &mut Context<Self>, error: &FetchError) {
        let _ = (ctx, error);
    }

    /// The request is finished, either way. Called exactly once, last.
    fn on_done(&mut self, ctx: &mut Context<Self>, outcome: &Outcome) {
        let _ = (ctx, outcome);
    }
}

/// What a callback can do besides looking at its request: enqueue follow-up requests.
pub struct Context<R> {
    now: Instant,
    pub(crate) follow_ups: Vec<R>,
}

impl<R: Request> Context<R> {
    pub(crate) fn new(now: Instant) -> Self {
        Context {
            now,
            follow_ups: Vec::new(),
        }
    }

    /// Enqueue a follow-up request once this callback returns.
    ///
    /// The request is checked now: one that could never be fetched comes back in the error,
    /// so nothing is lost silently.
    pub fn enqueue(&mut self, request: R) -> Result<(), EnqueueError<R>> {
        match check_url(request.url()) {
            Ok(()) => {
                self.follow_ups.push(request);
                Ok(())
            }
            Err(reason) => Err(EnqueueError { reason, request }),
        }
    }

    /// The time the callback runs at (the scheduler's clock, as the driver passed it).
    pub fn now(&self) -> Instant {
        self.now
    }
}

/// Checks that a URL can be fetched: `http` or `https`, with a non-empty host (what
/// [`parse_url`] checks after parsing, for a [`Url`] parsed already).
///
/// ```
/// let url = downpour::Url::parse("ftp://example.com/").unwrap();
/// assert!(downpour::check_url(&url).is_err());
/// ```
pub fn check_url(url: &Url) -> Result<(), InvalidRequest> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(InvalidRequest::UnsupportedScheme {
                url: url.to_string(),
                scheme: other.to_string(),
            })
        }
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err(InvalidRequest::NoHost {
            url: url.to_string(),
        }),
    }
}

/// Parses and checks a URL in one step, with an error that says what is wrong.
///
/// ```
/// assert!(downpour::parse_url("https://example.com/a").is_ok());
/// let err = downpour::parse_url("ftp://example.com/").unwrap_err();
/// assert!(err.to_string().contains("only http and https"));
/// assert!(downpour::parse_url("not a url").is_err());
/// ```
pub fn parse_url(input: &str) -> Result<Url, InvalidRequest> {
    let url = Url::parse(input.trim()).map_err(|source| InvalidRequest::Unparsable {
        input: input.to_string(),
        source,
    })?;
    check_url(&url)?;
    Ok(url)
}
