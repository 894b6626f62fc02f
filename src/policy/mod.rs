//! Policies: which queued request goes next, and when.
//!
//! A policy is pure and pluggable. The scheduler owns everything else (robots.txt, retries,
//! redirects, the global in-flight limit); the policy only orders the requests that are
//! ready and gates them per host. Two are built in: [`Fifo`] and [`Polite`].
//!
//! # Writing your own
//!
//! Implement [`Policy`]. The scheduler calls [`push`](Policy::push) when a request (or its
//! next hop, or its retry) is ready, [`pop`](Policy::pop) whenever it has room for another
//! fetch, and [`handle_finish`](Policy::handle_finish) once for every item popped, when its
//! hop ends. Hosts are given as small [`HostId`]s that index a `Vec` well.
//!
//! ```
//! use std::collections::VecDeque;
//! use std::time::Instant;
//! use downpour::{Feedback, HostId, Policy, Queued};
//!
//! /// Last in, first out: the newest link first (a depth-first crawl).
//! #[derive(Default)]
//! struct Lifo(Vec<Queued>);
//!
//! impl Policy for Lifo {
//!     fn push(&mut self, _now: Instant, item: Queued) { self.0.push(item) }
//!     fn pop(&mut self, _now: Instant) -> Option<Queued> { self.0.pop() }
//!     fn remove(&mut self, item: &Queued) -> bool {
//!         let before = self.0.len();
//!         self.0.retain(|q| q.id != item.id);
//!         self.0.len() != before
//!     }
//!     fn handle_finish(&mut self, _now: Instant, _host: HostId, _feedback: &Feedback) {}
//!     fn poll_timeout(&mut self) -> Option<Instant> { None }
//!     fn len(&self) -> usize { self.0.len() }
//!     fn drain(&mut self) -> Vec<Queued> { std::mem::take(&mut self.0) }
//! }
//! ```

mod fifo;
mod polite;

use std::fmt;
use std::time::{Duration, Instant};

pub use fifo::Fifo;
pub use polite::Polite;

use crate::config::Config;
use crate::error::ConfigError;
pub use crate::ratelimit::Feedback;
use crate::request::RequestId;

/// A host (fully qualified domain name), interned by the scheduler.
///
/// Ids are small and dense (use [`index`](HostId::index) into a `Vec`). An id is reused for
/// another host only after [`Policy::forget_host`] was called for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub(crate) u32);

impl HostId {
    /// A dense index, below the number of hosts ever known at once.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}

/// A request hop ready to be fetched, as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// The request (or internal robots.txt job).
    pub id: RequestId,
    /// The host the hop goes to.
    pub host: HostId,
    /// Higher goes first. robots.txt fetches come with `i32::MAX`.
    pub priority: i32,
    /// Order of acceptance: lower was accepted earlier. A retried request keeps its number.
    pub seq: u64,
}

/// Why a host is not fetched from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// The delay since its last response has not passed.
    Delay,
    /// It asked to slow down (429/503) and is backed off.
    Backoff,
    /// It has as many fetches in flight as allowed.
    InFlightLimit,
    /// Its robots.txt is being fetched.
    Robots,
}

/// A host's wait: why, and until when (when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Why.
    pub reason: WaitReason,
    /// Until when; `None` when it waits on something else finishing.
    pub until: Option<Instant>,
}

impl Wait {
    /// How long is left at `now`, when known.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until.map(|t| t.saturating_duration_since(now))
    }
}

/// Decides which ready request is fetched next, and when. See the [module docs](self).
pub trait Policy: Send {
    /// Called once by [`Scheduler::new`](crate::Scheduler::new): check your settings and take
    /// what you need from the shared ones.
    fn configure(&mut self, config: &Config) -> Result<(), ConfigError> {
        let _ = config;
        Ok(())
    }

    /// Whether robots.txt must be fetched and obeyed before a host's requests.
    fn obeys_robots(&self) -> bool {
        false
    }

