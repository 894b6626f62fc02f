//! The run loop on tokio: one current-thread runtime per fetching thread.

use ::tokio::runtime::Runtime;
use ::tokio::time::{interval, MissedTickBehavior};

use super::lib::{ClientOptions, Config, Error, Fetcher, Policy, RedisOptions};
use crate::monitor::{Detail, Monitor};
use crate::record::CliRequest;

/// The driver's name, as the summary and the WARC files show it.
pub const NAME: &str = "tokio";
/// The version `--version` shows, with the driver.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (tokio driver)");

/// How many times a fetching thread with nothing ready gives its core away before it sleeps.
///
/// When the fetcher runs out of ready work it has just written requests that woke their servers.
/// If one of them (or a proxy, or Redis) runs on this machine and waits for this core, yielding
/// lets it answer first, and the fetcher finds the answers ready instead of paying a sleep and a
/// wake-up for each batch: about 5% more requests a second over loopback with `--threads 2` on
/// 2 cores, with fewer context switches. On an idle core a yield returns at once.
const YIELDS_BEFORE_PARK: u32 = 3;

/// The runtime the fetcher lives on (its Redis connection is a task of it).
pub struct Driver {
    runtime: Runtime,
}

impl Driver {
    pub fn new() -> Result<Driver, String> {
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(|| {
                for _ in 0..YIELDS_BEFORE_PARK {
                    std::thread::yield_now();
                }
            })
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

    /// Runs the fetcher until it has nothing left to do (or is stopped), keeping its detail
    /// for the progress as fetching thread `thread`.
    pub fn run(&self, fetcher: &mut Fetcher<CliRequest>, monitor: &Monitor, thread: usize) {
        self.runtime.block_on(async {
            let mut tick = interval(monitor.interval());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                // `run` keeps its state in the fetcher: leaving it at an await point and
                // calling it again loses nothing, so the detail is read in between.
                ::tokio::select! {
                    _ = fetcher.run() => break,
                    _ = tick.tick() => monitor.set_detail(thread, Detail::of(fetcher)),
                }
            }
        });
        // Out of work (it may wait for more): its queue shows as it is now.
        monitor.set_detail(thread, Detail::of(fetcher));
    }
}
