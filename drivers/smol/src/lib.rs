//! downpour on smol: fetch very many URLs, fast and politely, with an isahc (libcurl) client.
//!
//! This crate drives the [`downpour`] scheduler (re-exported here, so one dependency line is
//! enough) on smol: each hop it asks for is sent with isahc, whose libcurl agent threads
//! (one per core by default, [`ClientOptions::clients`]) do the network I/O (HTTP/1.1,
//! HTTP/2 over ALPN, TLS with the system's libcurl and OpenSSL), your request's callbacks
//! run between I/O on the driver task, and one async-io timer sleeps exactly until the
//! scheduler's next deadline. It needs no particular executor: [`Fetcher::run`] is a plain
//! future; the example runs it with `smol::block_on`.
//!
//! Building needs the system's libcurl and its headers (Debian: `libcurl4-openssl-dev`,
//! with `pkg-config`).
//!
//! The API is the one of `downpour-tokio` and `downpour-blocking`: switching from one to
//! another changes the dependency line and how `run` is called, nothing else.
//!
//! # Example
//!
//! A polite fetcher, one second between requests to a host, printing every URL it fetched,
//! for URLs read from a file:
//!
//! ```no_run
//! use std::time::Duration;
//! use downpour_smol::{Config, Context, Fetcher, Polite, Request, Response, Url};
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
//!         if let Ok(url) = downpour_smol::parse_url(line) {
//!             fetcher.enqueue(Page { url })?;
//!         }
//!     }
//!     let stats = smol::block_on(fetcher.run());
//!     eprintln!("{} fetched, {} failed", stats.succeeded, stats.failed);
//!     Ok(())
//! }
//! ```
//!
//! # What the driver does
//!
//! - Hops run concurrently, up to [`Config::concurrency`], on the driver task; curl's agent
//!   threads multiplex their connections, which are pooled and reused per origin (and per
//!   proxy): each origin is served by one agent.
//! - Every hop has the scheduler's overall timeout (connect to last body byte, enforced by
//!   curl) and the [`ClientOptions::connect_timeout`]. Bodies are read up to `max_body_size` (decoded:
//!   gzip, deflate and brotli are decoded with the same cap, so a decompression bomb stops
//!   there; curl's own decompression is off); response heads larger than
//!   `max_header_size` fail the hop.
//! - Redirects are not followed here (curl's redirect following is off): the scheduler
//!   schedules each hop through its policy, so politeness holds for every host a request
//!   visits.
//! - TLS trusts the system's certificate store, or, when you add roots of your own
//!   ([`ClientOptions::extra_root_certificates`]), the bundled web PKI roots and yours.
//! - Proxies: `http_proxy`, `https_proxy`, `all_proxy` and `no_proxy` (lower or upper case)
//!   by default ([`Proxy::FromEnv`]), or rules of your own, or a proxy per request
//!   ([`Request::proxy`]). HTTPS goes through `CONNECT`; credentials in the proxy URL are
//!   sent as `Proxy-Authorization` and never appear in messages or `Debug` output.
//! - A callback that panics ends its request with [`FetchError::CallbackPanicked`];
//!   nothing else is disturbed.
//! - [`Handle::stop`] stops gracefully: hops in flight finish and their callbacks run, the
//!   rest stays queued ([`Fetcher::take_unfinished`]).
//!
//! # The run loop
//!
//! [`Fetcher::run`] is the loop of the [`downpour`] docs: after every input (a hop's result,
//! a command from a [`Handle`], the timer) it drains [`Scheduler::poll_action`], starts the
//! fetches, runs the callbacks, then waits for the next hop to finish, a command, or
//! [`Scheduler::poll_timeout`] — one [`async_io::Timer`], reset only when that deadline
//! changes. It returns when nothing is left (or, after a stop, nothing is in flight).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
use downpour_common::decode;
use downpour_common::descriptors;
use downpour_common::proxy;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

pub use downpour::*;
pub use downpour_common::proxy::Proxy;
#[cfg(feature = "redis")]
pub use downpour_common::store::{RedisOptions, StoreError};
pub use downpour_common::HandleError;
use downpour_common::{Command, Frontier, Step};

use futures_lite::{FutureExt, StreamExt};
use futures_util::stream::FuturesUnordered;
use http::HeaderValue;

use crate::client::HttpClient;

