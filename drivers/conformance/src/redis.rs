//! The Redis part of the suite: a real `redis-server` started on a free port, worker
//! processes killed with SIGKILL, several workers sharing one crawl, Redis going away.
//!
//! A driver's test file expands [`redis_suite!`](crate::redis_suite): it implements
//! [`RedisDriver`] and adds a `redis_worker` test that, when started by a case as a child
//! process (the test binary runs itself), runs one worker of a shared crawl.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use downpour::{Config, Policy, Polite, Stats};
use downpour_common::store::{partition_of, Keys, RedisOptions, HAND_OFF};
use serde::{Deserialize, Serialize};

use crate::{free_port, test_config, Probe, Servers};

/// A `redis-server` of the test's own, on a free port, with its data on disk (append-only
/// file, synced every second; a clean stop writes it all), so that it can be stopped and
/// started again without losing anything.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts one. Panics with the fix when `redis-server` is not installed.
    pub fn start() -> RedisServer {
        // A port found free can be taken before redis-server binds it (by a parallel test's
        // server, or as a connection's local port): then another one is tried.
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("downpour-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("redis directory");
            let mut server = RedisServer {
                child: None,
                port,
                dir,
            };
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server could not bind a free port in 5 tries");
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it again (after [`stop`](RedisServer::stop)), on the same port and data.
    pub fn start_again(&mut self) {
        assert!(
            self.launch(),
            "redis-server could not bind port {} again",
            self.port
        );
    }

    /// Starts redis-server on the port and waits until it answers with its data loaded
    /// (while it reads its append-only file back, it answers most commands with `LOADING`).
    /// False if it exited (its port was taken); a server that answers but is not this child
    /// (it took the port first) is not mistaken for it.
    fn launch(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (Debian: apt-get install redis-server)")
            });
        let pid = format!("process_id:{}", child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok(mut c) = self.connection() {
                // The default sections: `server` (the pid) and `persistence` (loading).
                let info: redis::RedisResult<String> = redis::cmd("INFO").query(&mut c);
                let ready = |info: String| {
                    let mut lines = info.lines().map(str::trim);
                    lines.clone().any(|line| line == pid) && lines.any(|line| line == "loading:0")
                };
                if info.is_ok_and(ready) {
                    self.child = Some(child);
                    return true;
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it cleanly (its data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        // Wait for the port to be free for `start_again`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection, for a test to look inside.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// How many requests a crawl still holds (stored and in inboxes), over all partitions.
    pub fn unfinished(&self, prefix: &str, partitions: u32) -> usize {
        let keys = Keys::new(prefix, partitions);
        let mut c = self.connection().expect("redis connection");
        (0..partitions)
            .map(|p| {
                let k = keys.partition(p);
                let stored: usize = redis::cmd("HLEN").arg(&k.requests).query(&mut c).unwrap();
                let inbox: usize = redis::cmd("LLEN").arg(&k.inbox).query(&mut c).unwrap();
                stored + inbox
            })
            .sum()
    }

    /// Writes requests straight into the inboxes of a crawl, as any worker would.
    pub fn seed(&self, prefix: &str, partitions: u32, requests: &[Probe]) {
        let keys = Keys::new(prefix, partitions);
        let mut c = self.connection().expect("redis connection");
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for r in requests {
            let p = partition_of(r.url.host_str().unwrap_or(""), partitions);
            by_partition
                .entry(p)
                .or_default()
                .push(serde_json::to_string(r).unwrap());
        }
        for (p, items) in by_partition {
            for chunk in items.chunks(1000) {
                let _: () = redis::cmd("RPUSH")
                    .arg(keys.partition(p).inbox)
                    .arg(chunk)
                    .query(&mut c)
                    .unwrap();
            }
        }
    }
}

/// Prints the store's log lines on stderr (warnings and errors; everything with
/// `DOWNPOUR_LOG=debug`), tagged with the process id, so a failing case shows what Redis did.
pub fn log_to_stderr() {
    struct Stderr(log::LevelFilter);
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= self.0
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", std::process::id(), r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let level = match std::env::var("DOWNPOUR_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    let logger: &'static Stderr = Box::leak(Box::new(Stderr(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// One run of a driver with Redis, in this process.
pub struct RedisRun {
    /// The scheduler's settings (`persist` is turned on by the driver).
    pub config: Config,
    /// The policy.
    pub policy: Box<dyn Policy>,
    /// Requests enqueued through the fetcher before the run.
    pub requests: Vec<Probe>,
    /// Where the crawl lives.
    pub redis: RedisOptions,
    /// Called with every finished request, as it finishes.
    pub on_finished: Box<dyn FnMut(&Probe) + Send>,
    /// What else the fetcher is asked to do, around its first run.
    pub script: Script,
}

/// What a [`RedisRun`] does besides enqueueing its requests and running once.
#[derive(Debug, Default)]
pub struct Script {
    /// Stop (through a handle) once this many requests are finished.
    pub stop_after: Option<usize>,
    /// Enqueue these from another thread through a handle as the run goes, one every
    /// [`FED_EVERY`](crate::FED_EVERY), then close the handle; the run is `run_until_closed`.
    pub fed_until_closed: Vec<Probe>,
    /// Once the first run returned (and its producer closed), before `then`.
    pub between: Option<Hook>,
    /// Once the run returned, on the same fetcher.
    pub then: Then,
    /// The run after `then` is `run_until_closed`, which the close of the first run's
    /// producer ends, since the first run ended early: its store failed (else the case
    /// fails, rather than wait for a close that was used up).
    pub again_until_closed: bool,
}

/// Something a case does between two runs of a fetcher.
pub struct Hook(pub Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// What a fetcher does once its first run returned.
#[derive(Debug, Default)]
pub enum Then {
    /// Nothing.
    #[default]
    Nothing,
    /// Enqueue these (the first through the fetcher, the rest through a handle), then run
    /// again.
    Enqueue(Vec<Probe>),
    /// Resume (after a stop), then run again.
    Resume,
    /// Pass these in through a handle as hand-offs (see [`hand_off_of`]), then run again.
    HandOff(Vec<Probe>),
}

/// A hand-off of `probe` such as a scheduler elsewhere makes when a redirect takes a request
/// to a host it does not own: its target is the probe's URL, and the partition it names is
/// one of that scheduler's (7 of 8), not of the crawl's.
pub fn hand_off_of(probe: Probe) -> downpour::HandOff<Probe> {
    let target = probe.url.to_string();
    let text = serde_json::json!({
        "request": probe,
        "partition": 7,
        "url": target,
        "method": "GET",
        "visited": ["http://elsewhere.invalid/moved"],
        "redirects": 1,
    });
    serde_json::from_value(text).expect("a hand-off as schedulers write them")
}

/// What a run with Redis gave back.
#[derive(Debug)]
pub struct RedisOutcome {
    /// Finished requests, in order, over every run.
    pub finished: Vec<Probe>,
    /// The counters at the end of the first run.
    pub first_stats: Stats,
    /// Why the first run ended early, if it did.
    pub first_error: Option<String>,
    /// The counters at the end.
    pub stats: Stats,
    /// With [`Script::fed_until_closed`]: whether `run_until_closed` returned while its
    /// producer was still sending (before the handle closed).
    pub returned_before_the_close: Option<bool>,
    /// Why the run ended early, if it did.
    pub error: Option<String>,
}

/// A driver with a `redis` feature, under test.
pub trait RedisDriver: Clone + Send + 'static {
    /// Connects (an error here is a start-up error, as text) and runs until done.
    fn run_redis(&self, run: RedisRun) -> Result<RedisOutcome, String>;
}

/// What a worker process is asked to do (passed in `DOWNPOUR_REDIS_WORKER`, as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Redis URL.
    pub url: String,
    /// Key prefix.
    pub prefix: String,
    /// Partitions of the crawl.
    pub partitions: u32,
    /// Lease time to live, ms.
    pub lease_ttl_ms: u64,
    /// Polite delay, ms.
    pub delay_ms: u64,
    /// Concurrency.
    pub concurrency: usize,
    /// File to append the tag of every finished request to, one per line.
    pub done_file: PathBuf,
}

const WORKER_ENV: &str = "DOWNPOUR_REDIS_WORKER";

/// The body of the `redis_worker` test: runs one worker when started by a case, does
/// nothing otherwise.
pub fn worker_entry<D: RedisDriver>(driver: &D) {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let spec: WorkerSpec = serde_json::from_str(&spec).expect("worker spec");
    let mut done = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.done_file)
        .expect("done file");
    let run = RedisRun {
        config: Config {
            concurrency: spec.concurrency,
            ..test_config()
        },
        policy: Box::new(
            Polite::new()
                .delay(Duration::from_millis(spec.delay_ms))
                .allow_all(true),
        ),
        requests: Vec::new(),
        redis: RedisOptions {
            url: spec.url.clone(),
            prefix: spec.prefix.clone(),
            partitions: spec.partitions,
            lease_ttl: Duration::from_millis(spec.lease_ttl_ms),
            poll_interval: Duration::from_millis(20),
            ..RedisOptions::default()
        },
        script: Script::default(),
        // One write per line: a SIGKILL never leaves half a line.
        on_finished: Box::new(move |probe| {
            let ok = probe.result().ok;
            done.write_all(
                format!("{} {}\n", probe.tag, if ok { "ok" } else { "failed" }).as_bytes(),
            )
            .expect("done file");
        }),
    };
    let outcome = driver.run_redis(run).expect("worker start");
    assert!(outcome.error.is_none(), "worker: {:?}", outcome.error);
}

fn spawn_worker(spec: &WorkerSpec) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    Command::new(exe)
        .args([
            "--exact",
            "redis_worker",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(WORKER_ENV, serde_json::to_string(spec).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker process")
}

fn read_done(path: &Path) -> Vec<(u64, bool)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (tag, ok) = l.split_once(' ')?;
            Some((tag.parse().ok()?, ok == "ok"))
        })
        .collect()
}

fn probes(s: &Servers, hosts: usize, count: usize) -> Vec<Probe> {
    more_probes(s, hosts, "page", count, 0)
}

/// Puts a value of the wrong type where a crawl's settings go: data that is not a crawl's.
fn write_foreign_meta(redis: &RedisServer, prefix: &str) {
    let mut c = redis.connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{{{prefix}}}:meta"))
        .arg("something else")
        .query(&mut c)
        .unwrap();
}

fn prefix(case: &str) -> String {
    format!("test-{case}-{}", std::process::id())
}

fn redis_options(server: &RedisServer, prefix: &str) -> RedisOptions {
    RedisOptions {
        url: server.url(),
        prefix: prefix.to_string(),
        lease_ttl: Duration::from_secs(1),
        poll_interval: Duration::from_millis(20),
        ..RedisOptions::default()
    }
}

/// `count` requests over 20 hosts, 4 at once, with this delay; once a quarter of them have
/// finished, `outage` runs inside that callback (it stops Redis, and may start a thread that
/// starts it again), so that Redis is down before the crawl goes on, however slow the
/// machine: a stop run on a thread of its own could come after the crawl had finished.
fn stopping_redis_at_a_quarter(
    s: &Servers,
    count: usize,
    delay: Duration,
    redis: RedisOptions,
    outage: impl FnOnce() + Send + 'static,
) -> RedisRun {
    let mut outage = Some(outage);
    let mut finished = 0;
    RedisRun {
        config: Config {
            concurrency: 4,
            ..test_config()
        },
        policy: Box::new(Polite::new().delay(delay).allow_all(true)),
        requests: probes(s, 20, count),
        redis,
        script: Script::default(),
        on_finished: Box::new(move |_| {
            finished += 1;
            if finished == count / 4 {
                if let Some(outage) = outage.take() {
                    outage();
                }
            }
        }),
    }
}

/// A run of what the crawl holds in Redis, enqueueing nothing.
fn resuming(redis: RedisOptions) -> RedisRun {
    RedisRun {
        config: test_config(),
        policy: fast_polite(),
        requests: Vec::new(),
        redis,
        script: Script::default(),
        on_finished: Box::new(|_| {}),
    }
}

fn fast_polite() -> Box<dyn Policy> {
    Box::new(
        Polite::new()
            .delay(Duration::ZERO)
            .per_host(FAST_PER_HOST)
            .allow_all(true),
    )
}

/// Requests of a host [`fast_polite`] lets be in flight at once.
const FAST_PER_HOST: u32 = 2;

/// A crawl through Redis finishes every request once, and leaves Redis empty.
pub fn redis_crawl_finishes_and_leaves_nothing<D: RedisDriver>(driver: &D) {
    let s = Servers::start(30);
    let redis = RedisServer::start();
    let prefix = prefix("crawl");
    let requests = probes(&s, 30, 600);
    let out = driver
        .run_redis(RedisRun {
            config: test_config(),
            policy: fast_polite(),
            requests,
            redis: redis_options(&redis, &prefix),
            script: Script::default(),
            on_finished: Box::new(|_| {}),
        })
        .expect("run");
    assert!(out.error.is_none(), "{:?}", out.error);
    let mut tags: Vec<u64> = out.finished.iter().map(|p| p.tag).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        (0..600).collect::<Vec<_>>(),
        "each request finished once"
    );
    assert!(out.finished.iter().all(|p| p.result().ok));
    assert_eq!(s.log().len(), 600, "each request fetched once");
    assert_eq!(redis.unfinished(&prefix, 1), 0, "Redis holds nothing more");
}

/// Requests stored by an earlier run (here: written by another process) are restored and
/// fetched; an entry that is not a request is set aside, reported, and stops nothing.
pub fn redis_restores_stored_requests_and_sets_corrupt_ones_aside<D: RedisDriver>(driver: &D) {
    let s = Servers::start(5);
    let redis = RedisServer::start();
    let prefix = prefix("restore");
    let keys = Keys::new(&prefix, 1).partition(0);
    let mut c = redis.connection().unwrap();
    for p in probes(&s, 5, 50) {
        let _: () = redis::cmd("HSET")
            .arg(&keys.requests)
            .arg(format!("old-{}", p.tag))
            .arg(serde_json::to_string(&p).unwrap())
            .query(&mut c)
            .unwrap();
    }
    // A request handed over by a redirect, stored with its route; and one whose route
    // leads nowhere fetchable.
    let original = Probe::new(&s.url(0, "/redirect?to=elsewhere"), 1000);
    let hand_off = |target: &str| {
        format!(
            r#"{HAND_OFF}{{"request":{},"partition":0,"url":"{target}","method":"GET","visited":["{}"],"redirects":1}}"#,
            serde_json::to_string(&original).unwrap(),
            original.url
        )
    };
    let bad_hand_off = hand_off("ftp://example.com/");
    for (id, entry) in [
        ("garbage", "{not a request".to_string()),
        ("handed", hand_off(&s.url(1, "/handed"))),
        ("bad-hand-off", bad_hand_off.clone()),
    ] {
        let _: () = redis::cmd("HSET")
            .arg(&keys.requests)
            .arg(id)
            .arg(entry)
            .query(&mut c)
            .unwrap();
    }
    let out = driver
        .run_redis(resuming(redis_options(&redis, &prefix)))
        .expect("run");
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.finished.len(), 51, "every stored request fetched");
    let handed = out
        .finished
        .iter()
        .find(|p| p.tag == 1000)
        .unwrap()
        .result();
    assert!(handed.ok, "{handed:?}");
    assert_eq!(
        (handed.url.as_str(), handed.redirects),
        (s.url(1, "/handed").as_str(), 1)
    );
    assert_eq!(s.hits("/handed").len(), 1);
    assert!(s.hits("/redirect").is_empty(), "carried on from the target");
    let rejected: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&keys.rejected)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        rejected.get("garbage").map(String::as_str),
        Some("{not a request"),
        "the corrupt entry is kept aside for inspection"
    );
    assert_eq!(rejected.get("bad-hand-off"), Some(&bad_hand_off));
    assert_eq!(redis.unfinished(&prefix, 1), 0);
}

