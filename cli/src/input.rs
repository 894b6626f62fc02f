//! The list of URLs: one per line, blank lines and `#` comments skipped. It is read as the
//! crawl goes (see [`Feed`](crate::feed::Feed)), so a list of any length fits in memory.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};

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
    reader: Box<dyn BufRead + Send>,
    path: String,
    /// Lines read so far, blank ones included (the next line's number is one more).
    number: u64,
    buffer: Vec<u8>,
    /// SHA-256 of the bytes read so far, when asked for ([`Input::with_digest`]).
    digest: Option<Sha256>,
}

impl Input {
    /// Opens the list; a missing or unreadable file is an error now, before anything starts.
    pub fn open(path: &str) -> Result<Input, String> {
        let reader: Box<dyn BufRead + Send> = if path == "-" {
            Box::new(BufReader::new(io::stdin()))
        } else {
            Box::new(BufReader::new(
                File::open(path).map_err(|e| cannot_read(path, e))?,
            ))
        };
        Ok(Input {
            reader,
            path: path.to_string(),
            number: 0,
            buffer: Vec::new(),
            digest: None,
        })
    }

    /// Keeps a SHA-256 of every byte read, so that a crawl's seeding can tell whether a
    /// list is the one it was being seeded from.
    pub fn with_digest(mut self) -> Input {
        self.digest = Some(Sha256::new());
        self
    }

    /// Whether the list is a regular file (not stdin, nor a pipe), whose end is its end.
    pub fn is_regular_file(&self) -> bool {
        self.path != "-" && std::fs::metadata(&self.path).is_ok_and(|m| m.is_file())
    }

    /// How many lines were read, blank ones and comments included.
    pub fn lines_read(&self) -> u64 {
        self.number
    }

    /// The SHA-256 (hex) of the lines read so far; empty without [`Input::with_digest`].
    pub fn digest(&self) -> String {
        self.digest
            .as_ref()
            .map(|d| crate::record::hex(&d.clone().finalize()))
            .unwrap_or_default()
    }

    /// Reads up to line `number` (included) without parsing: `false` if the list ends first.
    pub fn skip_to(&mut self, number: u64) -> Result<bool, String> {
        while self.number < number {
            if !self.read_raw()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next line into `buffer`, whatever it holds: `false` at the end of the list.
    fn read_raw(&mut self) -> Result<bool, String> {
        self.buffer.clear();
        let read = self
            .reader
            .read_until(b'\n', &mut self.buffer)
            .map_err(|e| cannot_read(&self.path, e))?;
        if read == 0 {
            return Ok(false);
        }
        self.number += 1;
        // The line without its ending, then one separator: a copy of the list with CRLF
        // endings, or without a final newline, has the same digest.
        if let Some(digest) = &mut self.digest {
            let line = self.buffer.strip_suffix(b"\n").unwrap_or(&self.buffer);
            digest.update(line.strip_suffix(b"\r").unwrap_or(line));
            digest.update(b"\n");
        }
        Ok(true)
    }

    /// The next line that is neither blank nor a comment; `None` at the end of the list. A
    /// line that is not a URL (or not UTF-8) is a [`Line::Invalid`], not an error: only a
    /// failure to read is.
    pub fn next_line(&mut self) -> Result<Option<Line>, String> {
        loop {
            if !self.read_raw()? {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&self.buffer);
            let Some(input) = listed(&text) else {
                continue;
            };
            // Lossy decoding copies only a line that is not UTF-8.
            let reason = if matches!(text, Cow::Owned(_)) {
                "the line is not valid UTF-8".to_string()
            } else {
                match parse_url(input) {
                    Ok(url) => {
                        let request = CliRequest::new(self.number, input.to_string(), url);
                        return Ok(Some(Line::Request(request)));
                    }
                    Err(e) => e.to_string(),
                }
            };
            let line = Line::Invalid(Record::failed(
                self.number,
                input.to_string(),
                None,
                "invalid_url",
                reason,
            ));
            return Ok(Some(line));
        }
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
