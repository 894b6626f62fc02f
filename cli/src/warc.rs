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
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
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
    /// Appending to a file whose last record a killed run left cut short: the bytes cut off
    /// from it, and where (so that this run's records follow whole ones).
    pub cut_off: Option<(u64, u64)>,
}

/// The gzip header written before every record here (flate2's: no name, no time, level 6,
/// unknown system): the last records of a `.warc.gz` are found from its end by it.
const GZIP_MEMBER_START: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
/// The start of an uncompressed record written here.
const RECORD_START: &[u8] = b"WARC/1.1\r\nWARC-Type: ";
/// How much of a file's end is read to find its last whole record, at most.
const TAIL_WINDOWS: [u64; 3] = [4 << 20, 64 << 20, 256 << 20];

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
    ///
    /// A record that a killed run left cut short at the file's end is cut off first
    /// ([`Warc::cut_off`]): the records written whole before it stay, and this run's follow
    /// them.
    pub fn open(path: &Path, info: &WarcInfo, redis: bool) -> Result<Self, String> {
        let file = open_for_records(path, redis)
            .map_err(|e| format!("cannot create WARC file {}: {e}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let gzip = filename.ends_with(".gz");
        let mut cut_off = None;
        if redis {
            let cannot = |e: io::Error| format!("cannot read WARC file {}: {e}", path.display());
            let len = file.metadata().map_err(cannot)?.len();
            let end = File::open(path)
                .and_then(|mut read| whole_records_end(&mut read, len, gzip))
                .map_err(cannot)?;
            if let Some(end) = end.filter(|&end| end < len) {
                file.set_len(end).map_err(|e| {
                    format!(
                        "cannot cut a broken record off WARC file {}: {e}",
                        path.display()
                    )
                })?;
                cut_off = Some((len - end, end));
            }
        }
        let warc = Warc {
            path: path.to_path_buf(),
            gzip,
            warcinfo_id: record_id(),
            file: Mutex::new(BufWriter::new(file)),
            each: redis,
            cut_off,
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

/// Where the whole records of a WARC file written here end, when what follows them is the
/// start of a record cut short (a run killed while writing it); `None` when the file ends
/// with a whole record, or its end is not recognised (then it is left as it is).
///
/// The last record is looked for from the end: a candidate start (a gzip member's header,
/// or `WARC/1.1` and `WARC-Type`) counts only if a whole record follows it (for gzip, a
/// member that decodes to one), and whole records are followed from there: to the file's
/// end (nothing to cut), or to the start of a record cut short. Anything else means the
/// candidate was within a block that holds such bytes, and an earlier one is tried.
fn whole_records_end(file: &mut File, len: u64, gzip: bool) -> io::Result<Option<u64>> {
    let marker: &[u8] = if gzip {
        &GZIP_MEMBER_START
    } else {
        RECORD_START
    };
    // Each window adds what lies before the last one, and looks only at the candidates
    // that start there: those of the last window end within it, and were turned down.
    let mut tail = Vec::new();
    let mut scanned = len;
    for window in TAIL_WINDOWS {
        let base = len.saturating_sub(window);
        file.seek(SeekFrom::Start(base))?;
        let mut before = Vec::new();
        file.take(scanned - base).read_to_end(&mut before)?;
        tail.splice(0..0, before);
        let mut at = (scanned - base) as usize + marker.len() - 1;
        scanned = base;
        while let Some(start) = find_last(&tail[..at.min(tail.len())], marker) {
            at = start;
            let mut end = start;
            while let Some(size) = whole_record(&tail[end..], gzip) {
                end += size;
            }
            if end == start {
                continue;
            }
            if end == tail.len() {
                return Ok(None);
            }
            // Whole records, then what starts as a record would: a record cut short.
            let rest = &tail[end..];
            let started = rest.len().min(marker.len());
            if rest[..started] == marker[..started] {
                return Ok(Some(base + end as u64));
            }
            // Else that candidate was within a record's block: an earlier one tells.
        }
        if base == 0 {
            break;
        }
    }
    Ok(None)
}

/// The last position of `needle` in `bytes`.
fn find_last(bytes: &[u8], needle: &[u8]) -> Option<usize> {
    bytes.windows(needle.len()).rposition(|w| w == needle)
}

/// The length of the whole record (a gzip member holding one, for `gzip`) that `bytes`
/// begin with.
fn whole_record(bytes: &[u8], gzip: bool) -> Option<usize> {
    if !gzip {
        return record_length(bytes);
    }
    if !bytes.starts_with(&GZIP_MEMBER_START) {
        return None;
    }
    let mut member = flate2::bufread::GzDecoder::new(bytes);
    let mut record = Vec::new();
    member.read_to_end(&mut record).ok()?;
    let rest = member.into_inner().len();
    (record_length(&record) == Some(record.len())).then_some(bytes.len() - rest)
}

/// The length of the uncompressed WARC record that `bytes` begin with, if it is whole: its
/// head, the `Content-Length` bytes of its block, then CRLF CRLF.
fn record_length(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(b"WARC/1.1\r\n") {
        return None;
    }
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let length = std::str::from_utf8(&bytes[..head])
        .ok()?
        .split("\r\n")
        .find_map(|line| line.strip_prefix("Content-Length: "))?
        .trim()
        .parse::<usize>()
        .ok()?;
    let end = (head + 4).checked_add(length)?.checked_add(4)?;
    (bytes.get(end - 4..end)? == b"\r\n\r\n").then_some(end)
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

    const INFO: WarcInfo = WarcInfo {
        software: "downpour test",
        user_agent: "downpour",
        robots: "obey",
    };

    /// Writes a run's records to `path` (appended to, as with Redis): its `warcinfo`, then
    /// blocks of these sizes, the last one ending with bytes that look like a whole record.
    /// Returns the file's length before its last record.
    fn run(path: &Path, sizes: &[usize]) -> u64 {
        let warc = Warc::open(path, &INFO, true).unwrap();
        assert_eq!(warc.cut_off, None);
        let mut before = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let mut block: Vec<u8> = (0..size).map(|n| (n * 7 + i) as u8).collect();
            block.extend_from_slice(
                b"WARC/1.1\r\nWARC-Type: response\r\nContent-Length: 3\r\n\r\nabc\r\n\r\n",
            );
            block.extend_from_slice(&GZIP_MEMBER_START);
            before = std::fs::metadata(path).unwrap().len();
            let head = [
                ("WARC-Type", "resource".to_string()),
                ("WARC-Record-ID", record_id()),
                ("WARC-Date", now()),
            ];
            warc.append(&head, &block).unwrap();
        }
        before
    }

    fn records(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        let reader = std::io::BufReader::new(file);
        let records: Result<Vec<_>, _> = if path.to_string_lossy().ends_with(".gz") {
            warc::WarcReader::new(std::io::BufReader::new(
                flate2::bufread::MultiGzDecoder::new(reader),
            ))
            .iter_records()
            .collect()
        } else {
            warc::WarcReader::new(reader).iter_records().collect()
        };
        records
            .unwrap_or_else(|e| panic!("{} is not valid: {e}", path.display()))
            .len()
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_cut_off_before_appending() {
        let dir = std::env::temp_dir().join(format!("downpour-warc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["crawl.warc", "crawl.warc.gz"] {
            let path = dir.join(name);
            for cut in [1, 4, 9, 10, 11, 60, usize::MAX] {
                let _ = std::fs::remove_file(&path);
                let last = run(&path, &[100, 70_000, 5_000]);
                let whole = std::fs::metadata(&path).unwrap().len();
                // A run killed while writing its last record: `cut` bytes of it missing (all
                // but its first byte for MAX).
                let left = (whole - last).saturating_sub(cut as u64).max(1);
                let file = File::options().write(true).open(&path).unwrap();
                file.set_len(last + left).unwrap();
                drop(file);
                let again = Warc::open(&path, &INFO, true).unwrap();
                assert_eq!(again.cut_off, Some((left, last)), "{name}, cut {cut}");
                drop(again);
                // Two warcinfo records and the first run's two whole records.
                assert_eq!(records(&path), 4, "{name}, cut {cut}");
            }
            // A last record longer than the first window read from the end (4 MiB), the
            // bytes it holds that look like a record the only ones within that window.
            let _ = std::fs::remove_file(&path);
            let last = run(&path, &[100, 5 << 20]);
            let whole = std::fs::metadata(&path).unwrap().len();
            let file = File::options().write(true).open(&path).unwrap();
            file.set_len(whole - 10).unwrap();
            drop(file);
            let again = Warc::open(&path, &INFO, true).unwrap();
            assert_eq!(again.cut_off, Some((whole - 10 - last, last)), "{name}");
            drop(again);
            assert_eq!(records(&path), 3, "{name}");
            // A whole file is left as it is, even with record-like bytes in its last block.
            let _ = std::fs::remove_file(&path);
            run(&path, &[10, 20]);
            run(&path, &[30]);
            assert_eq!(records(&path), 5, "{name}");
            // So is an end that does not start as a record does (not written here).
            let mut file = File::options().append(true).open(&path).unwrap();
            file.write_all(b"not a record").unwrap();
            drop(file);
            let len = std::fs::metadata(&path).unwrap().len();
            let again = Warc::open(&path, &INFO, true).unwrap();
            assert_eq!(again.cut_off, None, "{name}");
            assert!(std::fs::metadata(&path).unwrap().len() > len);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha1_digest_of_empty_is_the_known_one() {
        // The WARC world's best-known digest: that of an empty payload.
        assert_eq!(sha1_digest(b""), "sha1:3I42H3S6NNFQ2MSVX7XZKYAYSCX5QBYJ");
    }
}