/// Data under the prefix that this layout did not write ends the run with an error that
/// names the key; an unreachable Redis is an error at start.
pub fn redis_foreign_data_and_unreachable_redis_are_clear_errors<D: RedisDriver>(driver: &D) {
    let redis = RedisServer::start();
    let prefix = prefix("foreign");
    write_foreign_meta(&redis, &prefix);
    let out = driver
        .run_redis(resuming(redis_options(&redis, &prefix)))
        .expect("run");
    let error = out.error.expect("the run reports the foreign data");
    assert!(error.contains("meta"), "{error}");

    let closed = RedisOptions {
        url: format!("redis://127.0.0.1:{}/", free_port()),
        ..redis_options(&redis, &prefix)
    };
    let error = driver
        .run_redis(resuming(closed))
        .expect_err("an unreachable Redis is refused at start");
    assert!(error.contains("unreachable"), "{error}");
}

/// Redis stops mid-crawl and comes back: the run goes on and nothing is lost. Then it
/// stops for longer than `give_up_after`: the run ends with a clear error and everything
/// unfinished is still in Redis, where the next run finds it.
pub fn redis_going_away_loses_nothing<D: RedisDriver>(driver: &D) {
    const COUNT: usize = 400;
    let s = Servers::start(20);
    let redis = std::sync::Arc::new(std::sync::Mutex::new(RedisServer::start()));
    let prefix = prefix("away");
    let options = {
        let r = redis.lock().unwrap();
        RedisOptions {
            give_up_after: Duration::from_secs(30),
            ..redis_options(&r, &prefix)
        }
    };
    // A short stop: Redis restarts after 600 ms.
    let bouncer = redis.clone();
    let restart = std::sync::Arc::new(std::sync::Mutex::new(None));
    let restart_slot = restart.clone();
    let out = driver
        .run_redis(stopping_redis_at_a_quarter(
            &s,
            COUNT,
            Duration::from_millis(20),
            options.clone(),
            move || {
                bouncer.lock().unwrap().stop();
                *restart_slot.lock().unwrap() = Some(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(600));
                    bouncer.lock().unwrap().start_again();
                }));
            },
        ))
        .expect("run");
    let restart = restart.lock().unwrap().take();
    restart
        .expect("Redis was stopped mid-crawl")
        .join()
        .expect("Redis started again");
    assert!(out.error.is_none(), "{:?}", out.error);
    let mut tags: Vec<u64> = out.finished.iter().map(|p| p.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags.len(),
        COUNT,
        "every request finished despite the restart"
    );
    assert_eq!(redis.lock().unwrap().unfinished(&prefix, 1), 0);

    // A long stop: the run gives up, everything unfinished stays in Redis.
    let prefix = format!("{prefix}-long");
    let options = RedisOptions {
        give_up_after: Duration::from_millis(800),
        prefix: prefix.clone(),
        ..options
    };
    let stopper = redis.clone();
    let out = driver
        .run_redis(stopping_redis_at_a_quarter(
            &s,
            COUNT,
            Duration::from_millis(100),
            options.clone(),
            move || stopper.lock().unwrap().stop(),
        ))
        .expect("run");
    let error = out.error.expect("the run gives up");
    assert!(error.contains("unreachable"), "{error}");
    let first: Vec<u64> = out.finished.iter().map(|p| p.tag).collect();
    assert!(first.len() < COUNT, "the run stopped early");
    redis.lock().unwrap().start_again();
    let left = redis.lock().unwrap().unfinished(&prefix, 1);
    assert!(
        left > 0 && left + first.len() >= COUNT,
        "{left} left, {} done",
        first.len()
    );
    let out = driver.run_redis(resuming(options)).expect("second run");
    assert!(out.error.is_none(), "{:?}", out.error);
    let mut tags: Vec<u64> = first
        .into_iter()
        .chain(out.finished.iter().map(|p| p.tag))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), COUNT, "nothing lost over the two runs");
    assert_eq!(redis.lock().unwrap().unfinished(&prefix, 1), 0);
}

