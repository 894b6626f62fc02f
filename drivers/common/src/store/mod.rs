//! Durable, shared queues in Redis, written once for every driver.
//!
//! [`Store`] is a state machine like the scheduler: it never touches a socket or a clock.
//! It turns the scheduler's [`Persist`] actions and the application's enqueues into Redis
//! pipelines, reads the replies, and restores stored requests into the scheduler. A
//! driver only runs the pipelines it hands out, one at a time, on its own kind of
//! connection:
//!
//! ```text
//! loop {
//!     drain scheduler.poll_action(): Persist(p) => store.handle_persist(p, &scheduler), ...
//!     if store.is_finished(&scheduler) { break }
//!     if no pipeline is running { if let Some(p) = store.poll_pipeline(now, &mut scheduler) { run p } }
//!     wait for: a hop, the pipeline's reply (store.handle_reply), or the earlier of
//!               scheduler.poll_timeout() and store.poll_timeout()
//! }
//! ```
//!
//! What it guarantees:
//! - Every unfinished request is in Redis. Requests enqueued by the application go to an
//!   inbox first and reach the scheduler only once stored; follow-ups are stored before the
//!   request whose callback enqueued them is removed. After a crash, whatever was in flight
//!   is fetched again (at least once).
//! - Hosts are split into partitions by a stable hash ([`partition_of`]); one worker at a
//!   time runs a partition, holding a lease that it renews. Requests for a host of another
//!   partition go to that partition's inbox, so one worker fetches each host and politeness
//!   holds across all workers; so does a request that a redirect takes to such a host
//!   ([`handle_hand_off`](Store::handle_hand_off)), stored there before it is removed here.
//!   A worker whose lease lapses stops fetching before anybody else can take the partition.
//! - When Redis goes away, fetches in flight finish, writes wait, and the connection is
//!   retried with back-off; after [`RedisOptions::give_up_after`] the run ends with
//!   [`StoreError::Unreachable`]: what it stored stays in Redis, and what it could not
//!   write (requests enqueued or handed off meanwhile) waits for the next run, which tries
//!   again. A Redis out of memory (`maxmemory` reached, and its policy evicts nothing)
//!   refuses writes without applying any: it is waited for the same way, and the run ends
//!   with [`StoreError::OutOfMemory`]. A Redis that evicts keys when full instead could
//!   drop a crawl's requests or leases: the drivers log that risk when they connect
//!   ([`eviction_risk`]). A write that Redis refuses for another reason (a key
//!   of the crawl holding foreign data) ends the run with an error naming the key; Redis
//!   applies the rest of its transaction, and only the refused part waits for the next run.
//! - When a worker's partition is done it helps: it takes over a partition whose worker
//!   died. It finishes once no partition holds work.
//! - A finished store is not spent: requests enqueued after the end are written to their
//!   inboxes before a run returns, and the next run ([`begin_run`](Store::begin_run)), or
//!   an enqueue while a run waits for more, starts the crawl over. After the application's
//!   stop it only writes them, until it [`resume`](Store::resume)s.

mod keys;
mod scripts;

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use downpour::{parse_url, CallbackReport, EnqueueError, HandOff, InvalidRequest, Partition};
use downpour::{Persist, Request, RequestId, Scheduler};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::Closing;

pub use keys::{partition_of, Keys, PartitionKeys, FORMAT, HAND_OFF, READABLE_FORMATS};

/// Where and how a crawl is kept in Redis.
///
/// ```
/// use std::time::Duration;
/// let options = downpour_common::store::RedisOptions {
///     url: "redis://127.0.0.1:6379/".into(),
///     prefix: "news-crawl".into(),
///     partitions: 8,
///     ..Default::default()
/// };
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The server, as `redis://[user:password@]host:port/db`. Default `redis://127.0.0.1:6379/`.
    pub url: String,
    /// Prefix of every key, so that several crawls share one Redis. No `{` or `}`.
    /// Default `downpour`.
    pub prefix: String,
    /// How many partitions the hosts are split into: the most workers that can fetch at
    /// once. Fixed when the crawl starts. Default 1.
    pub partitions: u32,
    /// Run this partition only (waiting for it if another worker holds it). Default `None`:
    /// the first free one.
    pub partition: Option<u32>,
    /// How long a lease outlives its worker. A worker renews it every third of this; a
    /// killed worker's partition waits this long for another worker. Default 10 s.
    pub lease_ttl: Duration,
    /// How often the inbox is read, and how often an idle worker looks for work. Default 100 ms.
    pub poll_interval: Duration,
    /// Most writes in one pipeline. Default 1024.
    pub batch_size: usize,
    /// Most requests held in memory; the rest wait in Redis. Default 100,000.
    pub max_in_memory: usize,
    /// How long Redis may stay unreachable (or refuse writes, out of memory) before the run
    /// ends with an error. Default 120 s.
    pub give_up_after: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "downpour".into(),
            partitions: 1,
            partition: None,
            lease_ttl: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            batch_size: 1024,
            max_in_memory: 100_000,
            give_up_after: Duration::from_secs(120),
        }
    }
}

impl RedisOptions {
    /// The longest a connect or one pipeline may take: a third of the lease, so a failure is
    /// retried well before the lease lapses.
    pub fn command_timeout(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// The client for [`url`](RedisOptions::url) (parsed, not connected yet).
    pub fn client(&self) -> Result<redis::Client, StoreError> {
        redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::Options(format!("Redis URL {}: {e}", redacted_url(&self.url))))
    }

    /// The error for a Redis that cannot be reached at start.
    pub fn unreachable(&self, last: impl ToString) -> StoreError {
        StoreError::Unreachable {
            url: redacted_url(&self.url),
            waited: Duration::ZERO,
            last: last.to_string(),
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |message: String| Err(StoreError::Options(message));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad(format!(
                "prefix `{}` must be non-empty without `{{` or `}}`",
                self.prefix
            ));
        }
        if self.partitions == 0 {
            return bad("partitions must be at least 1".into());
        }
        if let Some(p) = self.partition {
            if p >= self.partitions {
                return bad(format!(
                    "partition {p} does not exist: there are {} (0 to {})",
                    self.partitions,
                    self.partitions - 1
                ));
            }
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return bad("lease_ttl must be at least 300 ms".into());
        }
        if self.batch_size == 0 || self.max_in_memory == 0 {
            return bad("batch_size and max_in_memory must be at least 1".into());
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be more than 0".into());
        }
        Ok(())
    }
}