    /// Whether a host's next request may wait on the clock after its last one ended (a delay,
    /// a rate). Then a driver makes sure of when each response ended (on Linux, the kernel's
    /// receive timestamp of its last bytes, at a small cost per read); a policy that only
    /// orders its requests says `false` and saves that cost (a `Retry-After` still holds,
    /// counted from when the driver got the response). `true` unless overridden.
    fn paces(&self) -> bool {
        true
    }

    /// A hop is ready to be fetched.
    fn push(&mut self, now: Instant, item: Queued);

    /// The next hop to start now, if any may. Returning it starts it: the scheduler calls
    /// [`handle_finish`](Policy::handle_finish) for it later, exactly once.
    fn pop(&mut self, now: Instant) -> Option<Queued>;

    /// Takes a queued item out (it was cancelled). Returns whether it was queued.
    fn remove(&mut self, item: &Queued) -> bool;

    /// A hop popped earlier has ended at `now`, with what it tells about its host.
    ///
    /// `now` is when the hop ended, as the driver reports it: hops end in any order and a
    /// driver may hear of one late, so it can be earlier than times given before (to `pop`,
    /// `push` or another `handle_finish`). Keep the later of two ends of a host.
    fn handle_finish(&mut self, now: Instant, host: HostId, feedback: &Feedback);

    /// The earliest time at which [`pop`](Policy::pop) may return something it would not
    /// return now. `None` when only a push or a finish can change that.
    fn poll_timeout(&mut self) -> Option<Instant>;

    /// Items queued.
    fn len(&self) -> usize;

    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every queued item out (the scheduler is stopping and hands them back).
    fn drain(&mut self) -> Vec<Queued>;

    /// robots.txt of the host asks for this `Crawl-delay` (already capped).
    fn set_crawl_delay(&mut self, host: HostId, delay: Duration) {
        let _ = (host, delay);
    }

    /// Why the host waits at `now`, if it does.
    fn wait(&self, now: Instant, host: HostId) -> Option<Wait> {
        let _ = (now, host);
        None
    }

    /// The host has nothing queued or in flight. From when on may its state be forgotten
    /// (so that a new request to it would not break its pace)? `None`: at once.
    fn forget_at(&self, host: HostId) -> Option<Instant> {
        let _ = host;
        None
    }

    /// Forget everything about the host: its id may next name another host.
    fn forget_host(&mut self, host: HostId) {
        let _ = host;
    }
}

/// A boxed policy is a policy, so one chosen at run time (`Box<dyn Policy>`) goes wherever
/// a policy does.
impl<P: Policy + ?Sized> Policy for Box<P> {
    fn configure(&mut self, config: &Config) -> Result<(), ConfigError> {
        (**self).configure(config)
    }
    fn obeys_robots(&self) -> bool {
        (**self).obeys_robots()
    }
    fn paces(&self) -> bool {
        (**self).paces()
    }
    fn push(&mut self, now: Instant, item: Queued) {
        (**self).push(now, item)
    }
    fn pop(&mut self, now: Instant) -> Option<Queued> {
        (**self).pop(now)
    }
    fn remove(&mut self, item: &Queued) -> bool {
        (**self).remove(item)
    }
    fn handle_finish(&mut self, now: Instant, host: HostId, feedback: &Feedback) {
        (**self).handle_finish(now, host, feedback)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn is_empty(&self) -> bool {
        (**self).is_empty()
    }
    fn drain(&mut self) -> Vec<Queued> {
        (**self).drain()
    }
    fn set_crawl_delay(&mut self, host: HostId, delay: Duration) {
        (**self).set_crawl_delay(host, delay)
    }
    fn wait(&self, now: Instant, host: HostId) -> Option<Wait> {
        (**self).wait(now, host)
    }
    fn forget_at(&self, host: HostId) -> Option<Instant> {
        (**self).forget_at(host)
    }
    fn forget_host(&mut self, host: HostId) {
        (**self).forget_host(host)
    }
}
