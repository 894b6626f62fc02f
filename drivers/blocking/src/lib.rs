//! downpour without an async runtime: fetch very many URLs, fast and politely, with ureq on
//! a pool of threads.
//!
//! This crate drives the [`downpour`] scheduler (re-exported here, so one dependency line is
//! enough) with plain threads, for programs that have no async runtime: the scheduler and
//! your request's callbacks live on the thread that calls [`Fetcher::run`]; each hop it asks
//! for is sent by one of a pool of worker threads over a shared ureq agent (HTTP/1.1, pooled
//! keep-alive connections, TLS with rustls and bundled root certificates); the run loop
//! waits for the next result exactly until the scheduler's next deadline.
//!
//! The API is the one of `downpour-tokio` and `downpour-smol`: switching from one to another
//! changes the dependency line and how `run` is called, nothing else.
//!
//! # Example
//!
//! A polite fetcher, one second between requests to a host, printing every URL it fetched,
//! for URLs read from a file:
//!
//! ```no_run
//! use std::time::Duration;
//! use downpour_blocking::{Config, Context, Fetcher, Polite, Request, Response, Url};
//! use serde::{Deserialize, Serialize};
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
//!         println!("Successfully fetched {}", response.url);
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let policy = Polite::new().delay(Duration::from_secs(1)).allow_all(true);
//!     let mut fetcher = Fetcher::new(Config::default(), policy)?;
//!     for line in std::fs::read_to_string("urls.txt")?.lines() {
//!         if let Ok(url) = downpour_blocking::parse_url(line) {
//!             fetcher.enqueue(Page { url })?;
//!         }
//!     }
//!     let stats = fetcher.run();
//!     eprintln!("{} fetched, {} failed", stats.succeeded, stats.failed);
//!     Ok(())
//! }
//! ```
//!
//! # What the driver does
//!
//! - Hops run concurrently, up to [`Config::concurrency`], one per worker thread; workers
//!   are started as they are needed (as many as hops were ever in flight at once; those a
//!   burst of hops needs are started before any of them is handed out) and live as long as
//!   the [`Fetcher`]. Connections are pooled and reused per origin (and per proxy).
//! - Every hop has the scheduler's overall timeout (resolve to last body byte) and the
//!   [`ClientOptions::connect_timeout`]. Bodies are read up to `max_body_size` (decoded:
//!   gzip, deflate and brotli are decoded with the same cap, so a decompression bomb stops
//!   there); response heads larger than `max_header_size` fail the hop. Each pooled
//!   connection reads through a buffer that starts at 4 KiB and doubles when a read fills
//!   it, up to `max_header_size` + 4 KiB, and writes through one of 32 KiB (over TLS, the
//!   TLS layer has a pair of its own, at their full sizes): a request line or header longer
//!   than that (through an HTTP proxy, a whole request head) fails its hop with that
//!   reason.
//! - A hop ends when its response's last bytes arrived, and a host's delay counts from then
//!   ([`Scheduler::handle_fetch`]), not from when its worker was free to read them. On
//!   Linux, when the policy paces hosts ([`Policy::paces`]: not fifo), that is when the
//!   kernel received them (its receive timestamp, `SO_TIMESTAMPNS`): when a thousand hosts
//!   connect at once, the first responses come back while a thousand threads are still
//!   connecting, and are read milliseconds later. Elsewhere it is when they were read.
//!   Either way it is never before the request went out.
//! - Redirects are not followed here and every status is a response: the scheduler
//!   schedules each hop through its policy, so politeness holds for every host a request
//!   visits.
//! - Proxies: `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy` (lower or upper case)
//!   by default ([`Proxy::FromEnv`]), or rules of your own, or a proxy per request
//!   ([`Request::proxy`]). Plain HTTP goes to the proxy in absolute form (so any forward
//!   proxy works, including ones that allow `CONNECT` to port 443 only); HTTPS goes through
//!   `CONNECT`. Credentials in the proxy URL are sent as `Proxy-Authorization` and never
//!   appear in messages or `Debug` output.
//! - A callback that panics ends its request with [`FetchError::CallbackPanicked`];
//!   nothing else is disturbed. A panic in the HTTP stack fails only its hop.
//! - [`Handle::stop`] stops gracefully: hops in flight finish and their callbacks run, the
//!   rest stays queued ([`Fetcher::take_unfinished`]).
//!
//! # The run loop
//!
//! [`Fetcher::run`] is the loop of the [`downpour`] docs: after every input (hop results,
//! commands from a [`Handle`], the deadline passing) it drains [`Scheduler::poll_action`],
//! hands the fetches to the workers, runs the callbacks, then blocks on one channel that
//! carries both the workers' results and the handles' commands, with a timeout that ends at
//! [`Scheduler::poll_timeout`]. It returns when nothing is left (or, after a stop, nothing
//! is in flight).
//!
//! With the `redis` feature, `Fetcher::with_redis` keeps the queue in Redis. The store's
//! pipelines run one at a time on a thread of the fetcher's own, whose replies come through
//! the same channel; the wait also ends at the store's next deadline (a lease to renew, an
//! inbox to read), and the run ends once the store says the crawl is finished (in
//! `run_until_closed`, once a handle closed too, unless the store failed).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod absolute;
mod buffers;
mod client;
use downpour_common::decode;
use downpour_common::descriptors;
use downpour_common::proxy;
#[cfg(feature = "redis")]
mod persist;
mod resolver;
mod tcp;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use downpour::*;
pub use downpour_common::proxy::Proxy;
#[cfg(feature = "redis")]
pub use downpour_common::store::{RedisOptions, StoreError};
pub use downpour_common::HandleError;
use downpour_common::{Command, Frontier, Step};

