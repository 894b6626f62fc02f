//! The conformance suite every downpour driver must pass.
//!
//! It is written once, against the [`Driver`] trait: a driver's test file implements the
//! trait (run these requests with this config and policy, block until done, hand everything
//! back) and expands [`suite!`] to get one `#[test]` per case:
//!
//! ```ignore
//! #[derive(Clone)]
//! struct MyDriver;
//! impl downpour_conformance::Driver for MyDriver {
//!     fn run(&self, run: downpour_conformance::Run) -> downpour_conformance::RunOutcome { todo!() }
//! }
//! downpour_conformance::suite!(MyDriver);
//! ```
//!
//! The cases run against real servers on loopback ([`Servers`]: one listener per address
//! 127.0.0.2, 127.0.0.3, …, each a "host") that log every request with their own clock, so
//! politeness is audited from the server's side ([`violations`]), and a real forward proxy
//! ([`Tinyproxy`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cases;
mod proxy;
pub mod redis;
mod server;

use std::time::Duration;

use downpour::{http, Config, Context, FetchError, Outcome, Policy, Request, Response, Stats, Url};
use serde::{Deserialize, Serialize};

pub use proxy::Tinyproxy;
pub use server::{
    gzip_bomb, host_ip, tls_config, violations, LogEntry, Robots, Servers, BOMB_SIZE, TEXT,
};

/// One run of a driver: what to fetch, how.
pub struct Run {
    /// The scheduler's settings.
    pub config: Config,
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// The requests, enqueued before the run starts.
    pub requests: Vec<Probe>,
    /// Driver settings.
    pub options: Options,
}

/// Driver settings a case may need.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Trust this certificate (DER) besides the bundled roots.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Proxy rules (as the `http_proxy`, `https_proxy`, `no_proxy` variables would give
    /// them); `None`: no proxy (the environment is ignored in the suite), unless
    /// `proxy_from_environment`.
    pub proxy: Option<ProxyRules>,
    /// The driver's default proxy setting, which reads the environment's variables.
    pub proxy_from_environment: bool,
    /// Stop gracefully (finish in flight, keep the rest queued) once this many requests
    /// are finished.
    pub stop_after: Option<usize>,
    /// Stop at once (hops in flight aborted) once this many requests are finished.
    pub stop_now_after: Option<usize>,
    /// Enqueue these through a handle after the run returned, before the unfinished
    /// requests are taken back.
    pub enqueue_after_run: Vec<Probe>,
    /// Feed the requests as the crawl goes: only this many are enqueued before the run, and
    /// each one that finishes lets the next in, through a handle from `on_finished`.
    pub backlog: Option<usize>,
    /// Enqueue these from another thread through a handle as the run goes, one every
    /// [`FED_EVERY`], then close the handle; the run is `run_until_closed`.
    pub fed_until_closed: Vec<Probe>,
}

/// A producer on a thread of its own: sends each probe through `enqueue` after a pause of
/// [`FED_EVERY`], then `close`s (the suites' `fed_until_closed`).
pub fn feed_until_closed(
    fed: Vec<Probe>,
    enqueue: impl Fn(Probe) + Send + 'static,
    close: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for probe in fed {
            std::thread::sleep(FED_EVERY);
            enqueue(probe);
        }
        close();
    })
}

/// The pause before each request of [`Options::fed_until_closed`]: longer than a fetch on
/// loopback, so that the fetcher has nothing left to do in between.
pub const FED_EVERY: Duration = Duration::from_millis(60);

/// Proxy rules, in the form of the environment variables.
#[derive(Debug, Clone, Default)]
pub struct ProxyRules {
    /// `http_proxy`.
    pub http: Option<String>,
    /// `https_proxy`.
    pub https: Option<String>,
    /// `no_proxy`.
    pub no: String,
}

/// What a run gave back.
#[derive(Debug)]
pub struct RunOutcome {
    /// Finished requests, in the order they finished.
    pub finished: Vec<Probe>,
    /// Requests refused when enqueued, with the reason.
    pub refused: Vec<(Probe, String)>,
    /// Requests left queued (after a stop).
    pub unfinished: Vec<Probe>,
    /// The scheduler's counters at the end.
    pub stats: Stats,
}

/// A driver under test.
pub trait Driver: Clone + Send + 'static {
    /// Runs to completion (or to the stop asked in the options) and returns everything.
    fn run(&self, run: Run) -> RunOutcome;
}