/// Redis goes away for longer than `give_up_after` while a producer enqueues requests and
/// closes: the run returns with the error. Once Redis is back, requests are enqueued into the
/// failed store, and the same fetcher's next `run_until_closed` writes them and those of the
/// producer, fetches everything, and returns at the end (the close came before the
/// failure, and stays for the run that finishes the rest).
pub fn redis_a_run_that_gave_up_writes_the_rest_at_the_next<D: RedisDriver>(driver: &D) {
    use std::sync::{Arc, Mutex};
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let prefix = prefix("gave-up");
    let options = redis_options(&redis.lock().unwrap(), &prefix);
    // Down for 2.5 s: the run gives up 1 s after the first write it missed.
    let outage = redis.clone();
    let restart: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let restart_slot = restart.clone();
    let first = gives_up_then_finishes(
        driver,
        options,
        move || {
            outage.lock().unwrap().stop();
            let back = outage.clone();
            *restart_slot.lock().unwrap() = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2500));
                back.lock().unwrap().start_again();
            }));
        },
        move || {
            let restart = restart.lock().unwrap().take();
            restart
                .expect("Redis was stopped mid-crawl")
                .join()
                .expect("Redis started again");
        },
    );
    assert!(first.contains("unreachable"), "{first}");
    assert_eq!(
        redis.lock().unwrap().unfinished(&prefix, 1),
        0,
        "Redis holds nothing more"
    );
}

