//! `downpour`: fetch a list of URLs fast and politely, one JSON line per URL.

#![forbid(unsafe_code)]

mod record;
mod units;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use downpour_tokio::http::HeaderName;
use downpour_tokio::{ClientOptions, Config, Fetcher, Fifo, Polite, Proxy, Url};
use indicatif::{ProgressBar, ProgressStyle};

use crate::record::{CliRequest, Record, Shared};

#[derive(Parser)]
#[command(
    name = "downpour",
    version,
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

#[derive(Clone, Copy, ValueEnum)]
enum PolicyName {
    /// Per-host delay and in-flight limit, robots.txt obeyed
    Polite,
    /// First in, first out: no per-host pacing, no robots.txt
    Fifo,
}

#[derive(clap::Args)]
struct FetchArgs {
    /// File of URLs, one per line (`-` for stdin); blank lines and `#` comments are skipped
    urls: String,
    /// Write the JSON lines here instead of stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Scheduling policy
    #[arg(long, value_enum, default_value = "polite")]
    policy: PolicyName,
    /// Time between the end of a response from a host and the next fetch to it (polite) [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    delay: Option<Duration>,
    /// Most fetches in flight to one host (polite) [default: 1]
    #[arg(long, value_name = "N")]
    per_host: Option<u32>,
    /// Most fetches in flight over all hosts [default: 64]
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Do not fetch or obey robots.txt (polite; fifo never does)
    #[arg(long)]
    allow_all: bool,
    /// User-Agent sent and matched against robots.txt [default: downpour/VERSION]
    #[arg(long, value_name = "TEXT")]
    user_agent: Option<String>,
    /// Timeout of one hop, connect to last body byte [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    timeout: Option<Duration>,
    /// Largest decoded body read, e.g. 10MiB; longer ones fail [default: 16MiB]
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    max_body_size: Option<u64>,
    /// Redirects followed before failing [default: 10]
    #[arg(long, value_name = "N")]
    max_redirects: Option<u32>,
    /// Retries of connect errors, timeouts, resets, 5xx and 429 [default: 2]
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Send every request through this proxy (http:// or https:// URL, credentials allowed)
    #[arg(long, value_name = "URL")]
    proxy: Option<Url>,
    /// Ignore http_proxy, https_proxy, all_proxy and no_proxy from the environment
    #[arg(long)]
    no_proxy_env: bool,
    /// Copy this response header into the records (repeatable; content-type,
    /// content-length, last-modified, etag and location are always copied)
    #[arg(long = "header", value_name = "NAME")]
    headers: Vec<HeaderName>,
    /// Save every successful body as DIR/<sha256>
    #[arg(long, value_name = "DIR")]
    save_bodies: Option<PathBuf>,
    /// No progress and no summary on stderr
    #[arg(short, long)]
    quiet: bool,
}

const DEFAULT_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "last-modified",
    "etag",
    "location",
];

type Output = Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>;

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

/// One input line: a request, or a record for a line that is not a URL.
enum Line {
    Request(CliRequest),
    Invalid(Record),
}

fn read_lines(path: &str) -> Result<Vec<Line>, String> {
    let reader: Box<dyn Read> = if path == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| format!("cannot read URL file {path}: {e}"))?)
    };
    let mut lines = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read URL file {path}: {e}"))?;
        let input = line.trim();
        if input.is_empty() || input.starts_with('#') {
            continue;
        }
        let number = index as u64 + 1;
        lines.push(match downpour_tokio::parse_url(input) {
            Ok(url) => Line::Request(CliRequest {
                line: number,
                input: input.to_string(),
                url,
                shared: None,
                first_byte: None,
                record: None,
            }),
            Err(e) => Line::Invalid(Record::failed(
                number,
                input.to_string(),
                None,
                "invalid_url",
                e.to_string(),
            )),
        });
    }
    Ok(lines)
}

fn write_record(output: &Output, record: &Record) {
    let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
    let written = serde_json::to_writer(&mut *out, record)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        // Nothing sensible is left to do with a closed stdout (e.g. `| head`).
        eprintln!("downpour: cannot write output: {e}");
        std::process::exit(1);
    }
}