use http::HeaderValue;

use crate::client::HttpClient;

/// Settings of the HTTP client. Start from [`ClientOptions::default`].
///
/// ```
/// use std::time::Duration;
/// let options = downpour_blocking::ClientOptions {
///     connect_timeout: Duration::from_secs(5),
///     proxy: downpour_blocking::Proxy::None,
///     ..Default::default()
/// };
/// # let _ = options;
/// ```
///
/// ureq speaks HTTP/1.1 only, so unlike the async drivers there is no `http2` switch.
#[derive(Clone)]
pub struct ClientOptions {
    /// Longest time to establish a TCP connection (to the origin or the proxy). Default 10 s.
    pub connect_timeout: Duration,
    /// Which proxy to use when a request names none. Default [`Proxy::FromEnv`].
    pub proxy: Proxy,
    /// Certificates (DER) trusted besides the bundled web PKI roots, for private CAs and
    /// self-signed test servers.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per origin. Default 32.
    pub pool_max_idle_per_host: usize,
    /// Stack size of each worker thread. Default 1 MiB.
    pub worker_stack_size: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            proxy: Proxy::FromEnv,
            extra_root_certificates: Vec::new(),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            worker_stack_size: 1 << 20,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("proxy", &self.proxy)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("worker_stack_size", &self.worker_stack_size)
            .finish()
    }
}

/// Why a [`Fetcher`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler's configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS setup failed (an extra root certificate was refused).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Redis is unreachable, or holds another crawl's data under the prefix.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] StoreError),
}

/// What reaches the run loop: a command from a handle, a worker's result, or Redis's reply.
enum Message<R> {
    /// From a handle.
    Command(Command<R>),
    /// A hop's result, from this worker, and when the hop ended there: the run loop may
    /// get to it later (it shares the cores with every worker), and the host's delay counts
    /// from the end of the response.
    Hop(FetchId, usize, HopResult, Instant),
    /// The reply to the running Redis pipeline, from the Redis thread.
    #[cfg(feature = "redis")]
    Redis(redis::RedisResult<Vec<redis::Value>>),
}

/// Controls a running [`Fetcher`] from other threads (or from its own callbacks' thread).
/// Cheap to clone.
pub struct Handle<R> {
    tx: mpsc::Sender<Message<R>>,
}

impl<R> Clone for Handle<R> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
        }
    }
}