/// The request type of the suite: records every callback it gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The URL.
    pub url: Url,
    /// A number identifying it in the case.
    pub tag: u64,
    /// Panic in this callback (`"on_success"`, `"on_status"`, …).
    pub panic_in: Option<String>,
    /// Its own proxy.
    pub proxy: Option<Url>,
    /// Its method, when not GET (not stored with Redis).
    #[serde(skip)]
    pub method: Option<http::Method>,
    /// Callbacks, in order: `status 200`, `headers`, `url <url>`, `success`, `error <kind>`,
    /// `done`.
    #[serde(skip)]
    pub events: Vec<String>,
    /// How it ended.
    #[serde(skip)]
    pub result: Option<ProbeResult>,
}

/// How a [`Probe`] ended, copied from its outcome in `on_done`.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Whether it succeeded.
    pub ok: bool,
    /// The error's kind ([`FetchError::kind`]), or `"ok"`.
    pub kind: String,
    /// The error as text.
    pub error: String,
    /// The final status, if a response came.
    pub status: Option<u16>,
    /// The final body.
    pub body: Vec<u8>,
    /// The final response's headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The last URL.
    pub url: Url,
    /// Redirects followed.
    pub redirects: u32,
    /// Retries.
    pub retries: u32,
}

impl Probe {
    /// A probe of this URL.
    pub fn new(url: &str, tag: u64) -> Probe {
        Probe {
            url: Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")),
            tag,
            panic_in: None,
            proxy: None,
            method: None,
            events: Vec::new(),
            result: None,
        }
    }

    /// The result; panics with the events when there is none.
    pub fn result(&self) -> &ProbeResult {
        self.result
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no result; events {:?}", self.url, self.events))
    }

    fn maybe_panic(&self, callback: &str) {
        if self.panic_in.as_deref() == Some(callback) {
            panic!("probe {} panics in {callback} on purpose", self.tag);
        }
    }
}

impl Request for Probe {
    fn url(&self) -> &Url {
        &self.url
    }

    fn proxy(&self) -> Option<Url> {
        self.proxy.clone()
    }

    fn method(&self) -> http::Method {
        self.method.clone().unwrap_or(http::Method::GET)
    }

    fn on_url(&mut self, _ctx: &mut Context<Self>, url: &Url) {
        self.events.push(format!("url {url}"));
        self.maybe_panic("on_url");
    }

    fn on_status(
        &mut self,
        _ctx: &mut Context<Self>,
        _version: http::Version,
        status: http::StatusCode,
    ) {
        self.events.push(format!("status {}", status.as_u16()));
        self.maybe_panic("on_status");
    }

    fn on_headers(&mut self, _ctx: &mut Context<Self>, _headers: &http::HeaderMap) {
        self.events.push("headers".into());
        self.maybe_panic("on_headers");
    }

    fn on_success(&mut self, _ctx: &mut Context<Self>, _response: &Response) {
        self.events.push("success".into());
        self.maybe_panic("on_success");
    }

    fn on_error(&mut self, _ctx: &mut Context<Self>, error: &FetchError) {
        self.events.push(format!("error {}", error.kind()));
        self.maybe_panic("on_error");
    }

    fn on_done(&mut self, _ctx: &mut Context<Self>, outcome: &Outcome) {
        self.events.push("done".into());
        let response = match &outcome.result {
            Ok(r) => Some(r),
            Err(e) => e.response(),
        };
        self.result = Some(ProbeResult {
            ok: outcome.is_success(),
            kind: match &outcome.result {
                Ok(_) => "ok".into(),
                Err(e) => e.kind().into(),
            },
            error: match &outcome.result {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            },
            status: outcome.status().map(|s| s.as_u16()),
            body: response.map(|r| r.body.to_vec()).unwrap_or_default(),
            headers: response
                .map(|r| {
                    r.headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect()
                })
                .unwrap_or_default(),
            url: outcome.url().clone(),
            redirects: outcome.redirects,
            retries: outcome.retries,
        });
        self.maybe_panic("on_done");
    }
}

/// A loopback port nothing listens on (free when this returns), for servers to start on
/// and for "nothing listens here" cases.
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("local address").port()
}

/// The warnings and errors logged in this process since the first call (which installs the
/// logger that keeps them, unless the process has one already: then it stays empty).
pub fn logged_warnings() -> Vec<String> {
    struct Keep(std::sync::Mutex<Vec<String>>);
    impl log::Log for Keep {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
                kept.push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static KEEP: Keep = Keep(std::sync::Mutex::new(Vec::new()));
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if log::set_logger(&KEEP).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    });
    KEEP.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Checks that a fetcher dropped with requests of its own and requests sent through a handle
/// says how many it dropped. `drop_with(own, sent)` makes a fetcher of [`test_config`] with
/// a fifo policy, enqueues `own` itself and `sent` through a handle, and drops it.
pub fn assert_a_dropped_fetcher_counts_its_requests(drop_with: impl FnOnce(Probe, Vec<Probe>)) {
    let _ = logged_warnings();
    let url = "http://127.0.0.1:9/";
    drop_with(
        Probe::new(url, 0),
        (1..=6).map(|id| Probe::new(url, id)).collect(),
    );
    let said = logged_warnings();
    assert!(
        said.iter()
            .any(|m| m.starts_with("7 unfinished requests were dropped")),
        "{said:?}"
    );
}

