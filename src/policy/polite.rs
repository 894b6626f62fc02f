use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::{Feedback, HostId, Policy, Queued, Wait, WaitReason};
use crate::config::Config;
use crate::error::ConfigError;
use crate::ratelimit::{self, HostPace, PaceRules};

/// Polite crawling (the original `PoliteFetcher`): per-host queues, a per-host in-flight
/// limit, a delay between requests to the same host, robots.txt obeyed.
///
/// - **Delay**: measured from the **end** of one response from a host to the **start** of
///   the next fetch to it (default 1 s). robots.txt `Crawl-delay` raises it for its host.
/// - **Back-off**: `429` and `503` pause the host (`Retry-After` as seconds or HTTP date, or
///   a doubling back-off without it), see [`ratelimit::pace`](crate::ratelimit::pace).
/// - **Fairness**: hosts take turns; of the hosts allowed to go, the one whose wait ended
///   earliest goes first. A host that is cooling down is never handed out. Each decision
///   costs O(log hosts).
/// - **robots.txt**: fetched first and obeyed, unless [`allow_all`](Polite::allow_all).
///
/// ```
/// use std::time::Duration;
/// let policy = downpour::Polite::new()
///     .delay(Duration::from_millis(500))
///     .per_host(2)
///     .allow_all(false);
/// # let _ = policy;
/// ```
#[derive(Debug)]
pub struct Polite {
    rules: PaceRules,
    per_host: u32,
    allow_all: bool,
    hosts: Vec<HostQueue>,
    /// Hosts that have something queued and room in flight, by the time they may go.
    /// Each host is in it at most once (`HostQueue::in_heap`); an entry whose time is
    /// earlier than the host's current pace is moved back when it surfaces.
    ready: Ready,
    queued: usize,
}

/// Hosts by the time they may go, each keyed by one integer: nanoseconds since the first
/// time seen, then the host. Keys that arrive in order — the common case: one delay for
/// every host, and time only moves on — go to a FIFO at O(1); the others to a heap. The
/// earlier of the two fronts goes first, so the cost of a decision stays flat as the
/// number of hosts grows.
#[derive(Debug, Default)]
struct Ready {
    epoch: Option<Instant>,
    fifo: VecDeque<u128>,
    heap: BinaryHeap<Reverse<u128>>,
}

impl Ready {
    fn push(&mut self, at: Instant, host: u32) {
        let epoch = *self.epoch.get_or_insert(at);
        // Times before the first one seen are all "long ago": they sort first, together.
        let nanos = at
            .saturating_duration_since(epoch)
            .as_nanos()
            .min(u128::from(u64::MAX));
        let key = (nanos << 32) | u128::from(host);
        match self.fifo.back() {
            Some(&last) if key < last => self.heap.push(Reverse(key)),
            _ => self.fifo.push_back(key),
        }
    }

    fn first(&self) -> Option<u128> {
        match (self.fifo.front(), self.heap.peek()) {
            (Some(&a), Some(&Reverse(b))) => Some(a.min(b)),
            (a, b) => a.copied().or(b.map(|r| r.0)),
        }
    }

    /// The earliest (time, host), without taking it.
    fn peek(&self) -> Option<(Instant, u32)> {
        let key = self.first()?;
        let epoch = self.epoch?;
        Some((epoch + Duration::from_nanos((key >> 32) as u64), key as u32))
    }

    /// Takes the earliest.
    fn pop(&mut self) {
        let from_fifo = match (self.fifo.front(), self.heap.peek()) {
            (Some(&a), Some(&Reverse(b))) => a < b,
            (a, _) => a.is_some(),
        };
        if from_fifo {
            self.fifo.pop_front();
        } else {
            self.heap.pop();
        }
    }

    fn clear(&mut self) {
        self.fifo.clear();
        self.heap.clear();
    }
}

#[derive(Debug, Default)]
struct HostQueue {
    queue: BinaryHeap<Item>,
    in_flight: u32,
    pace: HostPace,
    crawl_delay: Option<Duration>,
    /// When the host's last hop ended, so that a crawl delay learnt later still counts from it.
    last_end: Option<Instant>,
    in_heap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item(Queued);

impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.priority, Reverse(self.0.seq)).cmp(&(other.0.priority, Reverse(other.0.seq)))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Default for Polite {
    fn default() -> Self {
        Polite::new()
    }
}

impl Polite {
    /// One request in flight per host, 1 s between requests to a host, robots.txt obeyed.
    pub fn new() -> Self {
        Polite {
            rules: PaceRules {
                delay: Duration::from_secs(1),
                crawl_delay: None,
                adaptive: None,
                max_delay: Duration::from_secs(60),
                backoff_base: Duration::from_secs(1),
                max_backoff: Duration::from_secs(120),
                max_retry_after: Duration::from_secs(300),
            },
            per_host: 1,
            allow_all: false,
            hosts: Vec::new(),
            ready: Ready::default(),
            queued: 0,
        }
    }