/// Why a run with Redis ended early, or could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The options cannot work.
    #[error("invalid Redis options: {0}")]
    Options(String),
    /// Redis stayed unreachable too long.
    #[error("Redis at {url} unreachable for {waited:.1?} ({last}); the run stopped: what it stored stays there, and what it could not write waits for the fetcher's next run")]
    Unreachable {
        /// The server (without its password).
        url: String,
        /// How long it was unreachable.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// Redis refused writes too long for want of memory (`maxmemory` reached, and its policy
    /// evicts nothing).
    #[error("Redis at {url} refused writes for {waited:.1?}: it is out of memory ({last}); raise its maxmemory or free memory there. The run stopped: what it stored stays there, and what it could not write waits for the fetcher's next run")]
    OutOfMemory {
        /// The server (without its password).
        url: String,
        /// How long it refused writes.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// A key under the prefix holds data this layout did not write.
    #[error("Redis key {key} holds foreign data ({message}); use another prefix or remove it")]
    Foreign {
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The crawl was started with other settings.
    #[error("the crawl under prefix `{prefix}` was started with {stored}; this worker was given {given}")]
    Mismatch {
        /// The prefix.
        prefix: String,
        /// The stored setting.
        stored: String,
        /// This worker's setting.
        given: String,
    },
    /// Redis answered with an error.
    #[error("Redis refused {what}: {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// What Redis said.
        message: String,
    },
}

/// A change to write, in order.
#[derive(Debug, Clone)]
enum Write {
    /// Store a request of the worker's partition, a follow-up of the stored request
    /// `parent`, if any.
    Put {
        id: Box<str>,
        json: String,
        parent: Option<Box<str>>,
    },
    /// Remove a finished request.
    Delete { id: Box<str> },
    /// Send a request to a partition's inbox.
    Inbox { partition: u32, json: String },
    /// Move an unreadable entry aside.
    Reject { id: Box<str>, text: String },
}

#[derive(Debug, Clone)]
enum Op {
    Meta,
    Acquire(u32),
    Scan(u64),
    Write(Vec<Write>),
    Claim,
    Renew,
    Status,
    Release,
}

impl Op {
    fn name(&self) -> String {
        match self {
            Op::Write(w) => format!("write {}", w.len()),
            other => format!("{other:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Checking the crawl's settings.
    Meta,
    /// Looking for a partition to run.
    Acquire,
    /// Running a partition.
    Running,
    /// The lease was lost: waiting for what is in flight, then looking again.
    Draining,
    /// Nothing is left anywhere (or the application stopped): giving the lease back.
    Releasing,
    Done,
    Failed,
}

/// The partition a worker runs.
#[derive(Debug, Clone)]
struct Owned {
    partition: u32,
    keys: PartitionKeys,
    epoch: i64,
    /// Until when no other worker can hold it, by this worker's clock (with a margin).
    valid_until: Instant,
}

/// Durable queues for one worker. See the [module docs](self).
pub struct Store<R> {
    options: RedisOptions,
    keys: Keys,
    token: String,
    phase: Phase,
    owned: Option<Owned>,
    /// Next partition to try, and how many were tried in this round.
    candidate: u32,
    tried: u32,
    writes: VecDeque<Write>,
    /// Stored id of every request in the scheduler that is stored.
    ids: FxHashMap<RequestId, Box<str>>,
    /// The same ids, to skip entries a scan returns twice or that are in memory already.
    in_memory: FxHashSet<Box<str>>,
    next_id: u64,
    scan: Option<u64>,
    running: Option<(Op, Instant)>,
    failed: Option<Op>,
    retry_at: Option<Instant>,
    down_since: Option<Instant>,
    last_failure: String,
    /// Whether the last failure was Redis out of memory, rather than unreachable.
    out_of_memory: bool,
    backoff: Duration,
    next_renew: Option<Instant>,
    next_poll: Option<Instant>,
    status_due: bool,
    /// Fetching ends: the application stopped, or the whole crawl is done.
    stopped: bool,
    /// The application stopped (until it resumes); a run whose crawl was done starts over.
    stopped_by_application: bool,
    /// Started over: what the scheduler still holds is stored, and is dropped from memory
    /// before anything is fetched (the partition's worker restores it).
    forget_in_memory: bool,
    /// Resumed while giving the lease back: it starts over once it is given back.
    resumed: bool,
    /// From [`begin_run`](Store::begin_run) to [`end_run`](Store::end_run): a run left at an
    /// await point and entered again (its future dropped, as the command does at every tick
    /// of its progress) goes on where it was rather than beginning anew.
    run_under_way: bool,
    /// The lease ran out by this worker's clock: fetching is paused until it is renewed.
    paused: bool,
    /// Requests that end are not removed (their fetches were aborted).
    keep_finished: bool,
    /// The inbox may hold requests: the last claim took a full batch, or this worker has
    /// written to it since.
    inbox_has_more: bool,
    waiting_logged: bool,
    error: Option<StoreError>,
    /// Requests for this store that its fetcher's handles sent and no run took in before
    /// the fetcher was dropped.
    never_given: usize,
    _requests: PhantomData<fn() -> R>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl<R> Drop for Store<R> {
    /// Requests that the store holds and never wrote (a fetcher dropped after a failed run,
    /// or after enqueueing without a run) are said, not dropped silently.
    fn drop(&mut self) {
        let inbox = self.unwritten_requests();
        if inbox > 0 {
            log::error!(
                "{inbox} requests enqueued or handed off were never written to Redis (no run wrote them before the fetcher was dropped): they are not stored"
            );
        }
    }
}

impl<R> Store<R> {
    /// The requests enqueued or handed off that are not stored yet: in writes to an inbox
    /// that Redis has not acknowledged, or never given to this store (see
    /// [`count_unwritten`](Store::count_unwritten)).
    pub fn unwritten_requests(&self) -> usize {
        self.unacknowledged()
            .flatten()
            .filter(|w| matches!(w, Write::Inbox { .. }))
            .count()
            + self.never_given
    }

    /// Counts `requests` meant for this store that it will never get (its fetcher is
    /// dropped while they wait in its handles' channel) with those it never wrote.
    pub fn count_unwritten(&mut self, requests: usize) {
        self.never_given += requests;
    }

    /// The writes not yet acknowledged by Redis: those of the pipeline running, of the one
    /// waiting for a retry, and those queued.
    fn unacknowledged(&self) -> impl Iterator<Item = &[Write]> {
        let (front, back) = self.writes.as_slices();
        [
            self.running.as_ref().map(|(op, _)| op),
            self.failed.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|op| match op {
            Op::Write(writes) => Some(writes.as_slice()),
            _ => None,
        })
        .chain([front, back])
    }
}

impl<R: Request> Store<R> {
    /// A store for one worker; `token` names it in leases (unique per process: random).
    pub fn new(options: RedisOptions, token: String) -> Result<Store<R>, StoreError> {
        options.validate()?;
        let keys = Keys::new(&options.prefix, options.partitions);
        let candidate = options.partition.unwrap_or(0);
        Ok(Store {
            options,
            keys,
            token,
            phase: Phase::Meta,
            owned: None,
            candidate,
            tried: 0,
            writes: VecDeque::new(),
            ids: FxHashMap::default(),
            in_memory: FxHashSet::default(),
            next_id: 0,
            scan: None,
            running: None,
            failed: None,
            retry_at: None,
            down_since: None,
            last_failure: String::new(),
            out_of_memory: false,
            backoff: MIN_BACKOFF,
            next_renew: None,
            next_poll: None,
            status_due: false,
            stopped: false,
            stopped_by_application: false,
            forget_in_memory: false,
            resumed: false,
            run_under_way: false,
            paused: false,
            keep_finished: false,
            inbox_has_more: true,
            waiting_logged: false,
            error: None,
            never_given: 0,
            _requests: PhantomData,
        })
    }

    /// The options.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The partition this worker runs now, if any.
    pub fn partition(&self) -> Option<u32> {
        self.owned.as_ref().map(|o| o.partition)
    }

    /// Why the run ended early, if it did.
    pub fn error(&self) -> Option<&StoreError> {
        self.error.as_ref()
    }

    /// Writes not yet acknowledged by Redis.
    pub fn pending_writes(&self) -> usize {
        self.unacknowledged().map(<[Write]>::len).sum()
    }

    /// Whether the run is over: the whole crawl is done (or the application stopped) and
    /// every write is acknowledged, or Redis stayed away too long and nothing is in flight.
    pub fn is_finished(&self, scheduler: &Scheduler<R>) -> bool {
        match self.phase {
            // Requests enqueued after the end are written before a run returns.
            Phase::Done => self.pending_writes() == 0,
            Phase::Failed => scheduler.in_flight() == 0,
            _ => false,
        }
    }

    /// Whether a run with no hop in flight ends: the crawl is over for this run
    /// ([`is_finished`](Store::is_finished)) and no handle is waited for (in
    /// `run_until_closed`, see [`Closing::waits`]), or the store failed, which ends it
    /// whatever the handles would still send.
    pub fn ends_run(
        &self,
        scheduler: &Scheduler<R>,
        closing: &Closing,
        until_closed: bool,
    ) -> bool {
        self.is_finished(scheduler)
            && (self.error.is_some() || !closing.waits(until_closed, self.stopped_by_application))
    }

    // ----- inputs -----

    /// A request from the application: checked, then written to the inbox of its host's
    /// partition. It reaches a scheduler (this worker's or another's) once stored.
    pub fn enqueue(&mut self, request: R) -> Result<(), EnqueueError<R>> {
        if let Err(reason) = parse_url(request.url().as_str()) {
            return Err(EnqueueError { reason, request });
        }
        let json = match serde_json::to_string(&request) {
            Ok(json) => json,
            Err(e) => {
                let reason = InvalidRequest::Unserializable {
                    url: request.url().to_string(),
                    message: e.to_string(),
                };
                return Err(EnqueueError { reason, request });
            }
        };
        self.push_to_inbox(request.url(), json);
        Ok(())
    }

    /// Queues `json` for the inbox of the partition that owns `url`'s host in this crawl. A
    /// crawl that was done has work again; one the application stopped only stores it.
    fn push_to_inbox(&mut self, url: &url::Url, json: String) {
        let partition = self.keys.partition_of(url.host_str().unwrap_or(""));
        self.writes.push_back(Write::Inbox { partition, json });
        if self.phase == Phase::Done && !self.stopped_by_application {
            self.start_over();
        }
    }

    /// A [`Persist`] action, as soon as it is polled.
    pub fn handle_persist(&mut self, persist: Persist, scheduler: &Scheduler<R>) {
        match persist {
            Persist::Accepted { id, parent } => {
                let Some(request) = scheduler.request(id) else {
                    return;
                };
                match serde_json::to_string(request) {
                    Ok(json) => {
                        let stored = self.new_id();
                        self.ids.insert(id, stored.clone());
                        self.in_memory.insert(stored.clone());
                        let parent = parent.and_then(|p| self.ids.get(&p).cloned());
                        self.writes.push_back(Write::Put {
                            id: stored,
                            json,
                            parent,
                        });
                    }
                    Err(e) => log::error!(
                        "request {id} for {} cannot be serialized ({e}): it is kept in memory only",
                        request.url()
                    ),
                }
            }
            Persist::Finished { id } => {
                if let Some(stored) = self.ids.remove(&id) {
                    self.in_memory.remove(&stored);
                    if !self.keep_finished {
                        self.writes.push_back(Write::Delete { id: stored });
                    }
                }
            }
        }
    }

    /// Takes the follow-ups of a callback report whose host another partition owns, and
    /// writes them to that partition's inbox. Call it before handing the report back.
    pub fn route_follow_ups(&mut self, report: &mut CallbackReport<R>) {
        let own = self.owned.as_ref().map(|o| o.partition);
        let follow_ups = report.follow_ups_mut();
        if follow_ups.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(follow_ups.len());
        for request in follow_ups.drain(..) {
            let partition = self
                .keys
                .partition_of(request.url().host_str().unwrap_or(""));
            if Some(partition) == own && self.phase != Phase::Draining {
                kept.push(request);
                continue;
            }
            match serde_json::to_string(&request) {
                Ok(json) => self.writes.push_back(Write::Inbox { partition, json }),
                Err(_) => kept.push(request),
            }
        }
        *follow_ups = kept;
    }

    /// A hand-off: a redirect took a request to a host of another partition (an
    /// [`Action::HandOff`](downpour::Action::HandOff) of this fetcher's scheduler, or one
    /// passed in through a handle from a scheduler elsewhere). It is written to the inbox of
    /// the partition that owns its target's host in this crawl (a scheduler elsewhere may
    /// count its partitions otherwise), before the request's removal here (the
    /// [`Persist::Finished`] that follows an own one). Like an enqueue, it gives a crawl that
    /// was done work again. One that cannot be written goes into `scheduler`, which fetches
    /// it itself.
    pub fn handle_hand_off(
        &mut self,
        now: Instant,
        hand_off: HandOff<R>,
        scheduler: &mut Scheduler<R>,
    ) {
        match serde_json::to_string(&hand_off) {
            Ok(json) => self.push_to_inbox(hand_off.url(), format!("{HAND_OFF}{json}")),
            Err(e) => {
                log::error!(
                    "a request redirected to {} cannot be serialized ({e}): it is fetched here, in memory only",
                    hand_off.url()
                );
                scheduler.handle_hand_off(now, hand_off);
            }
        }
    }

    /// The application stops: fetching ends, writes are flushed, the lease is given back.
    /// Requests enqueued while it is stopped are stored (by the next run, if this one has
    /// returned) and fetched once it resumes.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.stopped_by_application = true;
    }

    /// The application stops at once, aborting the fetches in flight: like
    /// [`stop`](Store::stop), and the requests that end from now on (the aborted ones) stay
    /// stored, for a run after [`resume`](Store::resume) (or another worker) to fetch.
    pub fn stop_now(&mut self) {
        self.stop();
        self.keep_finished = true;
    }

    /// Whether the last run ended early: the application stopped (and has not resumed), or
    /// the store failed. A handle's close that came stays then, for the run that finishes
    /// the rest (see [`Closing::returned`]).
    pub fn ended_early(&self) -> bool {
        self.stopped_by_application || self.error.is_some()
    }

    /// The application resumes after a stop. A store still holding its partition fetches on;
    /// one that gave it back (the run returned) starts over: it takes a partition again, and
    /// the requests the stop left in the scheduler are dropped from memory, since they are
    /// stored and the worker of their partition (this one again, most often) restores them.
    /// A store that failed tries again at the next run (see [`begin_run`](Store::begin_run)).
    pub fn resume(&mut self) {
        if !self.stopped_by_application {
            return;
        }
        self.stopped_by_application = false;
        self.keep_finished = false;
        match self.phase {
            Phase::Done => self.start_over(),
            Phase::Releasing => self.resumed = true,
            Phase::Failed => {}
            // Still holding the partition: fetching goes on.
            _ => self.stopped = false,
        }
    }

    /// A run begins: a store whose crawl was done looks again, since workers (this one
    /// too, between runs) may have added requests; one the application stopped stays
    /// stopped until [`resume`](Store::resume)d, and only writes what was enqueued since.
    ///
    /// A store that failed tries again, since Redis may be back (or the foreign data gone):
    /// the error is cleared, what was enqueued or handed off and not written yet goes to its
    /// inbox, and the crawl starts over. A removal of a finished request that was not
    /// written is dropped (it named a partition this worker no longer holds): that request
    /// is fetched again. The cause of a failure that persists fails the run again.
    ///
    /// A run that was left at an await point and is entered again goes on instead: a failed
    /// store ends it once nothing is in flight.
    pub fn begin_run(&mut self) {
        if std::mem::replace(&mut self.run_under_way, true) {
            return;
        }
        if self.phase == Phase::Failed {
            self.error = None;
            // The lease lapses by itself (its renewals stopped); the crawl starts over.
            self.owned = None;
            self.down_since = None;
            self.last_failure.clear();
            self.out_of_memory = false;
            self.backoff = MIN_BACKOFF;
            self.retry_at = None;
            self.drop_partition_writes();
            self.phase = Phase::Done;
        }
        if self.phase == Phase::Done && !self.stopped_by_application {
            self.start_over();
        }
    }

    /// A run returned: the next call of [`begin_run`](Store::begin_run) begins one.
    pub fn end_run(&mut self) {
        self.run_under_way = false;
    }

    /// When [`poll_pipeline`](Store::poll_pipeline) has something to do next (a lease
    /// renewal, a poll of the inbox, a retry after back-off).
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The lease's end pauses fetching; once passed it is no deadline any more.
        let lease = self
            .owned
            .as_ref()
            .filter(|_| !self.paused)
            .map(|o| o.valid_until);
        if self.running.is_some() {
            // Everything else waits for the reply.
            return lease;
        }
        match self.phase {
            // Only writes are left to retry: no lease, no polling.
            Phase::Done => return self.retry_at,
            Phase::Failed => return None,
            _ => {}
        }
        [self.retry_at, self.next_renew, self.next_poll, lease]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next pipeline to run, if any. Call it when no pipeline is running, after any
    /// input; it also stops and resumes the scheduler as the lease comes and goes.
    pub fn poll_pipeline(
        &mut self,
        now: Instant,
        scheduler: &mut Scheduler<R>,
    ) -> Option<redis::Pipeline> {
        self.sync(now, scheduler);
        if self.running.is_some() {
            return None;
        }
        let op = self.next_op(now, scheduler)?;
        log::debug!(
            "{:?} phase {:?}: {}",
            self.owned.as_ref().map(|o| o.partition),
            self.phase,
            op.name()
        );
        let pipeline = self.build(&op);
        self.running = Some((op, now));
        Some(pipeline)
    }

    /// The reply to the last pipeline handed out.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        reply: RedisResult<Vec<Value>>,
        scheduler: &mut Scheduler<R>,
    ) {
        let Some((op, sent)) = self.running.take() else {
            return;
        };
        log::debug!(
            "reply to {}: {}",
            op.name(),
            if reply.is_ok() { "ok" } else { "error" }
        );
        match reply {
            Ok(values) => {
                if self.down_since.take().is_some() {
                    if self.out_of_memory {
                        log::warn!("Redis at {} takes writes again", self.redacted_url());
                    } else {
                        log::warn!("Redis at {} is reachable again", self.redacted_url());
                    }
                }
                self.backoff = MIN_BACKOFF;
                if let Err(e) = self.apply(now, sent, op, values, scheduler) {
                    self.fail(e, None, scheduler);
                }
            }
            // Refused for want of memory, Redis applied none of it: sent again, it passes
            // once memory is freed (a crawl's queue outgrew `maxmemory`, say).
            Err(e) if transient(&e) || out_of_memory(&e) => {
                let out_of_memory = !transient(&e);
                let said = match server_errors(&e).first() {
                    // Redis's own words, once, rather than once per command it refused.
                    Some(s) if out_of_memory => {
                        format!("{} {}", s.code(), s.details().unwrap_or_default())
                    }
                    _ => e.to_string(),
                };
                let since = *self.down_since.get_or_insert(now);
                if self.last_failure.is_empty()
                    || since == now
                    || out_of_memory != self.out_of_memory
                {
                    if out_of_memory {
                        log::warn!(
                            "Redis at {} is out of memory and refuses writes ({said}); fetches in flight go on, writes wait, retrying",
                            self.redacted_url()
                        );
                    } else {
                        log::warn!(
                            "Redis at {} unreachable ({said}); fetches in flight go on, writes wait, retrying",
                            self.redacted_url()
                        );
                    }
                }
                self.last_failure = said;
                self.out_of_memory = out_of_memory;
                if now.duration_since(since) >= self.options.give_up_after {
                    let (url, waited, last) = (
                        self.redacted_url(),
                        now.duration_since(since),
                        self.last_failure.clone(),
                    );
                    let error = if out_of_memory {
                        StoreError::OutOfMemory { url, waited, last }
                    } else {
                        StoreError::Unreachable { url, waited, last }
                    };
                    self.fail(error, Some(op), scheduler);
                    return;
                }
                self.failed = Some(op);
                // The last retry comes when the time is up, not up to a back-off later.
                let limit = since + self.options.give_up_after;
                self.retry_at = Some((now + self.backoff).min(limit));
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                let errors = server_errors(&e);
                let code = errors.first().map(|s| s.code());
                let error = self.refused(&op, code, e.to_string());
                // A transaction Redis aborted applied nothing: its writes wait for the next
                // run, as do those of a reply that cannot be read (at least once).
                self.fail(error, Some(op), scheduler);
            }
        }
    }

    // ----- internals -----

    fn new_id(&mut self) -> Box<str> {
        self.next_id += 1;
        format!("{}-{:x}", self.token, self.next_id).into_boxed_str()
    }

    fn redacted_url(&self) -> String {
        redacted_url(&self.options.url)
    }

    /// From `Done` back to the start: the crawl's settings, a partition, its requests. Nothing
    /// is in flight and every request this worker had is stored.
    fn start_over(&mut self) {
        debug_assert_eq!(self.phase, Phase::Done);
        self.phase = Phase::Meta;
        self.owned = None;
        self.candidate = self.options.partition.unwrap_or(0);
        self.tried = 0;
        self.forget_in_memory = true;
        self.ids.clear();
        self.in_memory.clear();
        self.scan = None;
        self.next_renew = None;
        self.next_poll = None;
        self.status_due = false;
        self.stopped = false;
        self.resumed = false;
        self.keep_finished = false;
        self.inbox_has_more = true;
        self.waiting_logged = false;
    }

    /// The run ends with `error`. The writes of `unsent` (the pipeline that Redis was not
    /// there for) and of one waiting to be retried stay queued, first, with the rest: the
    /// next run writes them.
    fn fail(&mut self, error: StoreError, unsent: Option<Op>, scheduler: &mut Scheduler<R>) {
        log::error!("{error}");
        self.error = Some(error);
        self.phase = Phase::Failed;
        self.running = None;
        for op in [unsent, self.failed.take()].into_iter().flatten() {
            if let Op::Write(writes) = op {
                for write in writes.into_iter().rev() {
                    self.writes.push_front(write);
                }
            }
        }
        scheduler.stop();
    }

    /// Keeps the scheduler fetching exactly while this worker may.
    fn sync(&mut self, now: Instant, scheduler: &mut Scheduler<R>) {
        if std::mem::take(&mut self.forget_in_memory) {
            scheduler.stop();
            drop(scheduler.take_unfinished());
        }
        if let Some(owned) = &self.owned {
            let expired = now >= owned.valid_until;
            if self.phase == Phase::Running && expired && !self.paused {
                // Renewal may still succeed (`RENEW` takes the lease back if nobody else
                // had it); fetching resumes then.
                log::warn!(
                    "the lease on partition {} could not be renewed in time: fetching paused",
                    owned.partition
                );
            }
            if self.paused && !expired {
                log::warn!(
                    "lease on partition {} renewed: fetching again",
                    owned.partition
                );
            }
            self.paused = expired;
        } else {
            self.paused = false;
        }
        let may_fetch = !self.stopped
            && self.phase == Phase::Running
            && self.owned.as_ref().is_some_and(|o| now < o.valid_until);
        if may_fetch && scheduler.is_stopped() {
            scheduler.resume(now);
        } else if !may_fetch && !scheduler.is_stopped() {
            scheduler.stop();
        }
        // Drivers run callbacks as soon as they are polled, so none is out here.
        let quiet = scheduler.in_flight() == 0;
        if self.phase == Phase::Draining && quiet && self.pending_writes() == 0 {
            // What is left is stored: whoever holds the partition now runs it.
            drop(scheduler.take_unfinished());
            self.ids.clear();
            self.in_memory.clear();
            self.owned = None;
            self.scan = None;
            self.next_renew = None;
            self.next_poll = Some(now);
            self.phase = Phase::Acquire;
            self.candidate = self.options.partition.unwrap_or(0);
            self.tried = 0;
        }
        if self.stopped
            && matches!(self.phase, Phase::Running | Phase::Acquire | Phase::Meta)
            && quiet
            && self.pending_writes() == 0
        {
            self.phase = Phase::Releasing;
        }
    }

    fn next_op(&mut self, now: Instant, scheduler: &Scheduler<R>) -> Option<Op> {
        if let Some(op) = self.failed.take() {
            if self.retry_at.is_some_and(|at| now < at) {
                self.failed = Some(op);
                return None;
            }
            self.retry_at = None;
            return Some(op);
        }
        match self.phase {
            // Requests enqueued after the end go to their inboxes (no lease needed).
            Phase::Done => self.take_inbox_writes(),
            Phase::Failed => None,
            Phase::Meta => Some(Op::Meta),
            Phase::Acquire => {
                // Holding no partition, only inbox pushes are queued: they go first, so that
                // a look at the whole crawl counts them.
                if let Some(op) = self.take_writes_if_any() {
                    return Some(op);
                }
                if self.next_poll.is_some_and(|at| now < at) {
                    return None;
                }
                self.next_poll = None;
                if self.status_due {
                    self.status_due = false;
                    return Some(Op::Status);
                }
                Some(Op::Acquire(self.candidate))
            }
            Phase::Releasing => {
                if self.pending_writes() > 0 {
                    return self.take_writes_if_any();
                }
                if self.owned.is_some() {
                    Some(Op::Release)
                } else {
                    self.phase = Phase::Done;
                    None
                }
            }
            Phase::Running | Phase::Draining => {
                if self.next_renew.is_some_and(|at| now >= at) {
                    return Some(Op::Renew);
                }
                // A scheduler short of work gets it before a long queue of writes is
                // flushed (a large enqueue would otherwise hold fetching back).
                let unfinished = scheduler.stats().unfinished;
                let starving = unfinished < 2 * scheduler.config().concurrency;
                if starving
                    && self.inbox_has_more
                    && self.scan.is_none()
                    && self.phase == Phase::Running
                    && !self.stopped
                {
                    self.inbox_has_more = false;
                    return Some(Op::Claim);
                }
                if let Some(op) = self.take_writes_if_any() {
                    return Some(op);
                }
                if self.phase == Phase::Draining || self.stopped {
                    return None;
                }
                let room = unfinished < self.options.max_in_memory;
                if let Some(cursor) = self.scan {
                    return room.then_some(Op::Scan(cursor));
                }
                if self.next_poll.is_some_and(|at| now < at) {
                    return None;
                }
                self.next_poll = Some(now + self.options.poll_interval);
                if self.status_due {
                    self.status_due = false;
                    return Some(Op::Status);
                }
                room.then_some(Op::Claim)
            }
        }
    }

    /// The inbox pushes, with no partition held: any other write (of a request kept in memory
    /// only, that ended after the partition was given back) has no partition to go to.
    fn take_inbox_writes(&mut self) -> Option<Op> {
        self.drop_partition_writes();
        self.take_writes_if_any()
    }

    /// Drops the writes that need the partition (all but inbox pushes), with no partition
    /// held: a removal's request is fetched again, a set-aside entry read again, and a
    /// follow-up made again by its parent, whose removal came after it.
    fn drop_partition_writes(&mut self) {
        let before = self.writes.len();
        self.writes.retain(|w| matches!(w, Write::Inbox { .. }));
        if self.writes.len() < before {
            log::warn!(
                "{} writes for a partition this worker no longer holds were dropped",
                before - self.writes.len()
            );
        }
    }

    fn take_writes_if_any(&mut self) -> Option<Op> {
        if self.writes.is_empty() {
            return None;
        }
        let n = self.writes.len().min(self.options.batch_size);
        Some(Op::Write(self.writes.drain(..n).collect()))
    }

    fn build(&self, op: &Op) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let ttl = self.options.lease_ttl.as_millis() as u64;
        match op {
            Op::Meta => {
                let meta = self.keys.meta();
                pipe.cmd("HSETNX").arg(&meta).arg("format").arg(FORMAT);
                pipe.cmd("HSETNX")
                    .arg(&meta)
                    .arg("partitions")
                    .arg(self.options.partitions);
                pipe.cmd("HGET").arg(&meta).arg("format");
                pipe.cmd("HGET").arg(&meta).arg("partitions");
            }
            Op::Acquire(p) => {
                let keys = self.keys.partition(*p);
                pipe.cmd("EVAL")
                    .arg(scripts::ACQUIRE)
                    .arg(2)
                    .arg(&keys.lease)
                    .arg(&keys.epoch)
                    .arg(&self.token)
                    .arg(ttl);
            }
            Op::Scan(cursor) => {
                let owned = self
                    .owned
                    .as_ref()
                    .expect("a scan runs on an owned partition");
                let count = self.options.batch_size;
                pipe.cmd("HSCAN")
                    .arg(&owned.keys.requests)
                    .arg(*cursor)
                    .arg("COUNT")
                    .arg(count);
            }
            Op::Write(writes) => {
                // Each command's reply, a failed one's too: see `apply`.
                pipe.atomic().ignore_errors();
                self.build_writes(&mut pipe, writes);
            }
            Op::Claim => {
                let owned = self
                    .owned
                    .as_ref()
                    .expect("claims run on an owned partition");
                pipe.cmd("EVAL")
                    .arg(scripts::CLAIM)
                    .arg(4)
                    .arg(&owned.keys.lease)
                    .arg(&owned.keys.inbox)
                    .arg(&owned.keys.requests)
                    .arg(&owned.keys.seq)
                    .arg(&self.token)
                    .arg(self.options.batch_size);
            }
            Op::Renew => {
                let owned = self.owned.as_ref().expect("renewing an owned partition");
                pipe.cmd("EVAL")
                    .arg(scripts::RENEW)
                    .arg(2)
                    .arg(&owned.keys.lease)
                    .arg(&owned.keys.epoch)
                    .arg(&self.token)
                    .arg(ttl)
                    .arg(owned.epoch);
            }
            Op::Status => {
                for p in 0..self.keys.partitions() {
                    let keys = self.keys.partition(p);
                    pipe.cmd("HLEN").arg(&keys.requests);
                    pipe.cmd("LLEN").arg(&keys.inbox);
                    pipe.cmd("EXISTS").arg(&keys.lease);
                }
            }
            Op::Release => {
                let owned = self.owned.as_ref().expect("releasing an owned partition");
                pipe.cmd("EVAL")
                    .arg(scripts::RELEASE)
                    .arg(1)
                    .arg(&owned.keys.lease)
                    .arg(&self.token);
            }
        }
        pipe
    }

    fn build_writes(&self, pipe: &mut redis::Pipeline, writes: &[Write]) {
        let owned = || {
            self.owned
                .as_ref()
                .expect("writes other than inbox pushes come from an owned partition")
        };
        for group in writes.chunk_by(one_command) {
            match &group[0] {
                Write::Put { .. } => {
                    let keys = &owned().keys;
                    let cmd = pipe
                        .cmd("EVAL")
                        .arg(scripts::PUT)
                        .arg(3)
                        .arg(&keys.requests)
                        .arg(&keys.lease)
                        .arg(&keys.inbox)
                        .arg(&self.token);
                    for write in group {
                        if let Write::Put { id, json, .. } = write {
                            cmd.arg(&**id).arg(json);
                        }
                    }
                }
                Write::Delete { .. } => {
                    let cmd = pipe.cmd("HDEL").arg(&owned().keys.requests);
                    for write in group {
                        if let Write::Delete { id } = write {
                            cmd.arg(&**id);
                        }
                    }
                }
                Write::Inbox { partition, .. } => {
                    let cmd = pipe.cmd("RPUSH").arg(self.keys.partition(*partition).inbox);
                    for write in group {
                        if let Write::Inbox { json, .. } = write {
                            cmd.arg(json);
                        }
                    }
                }
                Write::Reject { id, text } => {
                    let keys = &owned().keys;
                    pipe.cmd("EVAL")
                        .arg(scripts::REJECT)
                        .arg(2)
                        .arg(&keys.requests)
                        .arg(&keys.rejected)
                        .arg(&**id)
                        .arg(text);
                }
            }
        }
    }

    fn apply(
        &mut self,
        now: Instant,
        sent: Instant,
        op: Op,
        values: Vec<Value>,
        scheduler: &mut Scheduler<R>,
    ) -> Result<(), StoreError> {
        let ttl = self.options.lease_ttl;
        // A lease is ours until `sent + ttl` by Redis's clock; keep a fifth as margin.
        let valid_until = sent + ttl - ttl / 5;
        match op {
            Op::Meta => {
                let meta = self.keys.meta();
                let format = text(values.get(2));
                let partitions = text(values.get(3));
                if !format
                    .as_deref()
                    .is_some_and(|f| READABLE_FORMATS.contains(&f))
                {
                    return Err(StoreError::Foreign {
                        key: meta,
                        message: format!(
                            "layout format {format:?}, expected one of {READABLE_FORMATS:?}"
                        ),
                    });
                }
                let given = self.options.partitions.to_string();
                if partitions.as_deref() != Some(given.as_str()) {
                    return Err(StoreError::Mismatch {
                        prefix: self.options.prefix.clone(),
                        stored: format!("{} partitions", partitions.unwrap_or_default()),
                        given: format!("{given} partitions"),
                    });
                }
                self.phase = Phase::Acquire;
            }
            Op::Acquire(p) => {
                let epoch = int(values.first()).unwrap_or(0);
                if epoch > 0 {
                    log::info!(
                        "running partition {p} of {} (prefix `{}`)",
                        self.options.partitions,
                        self.options.prefix
                    );
                    // Redirects to the hosts of other partitions are handed to them.
                    let partition = Partition {
                        index: p,
                        count: self.options.partitions,
                    };
                    scheduler
                        .set_partition(Some(partition))
                        .expect("the options keep every partition below the count");
                    self.owned = Some(Owned {
                        partition: p,
                        keys: self.keys.partition(p),
                        epoch,
                        valid_until,
                    });
                    self.phase = Phase::Running;
                    self.scan = Some(0);
                    self.next_renew = Some(sent + ttl / 3);
                    self.next_poll = None;
                    self.waiting_logged = false;
                } else if let Some(fixed) = self.options.partition {
                    if !self.waiting_logged {
                        log::info!("partition {fixed} is held by another worker: waiting for its lease to end");
                        self.waiting_logged = true;
                    }
                    self.next_poll = Some(now + self.options.poll_interval);
                } else {
                    self.tried += 1;
                    self.candidate = (self.candidate + 1) % self.options.partitions;
                    if self.tried >= self.options.partitions {
                        // No partition is free: look at the whole crawl (it may be done).
                        self.tried = 0;
                        self.status_due = true;
                    }
                }
            }
            Op::Scan(_) => {
                let (cursor, items) = scan_reply(values)
                    .ok_or_else(|| self.foreign_requests("unexpected HSCAN reply"))?;
                for pair in items.chunks(2) {
                    self.restore(now, &pair[0], &pair[1], scheduler);
                }
                if cursor == 0 {
                    self.scan = None;
                    self.next_poll = Some(now);
                } else {
                    self.scan = Some(cursor);
                }
            }
            Op::Write(writes) => {
                let own = self.owned.as_ref().map(|o| o.partition);
                if writes
                    .iter()
                    .any(|w| matches!(w, Write::Inbox { partition, .. } if Some(*partition) == own))
                {
                    self.inbox_has_more = true;
                }
                // One reply per command; a `PUT` that answers 0 found another lease. Redis
                // applies the rest of a transaction when one of its commands fails: only
                // the writes of those that failed wait for the next run, and end this one.
                let mut lost = false;
                let mut refused = None;
                let mut unwritten = Vec::new();
                let mut removed = FxHashSet::default();
                for (value, group) in values.iter().zip(writes.chunk_by(one_command)) {
                    match (value, &group[0]) {
                        (Value::ServerError(e), first) => {
                            refused.get_or_insert_with(|| self.write_refused(first, e));
                            unwritten.extend_from_slice(group);
                        }
                        (v, Write::Put { .. }) => lost |= int(Some(v)) == Some(0),
                        (_, Write::Delete { .. }) => {
                            removed.extend(group.iter().filter_map(|w| match w {
                                Write::Delete { id } => Some(id.clone()),
                                _ => None,
                            }));
                        }
                        _ => {}
                    }
                }
                if let Some(error) = refused {
                    for write in unwritten.into_iter().rev() {
                        // The parent's removal went through: the follow-up is stored only
                        // here now, and an inbox push (to the partition it was stored in)
                        // survives the next run's start.
                        let write = match (write, own) {
                            (
                                Write::Put {
                                    json,
                                    parent: Some(parent),
                                    ..
                                },
                                Some(partition),
                            ) if removed.contains(&parent) => Write::Inbox { partition, json },
                            (write, _) => write,
                        };
                        self.writes.push_front(write);
                    }
                    return Err(error);
                }
                if lost {
                    self.lose_lease("a write found another worker's lease");
                }
            }
            Op::Claim => {
                let mut items = flatten(values);
                if items.first().and_then(|v| int(Some(v))) != Some(1) {
                    self.lose_lease("the inbox is another worker's now");
                    return Ok(());
                }
                items.remove(0);
                let claimed = items.len() / 2;
                for pair in items.chunks(2) {
                    self.restore(now, &pair[0], &pair[1], scheduler);
                }
                if claimed >= self.options.batch_size {
                    self.inbox_has_more = true;
                    self.next_poll = Some(now);
                } else if claimed == 0
                    && scheduler.stats().unfinished == 0
                    && self.writes.is_empty()
                {
                    self.status_due = true;
                    self.next_poll = Some(now);
                }
            }
            Op::Renew => {
                self.next_renew = Some(sent + ttl / 3);
                if int(values.first()) == Some(1) {
                    if let Some(owned) = &mut self.owned {
                        owned.valid_until = valid_until;
                    }
                } else {
                    self.lose_lease("another worker holds it");
                }
            }
            Op::Status => {
                return self.apply_status(now, &values);
            }
            Op::Release => {
                self.owned = None;
                self.phase = if self.stopped {
                    Phase::Done
                } else {
                    Phase::Acquire
                };
                self.tried = 0;
                if std::mem::take(&mut self.resumed) && self.phase == Phase::Done {
                    self.start_over();
                }
            }
        }
        Ok(())
    }

    fn apply_status(&mut self, now: Instant, values: &[Value]) -> Result<(), StoreError> {
        let own = self.owned.as_ref().map(|o| o.partition);
        let mut total = 0;
        let mut takeover = None;
        for (p, counts) in values.chunks(3).enumerate() {
            let p = p as u32;
            let stored = int(counts.first()).unwrap_or(0);
            let inbox = int(counts.get(1)).unwrap_or(0);
            let leased = int(counts.get(2)).unwrap_or(0) == 1;
            total += stored + inbox;
            if Some(p) == own {
                if stored > 0 {
                    // Entries this worker does not have in memory: read them.
                    self.scan = Some(0);
                }
            } else if stored + inbox > 0 && !leased && takeover.is_none() {
                takeover = Some(p);
            }
        }
        if total == 0 && self.pending_writes() > 0 {
            // Requests enqueued since: they reach an inbox first, then the crawl is looked at again.
            self.status_due = true;
            return Ok(());
        }
        if total == 0 {
            log::info!("nothing left in any partition: the crawl is done");
            self.phase = if self.owned.is_some() {
                Phase::Releasing
            } else {
                Phase::Done
            };
            self.stopped = true;
            return Ok(());
        }
        if let (Some(p), None) = (takeover, self.options.partition) {
            if self.scan.is_none() {
                log::info!("partition {p} has work and no worker: taking it over");
                self.candidate = p;
                self.tried = 0;
                self.phase = if self.owned.is_some() {
                    Phase::Releasing
                } else {
                    Phase::Acquire
                };
                self.next_poll = None;
                return Ok(());
            }
        }
        if self.owned.is_none() {
            if !self.waiting_logged {
                log::info!("every partition with work has a worker: waiting for one to free up");
                self.waiting_logged = true;
            }
            self.next_poll = Some(now + self.options.poll_interval);
        }
        Ok(())
    }

    fn lose_lease(&mut self, why: &str) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(owned) = &self.owned {
            log::warn!(
                "lost the lease on partition {} ({why}): finishing what is in flight, leaving the rest to its new worker",
                owned.partition
            );
        }
        self.phase = Phase::Draining;
        self.next_renew = None;
    }

    fn restore(&mut self, now: Instant, id: &Value, json: &Value, scheduler: &mut Scheduler<R>) {
        let (Some(id), Some(json)) = (text(Some(id)), text(Some(json))) else {
            return;
        };
        if self.in_memory.contains(id.as_str()) {
            return;
        }
        let key = self
            .owned
            .as_ref()
            .map(|o| o.keys.requests.clone())
            .unwrap_or_default();
        let restored = match json.strip_prefix(HAND_OFF) {
            Some(hand_off) => serde_json::from_str::<HandOff<R>>(hand_off)
                .map(|h| scheduler.handle_hand_off(now, h))
                .map_err(|e| format!("not a hand-off of this program: {e}")),
            None => match serde_json::from_str::<R>(&json) {
                Ok(request) => scheduler
                    .restore(now, request)
                    .map_err(|e| e.reason.to_string()),
                Err(e) => Err(format!("not a request of this program: {e}")),
            },
        };
        let reason = match restored {
            Ok(request_id) => {
                let id: Box<str> = id.into();
                self.ids.insert(request_id, id.clone());
                self.in_memory.insert(id);
                return;
            }
            Err(reason) => reason,
        };
        log::error!("Redis key {key}, entry {id}: {reason}; moved to the rejected entries");
        self.writes.push_back(Write::Reject {
            id: id.into(),
            text: json,
        });
    }

    fn foreign_requests(&self, message: &str) -> StoreError {
        StoreError::Foreign {
            key: self
                .owned
                .as_ref()
                .map(|o| o.keys.requests.clone())
                .unwrap_or_default(),
            message: message.into(),
        }
    }

    /// Redis refused the command that wrote `write` (and the writes next to it like it),
    /// naming the keys it writes.
    fn write_refused(&self, write: &Write, e: &redis::ServerError) -> StoreError {
        let owned = self.owned.as_ref().map(|o| &o.keys);
        let requests = owned.map_or("the requests", |k| k.requests.as_str());
        let key = match write {
            Write::Inbox { partition, .. } => self.keys.partition(*partition).inbox,
            Write::Put { .. } => match owned {
                Some(k) => format!("{}, {} or {}", k.requests, k.lease, k.inbox),
                None => "the requests".to_string(),
            },
            Write::Delete { .. } => requests.to_string(),
            Write::Reject { .. } => format!(
                "{requests} or {}",
                owned.map_or("the rejected", |k| k.rejected.as_str())
            ),
        };
        if e.code() == "WRONGTYPE" {
            return StoreError::Foreign {
                key,
                message: e.to_string(),
            };
        }
        StoreError::Refused {
            what: format!("a write to {key}"),
            message: e.to_string(),
        }
    }

    /// Redis refused `op`: `code` and `message` are its error's.
    fn refused(&self, op: &Op, code: Option<&str>, message: String) -> StoreError {
        let what = match op {
            Op::Meta => format!("reading the crawl's settings at {}", self.keys.meta()),
            Op::Acquire(p) => format!("taking partition {p}"),
            Op::Scan(_) | Op::Claim | Op::Write(_) | Op::Renew | Op::Release => match &self.owned {
                Some(o) => format!(
                    "an update of partition {} ({})",
                    o.partition, o.keys.requests
                ),
                None => "an update of the inboxes".to_string(),
            },
            Op::Status => "reading the partitions' sizes".to_string(),
        };
        if code == Some("WRONGTYPE") {
            return StoreError::Foreign { key: what, message };
        }
        StoreError::Refused { what, message }
    }
}

/// What a crawl risks on a Redis that evicts keys when it is full, read from the text of
/// its `INFO memory`: `None` when it evicts nothing (`maxmemory-policy noeviction`, or no
/// `maxmemory`), or when the text does not say.
pub fn eviction_risk(info: &str) -> Option<String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
    };
    let policy = field("maxmemory_policy")?;
    let maxmemory: u64 = field("maxmemory")?.parse().ok()?;
    if maxmemory == 0 || policy == "noeviction" {
        return None;
    }
    let what = if policy.starts_with("volatile") {
        "the leases on partitions and on seeding, the only keys with a time to live (two workers may then run one partition, or seed a crawl), and still refuse writes once those are gone"
    } else {
        "any key: stored requests and inboxes (those requests are then lost), the counters that name requests (stored ones are then overwritten), the leases, the mark of a seeded crawl"
    };
    Some(format!(
        "evicts keys when full (maxmemory {maxmemory} bytes, maxmemory-policy {policy}): it may evict {what}; give the crawl maxmemory-policy noeviction (out of memory, a run then waits, and keeps what it could not write)"
    ))
}