/// Writes a driver crate's unit test of its dropped `Fetcher`, with
/// [`assert_a_dropped_fetcher_counts_its_requests`]: `dropped_fetcher_test!(crate);` in the
/// crate's tests module, where the `Fetcher`, `Fifo` and `Handle` are the driver's own.
#[macro_export]
macro_rules! dropped_fetcher_test {
    ($krate:ident) => {
        /// Requests a handle sent to a fetcher that is then dropped, without a run to take
        /// them in, are counted with its own unfinished ones in a warning.
        #[test]
        fn a_dropped_fetcher_says_how_many_requests_it_drops() {
            $crate::assert_a_dropped_fetcher_counts_its_requests(|own, sent| {
                let config = $crate::test_config();
                let mut fetcher: $krate::Fetcher<$crate::Probe> =
                    $krate::Fetcher::new(config, $krate::Fifo::new()).unwrap();
                fetcher.enqueue(own).unwrap();
                let handle = fetcher.handle();
                sent.into_iter().for_each(|p| handle.enqueue(p).unwrap());
            });
        }
    };
}

/// A config for tests: short timeouts and back-offs.
pub fn test_config() -> Config {
    Config {
        concurrency: 32,
        timeout: Duration::from_secs(10),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..Config::default()
    }
}

/// The whole suite for a driver crate with the common `Fetcher` API, in one line: it writes
/// the [`Driver`] adapter (proxy rules, client options, finished requests collected, a stop
/// after `stop_after` or `stop_now_after` of them, a producer thread for
/// `fed_until_closed`) and expands [`suite!`]. The drivers differ only in how `run` and
/// `run_until_closed` are driven, given last as `|fetcher| …`; a setup such as a runtime may
/// come before them.
///
/// ```ignore
/// downpour_conformance::driver_suite!(Blocking, downpour_blocking,
///     |fetcher| fetcher.run(),
///     until_closed: |fetcher| fetcher.run_until_closed());
/// downpour_conformance::driver_suite!(Tokio, downpour_tokio,
///     let runtime = tokio::runtime::Runtime::new().unwrap();
///     |fetcher| runtime.block_on(fetcher.run()),
///     until_closed: |fetcher| runtime.block_on(fetcher.run_until_closed()));
/// ```
#[macro_export]
macro_rules! driver_suite {
    // The arguments after the name are `driver!`'s, which reads them.
    ($name:ident, $($driver:tt)*) => {
        $crate::driver!($name, $($driver)*);
        $crate::suite!($name);
    };
}

