//! Where the JSON lines go: a file or stdout, shared by the callbacks and the run loop.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
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
            Some(path) => Box::new(
                File::options()
                    .write(true)
                    .create(true)
                    .append(redis)
                    .truncate(!redis)
                    .open(path)
                    .map_err(|e| format!("cannot create output file {}: {e}", path.display()))?,
            ),
            None => Box::new(io::stdout()),
        };
        // Records are a few hundred bytes: a larger buffer writes them in fewer calls.
        let writer = BufWriter::with_capacity(64 << 10, sink);
        Ok(Output(Arc::new(Mutex::new(writer)), redis))
    }

    /// Writes one record as a line.
    pub fn write(&self, record: &Record) {
        // Serialized before taking the lock: the fetching threads hold it only to copy.
        LINE.with_borrow_mut(|line| {
            line.clear();
            let written = serde_json::to_writer(&mut *line, record)
                .map_err(io::Error::from)
                .and_then(|()| {
                    line.push(b'\n');
                    let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    out.write_all(line)
                        .and_then(|()| if self.1 { out.flush() } else { Ok(()) })
                });
            if let Err(e) = written {
                // Nothing sensible is left to do with a closed stdout (e.g. `| head`).
                eprintln!("downpour: cannot write output: {e}");
                std::process::exit(1);
            }
        });
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
