//! Where the JSON lines go: a file or stdout, shared by the callbacks and the run loop.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::record::Record;

thread_local! {
    /// The line being written, kept for the next one.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The JSON lines' destination. Cheap to clone.
#[derive(Clone)]
pub struct Output(Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>, bool);

impl Output {
    /// The file at `path`, or stdout. With Redis every line is flushed as it is written (a
    /// finished request is removed from there right after its record is written, so the
    /// record must be out first: a crash loses neither), and the file is appended to, since
    /// a crawl in Redis goes on over several runs: a run again with the same `--output` keeps
    /// the records of the runs before.
    pub fn open(path: Option<&Path>, redis: bool) -> Result<Self, String> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => {
                let cannot =
                    |e: io::Error| format!("cannot create output file {}: {e}", path.display());
                let mut file = open_for_records(path, redis).map_err(cannot)?;
                // A run before that died mid-line: its part line stays apart from the next.
                if redis && ends_mid_line(path).unwrap_or(false) {
                    file.write_all(b"\n").map_err(cannot)?;
                }
                Box::new(file)
            }
            None => Box::new(io::stdout()),
        };
        // Records are a few hundred bytes: a larger buffer writes them in fewer calls.
        let writer = BufWriter::with_capacity(64 << 10, sink);
        Ok(Output(Arc::new(Mutex::new(writer)), redis))
    }

    /// Writes one record as a line; a failure to write ends the command (nothing sensible
    /// is left to do with a closed stdout, e.g. `| head`, or a full disk).
    pub fn write(&self, record: &Record) {
        if let Err(e) = self.try_write(record) {
            eprintln!("downpour: {e}");
            std::process::exit(1);
        }
    }

    /// Writes one record as a line, or says why it cannot.
    pub fn try_write(&self, record: &Record) -> Result<(), String> {
        // Serialized before taking the lock: the fetching threads hold it only to copy.
        LINE.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, record)
                .map_err(io::Error::from)
                .and_then(|()| {
                    line.push(b'\n');
                    let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    out.write_all(line)
                        .and_then(|()| if self.1 { out.flush() } else { Ok(()) })
                })
                .map_err(|e| format!("cannot write output: {e}"))
        })
    }

    /// Flushes, for the end of the run.
    pub fn flush(&self) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
            .map_err(|e| format!("cannot write output: {e}"))
    }

    /// Flushes what was written so far, during the run (a failure shows at the end).
    pub fn flush_quietly(&self) {
        let _ = self.0.lock().map(|mut o| o.flush());
    }
}

/// A file the run's records go to (the output, the WARC file): appended to when the crawl
/// lives over several runs (Redis), else created or truncated.
pub fn open_for_records(path: &Path, append: bool) -> io::Result<File> {
    File::options()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(path)
}

/// Whether the file is a regular one whose last byte is there and is not a newline (a
/// pipe, a FIFO or a terminal has no last byte to look at).
fn ends_mid_line(path: &Path) -> io::Result<bool> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let mut file = File::open(path)?;
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}