/// Settings of the HTTP client. Start from [`ClientOptions::default`].
///
/// ```
/// use std::time::Duration;
/// let options = downpour_smol::ClientOptions {
///     connect_timeout: Duration::from_secs(5),
///     http2: false,
///     proxy: downpour_smol::Proxy::None,
///     ..Default::default()
/// };
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    /// Longest time to establish a TCP connection (to the origin or the proxy). Default 10 s.
    pub connect_timeout: Duration,
    /// Offer HTTP/2 in TLS (ALPN). Default `true`. Plain-text HTTP is always HTTP/1.1.
    pub http2: bool,
    /// Which proxy to use when a request names none. Default [`Proxy::FromEnv`].
    pub proxy: Proxy,
    /// Certificates (DER) trusted besides the web PKI roots, for private CAs and self-signed
    /// test servers. Without any, curl trusts the system's certificate store; with some,
    /// the bundled web PKI roots and these.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept. Each agent ([`clients`](ClientOptions::clients)) keeps
    /// one cache for all its origins, of `2 × concurrency` connections or this many,
    /// whichever is more. Default 32.
    pub pool_max_idle_per_host: usize,
    /// How many libcurl agents share the hops. Each is an isahc client: one thread running
    /// one curl multi handle, with its own connection cache; one agent saturates one core
    /// at a few tens of thousands of requests a second. Every origin (and proxy) is served
    /// by one agent, so its connections are reused; origins are dealt out to the agents in
    /// turn. Default: the number of CPUs, at most 4; never more than
    /// [`Config::concurrency`]; 0 counts as 1.
    pub clients: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            http2: true,
            proxy: Proxy::FromEnv,
            extra_root_certificates: Vec::new(),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            clients: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("http2", &self.http2)
            .field("proxy", &self.proxy)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("clients", &self.clients)
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
    /// The HTTP client (libcurl) could not start.
    #[error("{0}")]
    Http(String),
    /// Redis is unreachable, or holds another crawl's data under the prefix.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Redis(#[from] StoreError),
}

/// Controls a running [`Fetcher`] from other tasks or threads. Cheap to clone.
pub struct Handle<R> {
    tx: async_channel::Sender<Command<R>>,
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
        f.debug_struct("Handle")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<R: Request> Handle<R> {
    /// Enqueues a request. Its URL is checked now; it is fetched once the fetcher runs.
    pub fn enqueue(&self, request: R) -> Result<(), HandleError<R>> {
        if let Err(reason) = check_url(request.url()) {
            return Err(HandleError::Refused(EnqueueError { reason, request }));
        }
        self.tx
            .try_send(Command::Enqueue(request))
            .map_err(|e| match e.into_inner() {
                Command::Enqueue(r) => HandleError::Closed(r),
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
            .try_send(Command::HandOff(hand_off))
            .map_err(|e| match e.into_inner() {
                Command::HandOff(h) => h,
                _ => unreachable!("sent a hand-off"),
            })
    }

    /// Stops gracefully: no new fetch starts; hops in flight finish and their callbacks run;
    /// the rest stays queued. [`Fetcher::run`] then returns.
    pub fn stop(&self) {
        let _ = self.tx.try_send(Command::Stop);
    }

    /// Stops at once: like [`stop`](Handle::stop), and hops in flight are aborted; their
    /// requests end with a [`TransportErrorKind::Other`] error ("aborted"). With Redis they
    /// stay stored (with everything else unfinished), for a run after
    /// [`Fetcher::resume`] (or another worker) to fetch.
    pub fn stop_now(&self) {
        let _ = self.tx.try_send(Command::StopNow);
    }

    /// Says that no more requests will come through the handles: a fetcher in
    /// [`run_until_closed`](Fetcher::run_until_closed) returns once it has nothing left to
    /// do, the requests enqueued before the close included. The close holds until a
    /// `run_until_closed` has returned because of it (not because of a stop).
    pub fn close(&self) {
        let _ = self.tx.try_send(Command::Close);
    }
}

/// Fetches requests with a [`Scheduler`] on smol (or any executor). See the [crate docs](crate).
pub struct Fetcher<R> {
    frontier: Frontier<R>,
    client: HttpClient,
    /// Hops in flight, polled on the driver's task (as a `buffer_unordered` loop would).
    hops: FuturesUnordered<HopFuture>,
    tx: async_channel::Sender<Command<R>>,
    /// Boxed: a receiver waiting for a message must not move.
    rx: Pin<Box<async_channel::Receiver<Command<R>>>>,
    /// The connection the store's pipelines run on, with Redis.
    #[cfg(feature = "redis")]
    redis: Option<downpour_common::redis_link::Link>,
}

impl<R> fmt::Debug for Fetcher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("in_flight", &self.hops.len())
            .finish_non_exhaustive()
    }
}

/// A fetcher dropped with requests unfinished, or sent by its handles and not taken in yet,
/// says how many (a warning; with Redis, the store's error counts those never written).
impl<R> Drop for Fetcher<R> {
    fn drop(&mut self) {
        let rx = &self.rx;
        self.frontier
            .abandon(std::iter::from_fn(|| rx.try_recv().ok()));
    }
}

type HopFuture = Pin<Box<dyn Future<Output = (FetchId, HopResult)> + Send>>;

enum Event<R> {
    Hop(FetchId, HopResult),
    Command(Command<R>),
    Timer,
    #[cfg(feature = "redis")]
    Redis(redis::RedisResult<Vec<redis::Value>>),
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
        let client = HttpClient::new(&options, config.concurrency, user_agent.clone())?;
        let (tx, rx) = async_channel::unbounded();
        Ok(Fetcher {
            frontier: Frontier::new(scheduler),
            client,
            hops: FuturesUnordered::new(),
            tx,
            rx: Box::pin(rx),
            #[cfg(feature = "redis")]
            redis: None,
        })
    }