fn fetch(args: FetchArgs) -> Result<ExitCode, String> {
    // Check everything before reading the input.
    let defaults = Config::default();
    let config = Config {
        concurrency: args.concurrency.unwrap_or(defaults.concurrency),
        user_agent: args
            .user_agent
            .clone()
            .unwrap_or(defaults.user_agent.clone()),
        timeout: args.timeout.unwrap_or(defaults.timeout),
        max_body_size: args.max_body_size.unwrap_or(defaults.max_body_size),
        max_redirects: args.max_redirects.unwrap_or(defaults.max_redirects),
        max_retries: args.retries.unwrap_or(defaults.max_retries),
        ..defaults
    };
    config
        .validate()
        .map_err(|e| format!("invalid options: {e}"))?;
    if matches!(args.policy, PolicyName::Fifo)
        && (args.delay.is_some() || args.per_host.is_some() || args.allow_all)
    {
        return Err("--delay, --per-host and --allow-all only apply to --policy polite".into());
    }
    if args.per_host == Some(0) {
        return Err("invalid options: --per-host must be at least 1".into());
    }
    let proxy = match (&args.proxy, args.no_proxy_env) {
        (Some(url), _) => Proxy::Rules {
            http: Some(url.clone()),
            https: Some(url.clone()),
            no: String::new(),
        },
        (None, true) => Proxy::None,
        (None, false) => Proxy::FromEnv,
    };
    let options = ClientOptions {
        proxy,
        ..ClientOptions::default()
    };
    if let Some(dir) = &args.save_bodies {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let mut headers: Vec<HeaderName> = DEFAULT_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    for h in &args.headers {
        if !headers.contains(h) {
            headers.push(h.clone());
        }
    }

    let lines = read_lines(&args.urls)?;
    let sink: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            File::create(path)
                .map_err(|e| format!("cannot create output file {}: {e}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    let output: Output = Arc::new(Mutex::new(BufWriter::new(sink)));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(args, config, options, headers, lines, output))
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
}

async fn run(
    args: FetchArgs,
    config: Config,
    options: ClientOptions,
    headers: Vec<HeaderName>,
    lines: Vec<Line>,
    output: Output,
) -> Result<ExitCode, String> {
    let mut fetcher: Fetcher<CliRequest> = match args.policy {
        PolicyName::Polite => {
            let mut policy = Polite::new().allow_all(args.allow_all);
            if let Some(delay) = args.delay {
                policy = policy.delay(delay);
            }
            if let Some(n) = args.per_host {
                policy = policy.per_host(n);
            }
            Fetcher::with_options(config, policy, options)
        }
        PolicyName::Fifo => Fetcher::with_options(config, Fifo::new(), options),
    }
    .map_err(|e| format!("invalid options: {e}"))?;

    let started = Instant::now();
    let shared = Arc::new(Shared {
        started,
        headers,
        save_bodies: args.save_bodies.clone(),
    });
    let counters = Arc::new(Counters::default());
    let total = lines.len() as u64;
    for line in lines {
        match line {
            Line::Invalid(record) => {
                counters.done.fetch_add(1, Ordering::Relaxed);
                counters.errors.fetch_add(1, Ordering::Relaxed);
                write_record(&output, &record);
            }
            Line::Request(mut request) => {
                request.shared = Some(shared.clone());
                if let Err(e) = fetcher.enqueue(request) {
                    // `parse_url` checked it already; kept for completeness.
                    let request = e.request;
                    let record = Record::failed(
                        request.line,
                        request.input,
                        Some(&request.url),
                        "invalid_url",
                        e.reason.to_string(),
                    );
                    counters.done.fetch_add(1, Ordering::Relaxed);
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    write_record(&output, &record);
                }
            }
        }
    }
    {
        let output = output.clone();
        let counters = counters.clone();
        fetcher.on_finished(move |request: CliRequest| {
            if let Some(record) = &request.record {
                counters.done.fetch_add(1, Ordering::Relaxed);
                if record.is_error() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                write_record(&output, record);
            }
        });
    }

    let progress = Progress::new(args.quiet, total);
    let handle = fetcher.handle();
    let mut interrupts = 0u32;
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(progress.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `run` keeps its state in the fetcher: leaving it at an await point and calling it
        // again loses nothing, so the progress and Ctrl-C are served in between.
        tokio::select! {
            _ = fetcher.run() => break,
            _ = tick.tick() => {
                progress.update(&fetcher, &counters, started);
                let _ = output.lock().map(|mut o| o.flush());
            }
            _ = &mut ctrl_c => {
                ctrl_c = Box::pin(tokio::signal::ctrl_c());
                interrupts += 1;
                if interrupts == 1 {
                    progress.note("stopping: fetches in flight finish (Ctrl-C again to abort them)");
                    handle.stop();
                } else {
                    progress.note("aborting the fetches in flight");
                    handle.stop_now();
                }
            }
        }
    }
    progress.finish();

    let unfinished = fetcher.take_unfinished();
    let left = unfinished.len();
    for request in unfinished {
        let record = Record::failed(
            request.line,
            request.input,
            Some(&request.url),
            "not_fetched",
            "the run was stopped before this URL was fetched".to_string(),
        );
        write_record(&output, &record);
    }
    output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush()
        .map_err(|e| format!("cannot write output: {e}"))?;

    let done = counters.done.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    if !args.quiet {
        let elapsed = started.elapsed();
        eprintln!(
            "downpour: {} fetched, {} failed, {:.1}s, {:.1}/s",
            done - errors,
            errors,
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64().max(1e-3),
        );
        if left > 0 {
            eprintln!("downpour: stopped; {left} URLs were not fetched (recorded as not_fetched)");
        }
    }
    Ok(if interrupts > 0 {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise.
enum Progress {
    Quiet,
    Bar(ProgressBar),
    Plain,
}

impl Progress {
    fn new(quiet: bool, total: u64) -> Self {
        if quiet {
            Progress::Quiet
        } else if io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            Progress::Bar(bar)
        } else {
            Progress::Plain
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Progress::Bar(_) => Duration::from_millis(200),
            Progress::Quiet | Progress::Plain => Duration::from_secs(5),
        }
    }

    fn update(&self, fetcher: &Fetcher<CliRequest>, counters: &Counters, started: Instant) {
        let done = counters.done.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let describe = || {
            let stats = fetcher.stats();
            let wait = fetcher.scheduler().wait_summary(Instant::now());
            format!(
                "errors {errors}, queued {}, in flight {}, hosts waiting: delay {} backoff {} limit {} robots {}",
                stats.queued,
                stats.in_flight,
                wait.delay,
                wait.backoff,
                wait.in_flight_limit,
                wait.robots
            )
        };
        match self {
            Progress::Quiet => {}
            Progress::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(describe());
            }
            Progress::Plain => {
                let elapsed = started.elapsed().as_secs_f64();
                if elapsed < 1.0 {
                    return;
                }
                eprintln!(
                    "downpour: {done} done, {:.1}/s, {}",
                    done as f64 / elapsed,
                    describe()
                );
            }
        }
    }

    fn note(&self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.println(format!("downpour: {message}")),
            Progress::Quiet | Progress::Plain => eprintln!("downpour: {message}"),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