impl<R> fmt::Debug for Handle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl<R: Request> Handle<R> {
    /// Enqueues a request. Its URL is checked now; it is fetched once the fetcher runs.
    pub fn enqueue(&self, request: R) -> Result<(), HandleError<R>> {
        if let Err(reason) = check_url(request.url()) {
            return Err(HandleError::Refused(EnqueueError { reason, request }));
        }
        self.tx
            .send(Message::Command(Command::Enqueue(request)))
            .map_err(|e| match e.0 {
                Message::Command(Command::Enqueue(r)) => HandleError::Closed(r),
                _ => unreachable!("sent an enqueue"),
            })
    }

    /// Passes on a request that the scheduler of another partition handed off (see
    /// [`Fetcher::on_hand_off`]): this fetcher carries on with it. It is handed back if the
    /// fetcher is gone. With Redis it is stored, as an enqueued request is, in the inbox of
    /// the partition that owns its target in this crawl, and fetched by that partition's
    /// worker.
    pub fn hand_off(&self, hand_off: HandOff<R>) -> Result<(), HandOff<R>> {
        self.tx
            .send(Message::Command(Command::HandOff(hand_off)))
            .map_err(|e| match e.0 {
                Message::Command(Command::HandOff(h)) => h,
                _ => unreachable!("sent a hand-off"),
            })
    }

    /// Stops gracefully: no new fetch starts; hops in flight finish and their callbacks run;
    /// the rest stays queued. [`Fetcher::run`] then returns.
    pub fn stop(&self) {
        let _ = self.tx.send(Message::Command(Command::Stop));
    }

    /// Stops at once: like [`stop`](Handle::stop), and hops in flight are given up; their
    /// requests end with a [`TransportErrorKind::Other`] error ("aborted"). With Redis they
    /// stay stored (with everything else unfinished), for a run after [`Fetcher::resume`]
    /// (or another worker) to fetch. (A worker thread cannot be interrupted: it finishes or
    /// times out its hop in the background, and the result is dropped.)
    pub fn stop_now(&self) {
        let _ = self.tx.send(Message::Command(Command::StopNow));
    }

    /// Says that no more requests will come through the handles: a fetcher in
    /// [`run_until_closed`](Fetcher::run_until_closed) returns once it has nothing left to
    /// do, the requests enqueued before the close included. The close holds until a
    /// `run_until_closed` has returned because of it (not because of a stop).
    pub fn close(&self) {
        let _ = self.tx.send(Message::Command(Command::Close));
    }
}

/// One hop for a worker, and where to send its result.
struct Job<R> {
    fetch: Fetch,
    results: mpsc::Sender<Message<R>>,
}

/// The worker threads. Each has a queue of its own; the run loop hands a hop to an idle
/// worker (or starts one), so no two workers ever contend for a job.
struct Pool<R> {
    workers: Vec<mpsc::Sender<Job<R>>>,
    /// Workers waiting for a job, by index.
    idle: Vec<usize>,
    client: Arc<HttpClient>,
    stack_size: usize,
}

