//! The run loop on tokio: one current-thread runtime; Ctrl-C from `tokio::signal`.

use std::sync::Arc;

use ::tokio::runtime::Runtime;
use ::tokio::time::{interval, MissedTickBehavior};

use super::lib::{ClientOptions, Config, Error, Fetcher, Policy, RedisOptions};
use crate::monitor::{Detail, Monitor};
use crate::record::CliRequest;

/// The driver's name, as the summary and the WARC files show it.
pub const NAME: &str = "tokio";
/// The version `--version` shows, with the driver.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (tokio driver)");

/// The runtime the fetcher lives on (its Redis connection is a task of it).
pub struct Driver {
    runtime: Runtime,
}

impl Driver {
    pub fn new() -> Result<Driver, String> {
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
        Ok(Driver { runtime })
    }

    /// `Fetcher::with_redis`: connects now.
    pub fn with_redis(
        &self,
        config: Config,
        policy: Box<dyn Policy>,
        client: ClientOptions,
        redis: RedisOptions,
    ) -> Result<Fetcher<CliRequest>, Error> {
        self.runtime
            .block_on(Fetcher::with_redis(config, policy, client, redis))
    }

    /// Runs the fetcher to the end (or until stopped), ticking the progress and serving Ctrl-C.
    pub fn drive(
        &self,
        fetcher: &mut Fetcher<CliRequest>,
        monitor: &Arc<Monitor>,
    ) -> Result<(), String> {
        self.runtime.block_on(async {
            let handle = fetcher.handle();
            let mut ctrl_c = Box::pin(::tokio::signal::ctrl_c());
            let mut tick = interval(monitor.interval());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                // `run` keeps its state in the fetcher: leaving it at an await point and
                // calling it again loses nothing, so the progress and Ctrl-C are served in
                // between.
                ::tokio::select! {
                    _ = fetcher.run() => break,
                    _ = tick.tick() => monitor.tick(Some(Detail::of(fetcher))),
                    _ = &mut ctrl_c => {
                        ctrl_c = Box::pin(::tokio::signal::ctrl_c());
                        monitor.interrupt(&handle);
                    }
                }
            }
        });
        Ok(())
    }
}
