//! The run loop without a runtime: `run` blocks the fetching thread, where the callbacks
//! run; the fetches run on the fetcher's own pool.

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

    /// Runs the fetcher until it has nothing left to do (or is stopped). It is busy in
    /// `run` throughout: the progress shows the counters without its queue.
    pub fn run(&self, fetcher: &mut Fetcher<CliRequest>, _monitor: &Monitor, _thread: usize) {
        fetcher.run();
    }
}
