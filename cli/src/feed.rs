//! The URL list fed to the fetchers as the crawl goes: at most `backlog` of its requests are
//! unfinished at a time, and each one that finishes lets the next line in. Memory stays
//! bounded for a list of any length, and the first fetch starts at once. With `--threads`,
//! each request goes to the thread that owns its host.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::driver::lib::{partition_of, EnqueueError, HandOff, Handle, HandleError};
use crate::input::{Input, Line};
use crate::monitor::Counters;
use crate::output::Output;
use crate::record::{CliRequest, Record};

/// The input, shared by the fetching threads: each request goes to the thread that owns its
/// host, and a thread with nothing to do waits here until it has, or the list ends.
pub struct Feed {
    state: Mutex<State>,
    /// Signalled when a waiting thread was given a request, and when the list ends or stops.
    more: Condvar,
}

struct State {
    /// `None` once the list is read to its end, or could not be read further.
    input: Option<Input>,
    backlog: usize,
    unfinished: usize,
    /// Per thread: its requests fed and not finished yet.
    unfinished_of: Vec<usize>,
    /// Per thread: whether it waits in [`Feed::wait_for_work`].
    waiting: Vec<bool>,
    /// Set by a stop: nothing more is read until [`record_rest`](Feed::record_rest).
    stopped: bool,
    /// Why the list could not be read to its end.
    error: Option<String>,
    output: Output,
    counters: Arc<Counters>,
}

impl Feed {
    /// A feed for `threads` fetching threads; host `h` belongs to thread
    /// `partition_of(h, threads)`, as it would to a Redis partition.
    pub fn new(
        input: Input,
        backlog: usize,
        threads: usize,
        output: Output,
        counters: Arc<Counters>,
    ) -> Self {
        let threads = threads.max(1);
        Feed {
            state: Mutex::new(State {
                input: Some(input),
                backlog: backlog.max(1),
                unfinished: 0,
                unfinished_of: vec![0; threads],
                waiting: vec![false; threads],
                stopped: false,
                error: None,
                output,
                counters,
            }),
            more: Condvar::new(),
        }
    }

    /// Reads lines until `backlog` requests are unfinished or the list ends, handing each
    /// request to the handle of the thread that owns its host (`handles[thread]`). A line
    /// that is not a URL, or a URL the fetcher refuses, gets its record now.
    pub fn fill(&self, handles: &[Handle<CliRequest>]) {
        let mut state = self.lock();
        if state.fill(handles) {
            self.more.notify_all();
        }
    }

    /// One request of `thread` has finished: the next line comes in, unless the run stopped.
    pub fn finished(&self, thread: usize, handles: &[Handle<CliRequest>]) {
        let mut state = self.lock();
        state.unfinished = state.unfinished.saturating_sub(1);
        state.unfinished_of[thread] = state.unfinished_of[thread].saturating_sub(1);
        let all_done = state.unfinished == 0 && state.input.is_none();
        if state.fill(handles) || all_done {
            self.more.notify_all();
        }
    }

    /// A request of `thread` that a redirect took to a host of another thread: that thread
    /// carries on with it, and counts it as its own. Given back if that thread's fetcher is
    /// gone (then `thread` fetches it).
    pub fn hand_off(
        &self,
        thread: usize,
        hand_off: HandOff<CliRequest>,
        handles: &[Handle<CliRequest>],
    ) -> Result<(), HandOff<CliRequest>> {
        let owner = hand_off.partition() as usize;
        let mut state = self.lock();
        // Under the lock, as a line is fed: the owner's count and its handle agree when it
        // looks for work.
        match handles.get(owner) {
            Some(handle) => handle.hand_off(hand_off)?,
            None => return Err(hand_off),
        }
        state.unfinished_of[thread] = state.unfinished_of[thread].saturating_sub(1);
        state.unfinished_of[owner] += 1;
        if state.waiting[owner] {
            self.more.notify_all();
        }
        Ok(())
    }