    /// Minimum time from the end of a response from a host to the start of the next fetch
    /// to it. Default 1 s.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.rules.delay = delay;
        self
    }

    /// Most fetches in flight to one host. Default 1.
    pub fn per_host(mut self, per_host: u32) -> Self {
        self.per_host = per_host;
        self
    }

    /// Skip robots.txt entirely (for your own sites). Default `false`.
    pub fn allow_all(mut self, allow_all: bool) -> Self {
        self.allow_all = allow_all;
        self
    }

    /// Slow down for slow hosts: the delay becomes at least `factor ×` the host's smoothed
    /// latency, up to `max_delay`. Off by default.
    pub fn adaptive(mut self, factor: f64, max_delay: Duration) -> Self {
        self.rules.adaptive = Some(factor);
        self.rules.max_delay = max_delay;
        self
    }

    /// Back-off after a 429/503 without `Retry-After`: `base`, doubling each time in a row,
    /// at most `max`. Defaults 1 s and 2 min.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.rules.backoff_base = base;
        self.rules.max_backoff = max;
        self
    }

    fn host(&mut self, host: HostId) -> &mut HostQueue {
        let i = host.index();
        if i >= self.hosts.len() {
            self.hosts.resize_with(i + 1, HostQueue::default);
        }
        &mut self.hosts[i]
    }

    fn rules_for(&self, h: &HostQueue) -> PaceRules {
        PaceRules {
            crawl_delay: h.crawl_delay,
            ..self.rules
        }
    }

    /// Puts the host in the ready heap if it has work and room, at the time it may go.
    fn schedule(&mut self, host: HostId, not_before: Instant) {
        let per_host = self.per_host;
        let h = self.host(host);
        if h.in_heap || h.queue.is_empty() || h.in_flight >= per_host {
            return;
        }
        h.in_heap = true;
        let at = h
            .pace
            .next_allowed
            .map_or(not_before, |t| t.max(not_before));
        self.ready.push(at, host.0);
    }
}

impl Policy for Polite {
    fn configure(&mut self, config: &Config) -> Result<(), ConfigError> {
        if self.per_host == 0 {
            return Err(ConfigError::ZeroPerHost);
        }
        self.rules.max_retry_after = config.max_retry_after;
        Ok(())
    }

    fn obeys_robots(&self) -> bool {
        !self.allow_all
    }

    fn push(&mut self, now: Instant, item: Queued) {
        self.host(item.host).queue.push(Item(item));
        self.queued += 1;
        // A host idle for long keeps its old time: it has waited longest, it goes first.
        let since = self.hosts[item.host.index()]
            .pace
            .next_allowed
            .unwrap_or(now);
        self.schedule(item.host, since.min(now));
    }

    fn pop(&mut self, now: Instant) -> Option<Queued> {
        while let Some((at, index)) = self.ready.peek() {
            if at > now {
                return None;
            }
            self.ready.pop();
            let per_host = self.per_host;
            let h = &mut self.hosts[index as usize];
            h.in_heap = false;
            if h.queue.is_empty() || h.in_flight >= per_host {
                continue;
            }
            if let Some(next) = h.pace.next_allowed {
                if next > now {
                    h.in_heap = true;
                    self.ready.push(next, index);
                    continue;
                }
            }
            let item = h.queue.pop().map(|i| i.0)?;
            h.in_flight += 1;
            self.queued -= 1;
            // With room for more in flight, the host takes its turn again behind the
            // hosts that were already waiting.
            self.schedule(HostId(index), now);
            return Some(item);
        }
        None
    }

    fn remove(&mut self, item: &Queued) -> bool {
        let Some(h) = self.hosts.get_mut(item.host.index()) else {
            return false;
        };
        let before = h.queue.len();
        h.queue.retain(|i| i.0.id != item.id);
        let removed = h.queue.len() != before;
        if removed {
            self.queued -= 1;
        }
        removed
    }

