//! A crawl kept in Redis (`--redis`): seeding it once from the URL file, and counting what
//! is left. The fetcher does the rest (`Fetcher::with_redis`).
//!
//! Seeding writes the requests of the input straight into the inboxes of their hosts'
//! partitions (the layout of `downpour_common::store`, the JSON the drivers store), a chunk
//! at a time, each chunk with the seeding's progress in one `MULTI`/`EXEC`; the last one
//! sets the marker `{prefix}:seeded`. One worker seeds, under a lease; a worker started
//! while it does waits for the marker, and one started after a crash mid-seeding goes on
//! where the dead one stopped. A worker started once the crawl is seeded checks that its
//! list is the crawl's (the progress stays: how many lines, and their digest), adds the
//! lines written at its end since, under the same lease, and resumes the crawl.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use downpour_common::store::{
    eviction_risk, partition_of, redacted_url, Keys, RedisOptions, FORMAT,
};
use redis::{Connection, Value};

use crate::input::{Input, Line, ListReader, Skipped};
use crate::record::Record;

/// Most requests stored in one transaction while seeding: what the seeding worker holds in
/// memory, and the most a crash makes the next one read again.
const SEED_CHUNK: usize = 2000;

/// How long the seeding waits at the end of a list that is not a regular file (a pipe)
/// before it marks the crawl seeded: long enough for a Ctrl-C that ended the program piping
/// the list in to reach this one too.
const PIPE_END_GRACE: Duration = Duration::from_millis(500);

/// How often a worker looks whether the one seeding the crawl is done (or gone), and how
/// soon a seeding or a wait for it sees a Ctrl-C.
pub const STOP_POLL: Duration = Duration::from_millis(100);

/// Requests of the list, ready for Redis, and how far the list was read.
#[derive(Default)]
struct Chunk {
    by_partition: BTreeMap<u32, Vec<String>>,
    /// Requests in `by_partition`.
    len: usize,
    /// The seeding's progress once this chunk is stored.
    progress: Progress,
    /// The list ended: the crawl is seeded.
    last: bool,
}

/// How far the seeding of a crawl went (`{prefix}:seeding`).
#[derive(Default)]
struct Progress {
    /// Lines of the list read (the line number of the last one), and their SHA-256.
    lines: u64,
    digest: String,
    /// Requests written since the seeding began.
    requests: u64,
    /// Whether the last line had no newline at its end.
    cut: bool,
}

/// A sync connection to the crawl's Redis, for seeding and counting.
pub struct Crawl {
    options: RedisOptions,
    keys: Keys,
    connection: Connection,
    /// This worker's name on the seeding lease.
    token: String,
}

/// The input's part in the crawl.
pub enum Seeding {
    /// This worker seeded the crawl (or finished seeding it): how many lines were not URLs,
    /// how many requests the crawl was seeded with, and the line it went on from when it
    /// took over from a worker that died seeding.
    Seeded {
        invalid: usize,
        requests: u64,
        resumed_at: Option<u64>,
    },
    /// The crawl was seeded before, and this worker added the lines found at the end of its
    /// list since: how many of them were not URLs, how many requests they made, and which
    /// lines they were.
    Added {
        invalid: usize,
        requests: u64,
        lines: (u64, u64),
    },
    /// The crawl was seeded before (by another worker, or an earlier run), and this worker's
    /// list has nothing to add to it.
    Resumed,
    /// The crawl was seeded before, and this worker's list was not checked against it: why.
    ResumedWithoutList(String),
    /// Ctrl-C stopped the wait for another worker seeding the crawl (or adding to it, once
    /// seeded).
    StoppedWaiting { adding: bool },
    /// Ctrl-C stopped the seeding (or the adding to a seeded crawl): what was stored stays,
    /// up to this line of the list.
    Interrupted { stored: Option<u64>, adding: bool },
}

/// Ctrl-C while a worker seeds: the handler asks, and the seeding stops within
/// [`STOP_POLL`], having stored what it read. Should it not take the stop (Redis not
/// answering), the handler ends the command itself after a while. Whichever takes the stop
/// reports it, once.
#[derive(Default)]
pub struct SeedingStop(AtomicU8);