    /// A fetcher whose queue lives in Redis: it survives a crash (what was in flight is
    /// fetched again), and many processes can share one crawl, each host fetched by one of
    /// them. It connects now, so an unreachable Redis is reported here; the crawl's stored
    /// requests are restored when [`run`](Fetcher::run) starts. See
    /// [`downpour_common::store`] for the layout and the guarantees.
    ///
    /// ```no_run
    /// # use downpour_smol::{Config, Fetcher, Polite, RedisOptions, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_smol::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisOptions {
    ///     url: "redis://127.0.0.1:6379/".into(),
    ///     prefix: "my-crawl".into(),
    ///     partitions: 4, // up to 4 processes fetch at once
    ///     ..Default::default()
    /// };
    /// let mut fetcher: Fetcher<Page> =
    ///     Fetcher::with_redis(Config::default(), Polite::new(), Default::default(), redis).await?;
    /// fetcher.enqueue(Page { url: Url::parse("https://example.com/")? })?;
    /// let stats = fetcher.run().await;
    /// if let Some(error) = fetcher.redis_error() {
    ///     eprintln!("stopped early: {error}");
    /// }
    /// # let _ = stats; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub async fn with_redis(
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
        let (store, link) = downpour_common::redis_link::Link::connect(redis).await?;
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
    /// # use downpour_smol::{Config, Fetcher, Partition, Polite, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_smol::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # fn demo() -> Result<(), downpour_smol::Error> {
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
        // What the handles sent after `run` returned is still in the channel.
        let rx = &mut self.rx;
        let taken = self.frontier.take_unfinished(|_| rx.try_recv().ok());
        // A stop now among it aborted what a run cancelled midway (its future dropped) left
        // in flight: their connections close.
        if self.frontier.in_flight() == 0 {
            self.hops = FuturesUnordered::new();
        }
        taken
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
    /// then returns the counters. Call it again after enqueueing more. With Redis, nothing
    /// left means nothing left in Redis, for any worker of the crawl; each run looks again.
    pub async fn run(&mut self) -> Stats {
        self.run_while(false).await
    }

    /// Fetches like [`run`](Fetcher::run), but with nothing left to do it waits for more from
    /// the [`Handle`]s instead of returning, until one of them calls [`Handle::close`]: for
    /// requests that a producer finds as it goes, on other tasks or threads.
    ///
    /// After a stop it returns as `run` does, once nothing is in flight, the rest queued.
    /// With Redis it waits alike: once Redis holds nothing more, a request from a handle
    /// starts the crawl over (the worker takes a partition again). The other workers of the
    /// crawl do not wait for this one's handles: they return when Redis holds nothing, and
    /// this one then fetches what its handles bring, in whichever partition it falls.
    ///
    /// ```no_run
    /// # use downpour_smol::{Config, Fetcher, Polite, Url};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Page { url: Url }
    /// # impl downpour_smol::Request for Page { fn url(&self) -> &Url { &self.url } }
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut fetcher: Fetcher<Page> = Fetcher::new(Config::default(), Polite::new())?;
    /// let handle = fetcher.handle();
    /// let producer = std::thread::spawn(move || {
    ///     for line in std::io::stdin().lines().map_while(Result::ok) {
    ///         if let Ok(url) = downpour_smol::parse_url(&line) {
    ///             let _ = handle.enqueue(Page { url });
    ///         }
    ///     }
    ///     handle.close();
    /// });
    /// let stats = fetcher.run_until_closed().await;
    /// producer.join().unwrap();
    /// # let _ = stats; Ok(()) }
    /// ```
    pub async fn run_until_closed(&mut self) -> Stats {
        self.run_while(true).await
    }