    fn handle_finish(&mut self, now: Instant, host: HostId, feedback: &Feedback) {
        let rules = {
            let h = self.host(host);
            h.in_flight = h.in_flight.saturating_sub(1);
            let h = &self.hosts[host.index()];
            self.rules_for(h)
        };
        let h = &mut self.hosts[host.index()];
        h.pace = ratelimit::pace(&h.pace, &rules, feedback, now);
        // Hops to a host may be reported out of order: the latest end counts.
        h.last_end = Some(h.last_end.map_or(now, |t| t.max(now)));
        self.schedule(host, now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some((at, index)) = self.ready.peek() {
            let h = &mut self.hosts[index as usize];
            if h.queue.is_empty() || h.in_flight >= self.per_host {
                self.ready.pop();
                h.in_heap = false;
                continue;
            }
            match h.pace.next_allowed {
                // The host's pace moved after it was keyed: re-key it, another may be earlier.
                Some(next) if next > at => {
                    self.ready.pop();
                    self.ready.push(next, index);
                }
                _ => return Some(at),
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.queued
    }

    fn drain(&mut self) -> Vec<Queued> {
        let mut items = Vec::with_capacity(self.queued);
        for h in &mut self.hosts {
            items.extend(
                std::mem::take(&mut h.queue)
                    .into_vec()
                    .into_iter()
                    .map(|i| i.0),
            );
            h.in_heap = false;
        }
        self.ready.clear();
        self.queued = 0;
        items.sort_by_key(|q| q.seq);
        items
    }

    fn set_crawl_delay(&mut self, host: HostId, delay: Duration) {
        let h = self.host(host);
        h.crawl_delay = Some(delay);
        // Usually learnt from the response that just ended (robots.txt itself): the next
        // fetch waits the crawl delay from that end, not just the delay already planned.
        if let Some(end) = h.last_end {
            let at = end + delay;
            h.pace.next_allowed = Some(h.pace.next_allowed.map_or(at, |t| t.max(at)));
        }
    }

    fn wait(&self, now: Instant, host: HostId) -> Option<Wait> {
        let h = self.hosts.get(host.index())?;
        if h.in_flight >= self.per_host {
            return Some(Wait {
                reason: WaitReason::InFlightLimit,
                until: None,
            });
        }
        match h.pace.next_allowed {
            Some(t) if t > now => Some(Wait {
                reason: if h.pace.backoffs > 0 {
                    WaitReason::Backoff
                } else {
                    WaitReason::Delay
                },
                until: Some(t),
            }),
            _ => None,
        }
    }

    fn forget_at(&self, host: HostId) -> Option<Instant> {
        self.hosts.get(host.index())?.pace.next_allowed
    }

    fn forget_host(&mut self, host: HostId) {
        if let Some(h) = self.hosts.get_mut(host.index()) {
            debug_assert!(h.queue.is_empty() && h.in_flight == 0);
            *h = HostQueue::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestId;
    use http::StatusCode;

    fn q(index: u32, host: u32) -> Queued {
        Queued {
            id: RequestId {
                index,
                generation: 0,
            },
            host: HostId(host),
            priority: 0,
            seq: u64::from(index),
        }
    }

    fn ok(latency_ms: u64) -> Feedback {
        Feedback {
            status: Some(StatusCode::OK),
            retry_after: None,
            latency: Duration::from_millis(latency_ms),
        }
    }

    fn policy() -> Polite {
        let mut p = Polite::new().delay(Duration::from_secs(1));
        p.configure(&Config::default()).unwrap();
        p
    }

    #[test]
    fn delay_runs_from_end_of_response_to_next_start() {
        let t0 = crate::t0();
        let mut p = policy();
        p.push(t0, q(0, 0));
        p.push(t0, q(1, 0));
        assert_eq!(p.pop(t0).unwrap().id.index, 0);
        assert_eq!(p.pop(t0), None, "one in flight per host");
        assert_eq!(p.poll_timeout(), None, "waits for the finish, not for time");
        let end = t0 + Duration::from_millis(700);
        p.handle_finish(end, HostId(0), &ok(700));
        assert_eq!(p.poll_timeout(), Some(end + Duration::from_secs(1)));
        assert_eq!(p.pop(end + Duration::from_millis(999)), None);
        assert_eq!(p.pop(end + Duration::from_secs(1)).unwrap().id.index, 1);
    }

    #[test]
    fn hosts_take_turns_earliest_wait_first() {
        let t0 = crate::t0();
        let mut p = policy();
        for i in 0..3 {
            p.push(t0, q(i, 0));
            p.push(t0, q(10 + i, 1));
        }
        let a = p.pop(t0).unwrap();
        let b = p.pop(t0).unwrap();
        assert_ne!(a.host, b.host, "both hosts go before either goes twice");
        p.handle_finish(t0 + Duration::from_millis(10), b.host, &ok(10));
        p.handle_finish(t0 + Duration::from_millis(20), a.host, &ok(20));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.pop(later).unwrap().host, b.host, "b's wait ended first");
        assert_eq!(p.pop(later).unwrap().host, a.host);
    }

    #[test]
    fn per_host_limit_and_priority() {
        let t0 = crate::t0();
        let mut p = Polite::new().per_host(2);
        p.configure(&Config::default()).unwrap();
        p.push(t0, q(0, 0));
        p.push(
            t0,
            Queued {
                priority: 9,
                ..q(1, 0)
            },
        );
        p.push(t0, q(2, 0));
        assert_eq!(p.pop(t0).unwrap().id.index, 1);
        assert_eq!(p.pop(t0).unwrap().id.index, 0);
        assert_eq!(p.pop(t0), None);
        assert_eq!(
            p.wait(t0, HostId(0)).unwrap().reason,
            WaitReason::InFlightLimit
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn rate_limited_host_waits_and_says_why() {
        let t0 = crate::t0();
        let mut p = policy();
        p.push(t0, q(0, 0));
        p.push(t0, q(1, 0));
        p.pop(t0).unwrap();
        let fb = Feedback {
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            retry_after: Some(Duration::from_secs(30)),
            latency: Duration::from_millis(5),
        };
        p.handle_finish(t0, HostId(0), &fb);
        let w = p.wait(t0, HostId(0)).unwrap();
        assert_eq!(w.reason, WaitReason::Backoff);
        assert_eq!(w.remaining(t0), Some(Duration::from_secs(30)));
        assert_eq!(p.pop(t0 + Duration::from_secs(29)), None);
        assert!(p.pop(t0 + Duration::from_secs(30)).is_some());
    }

    #[test]
    fn the_deadline_is_the_earliest_host_even_when_a_pace_moved() {
        let t0 = crate::t0();
        let mut p = Polite::new().per_host(2).delay(Duration::from_secs(1));
        p.configure(&Config::default()).unwrap();
        p.push(t0, q(0, 0));
        p.push(t0, q(1, 0));
        p.push(t0, q(10, 1));
        // Host 0 sends one and keeps its place in the heap (room for one more) ...
        assert_eq!(p.pop(t0).unwrap().host, HostId(0));
        // ... while a 503 moves its pace 10 s ahead.
        let slow = Feedback {
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            retry_after: Some(Duration::from_secs(10)),
            latency: Duration::ZERO,
        };
        p.handle_finish(t0, HostId(0), &slow);
        assert_eq!(p.poll_timeout(), Some(t0), "host 1 may go now");
        assert_eq!(p.pop(t0).unwrap().host, HostId(1));
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(p.pop(t0 + Duration::from_secs(9)), None);
        assert_eq!(p.pop(t0 + Duration::from_secs(10)).unwrap().host, HostId(0));
    }

    #[test]
    fn crawl_delay_is_honoured() {
        let t0 = crate::t0();
        let mut p = policy();
        p.set_crawl_delay(HostId(0), Duration::from_secs(10));
        p.push(t0, q(0, 0));
        p.push(t0, q(1, 0));
        p.pop(t0).unwrap();
        p.handle_finish(t0, HostId(0), &ok(1));
        assert_eq!(p.pop(t0 + Duration::from_secs(9)), None);
        assert!(p.pop(t0 + Duration::from_secs(10)).is_some());
    }

    #[test]
    fn crawl_delay_learnt_after_a_response_counts_from_its_end() {
        let t0 = crate::t0();
        let mut p = policy();
        p.push(t0, q(0, 0));
        p.pop(t0).unwrap();
        // robots.txt ends; its Crawl-delay is known only afterwards.
        p.handle_finish(t0, HostId(0), &ok(1));
        p.set_crawl_delay(HostId(0), Duration::from_secs(10));
        p.push(t0, q(1, 0));
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(p.pop(t0 + Duration::from_secs(9)), None);
        assert!(p.pop(t0 + Duration::from_secs(10)).is_some());
    }

    #[test]
    fn a_crawl_delay_counts_from_the_latest_end_when_hops_are_reported_out_of_order() {
        let t0 = crate::t0();
        let ms = Duration::from_millis;
        let mut p = Polite::new().per_host(2).delay(ms(100));
        p.push(t0, q(0, 0));
        p.push(t0, q(1, 0));
        p.push(t0, q(2, 0));
        p.pop(t0).unwrap();
        p.pop(t0).unwrap();
        // The second hop ended at 200 ms and is reported first; the first ended at 100 ms.
        p.handle_finish(t0 + ms(200), HostId(0), &ok(1));
        p.handle_finish(t0 + ms(100), HostId(0), &ok(1));
        p.set_crawl_delay(HostId(0), Duration::from_secs(10));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(10_200)));
    }

    #[test]
    fn removed_and_drained_items_leave() {
        let t0 = crate::t0();
        let mut p = policy();
        for i in 0..4 {
            p.push(t0, q(i, i % 2));
        }
        assert!(p.remove(&q(3, 1)));
        assert_eq!(p.len(), 3);
        let d: Vec<u32> = p.drain().iter().map(|q| q.id.index).collect();
        assert_eq!(d, vec![0, 1, 2]);
        assert_eq!(p.pop(t0), None);
        assert_eq!(p.poll_timeout(), None);
    }
}
