//! Hosts shared out among several schedulers, and the requests that cross from one to another.
//!
//! Politeness is per host, and a scheduler can only keep it for the hosts it alone fetches.
//! When several schedulers share a crawl (one per thread, or per process), each host belongs to
//! exactly one of them: its [`Partition`], by a stable hash of the host's name. Requests are
//! given to the scheduler that owns their host; when a redirect takes one to a host of another
//! partition, the scheduler hands it over ([`Action::HandOff`](crate::Action::HandOff)) instead
//! of fetching that host itself, and the owner carries on with it
//! ([`Scheduler::handle_hand_off`](crate::Scheduler::handle_hand_off)).

use std::time::Instant;

use http::Method;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::error::ConfigError;
use crate::request::check_url;

/// Which share of the hosts a scheduler fetches: those whose [`partition_of`] is `index`, out
/// of `count` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    /// This scheduler's partition, below `count`.
    pub index: u32,
    /// How many partitions share the hosts.
    pub count: u32,
}

impl Partition {
    /// Whether this partition owns `host`.
    pub fn owns(&self, host: &str) -> bool {
        partition_of(host, self.count) == self.index
    }

    pub(crate) fn validate(self) -> Result<(), ConfigError> {
        if self.index >= self.count {
            return Err(ConfigError::BadPartition(self));
        }
        Ok(())
    }
}

/// The partition of a host: FNV-1a (64 bit) of its name, case folded, modulo `count` (0 when
/// `count` is 0 or 1).
///
/// Stable across processes, machines and versions: it decides which worker may fetch a host,
/// so every worker of a crawl must agree on it.
///
/// ```
/// use downpour::partition_of;
/// assert_eq!(partition_of("example.com", 4), partition_of("EXAMPLE.com", 4));
/// assert!(partition_of("example.com", 4) < 4);
/// ```
pub fn partition_of(host: &str, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.bytes() {
        hash ^= u64::from(byte.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(count.max(1))) as u32
}

/// A request that a redirect took to a host of another partition, on its way to the scheduler
/// that owns that host. It carries where the request is (the redirect's target, the method,
/// the URLs visited) and its counts, so that the owner carries on exactly where this one left
/// off: the callbacks of the hops so far have run, and the next are the target's.
///
/// Pass it to the owner's [`Scheduler::handle_hand_off`](crate::Scheduler::handle_hand_off)
/// (drivers do this through their handles). A scheduler can always take one back itself: it
/// then fetches the target as if it had no partition.
///
/// To reach a scheduler in another process, it serializes (with serde) to the request, the
/// target, the method, the URLs visited and the counts. Its times stay behind, since two
/// processes' clocks cannot be compared: the owner reports it enqueued when it took it.
/// Reading one back checks the target as [`check_url`] does.
///
/// ```
/// # use downpour::{HandOff, Request, Url};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Page { url: Url }
/// # impl Request for Page { fn url(&self) -> &Url { &self.url } }
/// let text = r#"{"request":{"url":"http://a.test/old"},"partition":1,"url":"http://b.test/new",
///     "method":"GET","drop_body":false,"visited":["http://a.test/old"],"priority":0,
///     "retries":0,"redirects":1}"#;
/// let hand_off: HandOff<Page> = serde_json::from_str(text).unwrap();
/// assert_eq!(hand_off.url().as_str(), "http://b.test/new");
/// let ftp = text.replace("http://b.test/new", "ftp://b.test/new");
/// assert!(serde_json::from_str::<HandOff<Page>>(&ftp).is_err());
/// ```
#[derive(Debug)]
pub struct HandOff<R>(pub(crate) Box<Carried<R>>);

/// What a [`HandOff`] carries: boxed, so that it passes from hand to hand in one pointer.
#[derive(Debug)]
pub(crate) struct Carried<R> {
    pub(crate) request: R,
    pub(crate) partition: u32,
    pub(crate) route: Box<Route>,
    pub(crate) priority: i32,
    pub(crate) retries: u16,
    pub(crate) redirects: u16,
}

impl<R> HandOff<R> {
    /// The partition that owns the target's host.
    pub fn partition(&self) -> u32 {
        self.0.partition
    }

    /// Where the request goes next: the redirect's target.
    pub fn url(&self) -> &Url {
        &self.0.route.url
    }

    /// The request.
    pub fn request(&self) -> &R {
        &self.0.request
    }

    /// The request alone, leaving its redirects behind (for a request that can no longer be
    /// fetched, to record it).
    pub fn into_request(self) -> R {
        self.0.request
    }
}

/// A hand-off as it is written out.
#[derive(Serialize)]
struct WireOut<'a, R> {
    request: &'a R,
    partition: u32,
    url: &'a Url,
    method: &'a str,
    drop_body: bool,
    visited: &'a [Url],
    priority: i32,
    retries: u16,
    redirects: u16,
}

/// A hand-off as it is read back.
#[derive(Deserialize)]
#[serde(bound = "R: DeserializeOwned")]
struct WireIn<R> {
    request: R,
    partition: u32,
    url: Url,
    method: String,
    #[serde(default)]
    drop_body: bool,
    #[serde(default)]
    visited: Vec<Url>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    retries: u16,
    #[serde(default)]
    redirects: u16,
}

impl<R: Serialize> Serialize for HandOff<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = &*self.0;
        WireOut {
            request: &c.request,
            partition: c.partition,
            url: &c.route.url,
            method: c.route.method.as_str(),
            drop_body: c.route.drop_body,
            visited: &c.route.visited,
            priority: c.priority,
            retries: c.retries,
            redirects: c.redirects,
        }
        .serialize(serializer)
    }
}

impl<'de, R: DeserializeOwned> Deserialize<'de> for HandOff<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireIn::<R>::deserialize(deserializer)?;
        check_url(&wire.url).map_err(D::Error::custom)?;
        let method = Method::from_bytes(wire.method.as_bytes())
            .map_err(|_| D::Error::custom(format!("`{}` is not an HTTP method", wire.method)))?;
        Ok(HandOff(Box::new(Carried {
            request: wire.request,
            partition: wire.partition,
            route: Box::new(Route {
                url: wire.url,
                method,
                drop_body: wire.drop_body,
                visited: wire.visited,
                handed_in: None,
            }),
            priority: wire.priority,
            retries: wire.retries,
            redirects: wire.redirects,
        })))
    }
}

/// Where a request is now, once a redirect moved it (robots.txt jobs always have one).
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) url: Url,
    pub(crate) method: Method,
    pub(crate) drop_body: bool,
    pub(crate) visited: Vec<Url>,
    /// For a request handed over from another scheduler: its times there, which may be
    /// earlier than any this scheduler can stamp (its clock starts at its first input).
    pub(crate) handed_in: Option<Times>,
}

/// When a request was enqueued and first started, as [`Outcome`](crate::Outcome) reports them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    pub(crate) enqueued_at: Instant,
    pub(crate) started_at: Option<Instant>,
}