const RUNNING: u8 = 0;
const REQUESTED: u8 = 1;
const TAKEN: u8 = 2;
/// The seeding is over, and took no stop: a Ctrl-C now is the next stage's.
const CLOSED: u8 = 3;

/// Who has a stop to report once the seeding is over ([`SeedingStop::close`]).
pub enum StopAfterSeeding {
    /// Nobody: the run goes on.
    None,
    /// The caller.
    Taken,
    /// The Ctrl-C handler, which ends the command.
    TakenByHandler,
}

impl SeedingStop {
    /// Asks the seeding to stop: `false` if it is over (closed).
    pub fn request(&self) -> bool {
        match self
            .0
            .compare_exchange(RUNNING, REQUESTED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state != CLOSED,
        }
    }

    pub fn is_requested(&self) -> bool {
        matches!(self.0.load(Ordering::SeqCst), REQUESTED | TAKEN)
    }

    /// Takes a requested stop to report it: `false` if the other side took it first.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(REQUESTED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Ends the seeding's watch for Ctrl-C, taking a stop requested meanwhile.
    pub fn close(&self) -> StopAfterSeeding {
        match self
            .0
            .compare_exchange(RUNNING, CLOSED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => StopAfterSeeding::None,
            Err(_) if self.take() => StopAfterSeeding::Taken,
            Err(_) => StopAfterSeeding::TakenByHandler,
        }
    }
}

