//! One request per input line, and the JSON record written for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::driver::lib::http::{HeaderName, StatusCode, Version};
use crate::driver::lib::{
    Context, FetchError, Outcome, Request, Response, TransportErrorKind, Url,
};
use crate::warc::Warc;

/// What every request needs to know to build its record (shared, read-only).
#[derive(Debug)]
pub struct Shared {
    /// When the run started: fetch start offsets are measured from here.
    pub started: Instant,
    /// Response headers copied into the record.
    pub headers: Vec<HeaderName>,
    /// Where successful bodies are saved, named by their SHA-256.
    pub save_bodies: Option<PathBuf>,
    /// Where every response is archived.
    pub warc: Option<Warc>,
    /// Set by the second Ctrl-C: fetches in flight are being aborted.
    pub aborting: AtomicBool,
    /// The crawl is kept in Redis (`--redis`).
    pub redis: bool,
}

/// The run's [`Shared`], set once at its start. Global rather than in each request: the
/// requests restored from Redis are made from their JSON, without it.
static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

impl Shared {
    /// Makes it the run's.
    pub fn install(self) -> Arc<Shared> {
        SHARED.get_or_init(|| Arc::new(self)).clone()
    }
}

fn shared() -> Option<&'static Shared> {
    SHARED.get().map(|s| &**s)
}

/// The request of one input line.
#[derive(Serialize, Deserialize)]
pub struct CliRequest {
    /// The line number in the input (1-based).
    pub line: u64,
    /// The line as read (trimmed).
    pub input: String,
    /// The URL it parsed to.
    pub url: Url,
    /// When the first response head of the request arrived.
    #[serde(skip)]
    pub first_byte: Option<Instant>,
    /// The record, filled by `on_done` (boxed: the request moves through the scheduler's
    /// queues, the record only once it is done).
    #[serde(skip)]
    pub record: Option<Box<Record>>,
}

/// Why a line produced no response.
#[derive(Debug, Serialize)]
pub struct ErrorRecord {
    /// A short stable name: `FetchError::kind`, or `invalid_url`, `not_fetched`,
    /// `interrupted`, `save` or `warc`.
    pub kind: String,
    /// The full message.
    pub message: String,
}

/// Timings of a request, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    /// From the start of the run to the first hop's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset_ms: Option<f64>,
    /// From acceptance to the first hop's start (waiting for politeness, robots.txt, a slot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<f64>,
    /// From the first hop's start to the first response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<f64>,
    /// From the first hop's start to the end (all redirects and retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<f64>,
    /// From acceptance to the end.
    pub total_ms: f64,
}

/// The JSON line of one input line.
#[derive(Debug, Serialize)]
pub struct Record {
    /// The input line number (1-based).
    pub line: u64,
    /// The input line (trimmed).
    pub input: String,
    /// The URL requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The last URL tried (after redirects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    /// The final status, when a response arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The selected headers of the final response.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Bytes of the (decoded) body of the final response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_size: Option<u64>,
    /// SHA-256 of that body, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the body was saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
    /// Redirects followed.
    pub redirects: u32,
    /// Attempts retried.
    pub retries: u32,
    /// Timings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// Why the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorRecord>,
}

impl Record {
    /// A record for a line that produced no request or was never fetched.
    pub fn failed(
        line: u64,
        input: String,
        url: Option<&Url>,
        kind: &str,
        message: String,
    ) -> Self {
        Record {
            line,
            input,
            url: url.map(Url::to_string),
            final_url: None,
            status: None,
            headers: BTreeMap::new(),
            body_size: None,
            sha256: None,
            saved: None,
            redirects: 0,
            retries: 0,
            timings: None,
            error: Some(ErrorRecord {
                kind: kind.to_string(),
                message,
            }),
        }
    }

