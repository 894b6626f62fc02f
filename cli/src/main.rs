//! `downpour`: fetch a list of URLs fast and politely, one JSON line per URL.

#![forbid(unsafe_code)]
// The options' doc comments are the command's help text (clap), not rustdoc: `DIR/<sha256>`
// and `[user:password@]` are meant as written.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod crawl;
mod driver;
mod feed;
mod input;
mod logger;
mod monitor;
mod options;
mod output;
mod record;
mod units;
mod warc;

use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use downpour_common::descriptors;

use crate::crawl::{Crawl, Seeding, SeedingStop, StopAfterSeeding};
use crate::driver::lib::{
    Config, Error, Fetcher, Handle, Partition, RedisOptions, Scheduler, StoreError,
};
use crate::driver::Driver;
use crate::feed::Feed;
use crate::input::Input;
use crate::monitor::Monitor;
use crate::options::FetchArgs;
use crate::output::Output;
use crate::record::{CliRequest, Shared};
use crate::warc::{Warc, WarcInfo};

/// The software, as the WARC files name it (with the driver).
const SOFTWARE: &str = concat!("downpour/", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(
    name = "downpour",
    version = driver::VERSION,
    about = "Fetch very many URLs fast and politely"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch every URL of a list and write one JSON line per URL
    Fetch(FetchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Fetch(args) => match fetch(args) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("downpour: {message}");
                ExitCode::from(2)
            }
        },
    }
}