    /// For a thread whose fetcher has run out of work: waits until it was given more (true:
    /// run it again) or until it will not be (false: the list is read and every request has
    /// finished, or the run stopped; what its handle still holds then ends among the
    /// fetcher's unfinished requests).
    pub fn wait_for_work(&self, thread: usize) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            // Counted when fed, under this lock: a request fed after the fetcher went idle
            // shows here, and is in the fetcher's handle queue for its next run.
            if state.unfinished_of[thread] > 0 {
                return true;
            }
            // Another thread's requests may still be handed to this one (a redirect to one
            // of its hosts): it waits until every request has finished.
            if state.input.is_none() && state.unfinished == 0 {
                return false;
            }
            state.waiting[thread] = true;
            state = self.more.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting[thread] = false;
        }
    }

    /// Reads no more lines (the run is stopping); the waiting threads end.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.more.notify_all();
    }

    /// After a stopped run: every line not read yet gets its record, `not_fetched` (or
    /// `invalid_url`), as the requests left in the fetchers do. Returns how many URLs were
    /// not fetched.
    pub fn record_rest(&self) -> u64 {
        let mut state = self.lock();
        let mut left = 0;
        while let Some(line) = state.next_line() {
            match line {
                Line::Invalid(record) => state.write(&record),
                Line::Request(request) => {
                    left += 1;
                    state.output.write(&not_fetched(request));
                }
            }
        }
        left
    }

    /// Why the list could not be read to its end, if it could not.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// The state, even if a callback panicked while holding it (it is left consistent).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Feeds up to the backlog; true if a waiting thread was given a request.
    fn fill(&mut self, handles: &[Handle<CliRequest>]) -> bool {
        let threads = self.unfinished_of.len() as u32;
        let reading = self.input.is_some();
        let mut woke = false;
        while !self.stopped && self.unfinished < self.backlog {
            match self.next_line() {
                Some(Line::Invalid(record)) => self.write(&record),
                Some(Line::Request(request)) => {
                    let thread = match threads {
                        1 => 0,
                        n => partition_of(request.url.host_str().unwrap_or(""), n) as usize,
                    };
                    match handles[thread].enqueue(request) {
                        Ok(()) => {
                            self.unfinished += 1;
                            self.unfinished_of[thread] += 1;
                            woke |= self.waiting[thread];
                        }
                        Err(e) => {
                            let Refused { request, reason } = e.into();
                            self.write(&Record::failed(
                                request.line,
                                request.input,
                                Some(&request.url),
                                "invalid_url",
                                reason,
                            ))
                        }
                    }
                }
                None => {
                    // The list ended (or failed) just now: the threads waiting for more
                    // look again, and end if nothing is left. Once it has ended, only the
                    // last request to finish wakes them (`finished`): waking them at every
                    // finish cost the busy threads a wake-up each.
                    woke |= reading && self.waiting.iter().any(|&w| w);
                    break;
                }
            }
        }
        woke
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

/// A request the fetcher would not take, and why.
struct Refused {
    request: CliRequest,
    reason: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_the_list_wakes_the_waiting_threads_once() {
        let dir = std::env::temp_dir().join(format!("downpour-feed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("urls.txt");
        std::fs::write(&list, "").unwrap();
        let mut state = State {
            input: Some(Input::open(list.to_str().unwrap()).unwrap()),
            backlog: 10,
            // Thread 0 still fetches; thread 1 waits for work.
            unfinished: 1,
            unfinished_of: vec![1, 0],
            waiting: vec![false, true],
            stopped: false,
            error: None,
            output: Output::open(Some(&dir.join("out.jsonl")), false).unwrap(),
            counters: Arc::new(Counters::default()),
        };
        assert!(
            state.fill(&[]),
            "the list's end must wake the waiting thread"
        );
        assert!(state.input.is_none());
        // Each further finish of thread 0 fills again: thread 1 is left asleep.
        assert!(!state.fill(&[]));
        assert!(!state.fill(&[]));
        drop(state);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
