//! The run loop without a runtime: `run` blocks this thread (where the callbacks run), a
//! second thread ticks the progress, and Ctrl-C comes from the `ctrlc` crate's thread,
//! through the fetcher's handle.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;

use super::lib::{ClientOptions, Config, Error, Fetcher, Policy, RedisOptions};
use crate::monitor::Monitor;
use crate::record::CliRequest;

/// The driver's name, as the summary and the WARC files show it.
pub const NAME: &str = "blocking";
/// The version `--version` shows, with the driver.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (blocking driver)");

/// Nothing to hold: the fetcher runs on this thread.
pub struct Driver;

impl Driver {
    pub fn new() -> Result<Driver, String> {
        Ok(Driver)
    }

    /// `Fetcher::with_redis`: connects now.
    pub fn with_redis(
        &self,
        config: Config,
        policy: Box<dyn Policy>,
        client: ClientOptions,
        redis: RedisOptions,
    ) -> Result<Fetcher<CliRequest>, Error> {
        Fetcher::with_redis(config, policy, client, redis)
    }

    /// Runs the fetcher to the end (or until stopped), ticking the progress and serving Ctrl-C.
    pub fn drive(
        &self,
        fetcher: &mut Fetcher<CliRequest>,
        monitor: &Arc<Monitor>,
    ) -> Result<(), String> {
        super::on_ctrl_c(fetcher.handle(), monitor.clone())?;
        let (finished, ticks) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                // The fetcher is busy in `run`: the ticks show the counters without its queue.
                while let Err(RecvTimeoutError::Timeout) = ticks.recv_timeout(monitor.interval()) {
                    monitor.tick(None);
                }
            });
            fetcher.run();
            drop(finished);
        });
        Ok(())
    }
}