fn fetch(args: FetchArgs) -> Result<ExitCode, String> {
    // Check everything before reading the input.
    let settings = args.settings()?;
    // Before any thread starts (see `OnCtrlC::install`).
    let on_ctrl_c = OnCtrlC::install()?;
    make_room_for_connections(settings.config.concurrency, args.quiet);
    if let Some(dir) = &args.save_bodies {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        // A directory that may be written to but not listed still takes bodies.
        match (record::remove_stale_parts(dir), args.quiet) {
            (Ok(0), _) | (_, true) => {}
            (Ok(removed), false) => eprintln!(
                "downpour: removed {removed} unfinished body file(s) from {}, left by a run \
                 stopped while writing them",
                dir.display()
            ),
            (Err(e), false) => eprintln!(
                "downpour: cannot look for unfinished body files in {}: {e}",
                dir.display()
            ),
        }
    }
    let threads = args.threads as usize;
    // Each thread has its share of the concurrency, and fetches its own hosts: without Redis
    // the feed gives it their lines; with Redis it is a worker that leases its partitions.
    let config_of = |thread| Config {
        concurrency: share(settings.config.concurrency, threads, thread),
        ..settings.config.clone()
    };
    // Without Redis, a redirect to a host of another thread is handed to that thread, so that
    // each host is fetched by one thread only (with Redis the workers' partitions do this).
    let partition_of_thread = |thread| {
        (threads > 1).then_some(Partition {
            index: thread as u32,
            count: threads as u32,
        })
    };
    let mut drivers = Vec::with_capacity(threads);
    let mut fetchers: Vec<Fetcher<CliRequest>> = Vec::with_capacity(threads);
    // Without Redis the list is read as the crawl goes. With Redis it seeds the crawl or, once
    // the crawl is seeded, is checked against it and its lines added since are added.
    // With Redis, once the crawl is seeded: why this worker's list is not read.
    let mut without_list = None;
    let (input, mut crawl) = match &settings.redis {
        None => {
            for thread in 0..threads {
                let config = Config {
                    partition: partition_of_thread(thread),
                    ..config_of(thread)
                };
                let scheduler = Scheduler::with_policy(config, settings.policy.make())
                    .map_err(|e| format!("invalid options: {e}"))?;
                fetchers.push(
                    Fetcher::from_scheduler(scheduler, settings.client.clone())
                        .map_err(|e| format!("invalid options: {e}"))?,
                );
                drivers.push(Driver::new()?);
            }
            (Some(Input::open(&args.urls)?), None)
        }
        Some(options) => {
            let mut crawl = Crawl::connect(options)?;
            // Once the crawl is seeded, a worker given its list checks it and adds the lines
            // written since; one without (a file it cannot read, or a terminal to type it
            // on) joins the crawl all the same, and says why.
            let input = match Input::open(&args.urls) {
                Ok(_) if args.urls == "-" && io::stdin().is_terminal() && crawl.is_seeded()? => {
                    without_list = Some("standard input is a terminal".to_string());
                    None
                }
                Ok(input) => Some(input),
                Err(e) if crawl.is_seeded()? => {
                    without_list = Some(e);
                    None
                }
                Err(e) => return Err(e),
            };
            for thread in 0..threads {
                let driver = Driver::new()?;
                let fetcher = driver
                    .with_redis(
                        config_of(thread),
                        settings.policy.make(),
                        settings.client.clone(),
                        options.clone(),
                    )
                    .map_err(|e| match e {
                        Error::Redis(StoreError::Unreachable { url, last, .. }) => {
                            format!("cannot reach Redis at {url}: {last}")
                        }
                        Error::Redis(e) => e.to_string(),
                        e => format!("invalid options: {e}"),
                    })?;
                drivers.push(driver);
                fetchers.push(fetcher);
            }
            (input, Some((crawl_name(options), crawl)))
        }
    };

    let output = Output::open(args.output.as_deref(), crawl.is_some())?;
    let warc = match &args.warc {
        Some(path) => Some(Warc::open(
            path,
            &WarcInfo {
                software: &format!("{SOFTWARE} ({} driver)", driver::NAME),
                user_agent: &settings.config.user_agent,
                robots: if settings.obeys_robots {
                    "obey"
                } else {
                    "ignore"
                },
            },
            crawl.is_some(),
        )?),
        None => None,
    };
    if let (Some(warc), Some(path), false) = (&warc, &args.warc, args.quiet) {
        if let Some((cut, end)) = warc.cut_off {
            eprintln!(
                "downpour: {} ended with a record cut short (a run stopped while writing it): \
                 its last {cut} bytes are cut off, and this run's records follow byte {end}",
                path.display()
            );
        }
    }

    // With Redis: how many lines were not URLs, when this worker seeds the crawl or adds to it
    // (their records are written as the list is read).
    let mut invalid = 0;
    let mut input = input;
    if let Some((name, crawl)) = &mut crawl {
        let stop = Arc::new(SeedingStop::default());
        let seeding = match input.take() {
            Some(input) => {
                let release = crawl.lease_releaser();
                let (asked, crawl_name, stages) = (stop.clone(), name.clone(), on_ctrl_c.clone());
                on_ctrl_c.set(move || {
                    if !asked.request() {
                        // The seeding is over: this Ctrl-C is the next stage's.
                        return stages.run();
                    }
                    // The seeding stops within STOP_POLL. Should it not (Redis not
                    // answering), the command ends here, letting the lease go.
                    std::thread::sleep(SEEDING_STOP_WAIT);
                    if asked.take() {
                        release();
                        say(&stopped_seeding(
                            &crawl_name,
                            false,
                            "what was stored stays",
                        ));
                        std::process::exit(130);
                    }
                });
                let seeding =
                    crawl.seed(input, |record| output.try_write(record), args.quiet, &stop);
                // Until the fetchers run, Ctrl-C ends the command.
                on_ctrl_c.set(|| std::process::exit(130));
                seeding?
            }
            None => match without_list {
                Some(why) => Seeding::ResumedWithoutList(why),
                None => Seeding::Resumed,
            },
        };
        match (stop.close(), seeding) {
            (StopAfterSeeding::TakenByHandler, _) => {
                // The handler ends the command.
                std::thread::sleep(SEEDING_STOP_WAIT);
                std::process::exit(130);
            }
            (
                StopAfterSeeding::Taken,
                Seeding::Seeded { .. }
                | Seeding::Added { .. }
                | Seeding::Resumed
                | Seeding::ResumedWithoutList(_),
            ) => {
                say(&format!(
                    "downpour: stopped before fetching; crawl {name} is seeded: run again to \
                     fetch it"
                ));
                output.flush()?;
                return Ok(ExitCode::from(130));
            }
            (
                StopAfterSeeding::None,
                Seeding::Seeded {
                    invalid: lines,
                    requests,
                    resumed_at,
                },
            ) => {
                if !args.quiet {
                    if let Some(line) = resumed_at {
                        eprintln!(
                            "downpour: went on seeding crawl {name} from line {line}, where \
                             a worker that died left it"
                        );
                    }
                    eprintln!("downpour: seeded crawl {name} with {requests} URLs");
                }
                invalid = lines;
            }
            (
                StopAfterSeeding::None,
                Seeding::Added {
                    invalid: lines,
                    requests,
                    lines: (first, last),
                },
            ) => {
                if !args.quiet {
                    let not_urls = match lines {
                        0 => String::new(),
                        n => format!(" ({n} of them not URLs)"),
                    };
                    eprintln!(
                        "downpour: added {requests} URLs to crawl {name}: lines {first} to \
                         {last} of its list{not_urls}, written since it was seeded"
                    );
                }
                invalid = lines;
            }
            (StopAfterSeeding::None, Seeding::Resumed) => {
                if !args.quiet {
                    eprintln!("downpour: crawl {name} already seeded: resuming it");
                }
            }
            (StopAfterSeeding::None, Seeding::ResumedWithoutList(why)) => {
                if !args.quiet {
                    eprintln!(
                        "downpour: crawl {name} already seeded: resuming it without checking \
                         the list ({why})"
                    );
                }
            }
            (_, stopped) => {
                say(&match stopped {
                    Seeding::Interrupted { stored, adding } => {
                        stopped_seeding(name, adding, &lines_stored(stored))
                    }
                    Seeding::StoppedWaiting { adding: true } => format!(
                        "downpour: stopped while waiting for another worker adding to crawl \
                         {name}"
                    ),
                    _ => format!(
                        "downpour: stopped while waiting for another worker to seed crawl {name}"
                    ),
                });
                output.flush()?;
                return Ok(ExitCode::from(130));
            }
        }
    }
    let total = match &mut crawl {
        Some((_, crawl)) => Some(crawl.unfinished()? + invalid as u64),
        None => input::count(&args.urls)?,
    };

    let started = Instant::now();
    let shared = Shared {
        started,
        headers: settings.headers,
        save_bodies: args.save_bodies.clone(),
        warc,
        aborting: AtomicBool::new(false),
        redis: crawl.is_some(),
    }
    .install();
    let monitor = Arc::new(Monitor::new(
        args.quiet,
        total,
        fetchers.len(),
        output.clone(),
        shared.clone(),
    ));
    if crawl.is_some() {
        logger::install(monitor.clone(), !args.quiet);
    }
    let counters = monitor.counters.clone();
    for _ in 0..invalid {
        counters.count(true);
    }
    // Without Redis: the first `backlog` requests now, then one more as each finishes.
    let feed = input.map(|input| {
        Arc::new(Feed::new(
            input,
            usize::try_from(args.backlog).unwrap_or(usize::MAX),
            fetchers.len(),
            output.clone(),
            counters.clone(),
        ))
    });
    let handles: Arc<[Handle<CliRequest>]> = fetchers.iter().map(Fetcher::handle).collect();
    if let Some(feed) = &feed {
        feed.fill(&handles);
    }
    for (thread, fetcher) in fetchers.iter_mut().enumerate() {
        let output = output.clone();
        let counters = counters.clone();
        if let Some(feed) = feed.clone() {
            let handles = handles.clone();
            fetcher.on_hand_off(move |hand_off| feed.hand_off(thread, hand_off, &handles));
        }
        let feed = feed.clone();
        let handles = handles.clone();
        fetcher.on_finished(move |request: CliRequest| {
            if let Some(record) = &request.record {
                counters.count(record.is_error());
                output.write(record);
            }
            if let Some(feed) = &feed {
                // Enqueued through the handles: this fetcher is busy calling back, and the
                // others run on their own threads.
                feed.finished(thread, &handles);
            }
        });
    }
    {
        let handles = handles.clone();
        let monitor = monitor.clone();
        let feed = feed.clone();
        on_ctrl_c.set(move || {
            // The feed first: no line is fed after the stop, and a fetcher that stops then
            // finds no more work.
            if let Some(feed) = &feed {
                feed.stop();
            }
            monitor.interrupt(&handles);
        });
    }

    let failed = run(&drivers, &mut fetchers, feed.as_deref(), &monitor, &handles);
    monitor.finish();

    let unfinished: Vec<CliRequest> = fetchers
        .iter_mut()
        .flat_map(Fetcher::take_unfinished)
        .collect();
    let redis_error = fetchers
        .iter()
        .find_map(|f| f.redis_error().map(|e| e.to_string()));
    // Without Redis what is left gets a record; with Redis it stays there, for the next run.
    let left = match &mut crawl {
        None => {
            let mut left = unfinished.len() as u64;
            for request in unfinished {
                output.write(&feed::not_fetched(request));
            }
            if let Some(feed) = &feed {
                left += feed.record_rest();
            }
            Some(left)
        }
        Some((_, crawl)) => {
            drop(unfinished);
            // Redis may be the reason the run ended: then the count is unknown.
            crawl
                .unfinished()
                .or_else(|_| crawl.reconnect().and_then(|()| crawl.unfinished()))
                .ok()
        }
    };
    output.flush()?;
    if let Some(warc) = &shared.warc {
        warc.flush()?;
    }

    if !args.quiet {
        let done = counters.done();
        let errors = counters.errors();
        let elapsed = started.elapsed();
        let in_redis = match (&crawl, left) {
            (None, _) => String::new(),
            (Some(_), Some(0)) if !monitor.interrupted() && redis_error.is_none() => String::new(),
            (Some(_), Some(n)) => format!(", {n} left in Redis"),
            (Some(_), None) => ", the rest left in Redis".to_string(),
        };
        eprintln!(
            "downpour: {} fetched, {} failed, {:.1}s, {:.1}/s ({} driver){in_redis}",
            done - errors,
            errors,
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64().max(1e-3),
            driver::NAME,
        );
        match (&crawl, left) {
            (None, Some(left)) if left > 0 => eprintln!(
                "downpour: stopped; {left} URLs were not fetched (recorded as not_fetched)"
            ),
            (Some((name, _)), _) if monitor.interrupted() && redis_error.is_none() => eprintln!(
                "downpour: stopped; what is left stays in Redis: run again (same --redis and --prefix) to resume crawl {name}"
            ),
            _ => {}
        }
    }
    if let Some(error) = failed {
        eprintln!("downpour: {error}");
        return Ok(ExitCode::from(2));
    }
    if let Some(error) = feed.as_ref().and_then(|f| f.error()) {
        eprintln!("downpour: {error}; the URLs after it were not read");
        return Ok(ExitCode::from(2));
    }
    if let Some(error) = redis_error {
        if !logger::said(&error) {
            eprintln!("downpour: {error}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(if monitor.interrupted() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// How long Ctrl-C waits for the seeding to stop before it ends the command itself.
const SEEDING_STOP_WAIT: Duration = Duration::from_secs(5);

/// What the lines stored by a seeding that Ctrl-C stopped are, for its message.
fn lines_stored(stored: Option<u64>) -> String {
    match stored {
        Some(line) if line > 0 => format!("lines 1 to {line} are stored"),
        _ => "nothing was stored".to_string(),
    }
}

/// What Ctrl-C while seeding (or adding to a seeded crawl) says, with what is stored.
fn stopped_seeding(name: &str, adding: bool, stored: &str) -> String {
    let doing = if adding { "adding to" } else { "seeding" };
    format!(
        "downpour: stopped while {doing} crawl {name}; {stored}: run again with the same file \
         to go on"
    )
}

/// A line on stderr, which may be gone (a pipe whose reader Ctrl-C ended too).
fn say(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

/// What Ctrl-C does, set as the run goes from stage to stage (one handler, installed once).
#[derive(Clone)]
struct OnCtrlC(Arc<Mutex<Arc<dyn Fn() + Send + Sync>>>);

impl OnCtrlC {
    /// Watches for Ctrl-C, which ends the command until [`OnCtrlC::set`] says otherwise. To
    /// be called before any other thread starts: SIGINT is then kept off this thread and
    /// those it starts, for the Ctrl-C thread alone (a signal that lands on a thread in a
    /// read with a timeout fails the read with EINTR: a Redis reply, a response).
    fn install() -> Result<OnCtrlC, String> {
        let action: Arc<dyn Fn() + Send + Sync> = Arc::new(|| std::process::exit(130));
        let on = OnCtrlC(Arc::new(Mutex::new(action)));
        let stages = on.clone();
        ctrlc::set_handler(move || stages.run())
            .map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;
        #[cfg(unix)]
        {
            use nix::sys::signal::{SigSet, Signal};
            let mut sigint = SigSet::empty();
            sigint.add(Signal::SIGINT);
            sigint
                .thread_block()
                .map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;
        }
        Ok(on)
    }

    fn set(&self, action: impl Fn() + Send + Sync + 'static) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(action);
    }

    /// Does what Ctrl-C does now. Out of the lock: an action may take a while, and the next
    /// one be set meanwhile.
    fn run(&self) {
        let action = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        action();
    }
}

/// Runs each fetcher on a thread of its own until the feed has nothing more for it, and
/// shows the progress from this one meanwhile. Returns why a thread could not start, if one
/// could not: then the run stops, and the fetchers' requests are left unfinished.
fn run(
    drivers: &[Driver],
    fetchers: &mut [Fetcher<CliRequest>],
    feed: Option<&Feed>,
    monitor: &Monitor,
    handles: &[Handle<CliRequest>],
) -> Option<String> {
    let (running, ended) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let mut failed = None;
        for (thread, (driver, fetcher)) in drivers.iter().zip(fetchers.iter_mut()).enumerate() {
            let running = running.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fetch-{thread}"))
                .spawn_scoped(scope, move || {
                    loop {
                        driver.run(fetcher, monitor, thread);
                        if !feed.is_some_and(|feed| feed.wait_for_work(thread)) {
                            break;
                        }
                    }
                    drop(running);
                });
            if let Err(e) = spawned {
                failed = Some(format!("cannot start a fetching thread: {e}"));
                if let Some(feed) = feed {
                    feed.stop();
                }
                handles.iter().for_each(Handle::stop);
                // The fetchers left without a thread fetch nothing: what their handles hold
                // ends among their unfinished requests.
                break;
            }
        }
        drop(running);
        while let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(monitor.interval()) {
            monitor.tick();
        }
        failed
    })
}

/// Raises the limit on open files to what `concurrency` connections need (twice as many
/// descriptors, for idle connections kept for reuse, plus a margin), as far as the hard
/// limit allows, and grows the descriptor table for all the fetchers now, while the process
/// has one thread and a growth costs nothing (see `descriptors::reserve`). Warns when the
/// hard limit is too low: connections beyond it fail to open, and are retried.
fn make_room_for_connections(concurrency: usize, quiet: bool) {
    let wanted = concurrency
        .saturating_mul(2)
        .saturating_add(descriptors::MARGIN);
    let needed = concurrency.saturating_add(descriptors::MARGIN) as u64;
    let limit = descriptors::raise_limit(wanted as u64);
    if let Some(limit) = limit.filter(|&l| l < needed) {
        if !quiet {
            eprintln!(
                "downpour: warning: --concurrency {concurrency} needs more than the {limit} open \
                 files allowed (ulimit -Hn): raise the limit, or connections beyond it will fail"
            );
        }
    }
    descriptors::reserve(concurrency.saturating_mul(2));
}

/// Thread `k`'s share of `total` over `parts` threads.
fn share(total: usize, parts: usize, k: usize) -> usize {
    total / parts + usize::from(k < total % parts)
}

/// The crawl's name in messages: its prefix, quoted.
fn crawl_name(options: &RedisOptions) -> String {
    format!("`{}`", options.prefix)
}
