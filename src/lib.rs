//! downpour fetches very many URLs, fast and politely.
//!
//! This crate is the **core**: a pure, deterministic state machine that decides *what* to
//! fetch and *when* — per-host delays, robots.txt, redirects, retries, back-off — without
//! touching a socket, a thread or a clock. Drivers (tokio, smol, blocking threads) do the
//! I/O; tests drive it under a virtual clock.
//!
//! # The run loop
//!
//! Every driver runs the same loop:
//!
//! 1. feed an input: a command ([`enqueue`](Scheduler::enqueue), [`cancel`](Scheduler::cancel),
//!    [`stop`](Scheduler::stop)), a hop's result ([`handle_fetch`](Scheduler::handle_fetch)),
//!    callbacks that ran ([`handle_callback`](Scheduler::handle_callback)), or time passing
//!    ([`handle_timeout`](Scheduler::handle_timeout));
//! 2. drain [`poll_action`](Scheduler::poll_action) until `None`, and carry out each
//!    [`Action`]: fetch one hop, run callbacks, persist a change;
//! 3. sleep until the earlier of [`poll_timeout`](Scheduler::poll_timeout) and the next I/O
//!    completion; repeat until [`is_idle`](Scheduler::is_idle).
//!
//! `now` is always passed in (for a hop's result, when the hop ended). The same inputs give
//! the same actions.
//!
//! # A complete blocking example
//!
//! Here the "network" is a function answering from memory, so the example runs anywhere;
//! a real driver sends the [`Fetch`] over HTTP instead and reports what came back.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use downpour::{Action, Context, HopResponse, HopResult, Polite, Request, Response, Scheduler};
//! use http::StatusCode;
//! use serde::{Deserialize, Serialize};
//! use url::Url;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Page {
//!     url: Url,
//! }
//!
//! impl Request for Page {
//!     fn url(&self) -> &Url {
//!         &self.url
//!     }
//!     fn on_success(&mut self, _ctx: &mut Context<Self>, response: &Response) {
//!         println!("fetched {} ({})", response.url, response.status);
//!     }
//! }
//!
//! /// Stands in for HTTP: robots.txt allows everything but /private; pages are tiny.
//! fn fetch(url: &Url) -> HopResult {
//!     let mut response = HopResponse::new(StatusCode::OK);
//!     response.body = match url.path() {
//!         "/robots.txt" => "User-agent: *\nDisallow: /private\n".into(),
//!         _ => "<html>hello</html>".into(),
//!     };
//!     HopResult::Response(response)
//! }
//!
//! let policy = Polite::new().delay(Duration::from_secs(1));
//! let mut scheduler = Scheduler::new(downpour::Config::default(), policy).unwrap();
//!
//! // A virtual clock, so the example does not sleep; a driver uses Instant::now().
//! let mut now = Instant::now();
//! for path in ["/a", "/b", "/private/c"] {
//!     let url = Url::parse(&format!("http://example.com{path}")).unwrap();
//!     scheduler.enqueue(now, Page { url }).unwrap();
//! }
//!
//! while !scheduler.is_idle() {
//!     while let Some(action) = scheduler.poll_action() {
//!         match action {
//!             Action::Fetch(hop) => {
//!                 let result = fetch(&hop.url);
//!                 scheduler.handle_fetch(now, hop.id, result).unwrap();
//!             }
//!             Action::Callback(callbacks) => {
//!                 let report = callbacks.run();
//!                 scheduler.handle_callback(now, report).unwrap();
//!             }
//!             Action::Persist(_) => {} // only with `Config::persist`
//!             Action::HandOff(h) => {
//!                 // Only with `Config::partition`: pass it to the owner of its host.
//!                 scheduler.handle_hand_off(now, h);
//!             }
//!         }
//!     }
//!     if let Some(deadline) = scheduler.poll_timeout() {
//!         now = now.max(deadline); // a driver sleeps until then
//!         scheduler.handle_timeout(now);
//!     }
//! }
//!
//! let stats = scheduler.stats();
//! assert_eq!((stats.succeeded, stats.disallowed), (2, 1));
//! assert_eq!(stats.robots_fetches, 1);
//! ```
//!
//! # Concepts
//!
//! - [`Request`]: your type; its URL and callbacks (`on_status`, `on_headers`, `on_url`,
//!   `on_success`, `on_error`, `on_done`). Callbacks enqueue follow-ups through [`Context`].
//! - [`Policy`]: which ready request goes next, and when: [`Polite`] (per-host queues,
//!   delays, robots.txt, back-off) or [`Fifo`] (a pool, no politeness), or your own.
//! - [`Config`]: limits shared by every policy (concurrency, timeouts, sizes, retries,
//!   robots.txt cache).
//! - [`Partition`]: when several schedulers share a crawl (a thread or a process each), each
//!   fetches its own share of the hosts, and a redirect to a host of another share becomes an
//!   [`Action::HandOff`] to its owner.
//! - Failures of a fetch are data ([`FetchError`] in the [`Outcome`]); only caller mistakes
//!   are `Err` ([`EnqueueError`], [`ConfigError`]).
//!
//! # Politeness, precisely
//!
//! The delay of [`Polite`] runs from the **end** of one response from a host to the
//! **start** of the next fetch to the same host. A host is a fully qualified domain name
//! (ports and schemes share it); robots.txt is per origin (`scheme://host:port`), as RFC 9309
//! says.
//!
//! # Testing aids
//!
//! With the `sim` cargo feature, the module `sim` holds a virtual clock, a seeded fake web,
//! a driver loop and the invariant checker that `tests/simulation.rs` and the `scheduler`
//! fuzz target use. It is for tests only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod action;
mod callback;
mod config;
mod error;
mod fetch;
mod host;
mod outcome;
mod partition;
pub mod policy;
pub mod ratelimit;
mod redirect;
mod request;
mod retry;
mod robots;
mod scheduler;
#[cfg(feature = "sim")]
pub mod sim;
mod stats;

pub use action::{Action, Persist};
pub use callback::{Callback, CallbackReport};
pub use config::{Config, RobotsConfig};
pub use error::{ConfigError, EnqueueError, InvalidRequest, Unexpected};
pub use fetch::{
    Fetch, FetchId, HopResponse, HopResult, Purpose, TransportError, TransportErrorKind,
};
pub use outcome::{FetchError, Outcome, Response};
pub use partition::{partition_of, HandOff, Partition};
pub use policy::{Feedback, Fifo, HostId, Policy, Polite, Queued, Wait, WaitReason};
pub use request::{check_url, parse_url, Context, Request, RequestId};
pub use scheduler::Scheduler;
pub use stats::{Stats, WaitSummary};

// The types a request speaks, so that one dependency line is enough.
pub use bytes::Bytes;
pub use http;
pub use url::{self, Url};

/// The origin of virtual time in unit tests: the one real clock reading they make.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn t0() -> std::time::Instant {
    std::time::Instant::now()
}
