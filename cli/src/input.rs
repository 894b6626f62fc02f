//! The list of URLs: one per line, blank lines and `#` comments skipped. It is read as the
//! crawl goes (see [`Feed`](crate::feed::Feed)), so a list of any length fits in memory.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::driver::lib::parse_url;
use crate::record::{CliRequest, Record};

/// One input line: a request, or the record of a line that is not a URL.
pub enum Line {
    Request(CliRequest),
    Invalid(Record),
}

/// The URL list being read: a file, or stdin for `-`.
pub struct Input {
    reader: BufReader<Box<dyn Read + Send>>,
    path: String,
    buffer: Vec<u8>,
    lines: Lines,
}

impl Input {
    /// Opens the list; a missing or unreadable file is an error now, before anything starts.
    pub fn open(path: &str) -> Result<Input, String> {
        let source: Box<dyn Read + Send> = if path == "-" {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).map_err(|e| cannot_read(path, e))?)
        };
        Ok(Input {
            reader: BufReader::new(source),
            path: path.to_string(),
            buffer: Vec::new(),
            lines: Lines::default(),
        })
    }

    /// The next line that is neither blank nor a comment; `None` at the end of the list. A
    /// line that is not a URL (or not UTF-8) is a [`Line::Invalid`], not an error: only a
    /// failure to read is.
    pub fn next_line(&mut self) -> Result<Option<Line>, String> {
        loop {
            self.buffer.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|e| cannot_read(&self.path, e))?;
            if read == 0 {
                return Ok(None);
            }
            if let Some(line) = self.lines.parse(&self.buffer) {
                return Ok(Some(line));
            }
        }
    }

    /// Reads the rest of the list on a thread of its own, for a reader that must not block
    /// on it (seeding a crawl, which keeps an eye on Ctrl-C while a piped list pauses), and
    /// keeps a digest of its lines.
    pub fn read_on_a_thread(self) -> Result<ListReader, String> {
        let Input {
            mut reader, path, ..
        } = self;
        // Stdin redirected from a file (`- < urls.txt`) is that file.
        let source = if path == "-" { "/dev/stdin" } else { &path };
        let regular = std::fs::metadata(source).is_ok_and(|m| m.is_file());
        let (batches, received) = mpsc::sync_channel::<Result<Vec<Vec<u8>>, String>>(64);
        std::thread::Builder::new()
            .name("list".into())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    let mut line = Vec::new();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) => break,
                        // A file's end, reached mid-line: a line being written goes on
                        // after it, and must not be read as two. (A terminal's end of input,
                        // mid-line, may be followed by more lines.)
                        Ok(_) if regular && !line.ends_with(b"\n") => {
                            batch.push(line);
                            break;
                        }
                        Ok(_) => batch.push(line),
                        Err(e) => {
                            let _ = batches.send(Err(cannot_read(&path, e)));
                            return;
                        }
                    }
                    // Sent when full, or when the next read may wait for the list (what is
                    // buffered holds no whole line).
                    if (batch.len() >= READ_BATCH || !reader.buffer().contains(&b'\n'))
                        && batches.send(Ok(std::mem::take(&mut batch))).is_err()
                    {
                        return;
                    }
                }
                if !batch.is_empty() {
                    let _ = batches.send(Ok(batch));
                }
            })
            .map_err(|e| format!("cannot start a thread to read the URL list: {e}"))?;
        Ok(ListReader {
            lines: Lines {
                number: 0,
                digest: Some(Sha256::new()),
                last_cut: false,
            },
            received,
            pending: VecDeque::new(),
            tail: None,
            hold_back: !regular,
            regular,
            ended: false,
        })
    }
}

/// Lines sent at most at once by the thread of [`Input::read_on_a_thread`].
const READ_BATCH: usize = 1024;

/// The lines of a list read on a thread of their own ([`Input::read_on_a_thread`]).
pub struct ListReader {
    lines: Lines,
    received: mpsc::Receiver<Result<Vec<Vec<u8>>, String>>,
    pending: VecDeque<Vec<u8>>,
    /// A piped list's last line without a newline, held back until [`ListReader::tail`]:
    /// it may be a line cut short by the end of the program piping the list in.
    tail: Option<Vec<u8>>,
    /// Whether such a line is held back: for a pipe, or when asked.
    hold_back: bool,
    regular: bool,
    /// The reading thread is done: every line it read was received.
    ended: bool,
}

/// How far [`ListReader::skip_to`] went.
pub enum Skipped {
    All,
    /// The list ended first.
    ListEnded,
    /// Stopped (Ctrl-C).
    Stopped,
}

impl ListReader {
    /// The next line that is neither blank nor a comment, waiting at most `wait` for it:
    /// `None` if none came in time, or at the end of the list ([`ListReader::ended`]).
    pub fn next(&mut self, wait: Duration) -> Result<Option<Line>, String> {
        loop {
            while let Some(raw) = self.pending.pop_front() {
                if let Some(line) = self.lines.parse(&raw) {
                    return Ok(Some(line));
                }
            }
            if !self.receive(wait)? {
                return Ok(None);
            }
        }
    }