impl<R: Send + 'static> Pool<R> {
    fn new(client: HttpClient, stack_size: usize) -> Self {
        Pool {
            workers: Vec::new(),
            idle: Vec::new(),
            client: Arc::new(client),
            stack_size,
        }
    }

    /// Hands a burst of hops to idle workers. The workers the burst lacks are all started
    /// first, while the others are still idle: a thread started while hundreds of others
    /// connect and fault in their buffers waits on the kernel's memory locks, and so would
    /// the hops behind it (a thousand hosts' first hops took several times longer).
    fn submit(&mut self, jobs: &mut Vec<Job<R>>) {
        let missing = jobs.len().saturating_sub(self.idle.len());
        for _ in 0..missing {
            match self.start() {
                Some(worker) => self.idle.push(worker),
                None => break,
            }
        }
        for job in jobs.drain(..) {
            self.submit_one(job);
        }
    }

    /// Hands a hop to an idle worker, starting one when none is idle.
    fn submit_one(&mut self, job: Job<R>) {
        let mut job = job;
        loop {
            let worker = match self.idle.pop() {
                Some(w) => w,
                None => match self.start() {
                    Some(w) => w,
                    None => {
                        let failed = TransportError::new(
                            TransportErrorKind::Other,
                            "cannot start a worker thread",
                        );
                        let _ = job.results.send(Message::Hop(
                            job.fetch.id,
                            usize::MAX,
                            HopResult::Failed(failed),
                            Instant::now(),
                        ));
                        return;
                    }
                },
            };
            match self.workers[worker].send(job) {
                Ok(()) => return,
                // That worker is gone (it cannot be, short of a bug): try another.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
    }

    fn start(&mut self) -> Option<usize> {
        let index = self.workers.len();
        let (tx, rx) = mpsc::channel::<Job<R>>();
        let client = self.client.clone();
        std::thread::Builder::new()
            .name("downpour-worker".into())
            .stack_size(self.stack_size)
            .spawn(move || worker(index, &rx, &client))
            .ok()?;
        self.workers.push(tx);
        Some(index)
    }

    /// A worker answered: it is idle again.
    fn done(&mut self, worker: usize) {
        if worker < self.workers.len() {
            self.idle.push(worker);
        }
    }
}

fn worker<R>(index: usize, jobs: &mpsc::Receiver<Job<R>>, client: &HttpClient) {
    // Ends when the fetcher (and with it the sending side) is gone.
    while let Ok(job) = jobs.recv() {
        let id = job.fetch.id;
        let (result, ended) = catch_unwind(AssertUnwindSafe(|| client.hop(job.fetch)))
            .unwrap_or_else(|_| {
                let failed = TransportError::new(
                    TransportErrorKind::Other,
                    "the hop failed unexpectedly (panic in the HTTP stack)",
                );
                (HopResult::Failed(failed), Instant::now())
            });
        let _ = job.results.send(Message::Hop(id, index, result, ended));
    }
}

/// Fetches requests with a [`Scheduler`] on a pool of threads. See the [crate docs](crate).
pub struct Fetcher<R> {
    frontier: Frontier<R>,
    pool: Pool<R>,
    tx: mpsc::Sender<Message<R>>,
    rx: mpsc::Receiver<Message<R>>,
    /// The thread the store's pipelines run on, with Redis.
    redis: Option<RedisLink>,
}

#[cfg(feature = "redis")]
type RedisLink = persist::Link;
/// Without the `redis` feature there is never a link.
#[cfg(not(feature = "redis"))]
type RedisLink = std::convert::Infallible;

impl<R> fmt::Debug for Fetcher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("in_flight", &self.frontier.in_flight())
            .field("threads", &self.pool.workers.len())
            .finish_non_exhaustive()
    }
}

/// A fetcher dropped with requests unfinished, or sent by its handles and not taken in yet,
/// says how many (a warning; with Redis, the store's error counts those never written).
impl<R> Drop for Fetcher<R> {
    fn drop(&mut self) {
        let commands = self.rx.try_iter().filter_map(|message| match message {
            Message::Command(command) => Some(command),
            _ => None,
        });
        self.frontier.abandon(commands);
    }
}

