//! `downpour`: fetch a list of URLs fast and politely, one JSON line per URL.

#![forbid(unsafe_code)]

mod driver;
mod input;
mod monitor;
mod options;
mod output;
mod record;
mod units;
mod warc;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::driver::lib::{Fetcher, Scheduler};
use crate::input::Line;
use crate::monitor::Monitor;
use crate::options::FetchArgs;
use crate::output::Output;
use crate::record::{CliRequest, Record, Shared};
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
    if let Some(dir) = &args.save_bodies {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let scheduler = Scheduler::with_policy(settings.config.clone(), settings.policy)
        .map_err(|e| format!("invalid options: {e}"))?;
    let mut fetcher: Fetcher<CliRequest> = Fetcher::from_scheduler(scheduler, settings.client)
        .map_err(|e| format!("invalid options: {e}"))?;

    let lines = input::read_lines(&args.urls)?;
    let output = Output::open(args.output.as_deref())?;
    let warc = match &args.warc {
        Some(path) => Some(Warc::create(
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
        )?),
        None => None,
    };

    let started = Instant::now();
    let shared = Arc::new(Shared {
        started,
        headers: settings.headers,
        save_bodies: args.save_bodies.clone(),
        warc,
        aborting: AtomicBool::new(false),
    });
    let monitor = Arc::new(Monitor::new(
        args.quiet,
        lines.len() as u64,
        output.clone(),
        shared.clone(),
    ));
    let counters = monitor.counters.clone();
    for line in lines {
        match line {
            Line::Invalid(record) => {
                counters.count(true);
                output.write(&record);
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
                    counters.count(true);
                    output.write(&record);
                }
            }
        }
    }
    {
        let output = output.clone();
        let counters = counters.clone();
        fetcher.on_finished(move |request: CliRequest| {
            if let Some(record) = &request.record {
                counters.count(record.is_error());
                output.write(record);
            }
        });
    }

    driver::drive(&mut fetcher, &monitor)?;
    monitor.finish();

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
        output.write(&record);
    }
    output.flush()?;
    if let Some(warc) = &shared.warc {
        warc.flush()?;
    }

    if !args.quiet {
        let done = counters.done();
        let errors = counters.errors();
        let elapsed = started.elapsed();
        eprintln!(
            "downpour: {} fetched, {} failed, {:.1}s, {:.1}/s ({} driver)",
            done - errors,
            errors,
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64().max(1e-3),
            driver::NAME,
        );
        if left > 0 {
            eprintln!("downpour: stopped; {left} URLs were not fetched (recorded as not_fetched)");
        }
    }
    Ok(if monitor.interrupted() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
