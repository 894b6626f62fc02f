//! Counters and why hosts wait.

/// Counters of a scheduler since it was made, and its current sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests accepted (enqueued, restored, or enqueued by callbacks).
    pub accepted: u64,
    /// Requests finished (`on_done` ran).
    pub finished: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Hops started (requests, redirects, retries and robots.txt).
    pub fetches: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Redirects followed.
    pub redirects: u64,
    /// robots.txt fetches started.
    pub robots_fetches: u64,
    /// Requests refused by robots.txt.
    pub disallowed: u64,
    /// Callbacks that panicked.
    pub callback_panics: u64,
    /// Requests passed to the scheduler of another partition (a redirect took them to a host
    /// of its own): counted in `accepted` here, they finish there. Across the schedulers of
    /// one crawl, `accepted + handed_in - handed_off = finished + unfinished` holds for each.
    pub handed_off: u64,
    /// Requests passed over from the scheduler of another partition.
    pub handed_in: u64,
    /// Unfinished requests now.
    pub unfinished: usize,
    /// Hops queued in the policy now.
    pub queued: usize,
    /// Requests waiting for a retry now.
    pub delayed: usize,
    /// Requests waiting for robots.txt now.
    pub waiting_robots: usize,
    /// Hops in flight now.
    pub in_flight: usize,
    /// Hosts known now.
    pub hosts: usize,
}

/// How many hosts wait, by reason, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitSummary {
    /// Waiting out the delay since their last response.
    pub delay: usize,
    /// Backed off after 429/503.
    pub backoff: usize,
    /// At their in-flight limit.
    pub in_flight_limit: usize,
    /// Origins whose robots.txt is being fetched.
    pub robots: usize,
}
