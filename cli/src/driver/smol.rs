//! The run loop on smol: `async_io::block_on` on the calling thread; Ctrl-C from the
//! `ctrlc` crate's thread, through the fetcher's handle.

use std::sync::Arc;

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

    /// Runs the fetcher to the end (or until stopped), ticking the progress and serving Ctrl-C.
    pub fn drive(
        &self,
        fetcher: &mut Fetcher<CliRequest>,
        monitor: &Arc<Monitor>,
    ) -> Result<(), String> {
        super::on_ctrl_c(fetcher.handle(), monitor.clone())?;
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
                monitor.tick(Some(Detail::of(fetcher)));
            }
        });
        Ok(())
    }
}