/// Defines the [`Driver`] `$name` of a driver crate, as [`driver_suite!`] does, without the
/// suite's tests: for a case that must run alone in its test binary
/// ([`cases::proxy_variables_from_the_environment_are_honoured`]).
#[macro_export]
macro_rules! driver {
    (
        $name:ident,
        $krate:ident,
        $(let $setup:ident = $setup_expr:expr;)?
        |$fetcher:ident| $run:expr,
        until_closed: |$closing:ident| $run_until_closed:expr
    ) => {
        #[derive(Clone)]
        struct $name;

        impl $crate::Driver for $name {
            fn run(&self, run: $crate::Run) -> $crate::RunOutcome {
                use $krate::{ClientOptions, Fetcher, Proxy, Scheduler, Url};
                $(let $setup = $setup_expr;)?
                let proxy = match run.options.proxy {
                    None if run.options.proxy_from_environment => ClientOptions::default().proxy,
                    None => Proxy::None,
                    Some(rules) => Proxy::Rules {
                        http: rules.http.map(|u| Url::parse(&u).expect("proxy URL")),
                        https: rules.https.map(|u| Url::parse(&u).expect("proxy URL")),
                        no: rules.no,
                    },
                };
                let options = ClientOptions {
                    proxy,
                    extra_root_certificates: run.options.extra_root_certificates,
                    ..ClientOptions::default()
                };
                let scheduler = Scheduler::with_policy(run.config, run.policy).expect("config");
                let mut fetcher = Fetcher::from_scheduler(scheduler, options).expect("fetcher");
                let finished = ::std::sync::Arc::new(::std::sync::Mutex::new(Vec::new()));
                let handle = fetcher.handle();
                let stop_after = run.options.stop_after;
                let stop_now_after = run.options.stop_now_after;
                let late = run.options.enqueue_after_run;
                let late_handle = fetcher.handle();
                let mut first = run.requests;
                let mut rest: ::std::collections::VecDeque<$crate::Probe> = match run.options.backlog {
                    Some(backlog) => first.split_off(backlog.min(first.len())).into(),
                    None => ::std::collections::VecDeque::new(),
                };
                // A refused request, with the reason as text.
                let refusal = |e: $krate::EnqueueError<$crate::Probe>| {
                    let why = e.reason.to_string();
                    (e.request, why)
                };
                let feed = fetcher.handle();
                let fed_refused = ::std::sync::Arc::new(::std::sync::Mutex::new(Vec::new()));
                let fed_refused_sink = fed_refused.clone();
                let sink = finished.clone();
                fetcher.on_finished(move |probe: $crate::Probe| {
                    let mut finished = sink.lock().unwrap();
                    finished.push(probe);
                    if stop_after == Some(finished.len()) {
                        handle.stop();
                    }
                    if stop_now_after == Some(finished.len()) {
                        handle.stop_now();
                    }
                    if let Some(next) = rest.pop_front() {
                        match feed.enqueue(next) {
                            Ok(()) => {}
                            Err($krate::HandleError::Refused(e)) => {
                                fed_refused_sink.lock().unwrap().push(refusal(e));
                            }
                            Err($krate::HandleError::Closed(_)) => {
                                panic!("the fetcher closed its handle while it ran")
                            }
                        }
                    }
                });
                let mut refused: Vec<($crate::Probe, String)> =
                    fetcher.extend(first).into_iter().map(refusal).collect();
                let fed = run.options.fed_until_closed;
                let producer = (!fed.is_empty()).then(|| {
                    let (handle, closer) = (fetcher.handle(), fetcher.handle());
                    $crate::feed_until_closed(
                        fed,
                        move |probe| handle.enqueue(probe).expect("a valid request, a live fetcher"),
                        move || closer.close(),
                    )
                });
                let stats = match producer {
                    None => {
                        let $fetcher = &mut fetcher;
                        $run
                    }
                    Some(producer) => {
                        let $closing = &mut fetcher;
                        let stats = $run_until_closed;
                        producer.join().expect("the producer");
                        stats
                    }
                };
                for probe in late {
                    late_handle.enqueue(probe).expect("a valid request, a live fetcher");
                }
                let unfinished = fetcher.take_unfinished();
                let finished = ::std::mem::take(&mut *finished.lock().unwrap());
                refused.append(&mut fed_refused.lock().unwrap());
                $crate::RunOutcome {
                    finished,
                    refused,
                    unfinished,
                    stats,
                }
            }
        }
    };
}

/// Expands to one `#[test]` per conformance case, run against the given driver value.
#[macro_export]
macro_rules! suite {
    ($driver:expr) => {
        $crate::suite!(@cases $driver;
            callback_order_per_hop,
            redirects_across_hosts_keep_each_hosts_politeness,
            robots_allow,
            robots_disallow,
            robots_not_found_allows_all,
            robots_server_error_makes_the_origin_unavailable,
            robots_that_redirects_is_followed,
            client_errors_are_not_retried,
            server_errors_are_retried,
            retry_after_503_is_honoured,
            connection_reset_mid_body,
            stalled_server_times_out,
            huge_body_is_cut_at_the_cap,
            gzip_bomb_is_cut_at_the_cap,
            gzip_deflate_and_brotli_are_decoded,
            corrupt_gzip_is_a_decode_error,
            malformed_status_line,
            malformed_header,
            header_larger_than_the_limit,
            many_headers_under_the_limit,
            invalid_urls_are_refused,
            unresolvable_host,
            connection_refused,
            panicking_callback_is_trapped,
            graceful_stop_keeps_the_rest_queued,
            requests_enqueued_after_the_run_are_taken_back,
            requests_enqueued_after_an_idle_run_are_taken_back,
            requests_fed_until_the_handle_closes_are_all_fetched,
            a_list_fed_as_requests_finish_stays_within_its_backlog,
            stop_now_aborts_the_hops_in_flight,
            connections_are_reused,
            connections_the_server_closed_are_not_reused,
            a_request_a_reused_connection_drops_is_sent_again,
            a_request_two_reused_connections_drop_in_turn_is_sent_again,
            a_request_a_fresh_connection_drops_is_not_sent_again,
            a_request_answered_in_part_on_a_reused_connection_is_not_sent_again,
            user_agent_is_sent,
            long_urls_are_sent,
            https_with_a_trusted_certificate,
            https_with_an_untrusted_certificate_fails,
            proxy_for_http,
            proxy_for_https,
            proxy_credentials,
            proxy_per_request,
            no_proxy_bypasses_the_proxy,
            many_hosts_each_request_exactly_once_and_polite,
        );
    };
    (@cases $driver:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::cases::$name(&$driver)
            }
        )*
    };
}