/// Reads a fresh connection's reply to `INFO memory`: logs the eviction risk it shows, and
/// says whether the connection may be kept (not after a timeout or a broken stream; an
/// INFO that was denied, under an ACL or renamed, does no harm).
pub fn read_memory_info(url: &str, info: RedisResult<String>) -> bool {
    match info {
        Ok(info) => {
            warn_if_evicting(url, &info);
            true
        }
        Err(e) => !connection_broken(&e),
    }
}

/// Logs [`eviction_risk`] once per server and process, from the server's `INFO memory`
/// (once a logger shows warnings: not before, where it would be lost).
fn warn_if_evicting(url: &str, info: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Some(risk) = eviction_risk(info) else {
        return;
    };
    if !log::log_enabled!(log::Level::Warn) {
        return;
    }
    let url = redacted_url(url);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&url) {
        log::warn!("Redis at {url} {risk}");
        warned.push(url);
    }
}

/// Whether a connection that gave this error must be made again before the next pipeline:
/// after an I/O error or a timeout its stream may hold half a reply.
pub fn connection_broken(e: &RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout()
}

/// Whether an error may go away by itself (Redis restarting, the network).
fn transient(e: &RedisError) -> bool {
    connection_broken(e)
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain)
        )
        || all_codes(e, |c| {
            matches!(c, "LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN")
        })
}