    /// With `until_closed`, the loop of [`run_until_closed`](Fetcher::run_until_closed).
    async fn run_while(&mut self, until_closed: bool) -> Stats {
        let mut timer = async_io::Timer::never();
        let mut armed: Option<Instant> = None;
        self.frontier.begin_run();
        loop {
            while let Ok(command) = self.rx.try_recv() {
                self.command(command);
            }
            self.drain_actions();
            #[cfg(feature = "redis")]
            if let Some(link) = &mut self.redis {
                link.start(&mut self.frontier);
                // Starting a pipeline may have resumed the scheduler, or restored requests.
                self.drain_actions();
            }
            let rx = &mut self.rx;
            match self
                .frontier
                .next_step(until_closed, |_| rx.try_recv().ok())
            {
                Step::Return => break,
                Step::Again => continue,
                Step::Wait => {}
            }
            let deadline = self.frontier.poll_timeout();
            if deadline != armed {
                match deadline {
                    Some(at) => timer.set_at(at),
                    None => timer = async_io::Timer::never(),
                }
                armed = deadline;
            }
            // Hops first, then commands, then Redis, then the timer.
            let hops = &mut self.hops;
            let rx = &mut self.rx;
            #[cfg(feature = "redis")]
            let redis = &mut self.redis;
            let event = std::future::poll_fn(|cx| {
                if !hops.is_empty() {
                    if let Poll::Ready(Some((id, result))) = hops.poll_next(cx) {
                        return Poll::Ready(Event::Hop(id, result));
                    }
                }
                if let Poll::Ready(Some(command)) = rx.poll_next(cx) {
                    return Poll::Ready(Event::Command(command));
                }
                #[cfg(feature = "redis")]
                if let Some(link) = redis.as_mut() {
                    if let Poll::Ready(reply) = link.poll_reply(cx) {
                        return Poll::Ready(Event::Redis(reply));
                    }
                }
                if armed.is_some() && timer.poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                Poll::Pending
            })
            .await;
            match event {
                // libcurl tells no receive time: the hop ends when its result is polled.
                Event::Hop(id, result) => self.frontier.handle_hop(id, result, Instant::now()),
                Event::Command(command) => self.command(command),
                Event::Timer => {
                    // Fired: the next deadline re-arms it, even if it is the same instant.
                    armed = None;
                    self.frontier.handle_timeout();
                }
                #[cfg(feature = "redis")]
                Event::Redis(reply) => self.frontier.handle_reply(reply),
            }
        }
        self.frontier.end_run(until_closed)
    }

    fn command(&mut self, command: Command<R>) {
        if self.frontier.handle_command(command) {
            // Aborted: dropping the hops closes their connections.
            self.hops = FuturesUnordered::new();
        }
    }

    fn drain_actions(&mut self) {
        while let Some(action) = self.frontier.poll_action() {
            let Some(fetch) = self.frontier.carry_out(action) else {
                continue;
            };
            let id = fetch.id;
            let hop = AssertUnwindSafe(self.client.hop(fetch)).catch_unwind();
            let hop = async move {
                let result = hop.await.unwrap_or_else(|_| {
                    HopResult::Failed(TransportError::new(
                        TransportErrorKind::Other,
                        "the hop failed unexpectedly (panic in the HTTP stack)",
                    ))
                });
                (id, result)
            };
            self.hops.push(Box::pin(hop));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use downpour_conformance::{test_config, Probe, Servers};

    /// A run whose future is dropped midway leaves its hops in flight; a stop now taken in
    /// with the unfinished requests aborts them and closes their connections, as it would
    /// in a run.
    #[test]
    fn a_stop_now_after_a_cancelled_run_drops_its_hops() {
        let servers = Servers::start(1);
        let mut fetcher: Fetcher<Probe> = Fetcher::new(test_config(), Fifo::new()).unwrap();
        let slow = Probe::new(&servers.url(0, "/delay?ms=20000"), 0);
        fetcher.enqueue(slow).unwrap();
        let cancelled = smol::block_on(async { Some(fetcher.run().await) }.or(async {
            async_io::Timer::after(Duration::from_millis(300)).await;
            None
        }));
        assert!(cancelled.is_none(), "the run ended: {cancelled:?}");
        assert_eq!((fetcher.frontier.in_flight(), fetcher.hops.len()), (1, 1));

        fetcher.handle().stop_now();
        assert!(fetcher.take_unfinished().is_empty());
        assert_eq!((fetcher.frontier.in_flight(), fetcher.hops.len()), (0, 0));
    }

    downpour_conformance::dropped_fetcher_test!(crate);
}
