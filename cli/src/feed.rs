//! The URL list fed to the fetcher as the crawl goes: at most `backlog` of its requests are
//! unfinished at a time, and each one that finishes lets the next line in. Memory stays
//! bounded for a list of any length, and the first fetch starts at once.

use std::sync::Arc;

use crate::driver::lib::{EnqueueError, HandleError};
use crate::input::{Input, Line};
use crate::monitor::Counters;
use crate::output::Output;
use crate::record::{CliRequest, Record};

/// The input, and the count of its requests in the fetcher.
pub struct Feed {
    /// `None` once the list is read to its end, or could not be read further.
    input: Option<Input>,
    backlog: usize,
    unfinished: usize,
    /// Set by a stop: nothing more is read until [`record_rest`](Feed::record_rest).
    stopped: bool,
    /// Why the list could not be read to its end.
    error: Option<String>,
    output: Output,
    counters: Arc<Counters>,
}

impl Feed {
    pub fn new(input: Input, backlog: usize, output: Output, counters: Arc<Counters>) -> Self {
        Feed {
            input: Some(input),
            backlog: backlog.max(1),
            unfinished: 0,
            stopped: false,
            error: None,
            output,
            counters,
        }
    }

    /// Reads lines until `backlog` requests are unfinished or the list ends, handing each
    /// request to `enqueue`. A line that is not a URL, or a URL `enqueue` refuses, gets its
    /// record now.
    pub fn fill(&mut self, mut enqueue: impl FnMut(CliRequest) -> Result<(), Box<Refused>>) {
        while !self.stopped && self.unfinished < self.backlog {
            match self.next_line() {
                Some(Line::Invalid(record)) => self.write(&record),
                Some(Line::Request(request)) => match enqueue(request).map_err(|e| *e) {
                    Ok(()) => self.unfinished += 1,
                    Err(Refused { request, reason }) => self.write(&Record::failed(
                        request.line,
                        request.input,
                        Some(&request.url),
                        "invalid_url",
                        reason,
                    )),
                },
                None => return,
            }
        }
    }

    /// One of the requests fed has finished.
    pub fn finished(&mut self) {
        self.unfinished = self.unfinished.saturating_sub(1);
    }

    /// Reads no more lines (the run is stopping).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// After a stopped run: every line not read yet gets its record, `not_fetched` (or
    /// `invalid_url`), as the requests left in the fetcher do. Returns how many URLs were
    /// not fetched.
    pub fn record_rest(&mut self) -> u64 {
        let mut left = 0;
        while let Some(line) = self.next_line() {
            match line {
                Line::Invalid(record) => self.write(&record),
                Line::Request(request) => {
                    left += 1;
                    self.output.write(&not_fetched(request));
                }
            }
        }
        left
    }

    /// Why the list could not be read to its end, if it could not.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The next line of the list; `None` once it is read to its end or could not be read
    /// further (the error is kept).
    fn next_line(&mut self) -> Option<Line> {
        match self.input.as_mut()?.next_line() {
            Ok(Some(line)) => Some(line),
            Ok(None) => {
                self.input = None;
                None
            }
            Err(message) => {
                self.error = Some(message);
                self.input = None;
                None
            }
        }
    }

    fn write(&self, record: &Record) {
        self.counters.count(true);
        self.output.write(record);
    }
}

/// The record of a URL the run stopped before fetching.
pub fn not_fetched(request: CliRequest) -> Record {
    Record::failed(
        request.line,
        request.input,
        Some(&request.url),
        "not_fetched",
        "the run was stopped before this URL was fetched".to_string(),
    )
}

/// A request the fetcher would not take, and why (boxed where it is returned: the error of
/// `enqueue` is rare, the request large).
pub struct Refused {
    request: CliRequest,
    reason: String,
}

impl Refused {
    pub fn boxed(e: impl Into<Refused>) -> Box<Refused> {
        Box::new(e.into())
    }
}

impl From<EnqueueError<CliRequest>> for Refused {
    fn from(e: EnqueueError<CliRequest>) -> Self {
        Refused {
            reason: e.reason.to_string(),
            request: e.request,
        }
    }
}

impl From<HandleError<CliRequest>> for Refused {
    fn from(e: HandleError<CliRequest>) -> Self {
        match e {
            HandleError::Refused(e) => e.into(),
            // The fetcher lives until after the run: it cannot be gone while it calls back.
            HandleError::Closed(request) => Refused {
                request,
                reason: "the fetcher was dropped".to_string(),
            },
        }
    }
}