    /// Whether the request failed.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

/// Whether the fetch was cut short by the second Ctrl-C.
fn aborted(error: &FetchError, shared: Option<&Shared>) -> bool {
    let aborting = shared.is_some_and(|s| s.aborting.load(Ordering::SeqCst));
    matches!(error, FetchError::Transport(e) if aborting && e.kind == TransportErrorKind::Other)
}

/// The error of a finished request; a fetch cut short by the second Ctrl-C is `interrupted`.
fn error_record(error: &FetchError, shared: Option<&Shared>) -> ErrorRecord {
    if aborted(error, shared) {
        ErrorRecord {
            kind: "interrupted".to_string(),
            message: "the fetch was in flight when the run was aborted (second Ctrl-C)".to_string(),
        }
    } else {
        ErrorRecord {
            kind: error.kind().to_string(),
            message: error.to_string(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Stores a body under its digest, unless a file of its size is there already (the same
/// body, fetched before). It is written to a file of its own, then renamed: a file under a
/// digest is whole, even after a crash or a full disk mid-write, and two threads saving the
/// same body do not write into one file.
fn save_body(path: &Path, body: &[u8]) -> std::io::Result<()> {
    static SAVING: AtomicU64 = AtomicU64::new(0);
    if std::fs::metadata(path).is_ok_and(|m| m.len() == body.len() as u64) {
        return Ok(());
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let part = path.with_file_name(format!(
        ".{name}.{}.{}.part",
        std::process::id(),
        SAVING.fetch_add(1, Ordering::Relaxed)
    ));
    let saved = std::fs::write(&part, body).and_then(|()| std::fs::rename(&part, path));
    if saved.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    saved
}

/// How old a body's part file must be before a run takes it for one that a killed run left
/// behind. A body is written in one call and renamed at once; an hour also leaves room for
/// the clocks of machines that share the directory.
const STALE_PART_AGE: Duration = Duration::from_secs(3600);

/// Removes from `dir` the part files of [`save_body`] (`.<sha256>.<pid>.<n>.part`) that are
/// older than [`STALE_PART_AGE`]: a run killed between writing a body and renaming it leaves
/// one. Other files are left alone. Returns how many were removed.
pub fn remove_stale_parts(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let is_part = entry.file_name().to_str().is_some_and(is_part_name);
        let stale = || {
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            modified.is_some_and(|t| t.elapsed().is_ok_and(|age| age > STALE_PART_AGE))
        };
        if is_part && stale() && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `name` is that of a part file of [`save_body`]: `.<64 hex digits>.<pid>.<n>.part`.
fn is_part_name(name: &str) -> bool {
    let Some(middle) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part")) else {
        return false;
    };
    let fields: Vec<&str> = middle.split('.').collect();
    let digits = |f: &str, hex: bool| {
        !f.is_empty()
            && f.bytes()
                .all(|b| b.is_ascii_digit() || (hex && matches!(b, b'a'..=b'f')))
    };
    matches!(fields[..], [digest, pid, n]
        if digest.len() == 64 && digits(digest, true) && digits(pid, false) && digits(n, false))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

impl CliRequest {
    /// The request of input line `line`.
    pub fn new(line: u64, input: String, url: Url) -> Self {
        CliRequest {
            line,
            input,
            url,
            first_byte: None,
            record: None,
        }
    }

    fn build(&self, outcome: &Outcome) -> Record {
        let shared = shared();
        let response: Option<&Response> = match &outcome.result {
            Ok(r) => Some(r),
            Err(e) => e.response(),
        };
        let mut record = Record {
            line: self.line,
            input: self.input.clone(),
            url: Some(self.url.to_string()),
            final_url: Some(outcome.url().to_string()),
            status: outcome.status().map(|s| s.as_u16()),
            headers: BTreeMap::new(),
            body_size: None,
            sha256: None,
            saved: None,
            redirects: outcome.redirects,
            retries: outcome.retries,
            timings: None,
            error: outcome
                .result
                .as_ref()
                .err()
                .map(|e| error_record(e, shared)),
        };
        if let Some(response) = response {
            if let Some(shared) = shared {
                for name in &shared.headers {
                    let values: Vec<&str> = response
                        .headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    if !values.is_empty() {
                        record
                            .headers
                            .insert(name.as_str().to_string(), values.join(", "));
                    }
                }
            }
            let digest = hex(&Sha256::digest(&response.body));
            record.body_size = Some(response.body.len() as u64);
            if let (Some(dir), true) = (
                shared.and_then(|s| s.save_bodies.as_ref()),
                outcome.is_success(),
            ) {
                let path = dir.join(&digest);
                match save_body(&path, &response.body) {
                    Ok(()) => record.saved = Some(path.display().to_string()),
                    Err(e) => {
                        record.error = Some(ErrorRecord {
                            kind: "save".to_string(),
                            message: format!("cannot write {}: {e}", path.display()),
                        })
                    }
                }
            }
            record.sha256 = Some(digest);
            if let Some(warc) = shared.and_then(|s| s.warc.as_ref()) {
                if let Err(message) = warc.write_response(response) {
                    record.error = Some(ErrorRecord {
                        kind: "warc".to_string(),
                        message,
                    });
                }
            }
        }
        let mut timings = Timings {
            total_ms: ms(outcome
                .finished_at
                .saturating_duration_since(outcome.enqueued_at)),
            ..Timings::default()
        };
        if let Some(started) = outcome.started_at {
            if let Some(shared) = shared {
                timings.start_offset_ms =
                    Some(ms(started.saturating_duration_since(shared.started)));
            }
            timings.queued_ms = Some(ms(started.saturating_duration_since(outcome.enqueued_at)));
            timings.first_byte_ms = self
                .first_byte
                .map(|t| ms(t.saturating_duration_since(started)));
            timings.fetch_ms = Some(ms(outcome.finished_at.saturating_duration_since(started)));
        }
        record.timings = Some(timings);
        record
    }
}

impl Request for CliRequest {
    fn url(&self) -> &Url {
        &self.url
    }

    fn on_status(&mut self, ctx: &mut Context<Self>, _version: Version, _status: StatusCode) {
        if self.first_byte.is_none() {
            self.first_byte = Some(ctx.now());
        }
    }

    fn on_done(&mut self, _ctx: &mut Context<Self>, outcome: &Outcome) {
        if let (Some(shared), Err(error)) = (shared(), &outcome.result) {
            if shared.redis && aborted(error, Some(shared)) {
                // With Redis the fetch cut short by the second Ctrl-C stays stored, and the
                // next run fetches it: no record here.
                return;
            }
        }
        self.record = Some(Box::new(self.build(outcome)));
    }
}