/// Redis's errors in `e`, one per command it refused (of a pipeline or a transaction too,
/// where `RedisError::code` gives none, or `EXECABORT`); none when `e` is not Redis's
/// answer.
fn server_errors(e: &RedisError) -> Vec<redis::ServerError> {
    e.clone()
        .into_server_errors()
        .map(|errors| errors.iter().map(|(_, s)| s.clone()).collect())
        .unwrap_or_default()
}

/// Whether `e` holds Redis's errors, and every one has a code that `is`.
fn all_codes(e: &RedisError, is: impl Fn(&str) -> bool) -> bool {
    let errors = server_errors(e);
    !errors.is_empty() && errors.iter().all(|s| is(s.code()))
}

/// Whether Redis refused for want of memory (`OOM`: `maxmemory` reached, and its policy
/// evicts nothing), every error of a pipeline or transaction alike. Out of memory, Redis
/// refuses a command that may grow it, queues no command at all into a transaction (and
/// aborts it), and refuses a script at the first such write if it wrote nothing before:
/// nothing of what it refused was applied.
fn out_of_memory(e: &RedisError) -> bool {
    all_codes(e, |c| c == "OOM")
}

/// Whether two consecutive writes of a batch go in one command: puts together, deletes
/// together, pushes to one inbox together; each reject alone.
fn one_command(a: &Write, b: &Write) -> bool {
    match (a, b) {
        (Write::Put { .. }, Write::Put { .. }) | (Write::Delete { .. }, Write::Delete { .. }) => {
            true
        }
        (Write::Inbox { partition: p, .. }, Write::Inbox { partition: q, .. }) => p == q,
        _ => false,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Int(i) => Some(*i),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Okay => Some(1),
        Value::Boolean(b) => Some(i64::from(*b)),
        Value::Nil => Some(0),
        _ => None,
    }
}

