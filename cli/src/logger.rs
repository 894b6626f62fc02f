//! The messages of the Redis store (through the `log` crate) on stderr: a lease waited for,
//! Redis unreachable and retried, entries that could not be read back.

use std::sync::{Arc, Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::monitor::Monitor;

struct Logger {
    monitor: Arc<Monitor>,
    level: LevelFilter,
    /// The last error shown, so that the end of the run does not say it twice.
    last_error: Mutex<Option<String>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("downpour")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        self.monitor.note(&message);
        if record.level() == Level::Error {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        }
    }

    fn flush(&self) {}
}

/// Shows the store's messages from now on: warnings and errors, and with `info` what it
/// does (which partition it runs, when the crawl is done).
pub fn install(monitor: Arc<Monitor>, info: bool) {
    let level = if info {
        LevelFilter::Info
    } else {
        LevelFilter::Warn
    };
    let logger = LOGGER.get_or_init(|| Logger {
        monitor,
        level,
        last_error: Mutex::new(None),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Whether this error was shown already.
pub fn said(message: &str) -> bool {
    LOGGER.get().is_some_and(|l| {
        l.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(message)
    })
}
