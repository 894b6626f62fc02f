//! The state machine: requests in, actions out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::action::{Action, Persist};
use crate::callback::{Callback, CallbackReport, HopEvents};
use crate::config::Config;
use crate::error::{ConfigError, EnqueueError, Unexpected};
use crate::fetch::{Fetch, FetchId, HopResponse, HopResult, Purpose};
use crate::host::Hosts;
use crate::outcome::{FetchError, Outcome, Response};
use crate::partition::{partition_of, Carried, HandOff, Partition, Route, Times};
use crate::policy::{HostId, Policy, Queued, Wait, WaitReason};
use crate::ratelimit::{self, Feedback};
use crate::redirect::{self, Redirect};
use crate::request::{check_url, Request, RequestId};
use crate::retry::{self, Verdict};
use crate::robots::{self, Check, OriginId, RobotsCache};
use crate::stats::{Stats, WaitSummary};

/// Priority of robots.txt fetches: before every request of their host.
const ROBOTS_PRIORITY: i32 = i32::MAX;
/// The `robots` of an entry that is a user's request.
const NOT_ROBOTS: OriginId = OriginId::MAX;
/// A time stamp that is not set.
const UNSET: u64 = u64::MAX;

/// The scheduler: a pure state machine that decides what to fetch and when.
///
/// It never reads a clock, opens a socket or spawns a thread: every input carries `now` (a
/// hop's result carries when it ended, see [`handle_fetch`](Scheduler::handle_fetch)), and
/// every effect comes out as an [`Action`]. See the [crate docs](crate) for the run loop.
pub struct Scheduler<R> {
    config: Config,
    policy: Box<dyn Policy>,
    obeys_robots: bool,
    /// The slab of entries; `generations[i]` tells apart the successive entries of slot `i`
    /// (kept apart so a slot holds no padding for it).
    slots: Vec<Option<Entry<R>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    hosts: Hosts,
    robots: RobotsCache,
    /// Entries waiting for a retry (or a robots.txt retry), by when.
    timers: BinaryHeap<Reverse<(Instant, RequestId)>>,
    /// Callbacks hold no request here: it leaves its slot when the action is polled, so a
    /// `Persist::Accepted` polled before can still read it.
    actions: VecDeque<Pending<R>>,
    rng: fastrand::Rng,
    /// Time stamps are kept as nanoseconds since this (the first `now` seen), to keep entries small.
    epoch: Option<Instant>,
    /// The latest `now` handed in: time never goes back in here, whatever a driver passes.
    latest: Option<Instant>,
    seq: u64,
    entries: usize,
    unfinished: usize,
    in_flight: usize,
    lent: usize,
    delayed: usize,
    waiting_robots: usize,
    stopped: bool,
    stats: Stats,
}

/// An action waiting to be polled.
// Most queued actions are fetches: boxing them would cost an allocation per hop.
#[allow(clippy::large_enum_variant)]
enum Pending<R> {
    Fetch(Fetch),
    Callback(Box<Lent>),
    Persist(Persist),
    HandOff(HandOff<R>),
}

/// An [`Action::Callback`] without its request, which stays in its slot until polled.
struct Lent {
    id: RequestId,
    now: Instant,
    hop: Option<HopEvents>,
    redirect: Option<Url>,
    outcome: Option<Box<Outcome>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    WaitingRobots,
    Delayed,
    InFlight,
    /// The request is out with the driver for callbacks.
    Lent,
}

/// What to do when a lent request comes back.
enum After {
    Finish,
    /// At this time stamp.
    Retry(u64),
    Redirect(Box<Redirect>),
}

struct Entry<R> {
    /// `None` for a robots.txt job, and while lent to the driver.
    request: Option<R>,
    /// For a robots.txt job: the origin it fetches for.
    /// For a robots.txt job: the origin it fetches for; `NOT_ROBOTS` for a request (a
    /// sentinel rather than an `Option`, to keep entries small).
    robots: OriginId,
    state: State,
    cancelled: bool,
    host: HostId,
    priority: i32,
    hop: u32,
    retries: u16,
    redirects: u16,
    seq: u64,
    enqueued_at: u64,
    started_at: u64,
    hop_started: u64,
    route: Option<Box<Route>>,
    after: After,
}

impl<R> Entry<R> {
    fn url(&self) -> &Url
    where
        R: Request,
    {
        match (&self.route, &self.request) {
            (Some(route), _) => &route.url,
            (None, Some(request)) => request.url(),
            (None, None) => {
                unreachable!("a request without a route is never lent while its URL is needed")
            }
        }
    }
}

// What can be asked of any scheduler, whatever its requests (a driver's `Drop` asks it).
impl<R> Scheduler<R> {
    /// Unfinished requests (queued, waiting, in flight, or with callbacks pending).
    pub fn len(&self) -> usize {
        self.unfinished
    }

    /// Whether no request is unfinished.
    pub fn is_empty(&self) -> bool {
        self.unfinished == 0
    }
}

