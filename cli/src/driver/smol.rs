//! The run loop on smol: `async_io::block_on` on the fetching thread.

use async_io::Timer;
use futures_lite::future;

use super::lib::{ClientOptions, Config, Error, Fetcher, Policy, RedisOptions};
use crate::monitor::{Detail, Monitor};
use crate::record::CliRequest;

/// The driver's name, as the summary and the WARC files show it.
pub const NAME: &str = "smol";
/// The version `--version` shows, with the driver.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (smol driver)");

/// Nothing to hold: every future runs in `async_io::block_on` on this thread.
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
        async_io::block_on(Fetcher::with_redis(config, policy, client, redis))
    }

    /// Runs the fetcher until it has nothing left to do (or is stopped), keeping its detail
    /// for the progress as fetching thread `thread`.
    pub fn run(&self, fetcher: &mut Fetcher<CliRequest>, monitor: &Monitor, thread: usize) {
        async_io::block_on(async {
            loop {
                // `run` keeps its state in the fetcher: dropping it at an await point for a
                // tick and calling it again loses nothing.
                let finished = future::or(
                    async {
                        fetcher.run().await;
                        true
                    },
                    async {
                        Timer::after(monitor.interval()).await;
                        false
                    },
                )
                .await;
                if finished {
                    break;
                }
                monitor.set_detail(thread, Detail::of(fetcher));
            }
        });
        // Out of work (it may wait for more): its queue shows as it is now.
        monitor.set_detail(thread, Detail::of(fetcher));
    }
}