impl<R: Request + Send + 'static> Fetcher<R> {
    /// A fetcher with this configuration and policy, and the default [`ClientOptions`].
    pub fn new(config: Config, policy: impl Policy + 'static) -> Result<Self, Error> {
        Fetcher::with_options(config, policy, ClientOptions::default())
    }

    /// A fetcher with these client options.
    pub fn with_options(
        config: Config,
        policy: impl Policy + 'static,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        Fetcher::from_scheduler(Scheduler::new(config, policy)?, options)
    }

    /// A fetcher driving a scheduler you made (for example with
    /// [`Scheduler::with_policy`], or one holding restored requests).
    pub fn from_scheduler(scheduler: Scheduler<R>, options: ClientOptions) -> Result<Self, Error> {
        let config = scheduler.config();
        config.validate()?;
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| ConfigError::BadUserAgent(config.user_agent.clone()))?;
        // Twice the concurrency: idle connections are kept for reuse.
        descriptors::reserve(config.concurrency.saturating_mul(2));
        let client = HttpClient::new(
            &options,
            config.concurrency,
            config.timeout,
            config.max_header_size,
            user_agent,
            scheduler.paces(),
        )?;
        let (tx, rx) = mpsc::channel();
        Ok(Fetcher {
            frontier: Frontier::new(scheduler),
            pool: Pool::new(client, options.worker_stack_size.max(64 << 10)),
            tx,
            rx,
            redis: None,
        })
    }

    /// A fetcher whose queue lives in Redis: it survives a crash (what was in flight is
    /// fetched again), and many processes can share one crawl, each host fetched by one of
    /// them. It connects now, so an unreachable Redis is reported here; the crawl's stored
    /// requests are restored when [`run`](Fetcher::run) starts. The pipelines run on one
    /// thread of the fetcher's own, over a connection whose commands time out after a third
    /// of [`RedisOptions::lease_ttl`]. See [`downpour_common::store`] for the layout and the
    /// guarantees.
    ///
    /// ```no_run
    /// # use downpour_blocking::{Config, Fetcher, Polite, RedisOptions, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_blocking::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisOptions {
    ///     url: "redis://127.0.0.1:6379/".into(),
    ///     prefix: "my-crawl".into(),
    ///     partitions: 4, // up to 4 processes fetch at once
    ///     ..Default::default()
    /// };
    /// let mut fetcher: Fetcher<Page> =
    ///     Fetcher::with_redis(Config::default(), Polite::new(), Default::default(), redis)?;
    /// fetcher.enqueue(Page { url: Url::parse("https://example.com/")? })?;
    /// let stats = fetcher.run();
    /// if let Some(error) = fetcher.redis_error() {
    ///     eprintln!("stopped early: {error}");
    /// }
    /// # let _ = stats; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn with_redis(
        config: Config,
        policy: impl Policy + 'static,
        options: ClientOptions,
        redis: RedisOptions,
    ) -> Result<Self, Error> {
        let config = Config {
            persist: true,
            ..config
        };
        let mut fetcher = Fetcher::with_options(config, policy, options)?;
        let (store, link) = persist::Link::connect(redis, fetcher.tx.clone())?;
        fetcher.frontier.store = Some(store);
        fetcher.redis = Some(link);
        Ok(fetcher)
    }

    /// Why the last [`run`](Fetcher::run) ended early with Redis, if it did (Redis stayed
    /// unreachable, or holds foreign data). What it stored stays there; the next run tries
    /// again, and first writes what was enqueued (or handed off) and not written yet.
    #[cfg(feature = "redis")]
    pub fn redis_error(&self) -> Option<&StoreError> {
        self.frontier.store_error()
    }

    /// The partition of the crawl this fetcher runs now (with Redis).
    #[cfg(feature = "redis")]
    pub fn partition(&self) -> Option<u32> {
        self.frontier.partition()
    }

    /// Calls `f` with every request once it is finished (after its `on_done`), so you get
    /// your requests back. Without it, finished requests are dropped.
    pub fn on_finished(&mut self, f: impl FnMut(R) + Send + 'static) -> &mut Self {
        self.frontier.outlets.on_finished = Some(Box::new(f));
        self
    }

    /// Where the requests that this fetcher's scheduler hands to another partition go
    /// ([`Config::partition`]): `f` passes each to the fetcher that owns its
    /// [`HandOff::partition`], through that fetcher's [`Handle::hand_off`]. One that `f`
    /// gives back is fetched here; without `f`, every one is.
    /// With Redis this is not used: the store writes each to its partition's inbox.
    ///
    /// Run the fetchers of one crawl until none of them has work left: [`run`](Fetcher::run)
    /// returns when its fetcher is idle, and a hand-off may reach it after that; it is
    /// fetched on the next run (the `downpour` command counts each fetcher's requests to know
    /// when to run it again).
    ///
    /// ```no_run
    /// # use downpour_blocking::{Config, Fetcher, Partition, Polite, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_blocking::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # fn demo() -> Result<(), downpour_blocking::Error> {
    /// let count = 2;
    /// let mut fetchers = (0..count)
    ///     .map(|index| {
    ///         let partition = Some(Partition { index, count });
    ///         Fetcher::<Page>::new(Config { partition, ..Config::default() }, Polite::new())
    ///     })
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let handles: Vec<_> = fetchers.iter().map(Fetcher::handle).collect();
    /// for fetcher in &mut fetchers {
    ///     let handles = handles.clone();
    ///     fetcher.on_hand_off(move |h| handles[h.partition() as usize].hand_off(h));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn on_hand_off(
        &mut self,
        f: impl FnMut(HandOff<R>) -> Result<(), HandOff<R>> + Send + 'static,
    ) -> &mut Self {
        self.frontier.outlets.on_hand_off = Some(Box::new(f));
        self
    }

    /// A handle to enqueue requests and stop the fetcher from elsewhere.
    pub fn handle(&self) -> Handle<R> {
        Handle {
            tx: self.tx.clone(),
        }
    }

    /// Enqueues a request. One that could never be fetched comes back in the error. With
    /// Redis it is stored first (in the inbox of its host's partition), and fetched once
    /// stored, by whichever worker runs that partition.
    pub fn enqueue(&mut self, request: R) -> Result<(), EnqueueError<R>> {
        self.frontier.enqueue(request)
    }

    /// Enqueues many requests; returns those refused, each with its reason.
    #[must_use = "refused requests are handed back"]
    pub fn extend(&mut self, requests: impl IntoIterator<Item = R>) -> Vec<EnqueueError<R>> {
        self.frontier.extend(requests)
    }

    /// Stops gracefully (see [`Handle::stop`]).
    pub fn stop(&mut self) {
        self.frontier.stop();
    }

    /// Starts fetching again after a stop. With Redis, once the run has returned, the next
    /// [`run`](Fetcher::run) takes a partition again and fetches what is stored.
    pub fn resume(&mut self) {
        self.frontier.resume();
    }

    /// Takes back the requests that did not start (after a stop), in order of acceptance,
    /// with the requests a [`Handle`] enqueued (or handed over) that no run has taken in yet.
    /// A fetcher dropped without them says how many it dropped (a `log` warning).
    pub fn take_unfinished(&mut self) -> Vec<R> {
        // What the handles sent after `run` returned is still in the channel, with the
        // results of hops a stop gave up on.
        let (rx, pool, redis) = (&self.rx, &mut self.pool, &mut self.redis);
        self.frontier
            .take_unfinished(|frontier| next_command(rx, frontier, pool, redis))
    }

    /// The scheduler, for its counters and state.
    pub fn scheduler(&self) -> &Scheduler<R> {
        &self.frontier.scheduler
    }

    /// Counters and current sizes.
    pub fn stats(&self) -> Stats {
        self.frontier.scheduler.stats()
    }

    /// Fetches until nothing is left to do (or, after a stop, until nothing is in flight),
    /// then returns the counters. Blocks the calling thread, where the callbacks run. Call
    /// it again after enqueueing more. With Redis, nothing left means nothing left in Redis,
    /// for any worker of the crawl; each run looks again.
    pub fn run(&mut self) -> Stats {
        self.run_while(false)
    }

    /// Fetches like [`run`](Fetcher::run), but with nothing left to do it waits for more from
    /// the [`Handle`]s instead of returning, until one of them calls [`Handle::close`]: for
    /// requests that a producer finds as it goes, on other threads.
    ///
    /// After a stop it returns as `run` does, once nothing is in flight, the rest queued.
    /// With Redis it waits alike: once Redis holds nothing more, a request from a handle
    /// starts the crawl over (the worker takes a partition again). The other workers of the
    /// crawl do not wait for this one's handles: they return when Redis holds nothing, and
    /// this one then fetches what its handles bring, in whichever partition it falls.
    ///
    /// ```no_run
    /// # use downpour_blocking::{Config, Fetcher, Polite, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_blocking::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut fetcher: Fetcher<Page> = Fetcher::new(Config::default(), Polite::new())?;
    /// let handle = fetcher.handle();
    /// let producer = std::thread::spawn(move || {
    ///     for line in std::io::stdin().lines().map_while(Result::ok) {
    ///         if let Ok(url) = downpour_blocking::parse_url(&line) {
    ///             let _ = handle.enqueue(Page { url });
    ///         }
    ///     }
    ///     handle.close();
    /// });
    /// let stats = fetcher.run_until_closed();
    /// producer.join().unwrap();
    /// # let _ = stats; Ok(()) }
    /// ```
    pub fn run_until_closed(&mut self) -> Stats {
        self.run_while(true)
    }

    /// With `until_closed`, the loop of [`run_until_closed`](Fetcher::run_until_closed).
    fn run_while(&mut self, until_closed: bool) -> Stats {
        self.frontier.begin_run();
        loop {
            // Everything that already arrived, then the actions it led to, in one batch.
            while let Ok(message) = self.rx.try_recv() {
                self.message(message);
            }
            self.expire();
            self.drain_actions();
            #[cfg(feature = "redis")]
            if let Some(link) = &mut self.redis {
                link.start(&mut self.frontier);
                // Starting a pipeline may have resumed the scheduler, or restored requests.
                self.drain_actions();
            }
            let (rx, pool, redis) = (&self.rx, &mut self.pool, &mut self.redis);
            let waiting = |frontier: &mut Frontier<R>| next_command(rx, frontier, pool, redis);
            match self.frontier.next_step(until_closed, waiting) {
                Step::Return => break,
                Step::Again => continue,
                Step::Wait => {}
            }
            // Wait for a result, a reply or a command, at most until the next deadline.
            let received = match self.frontier.poll_timeout() {
                Some(deadline) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(message) => self.message(message),
                Err(RecvTimeoutError::Timeout) => self.frontier.handle_timeout(),
                // The fetcher holds a sender: the channel never closes.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.frontier.end_run(until_closed)
    }

    /// Tells the scheduler that its deadline passed, when it did: under a steady stream of
    /// results the wait above may never time out.
    fn expire(&mut self) {
        if let Some(deadline) = self.frontier.scheduler.poll_timeout() {
            if deadline <= Instant::now() {
                self.frontier.handle_timeout();
            }
        }
    }

    fn message(&mut self, message: Message<R>) {
        let command = receive(&mut self.frontier, &mut self.pool, &mut self.redis, message);
        if let Some(command) = command {
            // A worker cannot be interrupted: it finishes or times out an aborted hop in
            // the background, and its result is dropped.
            self.frontier.handle_command(command);
        }
    }

    fn drain_actions(&mut self) {
        // Consecutive fetches go out together (see `Pool::submit`), before any other action.
        let mut burst = Vec::new();
        while let Some(action) = self.frontier.poll_action() {
            if !matches!(action, Action::Fetch(_)) && !burst.is_empty() {
                self.pool.submit(&mut burst);
            }
            if let Some(fetch) = self.frontier.carry_out(action) {
                burst.push(Job {
                    fetch,
                    results: self.tx.clone(),
                });
            }
        }
        if !burst.is_empty() {
            self.pool.submit(&mut burst);
        }
    }
}

/// The next of the handles' commands already in the channel, with the workers' results
/// and Redis's replies found on the way to it taken in: after a stop, the results of hops it
/// gave up on.
fn next_command<R: Request + Send + 'static>(
    rx: &mpsc::Receiver<Message<R>>,
    frontier: &mut Frontier<R>,
    pool: &mut Pool<R>,
    redis: &mut Option<RedisLink>,
) -> Option<Command<R>> {
    loop {
        let message = rx.try_recv().ok()?;
        if let Some(command) = receive(frontier, pool, redis, message) {
            return Some(command);
        }
    }
}

/// Takes in a worker's result or Redis's reply; hands back a handle's command.
fn receive<R: Request + Send + 'static>(
    frontier: &mut Frontier<R>,
    pool: &mut Pool<R>,
    redis: &mut Option<RedisLink>,
    message: Message<R>,
) -> Option<Command<R>> {
    match message {
        Message::Command(command) => return Some(command),
        // When the hop ended on its worker: the run loop may get to it later (it shares the
        // cores with every worker), and the host's delay counts from the response's end.
        Message::Hop(id, worker, result, ended) => {
            pool.done(worker);
            frontier.handle_hop(id, result, ended);
        }
        #[cfg(feature = "redis")]
        Message::Redis(reply) => {
            if let Some(link) = redis {
                link.replied();
            }
            frontier.handle_reply(reply);
        }
    }
    let _ = redis;
    None
}

#[cfg(test)]
mod tests {
    downpour_conformance::dropped_fetcher_test!(crate);
}
