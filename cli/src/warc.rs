//! WARC/1.1 output: a `warcinfo` record, then one `response` record per response received.
//!
//! The records are written here rather than with the `warc` crate (0.4), whose writer does
//! not fit: it ignores short writes (`write` instead of `write_all`), compresses a whole file
//! as one gzip stream where `.warc.gz` readers expect one gzip member per record, opens files
//! without truncating them, and orders header fields at random. The tests read the files
//! back with that crate's reader.
//!
//! What a response record holds: the status line and the headers as the driver reports
//! them, then the body as it hands it over, that is decoded (gzip, deflate, brotli undone;
//! the drivers then drop `Content-Encoding` and the wire's `Content-Length`). So that the
//! message stays consistent with that body, any `Content-Encoding`, `Transfer-Encoding` or
//! `Content-Length` left is renamed `X-Archive-Orig-…`, and a `Content-Length` of the stored
//! body is added. No `request` records: the drivers do not report the request head they sent.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha1::{Digest, Sha1};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::driver::lib::http::header;
use crate::driver::lib::Response;
use crate::output::open_for_records;

/// Whether a header describes the bytes on the wire rather than the decoded body stored.
fn describes_the_wire(name: &header::HeaderName) -> bool {
    name == header::CONTENT_ENCODING
        || name == header::TRANSFER_ENCODING
        || name == header::CONTENT_LENGTH
}

/// A WARC file being written. Records are written whole, so a run that stops early leaves a
/// valid file.
pub struct Warc {
    path: PathBuf,
    gzip: bool,
    warcinfo_id: String,
    file: Mutex<BufWriter<File>>,
    /// Every record flushed as it is written (with Redis).
    each: bool,
}

impl std::fmt::Debug for Warc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warc").field("path", &self.path).finish()
    }
}

/// What the `warcinfo` record says about the crawl.
pub struct WarcInfo<'a> {
    pub software: &'a str,
    pub user_agent: &'a str,
    pub robots: &'a str,
}

impl Warc {
    /// Creates (or truncates) the file and writes its `warcinfo` record. A name ending in
    /// `.gz` gets one gzip member per record.
    ///
    /// With Redis the file is appended to instead, as a crawl in Redis goes on over several
    /// runs (each run adds its own `warcinfo` record), and every record is flushed as it is
    /// written: a URL is removed from Redis right after its records are written, so they
    /// must be out first (a crash loses neither).
    pub fn open(path: &Path, info: &WarcInfo, redis: bool) -> Result<Self, String> {
        let file = open_for_records(path, redis)
            .map_err(|e| format!("cannot create WARC file {}: {e}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let warc = Warc {
            path: path.to_path_buf(),
            gzip: filename.ends_with(".gz"),
            warcinfo_id: record_id(),
            file: Mutex::new(BufWriter::new(file)),
            each: redis,
        };
        let fields = format!(
            "software: {}\r\nformat: WARC File Format 1.1\r\n\
             conformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\n\
             http-header-user-agent: {}\r\nrobots: {}\r\n\
             description: responses as received, bodies decoded (Content-Encoding undone)\r\n",
            info.software, info.user_agent, info.robots
        );
        let head = [
            ("WARC-Type", "warcinfo".to_string()),
            ("WARC-Record-ID", warc.warcinfo_id.clone()),
            ("WARC-Date", now()),
            ("WARC-Filename", filename),
            ("Content-Type", "application/warc-fields".to_string()),
        ];
        warc.append(&head, fields.as_bytes())?;
        Ok(warc)
    }

    /// Appends a `response` record for this response.
    pub fn write_response(&self, response: &Response) -> Result<(), String> {
        let block = http_message(response);
        let head = [
            ("WARC-Type", "response".to_string()),
            ("WARC-Record-ID", record_id()),
            ("WARC-Date", now()),
            ("WARC-Target-URI", response.url.to_string()),
            ("WARC-Warcinfo-ID", self.warcinfo_id.clone()),
            ("WARC-Block-Digest", sha1_digest(&block)),
            ("WARC-Payload-Digest", sha1_digest(&response.body)),
            (
                "Content-Type",
                "application/http; msgtype=response".to_string(),
            ),
        ];
        self.append(&head, &block)
    }

    /// Flushes the file, for the end of the run.
    pub fn flush(&self) -> Result<(), String> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
            .map_err(|e| self.error(e))
    }

    fn append(&self, head: &[(&str, String)], block: &[u8]) -> Result<(), String> {
        let mut record = Vec::with_capacity(block.len() + 512);
        record.extend_from_slice(b"WARC/1.1\r\n");
        for (name, value) in head {
            record.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        record.extend_from_slice(format!("Content-Length: {}\r\n\r\n", block.len()).as_bytes());
        record.extend_from_slice(block);
        record.extend_from_slice(b"\r\n\r\n");
        if self.gzip {
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(&record).map_err(|e| self.error(e))?;
            record = gz.finish().map_err(|e| self.error(e))?;
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if !self.each {
            return file.write_all(&record).map_err(|e| self.error(e));
        }
        // Past the buffer, which stays empty: a record that cannot be written whole (a full
        // disk) is cut off again, so that the next run's records do not follow a broken one.
        let file = file.get_mut();
        let start = file.metadata().map(|m| m.len());
        file.write_all(&record).map_err(|e| {
            if let Ok(start) = start {
                let _ = file.set_len(start);
            }
            self.error(e)
        })
    }

    fn error(&self, e: std::io::Error) -> String {
        format!("cannot write WARC file {}: {e}", self.path.display())
    }
}

/// The HTTP response as stored: status line, headers, blank line, decoded body.
fn http_message(response: &Response) -> Vec<u8> {
    let mut message = format!(
        "{:?} {} {}\r\n",
        response.version,
        response.status.as_str(),
        response.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &response.headers {
        if describes_the_wire(name) {
            message.extend_from_slice(b"X-Archive-Orig-");
        }
        message.extend_from_slice(name.as_str().as_bytes());
        message.extend_from_slice(b": ");
        message.extend_from_slice(value.as_bytes());
        message.extend_from_slice(b"\r\n");
    }
    message
        .extend_from_slice(format!("content-length: {}\r\n\r\n", response.body.len()).as_bytes());
    message.extend_from_slice(&response.body);
    message
}

fn record_id() -> String {
    format!("<{}>", uuid::Uuid::new_v4().urn())
}

/// The time now, to the second, as WARC-Date wants it (`2025-01-31T12:00:00Z`).
fn now() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `sha1:` and the base32 of the SHA-1, the digest WARC tools expect.
fn sha1_digest(bytes: &[u8]) -> String {
    format!("sha1:{}", base32(&Sha1::digest(bytes)))
}

/// RFC 4648 base32 (a SHA-1's 20 bytes make exactly 32 characters, no padding).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut text = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u64, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u64::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        text.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    while text.len() % 8 != 0 {
        text.push('=');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY======");
        assert_eq!(base32(b"foob"), "MZXW6YQ=");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn sha1_digest_of_empty_is_the_known_one() {
        // The WARC world's best-known digest: that of an empty payload.
        assert_eq!(sha1_digest(b""), "sha1:3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ");
    }
}
