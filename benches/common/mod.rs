//! Shared by the bench targets: a request type, URL lists, and a driver that answers every
//! fetch at once under a virtual clock.

// Each bench target uses a different part of this module.
#![allow(dead_code)]

use std::time::Instant;

use downpour::http::StatusCode;
use downpour::{Action, Config, HopResponse, HopResult, Policy, Purpose, Request, Scheduler, Url};
use serde::{Deserialize, Serialize};

/// The smallest useful request: a URL, every callback left to its no-op default.
#[derive(Clone, Serialize, Deserialize)]
pub struct Req {
    pub url: Url,
}

impl Request for Req {
    fn url(&self) -> &Url {
        &self.url
    }
}

/// The `i`-th URL of a list spread round-robin over `hosts` hosts.
pub fn url(i: usize, hosts: usize) -> Url {
    let host = i % hosts;
    let page = i / hosts;
    Url::parse(&format!("http://h{host}.example.com/page/{page}")).expect("valid URL")
}

/// `n` requests over `hosts` hosts, interleaved (h0, h1, …, h0, h1, …).
pub fn requests(n: usize, hosts: usize) -> Vec<Req> {
    (0..n).map(|i| Req { url: url(i, hosts) }).collect()
}

/// Makes a fresh scheduler.
pub type Make = fn() -> Scheduler<Req>;

/// A scheduler with the default config (64 in flight at most) and this policy.
pub fn scheduler(policy: impl Policy + 'static) -> Scheduler<Req> {
    Scheduler::new(Config::default(), policy).expect("valid config")
}

/// One origin answering everything at once: every page `200`, every robots.txt `404`
/// (so robots.txt is fetched once per host and allows everything).
pub fn answer(purpose: Purpose) -> HopResult {
    let status = match purpose {
        Purpose::Robots => StatusCode::NOT_FOUND,
        Purpose::Request(_) => StatusCode::OK,
    };
    HopResult::Response(HopResponse::new(status))
}

/// What to do with a request once it is finished.
pub enum Done<'a> {
    /// Keep it (so that dropping it is not timed).
    Keep(&'a mut Vec<Req>),
    /// Enqueue it again at once (the queue depth stays constant).
    Recycle,
}

/// A driver for a virtual clock: the run loop of the crate docs, with an instant network.
pub struct Driver {
    pub scheduler: Scheduler<Req>,
    pub now: Instant,
}

impl Driver {
    pub fn new(scheduler: Scheduler<Req>, now: Instant) -> Self {
        Driver { scheduler, now }
    }

    /// Carries out one action, or, with none pending, moves the clock to the next timeout.
    /// Returns how many requests finished (0 or 1), or `None` once the scheduler is idle.
    #[inline]
    pub fn step(&mut self, done: &mut Done<'_>) -> Option<usize> {
        let s = &mut self.scheduler;
        match s.poll_action() {
            Some(Action::Fetch(fetch)) => {
                s.handle_fetch(self.now, fetch.id, answer(fetch.purpose))
                    .expect("a fetch handed out");
                Some(0)
            }
            Some(Action::Callback(callback)) => {
                let report = callback.run();
                let finished = s
                    .handle_callback(self.now, report)
                    .expect("a callback handed out");
                match finished {
                    Some(request) => {
                        match done {
                            Done::Keep(kept) => kept.push(request),
                            Done::Recycle => {
                                s.enqueue(self.now, request).expect("valid request");
                            }
                        }
                        Some(1)
                    }
                    None => Some(0),
                }
            }
            Some(Action::Persist(_)) => Some(0),
            Some(Action::HandOff(_)) => unreachable!("no partition is configured"),
            None => {
                if s.is_idle() {
                    return None;
                }
                let deadline = s
                    .poll_timeout()
                    .expect("work is left, so something waits on time");
                self.now = self.now.max(deadline);
                s.handle_timeout(self.now);
                Some(0)
            }
        }
    }

    /// Runs until idle; returns how many requests finished.
    pub fn run_to_idle(&mut self, kept: &mut Vec<Req>) -> usize {
        let mut done = Done::Keep(kept);
        let mut finished = 0;
        while let Some(n) = self.step(&mut done) {
            finished += n;
        }
        finished
    }

    /// Runs until `n` more requests finished, keeping them.
    pub fn run_keeping(&mut self, n: usize, kept: &mut Vec<Req>) {
        let mut done = Done::Keep(kept);
        let mut finished = 0;
        while finished < n {
            finished += self.step(&mut done).expect("work is left");
        }
    }

    /// Runs until `n` more requests finished, enqueueing each again at once.
    pub fn run_recycling(&mut self, n: u64) {
        let mut done = Done::Recycle;
        let mut finished = 0u64;
        while finished < n {
            finished += self.step(&mut done).expect("never idle while recycling") as u64;
        }
    }
}

/// The start of virtual time: the only clock reading the benches make for the core.
#[allow(clippy::disallowed_methods)] // an `Instant` can only be had from the clock
pub fn epoch() -> Instant {
    Instant::now()
}