/// Renews the seeding lease every third of its time on a connection of its own, so that a
/// list that comes slowly (a pipe) does not let it run out; stops when dropped.
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(options: &RedisOptions, lease: String, token: String) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let url = options.url.clone();
        let ttl = options.lease_ttl;
        let prolong = redis::cmd("PEXPIRE").arg(&lease).arg(millis(ttl)).clone();
        let thread = std::thread::Builder::new()
            .name("seeding-lease".into())
            .spawn(move || {
                let mut connection = None;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(ttl / 3) {
                    if connection.is_none() {
                        connection = connect_briefly(&url).ok();
                    }
                    // A failure drops the connection, to try a new one next time; a lease
                    // that ran out is seen by the next chunk's transaction.
                    if let Some(c) = &mut connection {
                        if if_holding(c, &lease, &token, &prolong).is_err() {
                            connection = None;
                        }
                    }
                }
            })
            .ok();
        Heartbeat {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Crawl {
    /// Connects, or says in one line why it cannot.
    pub fn connect(options: &RedisOptions) -> Result<Crawl, String> {
        let url = redacted_url(&options.url);
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| format!("invalid --redis URL {url}: {e}"))?;
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .and_then(|c| {
                // A server that stops answering fails the command rather than hanging.
                c.set_read_timeout(Some(Duration::from_secs(60)))?;
                c.set_write_timeout(Some(Duration::from_secs(60)))?;
                Ok(c)
            })
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        // Said here, before the fetchers connect: the store's own warning comes before the
        // command shows the store's messages.
        let info = redis::cmd("INFO")
            .arg("memory")
            .query::<String>(&mut connection);
        if let Some(risk) = info.ok().as_deref().and_then(eviction_risk) {
            eprintln!("downpour: Redis at {url} {risk}");
        }
        Ok(Crawl {
            keys: Keys::new(&options.prefix, options.partitions),
            options: options.clone(),
            connection,
            token: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The marker of a seeded crawl: `{prefix}:seeded`, next to `{prefix}:meta`.
    fn marker(&self) -> String {
        format!("{{{}}}:seeded", self.options.prefix)
    }

    fn failed(&self, e: redis::RedisError) -> String {
        format!(
            "Redis at {} failed while seeding the crawl `{}`: {e}",
            redacted_url(&self.options.url),
            self.options.prefix
        )
    }

    /// Whether the crawl is seeded already; an error if it was started with another
    /// number of partitions.
    pub fn is_seeded(&mut self) -> Result<bool, String> {
        let marker = self.marker();
        let (exists, stored): (bool, Option<String>) = redis::pipe()
            .cmd("EXISTS")
            .arg(&marker)
            .cmd("HGET")
            .arg(self.keys.meta())
            .arg("partitions")
            .query(&mut self.connection)
            .map_err(|e| self.failed(e))?;
        match stored {
            Some(stored) if stored != self.options.partitions.to_string() => {
                Err(self.mismatch(&stored))
            }
            _ => Ok(exists),
        }
    }

    fn mismatch(&self, stored: &str) -> String {
        format!(
            "the crawl `{}` was started with --partitions {stored}; this worker was given {}",
            self.options.prefix, self.options.partitions
        )
    }

    /// Seeds the crawl with the lines of the input or, once it is seeded, with the lines
    /// written at the end of its list since, writing the records of the lines that are not
    /// URLs with `invalid` as they are read; stops once `stop` is requested (Ctrl-C), having
    /// stored what it read.
    ///
    /// Of several workers started together one seeds, holding the lease
    /// `{prefix}:seeding:lease` (renewed by a thread of its own, however slowly the list
    /// comes); the others wait for the marker. The requests go in chunks of [`SEED_CHUNK`],
    /// each in one `MULTI`/`EXEC` with the progress `{prefix}:seeding` (the lines read and
    /// their SHA-256), so memory stays small whatever the list's length, and a worker that
    /// takes over the lease of a dead one goes on from the first line not seeded, once it has
    /// checked that its list begins with the same lines. A worker started on a seeded crawl
    /// takes the lease too (waiting for it like the others), checks its list the same way
    /// and adds the lines after.
    pub fn seed(
        &mut self,
        input: Input,
        invalid: impl FnMut(&Record) -> Result<(), String>,
        quiet: bool,
        stop: &SeedingStop,
    ) -> Result<Seeding, String> {
        let mut said_waiting = false;
        loop {
            if stop.is_requested() {
                return Ok(Seeding::StoppedWaiting {
                    adding: self.is_seeded()?,
                });
            }
            if self.take_lease()? {
                break;
            }
            // Once the crawl is seeded, the lease's holder checks its list, and may be adding
            // lines that this worker's list has too: it is waited for all the same.
            if !quiet && !said_waiting {
                let doing = if self.is_seeded()? {
                    "adding to"
                } else {
                    "seeding"
                };
                eprintln!(
                    "downpour: another worker is {doing} crawl `{}`: waiting for it",
                    self.options.prefix
                );
                said_waiting = true;
            }
            std::thread::sleep(STOP_POLL);
        }
        let heartbeat = Heartbeat::start(&self.options, self.lease(), self.token.clone());
        let seeding = input
            .read_on_a_thread()
            .and_then(|list| self.seed_holding_lease(list, invalid, quiet, stop));
        drop(heartbeat);
        // Unless the crawl is seeded (the last chunk let the lease go), the next worker goes
        // on at once rather than after the lease's time; an error said first matters more.
        if !matches!(seeding, Ok(Seeding::Seeded { .. })) {
            let released = self.release_lease();
            if seeding.is_ok() {
                released?;
            }
        }
        seeding
    }

    fn seed_holding_lease(
        &mut self,
        mut list: ListReader,
        mut invalid: impl FnMut(&Record) -> Result<(), String>,
        quiet: bool,
        stop: &SeedingStop,
    ) -> Result<Seeding, String> {
        // Seeded by another worker, or before: the list must begin with the lines the crawl
        // was seeded with, and the lines after them are added.
        let seeded = self.is_seeded()?;
        let progress = self.progress()?;
        if seeded && progress.is_none() {
            return Ok(Seeding::ResumedWithoutList(
                "it keeps no count of its list's lines: lines added to the list are not looked \
                 for"
                .to_string(),
            ));
        }
        if seeded {
            // Lines are added to a list as it is used: a last one without a newline may be
            // being written.
            list.hold_back_cut_last_line();
        }
        let interrupted = |stored| {
            Ok(Seeding::Interrupted {
                stored,
                adding: seeded,
            })
        };
        let mut stored = progress.as_ref().map(|p| p.lines);
        let resumed_at = match &progress {
            Some(Progress {
                lines, digest, cut, ..
            }) => {
                let prefix = &self.options.prefix;
                let skipped = list.skip_to(*lines, STOP_POLL, || stop.is_requested())?;
                let short = matches!(skipped, Skipped::ListEnded);
                let differs = !short && list.digest() != *digest;
                // A piped list that ends short may have been ended by a Ctrl-C on its way.
                if (short || differs) && !list.is_regular_file() {
                    std::thread::sleep(PIPE_END_GRACE);
                }
                if matches!(skipped, Skipped::Stopped) || stop.is_requested() {
                    return interrupted(stored);
                }
                if seeded && short && list.lines_read() == 0 {
                    // No list at all (`-` with nothing on stdin): nothing to check or add.
                    return Ok(Seeding::ResumedWithoutList("its list is empty".to_string()));
                }
                if short || differs {
                    return Err(list_refused(prefix, seeded, *lines, short, *cut));
                }
                Some(*lines + 1)
            }
            None => None,
        };
        let before = progress.map_or(0, |p| p.requests);
        let mut requests = before;
        let mut invalid_lines = 0;
        // A slow list is stored as it comes, so that a crash loses little of it.
        let commit_after = self.options.lease_ttl / 3;
        loop {
            let mut chunk = Chunk::default();
            let mut ended = false;
            let started = Instant::now();
            while chunk.len < SEED_CHUNK && started.elapsed() < commit_after {
                if stop.is_requested() {
                    break;
                }
                match list.next(STOP_POLL)? {
                    Some(line) => invalid_lines += self.add(&mut chunk, line, &mut invalid)?,
                    None if list.ended() => {
                        ended = true;
                        break;
                    }
                    // The list is slow to come.
                    None => {}
                }
            }
            if ended && !list.is_regular_file() {
                // Ctrl-C in a terminal ends the program that pipes the list in as well: its
                // end may be that, with its last line cut short, and the crawl must not be
                // marked seeded with part of its list.
                std::thread::sleep(PIPE_END_GRACE);
                // Added to a seeded crawl, it waits for its newline, as in a file.
                if !stop.is_requested() && !seeded {
                    if let Some(line) = list.tail() {
                        invalid_lines += self.add(&mut chunk, line, &mut invalid)?;
                    }
                }
            }
            // What was read is stored all the same (never as the whole list): its records
            // of lines that are not URLs are out already.
            let stopping = stop.is_requested();
            let nothing_new = list.lines_read() == stored.unwrap_or(0);
            if stopping && nothing_new {
                return interrupted(stored);
            }
            if seeded && ended && !quiet && list.has_cut_last_line() {
                eprintln!(
                    "downpour: line {} of the list has no newline at its end: it is not added \
                     to crawl `{}` (it may be being written); end it with a newline, then run \
                     again to add it",
                    list.lines_read() + 1,
                    self.options.prefix
                );
            }
            if seeded && ended && nothing_new {
                // The list is the crawl's, with no line added.
                return Ok(Seeding::Resumed);
            }
            requests += chunk.len as u64;
            chunk.progress = Progress {
                lines: list.lines_read(),
                digest: list.digest(),
                requests,
                cut: list.last_line_cut(),
            };
            chunk.last = ended && !stopping;
            match self.store_chunk(&chunk) {
                Ok(()) => stored = Some(chunk.progress.lines),
                // Ctrl-C's handler let the lease go while the chunk was on its way.
                Err(_) if stopping || stop.is_requested() => return interrupted(stored),
                Err(e) => return Err(e),
            }
            if stopping {
                return interrupted(stored);
            }
            if ended && seeded {
                return Ok(Seeding::Added {
                    invalid: invalid_lines,
                    requests: requests - before,
                    lines: (resumed_at.unwrap_or(1), chunk.progress.lines),
                });
            }
            if ended {
                return Ok(Seeding::Seeded {
                    invalid: invalid_lines,
                    requests,
                    resumed_at,
                });
            }
        }
    }

    /// Adds a line of the list to a chunk: a request, or the record of a line that is not a
    /// URL, written now (before the chunk is stored: a crash repeats it, never loses it).
    /// How many such lines it was.
    fn add(
        &self,
        chunk: &mut Chunk,
        line: Line,
        invalid: &mut impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<usize, String> {
        match line {
            Line::Invalid(record) => {
                invalid(&record)?;
                Ok(1)
            }
            Line::Request(request) => {
                let partition = partition_of(
                    request.url.host_str().unwrap_or(""),
                    self.options.partitions,
                );
                let json = serde_json::to_string(&request)
                    .map_err(|e| format!("cannot serialize line {}: {e}", request.line))?;
                chunk.by_partition.entry(partition).or_default().push(json);
                chunk.len += 1;
                Ok(0)
            }
        }
    }

    /// Takes the seeding lease, if no other worker holds it.
    fn take_lease(&mut self) -> Result<bool, String> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.lease())
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.options.lease_ttl))
            .query(&mut self.connection)
            .map_err(|e| self.failed(e))?;
        Ok(taken.is_some())
    }

    fn lost_lease(&self) -> String {
        format!(
            "this worker's lease on seeding the crawl `{}` ran out (Redis did not hear from it \
             for --lease-ttl): run it again, and it goes on where the seeding stopped, or \
             joins the crawl if another worker seeded it meanwhile",
            self.options.prefix
        )
    }

    /// Lets the seeding lease go, if this worker still holds it.
    fn release_lease(&mut self) -> Result<(), String> {
        let lease = self.lease();
        let released = let_go(&mut self.connection, &lease, &self.token);
        released.map_err(|e| self.failed(e))
    }

    /// What lets the seeding lease go on a connection of its own, for Ctrl-C: the next
    /// worker then goes on with the seeding at once rather than after `--lease-ttl`.
    pub fn lease_releaser(&self) -> impl Fn() + Send + 'static {
        let url = self.options.url.clone();
        let lease = self.lease();
        let token = self.token.clone();
        move || {
            // Failing that, the lease runs out by itself.
            if let Ok(mut connection) = connect_briefly(&url) {
                let _ = let_go(&mut connection, &lease, &token);
            }
        }
    }

    /// What an earlier seeding stored: the lines read, their digest, the requests written.
    fn progress(&mut self) -> Result<Option<Progress>, String> {
        let fields: (Option<u64>, Option<String>, Option<u64>, Option<u8>) = redis::cmd("HMGET")
            .arg(self.progress_key())
            .arg(&["lines", "digest", "requests", "cut"])
            .query(&mut self.connection)
            .map_err(|e| self.failed(e))?;
        Ok(match fields {
            (Some(lines), Some(digest), Some(requests), cut) => Some(Progress {
                lines,
                digest,
                requests,
                cut: cut == Some(1),
            }),
            _ => None,
        })
    }

    /// Writes a chunk's requests with the progress, or with the marker for the last one,
    /// in one transaction that holds only while this worker holds the lease.
    fn store_chunk(&mut self, chunk: &Chunk) -> Result<(), String> {
        let lease = self.lease();
        let progress = self.progress_key();
        let marker = self.marker();
        let meta = self.keys.meta();
        let keys = self.keys.clone();
        let partitions = self.options.partitions;
        let lease_ms = millis(self.options.lease_ttl);
        let token = self.token.as_str();
        let outcome = redis::transaction(
            &mut self.connection,
            &[&lease, &marker, &meta],
            |connection, pipe| {
                let (holder, stored): (Option<String>, Option<String>) = redis::pipe()
                    .cmd("GET")
                    .arg(&lease)
                    .cmd("HGET")
                    .arg(&meta)
                    .arg("partitions")
                    .query(connection)?;
                if holder.as_deref() != Some(token) {
                    return Ok(Some(Err(None)));
                }
                if let Some(stored) = stored.filter(|s| *s != partitions.to_string()) {
                    return Ok(Some(Err(Some(stored))));
                }
                pipe.cmd("HSETNX")
                    .arg(&meta)
                    .arg("format")
                    .arg(FORMAT)
                    .ignore();
                pipe.cmd("HSETNX")
                    .arg(&meta)
                    .arg("partitions")
                    .arg(partitions)
                    .ignore();
                for (partition, items) in &chunk.by_partition {
                    let inbox = keys.partition(*partition).inbox;
                    pipe.cmd("RPUSH").arg(&inbox).arg(items).ignore();
                }
                // The progress stays once the crawl is seeded: a worker started later checks
                // its list against it, and adds the lines after.
                let stored = &chunk.progress;
                pipe.cmd("HSET")
                    .arg(&progress)
                    .arg("lines")
                    .arg(stored.lines)
                    .arg("digest")
                    .arg(&stored.digest)
                    .arg("requests")
                    .arg(stored.requests)
                    .arg("cut")
                    .arg(u8::from(stored.cut))
                    .ignore();
                if chunk.last {
                    pipe.cmd("SET").arg(&marker).arg(stored.requests).ignore();
                    pipe.cmd("DEL").arg(&lease).ignore();
                } else {
                    pipe.cmd("PEXPIRE").arg(&lease).arg(lease_ms).ignore();
                }
                // Nil: the lease, the marker or the settings changed since WATCH; look again.
                let reply: Value = pipe.query(connection)?;
                Ok((reply != Value::Nil).then_some(Ok(())))
            },
        )
        .map_err(|e| self.failed(e))?;
        match outcome {
            Ok(()) => Ok(()),
            Err(None) => Err(self.lost_lease()),
            Err(Some(stored)) => Err(self.mismatch(&stored)),
        }
    }

    /// The lease of the worker seeding the crawl, next to the marker.
    fn lease(&self) -> String {
        format!("{{{}}}:seeding:lease", self.options.prefix)
    }

    /// How far the seeding went: the lines of the list read, their digest, and the requests
    /// written (kept once the crawl is seeded).
    fn progress_key(&self) -> String {
        format!("{{{}}}:seeding", self.options.prefix)
    }

    /// How many requests the whole crawl still holds (stored and in inboxes, all partitions).
    pub fn unfinished(&mut self) -> Result<u64, String> {
        let mut pipe = redis::pipe();
        for p in 0..self.options.partitions {
            let keys = self.keys.partition(p);
            pipe.cmd("HLEN").arg(&keys.requests);
            pipe.cmd("LLEN").arg(&keys.inbox);
        }
        let counts: Vec<u64> = pipe
            .query(&mut self.connection)
            .map_err(|e| format!("cannot read the crawl's size: {e}"))?;
        Ok(counts.iter().sum())
    }

    /// Connects again (for the end of a long run, when the first connection may be gone).
    pub fn reconnect(&mut self) -> Result<(), String> {
        let token = std::mem::take(&mut self.token);
        *self = Crawl {
            token,
            ..Crawl::connect(&self.options)?
        };
        Ok(())
    }
}