/// A script's array reply (wrapped in the pipeline's array of one).
fn flatten(mut values: Vec<Value>) -> Vec<Value> {
    match values.pop() {
        Some(Value::Array(items)) => items,
        Some(other) => vec![other],
        None => Vec::new(),
    }
}

fn scan_reply(mut values: Vec<Value>) -> Option<(u64, Vec<Value>)> {
    let Value::Array(mut parts) = values.pop()? else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let items = match parts.pop()? {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let cursor = text(parts.first())?.parse().ok()?;
    Some((cursor, items))
}

/// A token naming this process in leases: its pid and the time it started, so two
/// processes never share one (even on one machine).
pub fn worker_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("w{:x}.{:x}", std::process::id(), nanos)
}

/// A Redis URL fit for messages: its password replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use downpour::{Config, Polite, Url};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Page {
        url: Url,
    }

    impl Request for Page {
        fn url(&self) -> &Url {
            &self.url
        }
    }

    fn refused() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    /// Redis's answer `line` (`-CODE message`), as an error.
    fn redis_said(line: &str) -> RedisError {
        redis::parse_redis_value(format!("{line}\r\n").as_bytes())
            .and_then(Value::extract_error)
            .expect_err("an error")
    }

    /// Redis's answer `line` to one command of a transaction.
    fn command_failed(line: &str) -> Value {
        redis::parse_redis_value(format!("{line}\r\n").as_bytes()).expect("a value")
    }

    /// A store at `t0` that read the crawl's settings and sent a write of one enqueued
    /// request, with Redis giving up after 1 s.
    fn sending_a_write(t0: Instant) -> (Store<Page>, Scheduler<Page>) {
        sending_writes(t0, &["http://a.test/"], 1)
    }

    /// The same, with requests for `urls` in a crawl of `partitions`.
    fn sending_writes(
        t0: Instant,
        urls: &[&str],
        partitions: u32,
    ) -> (Store<Page>, Scheduler<Page>) {
        let options = RedisOptions {
            give_up_after: Duration::from_secs(1),
            partitions,
            ..RedisOptions::default()
        };
        let mut store = Store::<Page>::new(options, "test".into()).unwrap();
        let config = Config {
            persist: true,
            ..Config::default()
        };
        let mut scheduler = Scheduler::new(config, Polite::new()).unwrap();
        store.begin_run();
        for url in urls {
            let url = Url::parse(url).unwrap();
            store.enqueue(Page { url }).unwrap();
        }
        // The crawl's settings, then the enqueued requests go to their inboxes first.
        assert!(store.poll_pipeline(t0, &mut scheduler).is_some());
        let meta = vec![
            Value::Int(1),
            Value::Int(1),
            Value::BulkString(FORMAT.into()),
            Value::BulkString(partitions.to_string().into_bytes()),
        ];
        store.handle_reply(t0, Ok(meta), &mut scheduler);
        assert!(store.poll_pipeline(t0, &mut scheduler).is_some());
        assert!(matches!(store.running, Some((Op::Write(_), _))));
        (store, scheduler)
    }

    /// Retries back off from 50 ms, doubling, but the last comes when the time is up: the
    /// run gives up then, not a back-off later.
    #[test]
    fn a_run_gives_up_when_its_time_is_up() {
        let t0 = Instant::now();
        let (mut store, mut scheduler) = sending_a_write(t0);
        let mut now = t0;
        let mut attempts = 1;
        loop {
            store.handle_reply(now, Err(refused()), &mut scheduler);
            if store.error().is_some() {
                break;
            }
            now = store.retry_at.expect("a retry");
            assert!(store.poll_pipeline(now, &mut scheduler).is_some());
            attempts += 1;
        }
        // At 0, 50, 150, 350 and 750 ms, then 1 s rather than 1,550 ms.
        assert_eq!(
            now - t0,
            Duration::from_secs(1),
            "gave up at {:?}",
            now - t0
        );
        assert_eq!(attempts, 6);
    }

    /// A write that Redis never took when the run gave up is written by the next run.
    #[test]
    fn the_writes_of_a_run_that_gave_up_wait_for_the_next() {
        let t0 = Instant::now();
        let (mut store, mut scheduler) = sending_a_write(t0);
        // Redis is gone; the write waits for a retry, which fails past `give_up_after`.
        store.handle_reply(t0, Err(refused()), &mut scheduler);
        assert_eq!(store.pending_writes(), 1);
        let later = t0 + Duration::from_secs(2);
        assert!(store.poll_pipeline(later, &mut scheduler).is_some());
        store.handle_reply(later, Err(refused()), &mut scheduler);
        assert!(matches!(
            store.error(),
            Some(StoreError::Unreachable { .. })
        ));
        assert!(store.is_finished(&scheduler));
        assert_eq!(
            store.pending_writes(),
            1,
            "the enqueued request was dropped"
        );
        // The run, left at an await point and entered again, goes on to its end: failed.
        store.begin_run();
        assert!(store.error().is_some(), "a run entered again began anew");
        // The next run tries again, and writes it first.
        store.end_run();
        store.begin_run();
        assert!(store.error().is_none());
        assert!(store.poll_pipeline(later, &mut scheduler).is_some());
        assert!(matches!(store.running, Some((Op::Meta, _))));
        assert_eq!(store.pending_writes(), 1);
    }

    /// Redis out of memory refuses writes without applying any: they wait, as for a Redis
    /// that went away, and are kept when the run gives up.
    #[test]
    fn writes_refused_for_want_of_memory_are_retried_then_kept() {
        let t0 = Instant::now();
        let (mut store, mut scheduler) = sending_a_write(t0);
        let oom = "-OOM command not allowed when used memory > 'maxmemory'.";
        store.handle_reply(t0, Err(redis_said(oom)), &mut scheduler);
        assert!(store.error().is_none(), "{:?}", store.error());
        assert_eq!(store.retry_at, Some(t0 + MIN_BACKOFF));
        assert_eq!(store.pending_writes(), 1);
        let later = t0 + Duration::from_secs(1);
        assert!(store.poll_pipeline(later, &mut scheduler).is_some());
        store.handle_reply(later, Err(redis_said(oom)), &mut scheduler);
        let error = store.error().expect("the run gave up").to_string();
        assert!(
            matches!(store.error(), Some(StoreError::OutOfMemory { .. })),
            "{error}"
        );
        assert!(error.contains("maxmemory"), "{error}");
        assert_eq!(
            store.pending_writes(),
            1,
            "the enqueued request was dropped"
        );
        // Another refusal is no reason to wait: it ends the run at once.
        let (mut store, mut scheduler) = sending_a_write(t0);
        let refused = "-ERR unknown command 'RPUSH'";
        store.handle_reply(t0, Err(redis_said(refused)), &mut scheduler);
        assert!(matches!(store.error(), Some(StoreError::Refused { .. })));
        assert_eq!(
            store.pending_writes(),
            1,
            "the enqueued request was dropped"
        );
    }

    /// Redis applies the rest of a transaction when one of its commands fails: only the
    /// writes of the failed command wait for the next run, and the error names its key.
    #[test]
    fn only_the_refused_part_of_a_write_waits_for_the_next_run() {
        let t0 = Instant::now();
        let urls = (0..12)
            .map(|i| format!("http://h{i}.test/"))
            .collect::<Vec<_>>();
        let keys = Keys::new(&RedisOptions::default().prefix, 2);
        let partition = |u: &String| keys.partition_of(Url::parse(u).unwrap().host_str().unwrap());
        // Hosts of partition 0, then of 1, then of 0 again: three commands.
        let (zero, one): (Vec<&String>, Vec<&String>) =
            urls.iter().partition(|u| partition(u) == 0);
        assert!(
            zero.len() >= 2 && !one.is_empty(),
            "hosts in both partitions"
        );
        let order = [zero[0].as_str(), one[0].as_str(), zero[1].as_str()];
        let (mut store, mut scheduler) = sending_writes(t0, &order, 2);
        let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value";
        let reply = vec![Value::Int(1), command_failed(wrongtype), Value::Int(2)];
        store.handle_reply(t0, Ok(reply), &mut scheduler);
        let inbox = store.keys.partition(1).inbox;
        match store.error() {
            Some(StoreError::Foreign { key, .. }) => assert_eq!(key, &inbox),
            other => panic!("{other:?}"),
        }
        let kept: Vec<String> = store
            .unacknowledged()
            .flatten()
            .map(|w| match w {
                Write::Inbox { partition: 1, json } => json.clone(),
                other => panic!("{other:?} was written"),
            })
            .collect();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains(one[0].as_str()), "{kept:?}");
        // The next run writes it first.
        store.end_run();
        store.begin_run();
        assert_eq!(store.pending_writes(), 1);
    }

    /// A store running partition 0 of 1 at `t0` that has sent `writes` in one transaction.
    fn sending_in_a_partition(t0: Instant, writes: Vec<Write>) -> (Store<Page>, Scheduler<Page>) {
        let (mut store, mut scheduler) = sending_a_write(t0);
        store.handle_reply(t0, Ok(vec![Value::Int(1)]), &mut scheduler);
        store.running = None;
        store.owned = Some(Owned {
            partition: 0,
            keys: store.keys.partition(0),
            epoch: 1,
            valid_until: t0 + Duration::from_secs(60),
        });
        store.phase = Phase::Running;
        store.inbox_has_more = false;
        store.writes.extend(writes);
        assert!(store.poll_pipeline(t0, &mut scheduler).is_some());
        assert!(matches!(store.running, Some((Op::Write(_), _))));
        (store, scheduler)
    }

    /// A follow-up to store, and the removal of its parent after it.
    fn follow_up_then_parent_removed() -> Vec<Write> {
        vec![
            Write::Put {
                id: "w-2".into(),
                json: "{\"url\":\"http://a.test/child\"}".into(),
                parent: Some("w-1".into()),
            },
            Write::Delete { id: "w-1".into() },
        ]
    }

    /// Redis refused to store a follow-up but removed its parent, in one transaction: the
    /// follow-up is stored nowhere else now, and goes to its partition's inbox, which the
    /// next run writes. Refused together, both are dropped at the next run (the parent is
    /// fetched again, and makes the follow-up again), so that nothing is fetched twice.
    #[test]
    fn a_refused_follow_up_whose_parent_was_removed_goes_to_the_inbox() {
        let t0 = Instant::now();
        let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value";
        let (mut store, mut scheduler) =
            sending_in_a_partition(t0, follow_up_then_parent_removed());
        let reply = vec![command_failed(wrongtype), Value::Int(1)];
        store.handle_reply(t0, Ok(reply), &mut scheduler);
        assert!(matches!(store.error(), Some(StoreError::Foreign { .. })));
        store.end_run();
        store.begin_run();
        let writes: Vec<&Write> = store.writes.iter().collect();
        assert!(
            matches!(writes[..], [Write::Inbox { partition: 0, json }] if json.contains("child")),
            "{writes:?}"
        );

        let (mut store, mut scheduler) =
            sending_in_a_partition(t0, follow_up_then_parent_removed());
        let reply = vec![command_failed(wrongtype), command_failed(wrongtype)];
        store.handle_reply(t0, Ok(reply), &mut scheduler);
        assert_eq!(store.pending_writes(), 2);
        store.end_run();
        store.begin_run();
        assert_eq!(store.pending_writes(), 0, "{:?}", store.writes);
    }

    #[test]
    fn a_redis_that_evicts_keys_when_full_is_a_risk_named() {
        let info = |max: u64, policy: &str| {
            format!(
                "# Memory\r\nused_memory:1000\r\nmaxmemory:{max}\r\nmaxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        assert_eq!(eviction_risk(&info(0, "allkeys-lru")), None);
        assert_eq!(eviction_risk(&info(1 << 30, "noeviction")), None);
        let all = eviction_risk(&info(1 << 30, "allkeys-lru")).expect("a risk");
        assert!(all.contains("maxmemory-policy allkeys-lru"), "{all}");
        assert!(all.contains("requests are then lost"), "{all}");
        assert!(all.contains("seeded crawl"), "{all}");
        let volatile = eviction_risk(&info(1 << 30, "volatile-ttl")).expect("a risk");
        assert!(
            volatile.contains("leases on partitions and on seeding"),
            "{volatile}"
        );
        assert_eq!(eviction_risk("# Memory\r\nused_memory:1000\r\n"), None);
    }

    /// Said once per server, and only once a logger shows warnings.
    #[test]
    fn the_eviction_risk_is_logged_once_per_server() {
        struct Capture(std::sync::Mutex<Vec<String>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, record: &log::Record) {
                self.0.lock().unwrap().push(record.args().to_string());
            }
            fn flush(&self) {}
        }
        static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));
        let info = "maxmemory:1000\r\nmaxmemory_policy:allkeys-lru\r\n";
        // No logger yet: not said, and not counted as said.
        warn_if_evicting("redis://a.test:1/", info);
        log::set_logger(&CAPTURE).expect("the only logger of these tests");
        log::set_max_level(log::LevelFilter::Warn);
        for url in [
            "redis://a.test:1/",
            "redis://a.test:1/",
            "redis://b.test:1/",
        ] {
            warn_if_evicting(url, info);
        }
        let said: Vec<String> = CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("evicts keys"))
            .cloned()
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("Redis at redis://a.test:1/"),
            "{said:?}"
        );
    }
}