impl<R: Request> Scheduler<R> {
    /// A scheduler with these settings and this policy.
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: url::Url }
    /// # impl downpour::Request for Page { fn url(&self) -> &url::Url { &self.url } }
    /// use downpour::{Config, Polite, Scheduler};
    /// let scheduler = Scheduler::<Page>::new(Config::default(), Polite::new()).unwrap();
    /// let bad = Config { concurrency: 0, ..Config::default() };
    /// assert!(Scheduler::<Page>::new(bad, Polite::new()).is_err());
    /// ```
    pub fn new(config: Config, policy: impl Policy + 'static) -> Result<Self, ConfigError> {
        Self::with_policy(config, Box::new(policy))
    }

    /// Like [`new`](Scheduler::new), with a boxed policy (chosen at run time).
    pub fn with_policy(config: Config, mut policy: Box<dyn Policy>) -> Result<Self, ConfigError> {
        config.validate()?;
        policy.configure(&config)?;
        Ok(Scheduler {
            obeys_robots: policy.obeys_robots(),
            robots: RobotsCache::new(config.robots_agent(), config.robots.cache_size),
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            policy,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            hosts: Hosts::default(),
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            epoch: None,
            latest: None,
            seq: 0,
            entries: 0,
            unfinished: 0,
            in_flight: 0,
            lent: 0,
            delayed: 0,
            waiting_robots: 0,
            stopped: false,
            stats: Stats::default(),
        })
    }

    // ----- getters -----

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the policy paces hosts ([`Policy::paces`]): whether a driver needs to know
    /// exactly when each response ended.
    pub fn paces(&self) -> bool {
        self.policy.paces()
    }

    /// Hops in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether there is nothing left to do: nothing in flight, no callback or action
    /// pending, and nothing unfinished (or the scheduler is stopped).
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0
            && self.lent == 0
            && self.actions.is_empty()
            && (self.stopped || self.entries == 0)
    }

    /// Whether [`stop`](Scheduler::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// A request the scheduler holds (not while its callbacks run).
    pub fn request(&self, id: RequestId) -> Option<&R> {
        self.entry(id)?.request.as_ref()
    }

    /// Counters and current sizes.
    pub fn stats(&self) -> Stats {
        Stats {
            unfinished: self.unfinished,
            queued: self.policy.len(),
            delayed: self.delayed,
            waiting_robots: self.waiting_robots,
            in_flight: self.in_flight,
            hosts: self.hosts.len(),
            ..self.stats.clone()
        }
    }

    /// The name of a host the scheduler knows (for policies and displays).
    pub fn host_name(&self, host: HostId) -> Option<&str> {
        Some(self.hosts.name(host)).filter(|n| !n.is_empty())
    }

    /// Why a host waits at `now`, if it does.
    pub fn host_wait(&self, now: Instant, host: &str) -> Option<Wait> {
        self.policy.wait(now, self.hosts.get(host)?)
    }

    /// How many hosts wait, and why, at `now`. Costs O(hosts): for progress displays.
    pub fn wait_summary(&self, now: Instant) -> WaitSummary {
        let mut summary = WaitSummary {
            robots: self.robots.pending().0,
            ..WaitSummary::default()
        };
        for host in self.hosts.iter() {
            match self.policy.wait(now, host).map(|w| w.reason) {
                Some(WaitReason::Delay) => summary.delay += 1,
                Some(WaitReason::Backoff) => summary.backoff += 1,
                Some(WaitReason::InFlightLimit) => summary.in_flight_limit += 1,
                Some(WaitReason::Robots) => summary.robots += 1,
                None => {}
            }
        }
        summary
    }

    // ----- commands -----

    /// Accepts a request. It is checked now: one that could never be fetched (not http or
    /// https, no host) comes back in the error.
    pub fn enqueue(&mut self, now: Instant, request: R) -> Result<RequestId, EnqueueError<R>> {
        let now = self.observe(now);
        let id = self.accept(now, request, None, true)?;
        self.fill(now);
        Ok(id)
    }

    /// Accepts many requests; returns those refused, each with its reason.
    #[must_use = "refused requests are handed back"]
    pub fn extend(
        &mut self,
        now: Instant,
        requests: impl IntoIterator<Item = R>,
    ) -> Vec<EnqueueError<R>> {
        let now = self.observe(now);
        let mut refused = Vec::new();
        for request in requests {
            if let Err(e) = self.accept(now, request, None, true) {
                refused.push(e);
            }
        }
        self.fill(now);
        refused
    }

    /// Accepts a request restored from durable storage: like [`enqueue`](Scheduler::enqueue),
    /// without a [`Persist::Accepted`] (it is stored already).
    pub fn restore(&mut self, now: Instant, request: R) -> Result<RequestId, EnqueueError<R>> {
        let now = self.observe(now);
        let id = self.accept(now, request, None, false)?;
        self.fill(now);
        Ok(id)
    }

    /// Cancels a request: it ends with [`FetchError::Cancelled`] (at once when queued; when
    /// its hop in flight returns, or its callbacks come back, otherwise). Returns whether the
    /// request was unfinished.
    pub fn cancel(&mut self, now: Instant, id: RequestId) -> bool {
        let now = self.observe(now);
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        if entry.robots != NOT_ROBOTS || entry.cancelled {
            return false;
        }
        entry.cancelled = true;
        let state = entry.state;
        let queued = Queued {
            id,
            host: entry.host,
            priority: entry.priority,
            seq: entry.seq,
        };
        match state {
            State::Queued => {
                self.policy.remove(&queued);
            }
            State::Delayed => self.delayed -= 1,
            State::WaitingRobots => self.waiting_robots -= 1,
            State::InFlight | State::Lent => return true,
        }
        self.finish(now, id.index, None, Err(FetchError::Cancelled));
        self.fill(now);
        true
    }

    /// Stops starting fetches. Hops in flight finish and their callbacks run; everything else
    /// stays queued (take it with [`take_unfinished`](Scheduler::take_unfinished), or leave
    /// it in durable storage).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Changes this scheduler's share of the hosts ([`Config::partition`]), for a worker that
    /// moves to another partition of a crawl. Requests already here stay here; redirects
    /// from now on are handed off by the new partition.
    pub fn set_partition(&mut self, partition: Option<Partition>) -> Result<(), ConfigError> {
        if let Some(p) = partition {
            p.validate()?;
        }
        self.config.partition = partition;
        Ok(())
    }

    /// Starts fetching again after [`stop`](Scheduler::stop).
    pub fn resume(&mut self, now: Instant) {
        let now = self.observe(now);
        self.stopped = false;
        self.fill(now);
    }

    /// Takes back every request that is waiting (queued, delayed, or waiting for robots.txt),
    /// in order of acceptance. Requests in flight or with callbacks out stay. Usually called
    /// after [`stop`](Scheduler::stop), once [`in_flight`](Scheduler::in_flight) is 0.
    pub fn take_unfinished(&mut self) -> Vec<(RequestId, R)> {
        self.policy.drain();
        let mut taken = Vec::new();
        for index in 0..self.slots.len() as u32 {
            let Some(entry) = &self.slots[index as usize] else {
                continue;
            };
            if !matches!(
                entry.state,
                State::Queued | State::Delayed | State::WaitingRobots
            ) {
                continue;
            }
            let id = self.id_of(index);
            let entry = self.remove(index);
            match entry.state {
                State::Delayed => self.delayed -= 1,
                State::WaitingRobots => self.waiting_robots -= 1,
                _ => {}
            }
            if entry.robots != NOT_ROBOTS {
                let origin = entry.robots;
                self.robots.abandon(origin);
            }
            self.release_host(None, entry.host);
            if let Some(request) = entry.request {
                self.unfinished -= 1;
                taken.push((entry.seq, id, request));
            }
        }
        self.timers.clear();
        taken.sort_by_key(|t| t.0);
        taken.into_iter().map(|(_, id, r)| (id, r)).collect()
    }

    // ----- inputs -----

    /// The result of a hop handed out as [`Action::Fetch`], and when the hop ended.
    ///
    /// `ended` is when the response was complete (read to its last byte, or given up on at
    /// its limit) or the hop failed; never a time still to come, which would move the
    /// scheduler's clock ahead of the real one. A driver that handles each result as it
    /// arrives passes `Instant::now()`. One that hears of results late — its I/O runs on
    /// other threads, or its loop was busy — passes the time each one ended, which may be
    /// earlier than the `now` of its calls since: the host's delay then counts from the real
    /// end of its response, not from the moment the driver got round to it. Everything else
    /// (the hops this result lets start, the outcome, a retry's back-off) happens at the
    /// latest time handed in, so such a driver tells the present first, with
    /// [`handle_timeout`](Scheduler::handle_timeout).
    pub fn handle_fetch(
        &mut self,
        ended: Instant,
        id: FetchId,
        result: HopResult,
    ) -> Result<(), Unexpected> {
        let now = self.observe(ended);
        let index = id.request.index;
        let stamp = self.stamp(ended);
        let (host, latency) = match self.entry_mut(id.request) {
            Some(e) if e.state == State::InFlight && e.hop == id.hop => (
                e.host,
                Duration::from_nanos(stamp.saturating_sub(e.hop_started)),
            ),
            _ => return Err(Unexpected(id.request)),
        };
        self.in_flight -= 1;
        let (status, retry_after) = match &result {
            HopResult::Response(r) => (Some(r.status), ratelimit::retry_after(&r.headers)),
            HopResult::Failed(_) => (None, None),
        };
        let feedback = Feedback {
            status,
            retry_after,
            latency,
        };
        self.policy.handle_finish(ended, host, &feedback);
        if self.slot_entry(index).robots != NOT_ROBOTS {
            self.robots_result(now, index, result);
        } else {
            self.request_result(now, index, result, retry_after);
        }
        self.fill(now);
        Ok(())
    }

    /// A request handed over by the scheduler of another partition ([`Action::HandOff`]): it
    /// carries on here from its redirect's target, under this scheduler's politeness for that
    /// host (and its robots.txt). Returns its id here.
    ///
    /// The target is taken as it is, even when this scheduler's partition does not own its
    /// host: a driver with no way to the owner gives the hand-off back to the scheduler that
    /// made it, which then fetches the target itself.
    ///
    /// With [`Config::persist`], a hand-off counts as stored already (whoever carried it
    /// stored it on the way): no [`Persist::Accepted`], and a [`Persist::Finished`] at its end.
    pub fn handle_hand_off(&mut self, now: Instant, hand_off: HandOff<R>) -> RequestId {
        let now = self.observe(now);
        let Carried {
            request,
            partition: _,
            route,
            priority,
            retries,
            redirects,
        } = *hand_off.0;
        // The outcome reports the times carried in the route.
        let mut entry = self.new_entry(now, &route.url, priority);
        entry.request = Some(request);
        entry.retries = retries;
        entry.redirects = redirects;
        entry.route = Some(route);
        let id = self.insert(entry);
        self.unfinished += 1;
        self.stats.handed_in += 1;
        self.admit(now, id.index);
        self.fill(now);
        id
    }

    /// The report of an [`Action::Callback`] once run. Returns the request when it is
    /// finished (its `on_done` ran): it is yours again.
    pub fn handle_callback(
        &mut self,
        now: Instant,
        report: CallbackReport<R>,
    ) -> Result<Option<R>, Unexpected> {
        let now = self.observe(now);
        let CallbackReport {
            id,
            request,
            follow_ups,
            panic,
            succeeded,
        } = report;
        match self.entry(id) {
            Some(e) if e.state == State::Lent => {}
            _ => return Err(Unexpected(id)),
        }
        self.lent -= 1;
        for child in follow_ups {
            // Checked by `Context::enqueue` already.
            let _ = self.accept(now, child, Some(id), true);
        }
        if panic.is_some() {
            self.stats.callback_panics += 1;
        }
        let index = id.index;
        let entry = self.slot_entry_mut(index);
        let after = std::mem::replace(&mut entry.after, After::Finish);
        if let After::Finish = after {
            let entry = self.remove(index);
            self.unfinished -= 1;
            self.stats.finished += 1;
            if succeeded == Some(true) {
                self.stats.succeeded += 1;
            } else {
                self.stats.failed += 1;
            }
            if self.config.persist {
                self.actions
                    .push_back(Pending::Persist(Persist::Finished { id }));
            }
            self.release_host(Some(now), entry.host);
            self.fill(now);
            return Ok(Some(request));
        }
        entry.request = Some(request);
        if let Some((callback, message)) = panic {
            let error = FetchError::CallbackPanicked { callback, message };
            self.finish(now, index, None, Err(error));
        } else if entry.cancelled {
            self.finish(now, index, None, Err(FetchError::Cancelled));
        } else {
            match after {
                After::Finish => unreachable!("handled above"),
                After::Retry(at) => {
                    entry.state = State::Delayed;
                    self.delayed += 1;
                    let at = self.instant(at);
                    self.timers.push(Reverse((at, id)));
                    self.handle_timers(now);
                }
                After::Redirect(redirect) => self.follow_redirect(now, index, *redirect),
            }
        }
        self.fill(now);
        Ok(None)
    }

    /// Time passed. Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.observe(now);
        self.handle_timers(now);
        self.hosts.sweep(now, self.policy.as_mut());
        self.fill(now);
    }

    // ----- outputs -----

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        Some(match self.actions.pop_front()? {
            Pending::Fetch(fetch) => Action::Fetch(fetch),
            Pending::Persist(persist) => Action::Persist(persist),
            Pending::HandOff(hand_off) => Action::HandOff(hand_off),
            Pending::Callback(lent) => {
                let Lent {
                    id,
                    now,
                    hop,
                    redirect,
                    outcome,
                } = *lent;
                let request = self
                    .slot_entry_mut(id.index)
                    .request
                    .take()
                    .expect("a request is lent only once");
                Action::Callback(Callback {
                    id,
                    request,
                    now,
                    hop,
                    redirect,
                    outcome,
                })
            }
        })
    }

    /// When to call [`handle_timeout`](Scheduler::handle_timeout) next, if anything waits on
    /// time (retries, a host's delay). Other inputs may come earlier.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let retry = self.timers.peek().map(|t| t.0 .0);
        let policy = if !self.stopped && self.in_flight < self.config.concurrency {
            self.policy.poll_timeout()
        } else {
            None
        };
        match (retry, policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- internals -----

    /// `now`, or the latest time handed in when that is later.
    fn observe(&mut self, now: Instant) -> Instant {
        let latest = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(latest);
        latest
    }

    fn stamp(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(UNSET - 1)
    }

    fn instant(&self, stamp: u64) -> Instant {
        let epoch = self.epoch.expect("a stamp was taken");
        epoch + Duration::from_nanos(stamp)
    }

    fn entry(&self, id: RequestId) -> Option<&Entry<R>> {
        if *self.generations.get(id.index as usize)? != id.generation {
            return None;
        }
        self.slots[id.index as usize].as_ref()
    }

    fn entry_mut(&mut self, id: RequestId) -> Option<&mut Entry<R>> {
        if *self.generations.get(id.index as usize)? != id.generation {
            return None;
        }
        self.slots[id.index as usize].as_mut()
    }

    fn slot_entry(&self, index: u32) -> &Entry<R> {
        self.slots[index as usize].as_ref().expect("live entry")
    }

    fn slot_entry_mut(&mut self, index: u32) -> &mut Entry<R> {
        self.slots[index as usize].as_mut().expect("live entry")
    }

    fn id_of(&self, index: u32) -> RequestId {
        RequestId {
            index,
            generation: self.generations[index as usize],
        }
    }

    fn insert(&mut self, entry: Entry<R>) -> RequestId {
        self.entries += 1;
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(entry);
                index
            }
            None => {
                self.slots.push(Some(entry));
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.id_of(index)
    }

    fn remove(&mut self, index: u32) -> Entry<R> {
        self.entries -= 1;
        let generation = &mut self.generations[index as usize];
        *generation = generation.wrapping_add(1);
        self.free.push(index);
        self.slots[index as usize].take().expect("live entry")
    }

    fn release_host(&mut self, now: Option<Instant>, host: HostId) {
        let now = now.or(self.epoch);
        if let Some(now) = now {
            self.hosts.release(now, host, self.policy.as_ref());
        }
    }

    fn accept(
        &mut self,
        now: Instant,
        request: R,
        parent: Option<RequestId>,
        persist: bool,
    ) -> Result<RequestId, EnqueueError<R>> {
        if let Err(reason) = check_url(request.url()) {
            return Err(EnqueueError { reason, request });
        }
        let mut entry = self.new_entry(now, request.url(), request.priority());
        entry.request = Some(request);
        let id = self.insert(entry);
        self.unfinished += 1;
        self.stats.accepted += 1;
        if persist && self.config.persist {
            self.actions
                .push_back(Pending::Persist(Persist::Accepted { id, parent }));
        }
        self.admit(now, id.index);
        Ok(id)
    }

    /// A request's current hop is ready: check robots.txt, then queue it.
    fn admit(&mut self, now: Instant, index: u32) {
        if !self.obeys_robots {
            self.push(now, index);
            return;
        }
        let id = self.id_of(index);
        let entry = self.slots[index as usize].as_ref().expect("live entry");
        let check = self.robots.check(now, entry.url());
        match check {
            Check::Allowed { crawl_delay } => {
                if let Some(d) = crawl_delay
                    .and_then(|s| robots::crawl_delay(s, self.config.robots.max_crawl_delay))
                {
                    self.policy.set_crawl_delay(entry.host, d);
                }
                self.push(now, index);
            }
            Check::Disallowed => {
                let url = entry.url().clone();
                self.stats.disallowed += 1;
                self.finish(now, index, None, Err(FetchError::Disallowed { url }));
            }
            Check::Unavailable { origin, reason } => {
                self.finish(
                    now,
                    index,
                    None,
                    Err(FetchError::RobotsUnavailable { origin, reason }),
                );
            }
            Check::Pending(origin) => {
                self.robots.wait(origin, id);
                self.slot_entry_mut(index).state = State::WaitingRobots;
                self.waiting_robots += 1;
            }
            Check::Missing(origin) => {
                let url = robots::robots_url(entry.url());
                self.robots.wait(origin, id);
                self.slot_entry_mut(index).state = State::WaitingRobots;
                self.waiting_robots += 1;
                self.spawn_robots(now, origin, url);
            }
        }
    }

    /// A new entry for `url`'s host, enqueued now and queued for its first hop, with no
    /// request, route, retry or redirect yet: the caller fills in what it is.
    fn new_entry(&mut self, now: Instant, url: &Url, priority: i32) -> Entry<R> {
        let stamp = self.stamp(now);
        let host = self.hosts.acquire(url.host_str().unwrap_or(""));
        self.seq += 1;
        Entry {
            request: None,
            robots: NOT_ROBOTS,
            state: State::Queued,
            cancelled: false,
            host,
            priority,
            hop: 0,
            retries: 0,
            redirects: 0,
            seq: self.seq,
            enqueued_at: stamp,
            started_at: UNSET,
            hop_started: UNSET,
            route: None,
            after: After::Finish,
        }
    }

    fn spawn_robots(&mut self, now: Instant, origin: OriginId, url: Url) {
        let mut entry = self.new_entry(now, &url, ROBOTS_PRIORITY);
        entry.robots = origin;
        entry.route = Some(Box::new(Route {
            url,
            method: Method::GET,
            drop_body: true,
            visited: Vec::new(),
            handed_in: None,
        }));
        let id = self.insert(entry);
        self.stats.robots_fetches += 1;
        self.push(now, id.index);
    }

    fn push(&mut self, now: Instant, index: u32) {
        let id = self.id_of(index);
        let entry = self.slot_entry_mut(index);
        entry.state = State::Queued;
        let item = Queued {
            id,
            host: entry.host,
            priority: entry.priority,
            seq: entry.seq,
        };
        self.policy.push(now, item);
    }

    /// Starts as many hops as the policy and the global limit allow.
    fn fill(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        while self.in_flight < self.config.concurrency {
            let Some(item) = self.policy.pop(now) else {
                break;
            };
            self.dispatch(now, item);
        }
    }

    fn dispatch(&mut self, now: Instant, item: Queued) {
        let stamp = self.stamp(now);
        let robots_max = self.config.robots.max_size;
        let config_max = self.config.max_body_size;
        let timeout = self.config.timeout;
        let max_header_size = self.config.max_header_size;
        let Some(entry) = self.entry_mut(item.id).filter(|e| e.state == State::Queued) else {
            // Not ours to start (a policy handed back something it was not given): give the
            // slot back so its accounting stays right.
            let feedback = Feedback {
                status: None,
                retry_after: None,
                latency: Duration::ZERO,
            };
            self.policy.handle_finish(now, item.host, &feedback);
            return;
        };
        entry.state = State::InFlight;
        entry.hop += 1;
        entry.hop_started = stamp;
        if entry.started_at == UNSET {
            entry.started_at = stamp;
        }
        let id = FetchId {
            request: item.id,
            hop: entry.hop,
        };
        let fetch = match (&entry.request, &entry.route) {
            (Some(request), route) => {
                let (method, url, body) = match route {
                    Some(route) => (
                        route.method.clone(),
                        route.url.clone(),
                        if route.drop_body {
                            Bytes::new()
                        } else {
                            request.body()
                        },
                    ),
                    None => (request.method(), request.url().clone(), request.body()),
                };
                Fetch {
                    id,
                    purpose: Purpose::Request(item.id),
                    method,
                    url,
                    headers: request.headers(),
                    body,
                    timeout,
                    max_body_size: config_max,
                    max_header_size,
                    proxy: request.proxy(),
                }
            }
            (None, Some(route)) => Fetch {
                id,
                purpose: Purpose::Robots,
                method: Method::GET,
                url: route.url.clone(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
                timeout,
                max_body_size: robots_max,
                max_header_size,
                proxy: None,
            },
            (None, None) => {
                unreachable!("only queued entries are dispatched, and they hold their request")
            }
        };
        self.in_flight += 1;
        self.stats.fetches += 1;
        self.actions.push_back(Pending::Fetch(fetch));
    }

    fn request_result(
        &mut self,
        now: Instant,
        index: u32,
        result: HopResult,
        retry_after: Option<Duration>,
    ) {
        let entry = self.slot_entry(index);
        if entry.cancelled {
            self.finish(now, index, None, Err(FetchError::Cancelled));
            return;
        }
        let response = match result {
            HopResult::Failed(error) => {
                if error.kind.is_retryable() {
                    self.retry_or_fail(now, index, None, FetchError::Transport(error), None);
                } else {
                    self.finish(now, index, None, Err(FetchError::Transport(error)));
                }
                return;
            }
            HopResult::Response(response) => response,
        };
        if response.truncated {
            let limit = self.config.max_body_size;
            self.finish(
                now,
                index,
                Some(hop_events(response)),
                Err(FetchError::BodyTooLarge { limit }),
            );
            return;
        }
        let current = entry.url();
        let method = match &entry.route {
            Some(route) => route.method.clone(),
            None => entry.request.as_ref().map_or(Method::GET, Request::method),
        };
        match redirect::follow(current, &method, response.status, &response.headers) {
            Some(Err(error)) => {
                self.finish(now, index, Some(hop_events(response)), Err(error));
            }
            Some(Ok(next)) => {
                let looped = next.url == *current
                    || entry
                        .route
                        .as_ref()
                        .is_some_and(|r| r.visited.contains(&next.url));
                if u32::from(entry.redirects) >= self.config.max_redirects {
                    let limit = self.config.max_redirects;
                    self.finish(
                        now,
                        index,
                        Some(hop_events(response)),
                        Err(FetchError::TooManyRedirects { limit }),
                    );
                } else if looped {
                    let url = next.url;
                    self.finish(
                        now,
                        index,
                        Some(hop_events(response)),
                        Err(FetchError::RedirectLoop { url }),
                    );
                } else {
                    let target = next.url.clone();
                    self.lend(
                        now,
                        index,
                        Some(hop_events(response)),
                        Some(target),
                        None,
                        After::Redirect(Box::new(next)),
                    );
                }
            }
            None => {
                let status = response.status;
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    let url = current.clone();
                    let response = into_response(url, response);
                    self.retry_or_fail(
                        now,
                        index,
                        None,
                        FetchError::Status(Box::new(response)),
                        retry_after,
                    );
                } else {
                    let response = into_response(current.clone(), response);
                    let result = if status.is_success() || status.is_redirection() {
                        Ok(response)
                    } else {
                        Err(FetchError::Status(Box::new(response)))
                    };
                    self.finish(now, index, None, result);
                }
            }
        }
    }

    /// A retryable failure: retry after a back-off, or end with `error`.
    fn retry_or_fail(
        &mut self,
        now: Instant,
        index: u32,
        hop: Option<HopEvents>,
        error: FetchError,
        retry_after: Option<Duration>,
    ) {
        let retries = self.slot_entry(index).retries;
        match retry::decide(&self.config, u32::from(retries), retry_after, &mut self.rng) {
            Verdict::Retry(delay) => {
                self.stats.retries += 1;
                let entry = self.slot_entry_mut(index);
                entry.retries = entry.retries.saturating_add(1);
                // The attempt's response is reported through on_status/on_headers.
                let hop = hop.or_else(|| match error {
                    FetchError::Status(response) => Some(HopEvents {
                        version: response.version,
                        status: response.status,
                        headers: response.headers,
                    }),
                    _ => None,
                });
                let at = self.stamp(now + delay);
                self.lend(now, index, hop, None, None, After::Retry(at));
            }
            Verdict::Exhausted => self.finish(now, index, hop, Err(error)),
            Verdict::TooLong(retry_after) => {
                let error = match error {
                    FetchError::Status(response) => FetchError::RetryAfterTooLong {
                        retry_after,
                        limit: self.config.max_retry_after,
                        response,
                    },
                    other => other,
                };
                self.finish(now, index, hop, Err(error));
            }
        }
    }

    /// Ends a request: its final callbacks go out, and it is removed when they come back.
    fn finish(
        &mut self,
        now: Instant,
        index: u32,
        hop: Option<HopEvents>,
        result: Result<Response, FetchError>,
    ) {
        let stamp = self.stamp(now);
        let entry = self.slot_entry(index);
        let has_response = match &result {
            Ok(_) => true,
            Err(e) => e.response().is_some(),
        };
        let last_url = (!has_response).then(|| entry.url().clone());
        let times = self.times(entry);
        let outcome = Outcome {
            result,
            last_url,
            redirects: u32::from(entry.redirects),
            retries: u32::from(entry.retries),
            enqueued_at: times.enqueued_at,
            started_at: times.started_at,
            finished_at: self.instant(stamp),
        };
        self.lend(
            now,
            index,
            hop,
            None,
            Some(Box::new(outcome)),
            After::Finish,
        );
    }

    /// When a request was enqueued and first started: here, or where it was handed over from.
    fn times(&self, entry: &Entry<R>) -> Times {
        let started_here = (entry.started_at != UNSET).then(|| self.instant(entry.started_at));
        match entry.route.as_ref().and_then(|r| r.handed_in) {
            Some(there) => Times {
                enqueued_at: there.enqueued_at,
                started_at: there.started_at.or(started_here),
            },
            None => Times {
                enqueued_at: self.instant(entry.enqueued_at),
                started_at: started_here,
            },
        }
    }

    fn lend(
        &mut self,
        now: Instant,
        index: u32,
        hop: Option<HopEvents>,
        redirect: Option<Url>,
        outcome: Option<Box<Outcome>>,
        after: After,
    ) {
        let id = self.id_of(index);
        let entry = self.slot_entry_mut(index);
        entry.state = State::Lent;
        entry.after = after;
        debug_assert!(entry.request.is_some(), "a request is lent only once");
        self.lent += 1;
        self.actions.push_back(Pending::Callback(Box::new(Lent {
            id,
            now,
            hop,
            redirect,
            outcome,
        })));
    }

    fn follow_redirect(&mut self, now: Instant, index: u32, next: Redirect) {
        let entry = self.slot_entry_mut(index);
        let old_host = entry.host;
        let route = match &mut entry.route {
            Some(route) => route,
            None => {
                let request = entry.request.as_ref().expect("request is back");
                entry.route.insert(Box::new(Route {
                    url: request.url().clone(),
                    method: request.method(),
                    drop_body: false,
                    visited: Vec::new(),
                    handed_in: None,
                }))
            }
        };
        let previous = std::mem::replace(&mut route.url, next.url);
        route.visited.push(previous);
        route.method = next.method;
        route.drop_body |= next.drop_body;
        entry.redirects = entry.redirects.saturating_add(1);
        let host_name = route.url.host_str().unwrap_or("").to_string();
        self.stats.redirects += 1;
        if let Some(partition) = self.config.partition {
            let owner = partition_of(&host_name, partition.count);
            if owner != partition.index {
                self.hand_off(now, index, owner);
                return;
            }
        }
        let host = self.hosts.acquire(&host_name);
        self.slot_entry_mut(index).host = host;
        self.release_host(Some(now), old_host);
        self.admit(now, index);
    }

    /// Passes a request on to the scheduler of `partition`, which owns the host of its next
    /// hop: it leaves this one as if it had finished, without callbacks.
    fn hand_off(&mut self, now: Instant, index: u32, partition: u32) {
        let id = self.id_of(index);
        let entry = self.remove(index);
        self.unfinished -= 1;
        self.stats.handed_off += 1;
        self.release_host(Some(now), entry.host);
        let times = self.times(&entry);
        let mut route = entry.route.expect("a redirected request has a route");
        route.handed_in = Some(times);
        let hand_off = HandOff(Box::new(Carried {
            request: entry.request.expect("a request is back from its callbacks"),
            partition,
            route,
            priority: entry.priority,
            retries: entry.retries,
            redirects: entry.redirects,
        }));
        self.actions.push_back(Pending::HandOff(hand_off));
        // After the hand-off, so that storage holds it before this request is removed.
        if self.config.persist {
            self.actions
                .push_back(Pending::Persist(Persist::Finished { id }));
        }
    }

    fn robots_result(&mut self, now: Instant, index: u32, result: HopResult) {
        let max_redirects = self.config.robots.max_redirects;
        let entry = self.slot_entry(index);
        let origin = entry.robots;
        debug_assert_ne!(origin, NOT_ROBOTS, "a robots job");
        let failure = match result {
            HopResult::Failed(error) => Some(error.to_string()),
            HopResult::Response(response) => {
                let status = response.status;
                if redirect::is_redirect(status) {
                    match redirect::follow(entry.url(), &Method::GET, status, &response.headers) {
                        Some(Ok(next)) if u32::from(entry.redirects) < max_redirects => {
                            self.robots_redirect(now, index, next.url);
                            return;
                        }
                        // Too many or unusable redirects: robots.txt counts as absent.
                        _ => {
                            self.robots_settled(now, index, None);
                            return;
                        }
                    }
                }
                if status.is_success() {
                    self.robots_settled(now, index, Some(response.body));
                    return;
                }
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    Some(format!("HTTP {status}"))
                } else {
                    // 4xx (and anything else final): no robots.txt, everything allowed.
                    self.robots_settled(now, index, None);
                    return;
                }
            }
        };
        let Some(reason) = failure else { return };
        let attempts = self.robots.record_failure(origin);
        let robots = &self.config.robots;
        if attempts < robots.max_attempts {
            let delay = robots
                .retry_delay
                .saturating_mul(1u32 << (attempts - 1).min(16));
            let id = self.id_of(index);
            self.slot_entry_mut(index).state = State::Delayed;
            self.delayed += 1;
            self.timers.push(Reverse((now + delay, id)));
            return;
        }
        let until = now + robots.unavailable_for;
        let key = self.robots.key(origin).to_string();
        let waiters = self.robots.set_unavailable(origin, until, reason.clone());
        self.drop_robots_job(now, index);
        for waiter in waiters {
            if let Some(w) = self.take_waiter(waiter) {
                let error = FetchError::RobotsUnavailable {
                    origin: key.clone(),
                    reason: reason.clone(),
                };
                self.finish(now, w, None, Err(error));
            }
        }
    }

    fn robots_redirect(&mut self, now: Instant, index: u32, url: Url) {
        let entry = self.slot_entry_mut(index);
        entry.redirects = entry.redirects.saturating_add(1);
        let old_host = entry.host;
        let route = entry.route.as_mut().expect("robots jobs have a route");
        let host_name = url.host_str().unwrap_or("").to_string();
        route.url = url;
        let host = self.hosts.acquire(&host_name);
        self.slot_entry_mut(index).host = host;
        self.release_host(Some(now), old_host);
        self.push(now, index);
    }

    fn robots_settled(&mut self, now: Instant, index: u32, body: Option<Bytes>) {
        let origin = self.slot_entry(index).robots;
        debug_assert_ne!(origin, NOT_ROBOTS, "a robots job");
        let expires = now + self.config.robots.ttl;
        let waiters = self.robots.set_rules(origin, body.as_deref(), expires);
        // Crawl-delay paces the host from this response on, even when no waiter is admitted
        // to pass it on (all disallowed or cancelled): set it before the job lets go of it.
        let cap = self.config.robots.max_crawl_delay;
        if let Some(delay) = self
            .robots
            .crawl_delay(origin)
            .and_then(|s| robots::crawl_delay(s, cap))
        {
            let key = Url::parse(self.robots.key(origin)).ok();
            if let Some(host) = key.and_then(|k| self.hosts.get(k.host_str()?)) {
                self.policy.set_crawl_delay(host, delay);
            }
        }
        self.drop_robots_job(now, index);
        for waiter in waiters {
            if let Some(w) = self.take_waiter(waiter) {
                self.admit(now, w);
            }
        }
    }

    fn drop_robots_job(&mut self, now: Instant, index: u32) {
        let entry = self.remove(index);
        self.release_host(Some(now), entry.host);
    }

    /// The slot of a request that waited for robots.txt, if it still does.
    fn take_waiter(&mut self, id: RequestId) -> Option<u32> {
        let entry = self.entry_mut(id)?;
        if entry.state != State::WaitingRobots {
            return None;
        }
        entry.state = State::Queued;
        self.waiting_robots -= 1;
        Some(id.index)
    }

    fn handle_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let due = matches!(self.entry(id), Some(e) if e.state == State::Delayed);
            if due {
                self.delayed -= 1;
                self.push(now, id.index);
            }
        }
    }
}

fn hop_events(response: HopResponse) -> HopEvents {
    HopEvents {
        version: response.version,
        status: response.status,
        headers: response.headers,
    }
}

fn into_response(url: Url, hop: HopResponse) -> Response {
    Response {
        url,
        status: hop.status,
        version: hop.version,
        headers: hop.headers,
        body: hop.body,
    }
}