    /// Whether the whole list was read (but for a [`ListReader::tail`]).
    pub fn ended(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// Once the list ended: its last line if it has no newline and the list is piped in,
    /// which was held back; to be taken only if that end is the list's own.
    pub fn tail(&mut self) -> Option<Line> {
        let raw = self.tail.take()?;
        self.lines.parse(&raw)
    }

    /// Reads up to line `number` (included) without parsing, looking at `stopped` as it
    /// waits for the list.
    pub fn skip_to(
        &mut self,
        number: u64,
        wait: Duration,
        stopped: impl Fn() -> bool,
    ) -> Result<Skipped, String> {
        while self.lines.number < number {
            if let Some(raw) = self.pending.pop_front() {
                self.lines.count(&raw);
                continue;
            }
            if stopped() {
                return Ok(Skipped::Stopped);
            }
            if !self.receive(wait)? && self.ended {
                match self.tail.take() {
                    Some(raw) => self.lines.count(&raw),
                    None => return Ok(Skipped::ListEnded),
                }
            }
        }
        Ok(Skipped::All)
    }

    /// Waits for a batch of lines: `false` if none came (in time, or ever again).
    fn receive(&mut self, wait: Duration) -> Result<bool, String> {
        match self.received.recv_timeout(wait) {
            Ok(batch) => {
                let mut batch = batch?;
                // A line held back before was not the last (a terminal's end of input
                // may come more than once).
                self.pending.extend(self.tail.take());
                let cut = batch.last().is_some_and(|line| !line.ends_with(b"\n"));
                if cut && self.hold_back {
                    self.tail = batch.pop();
                }
                self.pending.extend(batch);
                Ok(true)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Ok(false)
            }
        }
    }

    /// Holds back a last line without a newline in a regular file too (a list being added
    /// to may have its last line half written). Before anything is read.
    pub fn hold_back_cut_last_line(&mut self) {
        self.hold_back = true;
    }

    /// Whether a last line without a newline, neither blank nor a comment, is held back.
    pub fn has_cut_last_line(&self) -> bool {
        self.tail
            .as_deref()
            .is_some_and(|line| listed(&String::from_utf8_lossy(line)).is_some())
    }

    /// Whether the list is a regular file (not stdin, nor a pipe), whose end is its end.
    pub fn is_regular_file(&self) -> bool {
        self.regular
    }

    /// How many lines were read, blank ones and comments included.
    pub fn lines_read(&self) -> u64 {
        self.lines.number
    }

    /// The SHA-256 (hex) of the lines read so far.
    pub fn digest(&self) -> String {
        self.lines.digest()
    }

    /// Whether the last line read had no newline at its end.
    pub fn last_line_cut(&self) -> bool {
        self.lines.last_cut
    }
}

/// Numbers lines as they are read (blank ones and comments included), keeps their digest
/// when asked, and parses them.
#[derive(Default)]
struct Lines {
    /// Lines read so far (the next line's number is one more).
    number: u64,
    digest: Option<Sha256>,
    /// Whether the last line read had no newline at its end.
    last_cut: bool,
}

impl Lines {
    /// Counts a line read (with its ending, if it has one).
    fn count(&mut self, raw: &[u8]) {
        self.number += 1;
        self.last_cut = !raw.ends_with(b"\n");
        // The line without its ending, then one separator: a copy of the list with CRLF
        // endings, or without a final newline, has the same digest.
        if let Some(digest) = &mut self.digest {
            let line = raw.strip_suffix(b"\n").unwrap_or(raw);
            digest.update(line.strip_suffix(b"\r").unwrap_or(line));
            digest.update(b"\n");
        }
    }

    fn digest(&self) -> String {
        self.digest
            .as_ref()
            .map(|d| crate::record::hex(&d.clone().finalize()))
            .unwrap_or_default()
    }

    /// Counts a line read, and parses it: `None` for a blank line or a comment.
    fn parse(&mut self, raw: &[u8]) -> Option<Line> {
        self.count(raw);
        let text = String::from_utf8_lossy(raw);
        let input = listed(&text)?;
        // Lossy decoding copies only a line that is not UTF-8.
        let reason = if matches!(text, Cow::Owned(_)) {
            "the line is not valid UTF-8".to_string()
        } else {
            match parse_url(input) {
                Ok(url) => {
                    let request = CliRequest::new(self.number, input.to_string(), url);
                    return Some(Line::Request(request));
                }
                Err(e) => e.to_string(),
            }
        };
        Some(Line::Invalid(Record::failed(
            self.number,
            input.to_string(),
            None,
            "invalid_url",
            reason,
        )))
    }
}

/// How many lines of the list at `path` are neither blank nor comments: the progress's
/// total, counted without parsing anything. `None` for stdin and anything else that is not a
/// regular file (a pipe, e.g. `<(command)`), which can be read only once.
pub fn count(path: &str) -> Result<Option<u64>, String> {
    if path == "-" || !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let mut reader =
        BufReader::with_capacity(1 << 16, File::open(path).map_err(|e| cannot_read(path, e))?);
    let mut line = Vec::new();
    let mut count = 0;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| cannot_read(path, e))?
            == 0
        {
            return Ok(Some(count));
        }
        // The same test as `next_line`'s, so that the total matches what is fetched.
        if listed(&String::from_utf8_lossy(&line)).is_some() {
            count += 1;
        }
    }
}

/// The entry of a line of the list, trimmed: `None` for a blank line or a `#` comment.
fn listed(line: &str) -> Option<&str> {
    let entry = line.trim();
    (!entry.is_empty() && !entry.starts_with('#')).then_some(entry)
}

fn cannot_read(path: &str, e: io::Error) -> String {
    format!("cannot read URL file {path}: {e}")
}