/// Why a list is refused for crawl `prefix`, seeded (or being seeded) from `lines` lines
/// that it lacks (`short`) or that differ.
/// `cut`: the last of those lines had no newline at its end.
fn list_refused(prefix: &str, seeded: bool, lines: u64, short: bool, cut: bool) -> String {
    let differ = format!("another list: the first {lines} lines of this one differ");
    if !seeded {
        let what = if short {
            format!("a list of more than {lines} lines, and this one has fewer")
        } else {
            differ
        };
        return format!(
            "the crawl `{prefix}` is being seeded from {what}: give this worker the same list \
             as the first, or use another --prefix"
        );
    }
    let what = if short {
        format!("a list of {lines} lines, and this one has fewer")
    } else if cut {
        // `>>` onto a list without a final newline goes on with its last line.
        format!(
            "{differ} (line {lines} had no newline at its end: text written right after it, as \
             `>>` does, makes it another line; put that text on a line of its own)"
        )
    } else {
        differ
    };
    format!(
        "the crawl `{prefix}` was seeded from {what}. Give this worker the crawl's list (lines \
         written at its end are added to the crawl), or none (`-` with nothing on standard \
         input) to resume the crawl as it is, or use another --prefix for a crawl of its own"
    )
}

/// Runs `command` (on the lease) if `token` holds the lease, in a transaction that watches it.
fn if_holding(
    connection: &mut Connection,
    lease: &str,
    token: &str,
    command: &redis::Cmd,
) -> redis::RedisResult<()> {
    redis::transaction(connection, &[lease], |connection, pipe| {
        let holder: Option<String> = redis::cmd("GET").arg(lease).query(connection)?;
        if holder.as_deref() != Some(token) {
            return Ok(Some(()));
        }
        pipe.add_command(command.clone()).ignore();
        let reply: Value = pipe.query(connection)?;
        Ok((reply != Value::Nil).then_some(()))
    })
}

/// Deletes the lease if `token` holds it.
fn let_go(connection: &mut Connection, lease: &str, token: &str) -> redis::RedisResult<()> {
    if_holding(connection, lease, token, redis::cmd("DEL").arg(lease))
}

/// A lease's time, in the milliseconds Redis takes.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// A connection for one short errand, with short timeouts.
fn connect_briefly(url: &str) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(url)?;
    let connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
    connection.set_read_timeout(Some(Duration::from_secs(1)))?;
    connection.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(connection)
}