/// Redis runs out of memory mid-crawl (`maxmemory` reached, nothing to evict) while a
/// producer enqueues requests and closes: it refuses every write, and the run gives up after
/// `give_up_after` with an error that says so. Once memory is freed, the same fetcher's next
/// run writes what waited and fetches everything: no refused write was dropped.
pub fn redis_writes_refused_for_want_of_memory_wait_for_room<D: RedisDriver>(driver: &D) {
    use std::sync::Arc;
    let redis = Arc::new(RedisServer::start());
    let prefix = prefix("out-of-memory");
    let options = redis_options(&redis, &prefix);
    // With the policy that evicts nothing (the default, and what a crawl's queue needs).
    let set_maxmemory = |redis: &RedisServer, bytes: u64| {
        let mut c = redis.connection().expect("a connection to Redis");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .arg("maxmemory")
            .arg(bytes)
            .query(&mut c)
            .expect("CONFIG SET maxmemory");
    };
    // Full (1 byte: every write is over the limit) until the first run returned.
    let (full, room) = (redis.clone(), redis.clone());
    let first = gives_up_then_finishes(
        driver,
        options,
        move || set_maxmemory(&full, 1),
        move || set_maxmemory(&room, 0),
    );
    assert!(first.contains("out of memory"), "{first}");
    assert!(first.contains("maxmemory"), "{first}");
    assert_eq!(redis.unfinished(&prefix, 1), 0, "Redis holds nothing more");
}

/// The inbox of one partition holds foreign data (a string): the first write, of every
/// enqueued request into the inboxes of two partitions, is refused for that one's requests,
/// and Redis applies the rest of the transaction. The run ends with an error that names the
/// key. Once the key is removed, the same fetcher's next run writes only the refused
/// requests, and fetches each request exactly once: none dropped, none written twice.
pub fn redis_writes_redis_refused_wait_for_the_next_run<D: RedisDriver>(driver: &D) {
    let s = Servers::start(4);
    let redis = std::sync::Arc::new(RedisServer::start());
    let prefix = prefix("refused");
    let keys = Keys::new(&prefix, 2);
    let host = |n: usize| {
        let url = downpour::Url::parse(&s.url(n, "/")).expect("a server's URL");
        keys.partition_of(url.host_str().expect("a host"))
    };
    let spoiled = host(0);
    assert!(
        (1..4).any(|n| host(n) != spoiled),
        "the 4 hosts are all in one of 2 partitions"
    );
    let inbox = keys.partition(spoiled).inbox;
    let set = |redis: &RedisServer, args: &[&str]| {
        let mut c = redis.connection().expect("a connection to Redis");
        let _: () = redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut c)
            .expect("a command");
    };
    set(&redis, &["SET", &inbox, "not a list"]);
    let (cleaner, key) = (redis.clone(), inbox.clone());
    let run = RedisRun {
        config: test_config(),
        policy: Box::new(
            Polite::new()
                .delay(Duration::from_millis(5))
                .allow_all(true),
        ),
        requests: more_probes(&s, 4, "page", 40, 0),
        redis: RedisOptions {
            partitions: 2,
            ..redis_options(&redis, &prefix)
        },
        script: Script {
            between: Some(Hook(Box::new(move || set(&cleaner, &["DEL", &key])))),
            then: Then::Enqueue(Vec::new()),
            ..Script::default()
        },
        on_finished: Box::new(|_| {}),
    };
    let out = driver.run_redis(run).expect("run");
    let first = out.first_error.expect("the first run fails");
    assert!(first.contains("foreign data"), "{first}");
    assert!(first.contains(&inbox), "{first}");
    assert!(out.error.is_none(), "the next run failed: {:?}", out.error);
    let mut tags: Vec<u64> = out.finished.iter().map(|p| p.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..40).collect::<Vec<u64>>(), "each request once");
    assert_eq!(redis.unfinished(&prefix, 2), 0, "Redis holds nothing more");
}

/// The shape of the cases where a run gives up: 40 requests on 4 hosts, and a producer of
/// 8 more (one every 60 ms) that closes. From the 10th finished request Redis is in
/// `trouble`, and the run gives up 1 s after that, when the producer has long closed;
/// `mend` runs once it returned. Then 10 more requests are enqueued into the same fetcher,
/// whose next `run_until_closed` must fetch every request (at least once: one that finished
/// while Redis was in trouble, its removal never written, is fetched again). Returns the
/// first run's error.
fn gives_up_then_finishes<D: RedisDriver>(
    driver: &D,
    redis: RedisOptions,
    trouble: impl FnOnce() + Send + 'static,
    mend: impl FnOnce() + Send + 'static,
) -> String {
    let s = Servers::start(4);
    let mut trouble = Some(trouble);
    let mut finished = 0;
    let run = RedisRun {
        config: test_config(),
        policy: slow_polite(),
        requests: more_probes(&s, 4, "page", 40, 0),
        redis: RedisOptions {
            give_up_after: Duration::from_secs(1),
            ..redis
        },
        script: Script {
            fed_until_closed: more_probes(&s, 4, "fed", 8, 100),
            between: Some(Hook(Box::new(mend))),
            then: Then::Enqueue(more_probes(&s, 4, "later", 10, 200)),
            again_until_closed: true,
            ..Script::default()
        },
        on_finished: Box::new(move |_| {
            finished += 1;
            if finished == 10 {
                if let Some(trouble) = trouble.take() {
                    trouble();
                }
            }
        }),
    };
    let out = driver.run_redis(run).expect("run");
    let first = out.first_error.expect("the first run gives up");
    assert_eq!(out.returned_before_the_close, Some(false));
    assert!(out.error.is_none(), "the next run failed: {:?}", out.error);
    let mut tags: Vec<u64> = out.finished.iter().map(|p| p.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    let expected: Vec<u64> = (0..40).chain(100..108).chain(200..210).collect();
    assert_eq!(tags, expected, "every request finished");
    first
}

/// 10,000 URLs over 200 hosts; the worker process is killed with SIGKILL at random points
/// and started again until the crawl is done. Every URL finishes; repeats are bounded by
/// what was in flight (or finished but not yet removed) at each kill.
pub fn redis_worker_killed_with_sigkill_loses_nothing<D: RedisDriver>(_driver: &D) {
    const HOSTS: usize = 200;
    const COUNT: usize = 10_000;
    const CONCURRENCY: usize = 32;
    // The crawl's length is set by politeness, not by the driver's speed: a host's 50 URLs
    // take (50 - one free start per run) x DELAY_MS of running, over 3 s even after six
    // restarts, and a kill comes within 900 ms of each start, so at least three kills
    // always land mid-crawl.
    const DELAY_MS: u64 = 80;
    let s = Servers::start(HOSTS);
    let redis = RedisServer::start();
    let prefix = prefix("sigkill");
    redis.seed(&prefix, 1, &probes(&s, HOSTS, COUNT));
    let dir = std::env::temp_dir().join(format!("downpour-sigkill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = WorkerSpec {
        url: redis.url(),
        prefix: prefix.clone(),
        partitions: 1,
        lease_ttl_ms: 500,
        delay_ms: DELAY_MS,
        concurrency: CONCURRENCY,
        done_file: dir.join("done"),
    };
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("SIGKILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    loop {
        let mut worker = spawn_worker(&spec);
        if kills < 6 {
            // Let it run a random while, then kill it mid-crawl.
            std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
            if worker.try_wait().unwrap().is_none() {
                worker.kill().unwrap();
                worker.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let status = worker.wait().unwrap();
        assert!(status.success(), "the last worker failed: {status}");
        break;
    }
    assert!(Instant::now() < deadline);
    let done = read_done(&spec.done_file);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (tag, _) in &done {
        *counts.entry(*tag).or_default() += 1;
    }
    let missing: Vec<u64> = (0..COUNT as u64)
        .filter(|t| !counts.contains_key(t))
        .collect();
    assert!(
        missing.is_empty(),
        "lost: {:?}…",
        &missing[..missing.len().min(10)]
    );
    let repeats = done.len() - COUNT;
    eprintln!("SIGKILL: {kills} kills, {repeats} repeats over {COUNT} requests ({CONCURRENCY} in flight at most)");
    assert!(
        kills >= 3,
        "the crawl ended before the kills: make it longer"
    );
    // A request counts as in flight from its fetch until Redis acknowledges its removal
    // (the next pipeline, at most `batch_size` removals).
    let bound = kills * (CONCURRENCY + RedisOptions::default().batch_size);
    assert!(
        repeats <= bound,
        "{repeats} repeats after {kills} kills (bound {bound})"
    );
    assert_eq!(redis.unfinished(&prefix, 1), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three worker processes share one crawl of 200 hosts: every URL is fetched once, and the
/// servers' own log shows no politeness violation across the workers.
pub fn redis_three_workers_share_a_crawl_politely<D: RedisDriver>(_driver: &D) {
    const HOSTS: usize = 200;
    const COUNT: usize = 2_000;
    let delay = Duration::from_millis(30);
    let s = Servers::start(HOSTS);
    let redis = RedisServer::start();
    let prefix = prefix("three");
    redis.seed(&prefix, 3, &probes(&s, HOSTS, COUNT));
    let dir = std::env::temp_dir().join(format!("downpour-three-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = WorkerSpec {
        url: redis.url(),
        prefix: prefix.clone(),
        partitions: 3,
        lease_ttl_ms: 2000,
        delay_ms: delay.as_millis() as u64,
        concurrency: 64,
        done_file: dir.join("done"),
    };
    let workers: Vec<Child> = (0..3).map(|_| spawn_worker(&spec)).collect();
    for mut w in workers {
        let status = w.wait().unwrap();
        assert!(status.success(), "a worker failed: {status}");
    }
    let done = read_done(&spec.done_file);
    let mut tags: Vec<u64> = done.iter().map(|d| d.0).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        (0..COUNT as u64).collect::<Vec<_>>(),
        "each URL finished once"
    );
    assert!(done.iter().all(|d| d.1), "every fetch succeeded");
    let log = s.log();
    assert_eq!(log.len(), COUNT, "each URL fetched once");
    let violations = crate::violations(&log, delay);
    assert!(
        violations.is_empty(),
        "politeness violated: {:?}",
        &violations[..violations.len().min(5)]
    );
    assert_eq!(redis.unfinished(&prefix, 3), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two workers run one partition each; a redirect from a host of partition 0 to a host of
/// partition 1 is handed over through Redis and fetched by partition 1's worker, with that
/// host's politeness (the other worker never touches it), and the request carries on there
/// with its redirect counted and its final URL.
pub fn redis_a_redirect_to_another_partitions_host_is_fetched_by_its_worker<D: RedisDriver>(
    driver: &D,
) {
    const MOVED: u64 = 4;
    let delay = Duration::from_millis(150);
    let s = Servers::start(8);
    let host_in = |p| {
        (0..8)
            .find(|&n| partition_of(&s.addr(n).ip().to_string(), 2) == p)
            .expect("8 hosts over 2 partitions")
    };
    let (a, b) = (host_in(0), host_in(1));
    let mut requests = Vec::new();
    for i in 0..MOVED {
        let to = s.url(b, &format!("/moved/{i}"));
        requests.push(Probe::new(&s.url(a, &format!("/redirect?to={to}")), i));
        requests.push(Probe::new(&s.url(b, &format!("/own/{i}")), 100 + i));
    }
    let redis = RedisServer::start();
    let prefix = prefix("hand-off");
    redis.seed(&prefix, 2, &requests);
    let workers: Vec<_> = (0..2)
        .map(|p| {
            let driver = driver.clone();
            let options = RedisOptions {
                partitions: 2,
                partition: Some(p),
                ..redis_options(&redis, &prefix)
            };
            std::thread::spawn(move || {
                driver.run_redis(RedisRun {
                    config: test_config(),
                    policy: Box::new(Polite::new().delay(delay).allow_all(true)),
                    requests: Vec::new(),
                    redis: options,
                    script: Script::default(),
                    on_finished: Box::new(|_| {}),
                })
            })
        })
        .collect();
    let outs: Vec<RedisOutcome> = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread").expect("worker start"))
        .collect();
    for out in &outs {
        assert!(out.error.is_none(), "{:?}", out.error);
    }
    let mut tags: Vec<u64> = outs
        .iter()
        .flat_map(|o| o.finished.iter().map(|p| p.tag))
        .collect();
    tags.sort_unstable();
    let expected: Vec<u64> = (0..MOVED).chain(100..100 + MOVED).collect();
    assert_eq!(tags, expected, "each request finished once");
    for moved in outs[1].finished.iter().filter(|p| p.tag < 100) {
        let result = moved.result();
        assert!(result.ok, "{result:?}");
        assert_eq!(
            result.url.as_str(),
            s.url(b, &format!("/moved/{}", moved.tag))
        );
        assert_eq!(result.redirects, 1);
    }
    let log = s.log();
    assert_eq!(log.len(), 3 * MOVED as usize, "each hop fetched once");
    let violations = crate::violations(&log, delay);
    assert!(
        violations.is_empty(),
        "politeness violated: {:?}",
        &violations[..violations.len().min(5)]
    );
    assert_eq!(outs[0].stats.handed_off, MOVED, "{:?}", outs[0].stats);
    assert_eq!(outs[1].stats.handed_in, MOVED, "{:?}", outs[1].stats);
    assert_eq!(redis.unfinished(&prefix, 2), 0, "Redis holds nothing more");
}

/// A polite policy that a stop interrupts: one request at a time per host, 20 ms apart.
fn slow_polite() -> Box<dyn Policy> {
    Box::new(Polite::new().delay(SLOW_DELAY).per_host(1).allow_all(true))
}

const SLOW_DELAY: Duration = Duration::from_millis(20);

/// Probes of paths `/{path}/{i}` over `hosts` hosts, tagged from `first_tag`.
fn more_probes(s: &Servers, hosts: usize, path: &str, count: usize, first_tag: u64) -> Vec<Probe> {
    (0..count)
        .map(|i| {
            Probe::new(
                &s.url(i % hosts, &format!("/{path}/{i}")),
                first_tag + i as u64,
            )
        })
        .collect()
}

/// Servers on 4 hosts and a crawl in a Redis of its own, for the cases that run one fetcher
/// several times.
struct Crawl {
    servers: Servers,
    redis: RedisServer,
    prefix: String,
}

impl Crawl {
    fn start(case: &str) -> Crawl {
        Crawl {
            servers: Servers::start(4),
            redis: RedisServer::start(),
            prefix: prefix(case),
        }
    }

    /// `count` probes over the 4 hosts, at `/{path}/{i}`, tagged from `first_tag`.
    fn probes(&self, path: &str, count: usize, first_tag: u64) -> Vec<Probe> {
        more_probes(&self.servers, 4, path, count, first_tag)
    }

    /// One run of a fetcher, which must end without a Redis error.
    fn run<D: RedisDriver>(
        &self,
        driver: &D,
        policy: Box<dyn Policy>,
        requests: Vec<Probe>,
        script: Script,
    ) -> RedisOutcome {
        let out = driver
            .run_redis(RedisRun {
                config: test_config(),
                policy,
                requests,
                redis: redis_options(&self.redis, &self.prefix),
                script,
                on_finished: Box::new(|_| {}),
            })
            .expect("run");
        assert!(out.error.is_none(), "{:?}", out.error);
        out
    }

    /// Every request of `expected` finished once and was fetched once, the hosts' delay
    /// and the policy's `per_host` requests at once kept, and Redis holds nothing.
    fn each_once<'a>(
        &self,
        finished: impl IntoIterator<Item = &'a Probe>,
        expected: impl IntoIterator<Item = u64>,
        delay: Duration,
        per_host: u32,
    ) {
        let mut tags: Vec<u64> = finished.into_iter().map(|p| p.tag).collect();
        tags.sort_unstable();
        let expected: Vec<u64> = expected.into_iter().collect();
        assert_eq!(tags, expected, "each request finished once");
        let log = self.servers.log();
        assert_eq!(log.len(), expected.len(), "each request fetched once");
        assert_eq!(
            crate::server::violations_per_host(&log, delay, per_host as usize),
            Vec::<String>::new()
        );
        assert_eq!(
            self.redis.unfinished(&self.prefix, 1),
            0,
            "Redis holds nothing more"
        );
    }
}

/// A run ends when Redis holds nothing; the same fetcher runs again: the requests enqueued
/// in between (through the fetcher and through a handle) are stored and fetched, once.
pub fn redis_requests_enqueued_after_a_finished_run_are_fetched_by_the_next<D: RedisDriver>(
    driver: &D,
) {
    let c = Crawl::start("again");
    let script = Script {
        then: Then::Enqueue(c.probes("later", 10, 100)),
        ..Script::default()
    };
    let out = c.run(driver, fast_polite(), c.probes("page", 20, 0), script);
    assert_eq!(out.first_stats.finished, 20, "{:?}", out.first_stats);
    c.each_once(
        &out.finished,
        (0..20).chain(100..110),
        Duration::ZERO,
        FAST_PER_HOST,
    );
}

/// Hand-offs passed in through a handle after a run that found Redis empty are stored, in
/// the inbox of the partition that owns their target in this crawl (not the one the
/// scheduler that made them named), and the next run fetches them, once.
pub fn redis_hand_offs_after_a_finished_run_are_stored_and_fetched<D: RedisDriver>(driver: &D) {
    let c = Crawl::start("handed");
    let script = Script {
        then: Then::HandOff(c.probes("moved", 10, 100)),
        ..Script::default()
    };
    let out = c.run(driver, fast_polite(), c.probes("page", 20, 0), script);
    assert_eq!(out.first_stats.finished, 20, "{:?}", out.first_stats);
    assert_eq!(out.error, None);
    c.each_once(
        &out.finished,
        (0..20).chain(100..110),
        Duration::ZERO,
        FAST_PER_HOST,
    );
}

/// A run stopped halfway returns with the rest stored; after `resume` the next run takes
/// the partition again and fetches the rest, each request once, the hosts' delay kept.
pub fn redis_a_stopped_run_resumes_and_fetches_the_rest_once<D: RedisDriver>(driver: &D) {
    let c = Crawl::start("resume");
    let script = Script {
        stop_after: Some(8),
        then: Then::Resume,
        ..Script::default()
    };
    let out = c.run(driver, slow_polite(), c.probes("page", 40, 0), script);
    assert!(out.first_stats.finished < 40, "{:?}", out.first_stats);
    c.each_once(&out.finished, 0..40, SLOW_DELAY, 1);
}

/// Requests enqueued after a stopped run (the fetcher not resumed) are written to Redis by
/// the next run, which fetches nothing; a worker started later fetches them with the rest.
pub fn redis_requests_enqueued_while_stopped_are_stored<D: RedisDriver>(driver: &D) {
    let c = Crawl::start("stopped");
    let script = Script {
        stop_after: Some(8),
        then: Then::Enqueue(c.probes("later", 10, 100)),
        ..Script::default()
    };
    let first = c.run(driver, slow_polite(), c.probes("page", 40, 0), script);
    assert_eq!(
        first.stats.finished, first.first_stats.finished,
        "the run after the stop fetched something"
    );
    let left = 50 - first.finished.len();
    assert!(left > 10, "the stop left nothing: {:?}", first.first_stats);
    let stored = c.redis.unfinished(&c.prefix, 1);
    assert_eq!(stored, left, "the rest and the later requests are stored");
    // A new worker knows nothing of the last one's fetches: no delay is checked across them.
    let rest = c.run(driver, fast_polite(), Vec::new(), Script::default());
    let finished = first.finished.iter().chain(&rest.finished);
    c.each_once(
        finished,
        (0..40).chain(100..110),
        Duration::ZERO,
        FAST_PER_HOST,
    );
}

/// `run_until_closed` with Redis waits for the handles as it does without: Redis empties
/// between the requests a producer sends, and each one starts the crawl over, until the
/// handle closes.
pub fn redis_run_until_closed_waits_for_the_handles<D: RedisDriver>(driver: &D) {
    let c = Crawl::start("fed");
    let script = Script {
        fed_until_closed: c.probes("fed", 5, 100),
        ..Script::default()
    };
    let out = c.run(driver, fast_polite(), c.probes("page", 4, 0), script);
    assert_eq!(out.returned_before_the_close, Some(false));
    c.each_once(
        &out.finished,
        (0..4).chain(100..105),
        Duration::ZERO,
        FAST_PER_HOST,
    );

    // A store that fails (here: foreign data where the crawl's settings are) ends the run
    // at once, with its error, whatever the handles would still send.
    write_foreign_meta(&c.redis, &c.prefix);
    let out = driver
        .run_redis(RedisRun {
            script: Script {
                fed_until_closed: c.probes("fed-again", 10, 200),
                ..Script::default()
            },
            ..resuming(redis_options(&c.redis, &c.prefix))
        })
        .expect("run");
    let error = out.error.expect("the run reports the foreign data");
    assert!(error.contains("meta"), "{error}");
    assert_eq!(
        out.returned_before_the_close,
        Some(true),
        "it waited for the handle"
    );
}

/// Writes a driver's [`RedisDriver`] adapter and one `#[test]` per Redis case, plus the
/// `redis_worker` entry the process cases start. Same form as [`driver_suite!`](crate::driver_suite).
#[macro_export]
macro_rules! redis_suite {
    (
        $name:ident, $krate:ident, $(let $setup:ident = $setup_expr:expr;)?
        connect: |$config:ident, $policy:ident, $options:ident, $redis:ident| $connect:expr,
        run: |$fetcher:ident| $run:expr,
        until_closed: |$closing:ident| $run_until_closed:expr $(,)?
    ) => {
        #[derive(Clone)]
        struct $name;

        impl $crate::redis::RedisDriver for $name {
            fn run_redis(
                &self,
                run: $crate::redis::RedisRun,
            ) -> ::std::result::Result<$crate::redis::RedisOutcome, String> {
                use $krate::{ClientOptions, Fetcher, Proxy};
                $crate::redis::log_to_stderr();
                $(let $setup = $setup_expr;)?
                let $options = ClientOptions {
                    proxy: Proxy::None,
                    ..ClientOptions::default()
                };
                let ($config, $policy, $redis) = (run.config, run.policy, run.redis);
                let mut $fetcher: Fetcher<$crate::Probe> = $connect.map_err(|e| e.to_string())?;
                let finished = ::std::sync::Arc::new(::std::sync::Mutex::new(Vec::new()));
                let sink = finished.clone();
                let mut on_finished = run.on_finished;
                let script = run.script;
                let stopper = $fetcher.handle();
                $fetcher.on_finished(move |probe: $crate::Probe| {
                    on_finished(&probe);
                    let mut finished = sink.lock().unwrap();
                    finished.push(probe);
                    if script.stop_after == Some(finished.len()) {
                        stopper.stop();
                    }
                });
                for request in run.requests {
                    $fetcher.enqueue(request).map_err(|e| e.to_string())?;
                }
                let fed = script.fed_until_closed;
                let producer = (!fed.is_empty()).then(|| {
                    let (handle, closer) = ($fetcher.handle(), $fetcher.handle());
                    $crate::feed_until_closed(
                        fed,
                        move |probe| handle.enqueue(probe).expect("a valid request, a live fetcher"),
                        move || closer.close(),
                    )
                });
                let mut returned_before_the_close = None;
                let first_stats = match producer {
                    None => {
                        let $fetcher = &mut $fetcher;
                        $run
                    }
                    Some(producer) => {
                        let $closing = &mut $fetcher;
                        let stats = $run_until_closed;
                        returned_before_the_close = Some(!producer.is_finished());
                        producer.join().expect("the producer");
                        stats
                    }
                };
                let first_error = $fetcher.redis_error().map(|e| e.to_string());
                if let Some(hook) = script.between {
                    (hook.0)();
                }
                let again = match script.then {
                    $crate::redis::Then::Nothing => false,
                    $crate::redis::Then::Enqueue(probes) => {
                        let mut probes = probes.into_iter();
                        if let Some(first) = probes.next() {
                            $fetcher.enqueue(first).map_err(|e| e.to_string())?;
                        }
                        let handle = $fetcher.handle();
                        for probe in probes {
                            handle.enqueue(probe).expect("a valid request, a live fetcher");
                        }
                        true
                    }
                    $crate::redis::Then::Resume => {
                        $fetcher.resume();
                        true
                    }
                    $crate::redis::Then::HandOff(probes) => {
                        let handle = $fetcher.handle();
                        for probe in probes {
                            let hand_off = $crate::redis::hand_off_of(probe);
                            if handle.hand_off(hand_off).is_err() {
                                return Err("a live fetcher refused a hand-off".into());
                            }
                        }
                        true
                    }
                };
                let stats = if again && script.again_until_closed {
                    if first_error.is_none() {
                        return Err("the first run did not fail, and used its close up".into());
                    }
                    let $closing = &mut $fetcher;
                    $run_until_closed
                } else if again {
                    let $fetcher = &mut $fetcher;
                    $run
                } else {
                    first_stats.clone()
                };
                let error = $fetcher.redis_error().map(|e| e.to_string());
                let finished = ::std::mem::take(&mut *finished.lock().unwrap());
                Ok($crate::redis::RedisOutcome {
                    finished,
                    first_stats,
                    first_error,
                    stats,
                    returned_before_the_close,
                    error,
                })
            }
        }

        #[test]
        fn redis_worker() {
            $crate::redis::worker_entry(&$name);
        }

        $crate::redis_suite!(@cases $name;
            redis_crawl_finishes_and_leaves_nothing,
            redis_restores_stored_requests_and_sets_corrupt_ones_aside,
            redis_foreign_data_and_unreachable_redis_are_clear_errors,
            redis_going_away_loses_nothing,
            redis_a_run_that_gave_up_writes_the_rest_at_the_next,
            redis_writes_refused_for_want_of_memory_wait_for_room,
            redis_writes_redis_refused_wait_for_the_next_run,
            redis_worker_killed_with_sigkill_loses_nothing,
            redis_three_workers_share_a_crawl_politely,
            redis_a_redirect_to_another_partitions_host_is_fetched_by_its_worker,
            redis_requests_enqueued_after_a_finished_run_are_fetched_by_the_next,
            redis_hand_offs_after_a_finished_run_are_stored_and_fetched,
            redis_a_stopped_run_resumes_and_fetches_the_rest_once,
            redis_requests_enqueued_while_stopped_are_stored,
            redis_run_until_closed_waits_for_the_handles,
        );
    };
    (@cases $driver:expr; $($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                if ::std::env::var_os("DOWNPOUR_REDIS_WORKER").is_some() {
                    return;
                }
                $crate::redis::$case(&$driver)
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_by_another_server_is_not_mistaken_for_its_own() {
        let first = RedisServer::start();
        let dir = std::env::temp_dir().join(format!("downpour-redis-{}-taken", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut second = RedisServer {
            child: None,
            port: first.port,
            dir,
        };
        assert!(!second.launch(), "took the first server for its own");
        assert!(second.child.is_none());
        // The first one still answers.
        let mut c = first.connection().unwrap();
        assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
    }
}
