//! Settings of the scheduler that do not depend on the policy.

use std::time::Duration;

use http::HeaderValue;

use crate::error::ConfigError;
use crate::partition::Partition;

/// Settings shared by every policy. Start from [`Config::default`] and change what you need.
///
/// ```
/// use std::time::Duration;
/// let config = downpour::Config {
///     concurrency: 32,
///     timeout: Duration::from_secs(10),
///     ..downpour::Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// At most this many hops in flight at once, over all hosts (the pool size). Default 64.
    pub concurrency: usize,
    /// Sent as `User-Agent` (by the driver) and matched against robots.txt groups.
    pub user_agent: String,
    /// Timeout of one hop, connect to last body byte. Default 30 s.
    pub timeout: Duration,
    /// Largest decoded body read; a longer one fails with
    /// [`FetchError::BodyTooLarge`](crate::FetchError::BodyTooLarge). Default 16 MiB.
    pub max_body_size: u64,
    /// Largest response head (status line and headers). Default 64 KiB.
    pub max_header_size: usize,
    /// Redirects followed before failing. Default 10.
    pub max_redirects: u32,
    /// Retries of connect errors, timeouts, resets, 5xx and 429. Default 2.
    pub max_retries: u32,
    /// First retry back-off; doubles each attempt, with seeded jitter. Default 1 s.
    pub retry_base: Duration,
    /// Largest back-off between attempts when the server did not ask. Default 60 s.
    pub retry_max: Duration,
    /// Longest `Retry-After` honoured. A server asking for longer makes the request fail
    /// with [`FetchError::RetryAfterTooLong`](crate::FetchError::RetryAfterTooLong), and its
    /// host pauses for this long. Default 5 min.
    pub max_retry_after: Duration,
    /// robots.txt handling (used when the policy obeys robots.txt).
    pub robots: RobotsConfig,
    /// Emit [`Persist`](crate::Persist) actions so a driver can keep the queue in durable
    /// storage. Default off.
    pub persist: bool,
    /// This scheduler's share of the hosts, when several schedulers share a crawl (one per
    /// thread, say). A redirect to a host of another partition is then handed to its owner
    /// ([`Action::HandOff`](crate::Action::HandOff)) rather than fetched here, so that each
    /// host is fetched by one scheduler only and its politeness holds exactly (a robots.txt
    /// that redirects to another partition's host is still fetched here). Give requests
    /// to the scheduler that owns their host ([`partition_of`](crate::partition_of)). With
    /// durable storage the store sets it ([`Scheduler::set_partition`](crate::Scheduler::set_partition))
    /// to the partition its worker runs. Default: `None`, every host is this scheduler's.
    pub partition: Option<Partition>,
    /// Seed of the jitter RNG: the same seed and inputs give the same decisions.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 64,
            user_agent: concat!("downpour/", env!("CARGO_PKG_VERSION")).to_string(),
            timeout: Duration::from_secs(30),
            max_body_size: 16 << 20,
            max_header_size: 64 << 10,
            max_redirects: 10,
            max_retries: 2,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            robots: RobotsConfig::default(),
            persist: false,
            partition: None,
            seed: 0x5eed_d0e5_0000_0001,
        }
    }
}

impl Config {
    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::ZeroConcurrency);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout { name: "timeout" });
        }
        if self.max_body_size == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "max_body_size",
            });
        }
        if self.max_header_size == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "max_header_size",
            });
        }
        if self.robots.max_size == 0 {
            return Err(ConfigError::ZeroLimit {
                name: "robots.max_size",
            });
        }
        if self.robots.cache_size == 0 {
            return Err(ConfigError::ZeroRobotsCache);
        }
        if let Some(partition) = self.partition {
            partition.validate()?;
        }
        if self.user_agent.is_empty() || HeaderValue::from_str(&self.user_agent).is_err() {
            return Err(ConfigError::BadUserAgent(self.user_agent.clone()));
        }
        Ok(())
    }

    /// The product token matched against robots.txt `User-agent` lines: the user agent up
    /// to its first `/` or space, as RFC 9309 asks.
    pub fn robots_agent(&self) -> &str {
        let end = self
            .user_agent
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(self.user_agent.len());
        &self.user_agent[..end]
    }
}

/// How robots.txt is fetched and cached (RFC 9309).
#[derive(Debug, Clone)]
pub struct RobotsConfig {
    /// How long fetched rules are trusted. Default 24 h.
    pub ttl: Duration,
    /// Most origins whose rules are kept; the least recently used go first. Default 10,000.
    pub cache_size: usize,
    /// Bytes of robots.txt read; the rest is ignored. Default 500 KiB.
    pub max_size: u64,
    /// Redirects followed for robots.txt; past that it counts as absent. Default 5.
    pub max_redirects: u32,
    /// After a 5xx, 429 or unreachable robots.txt, wait this long before fetching it again
    /// (doubling each time). Requests to the origin wait meanwhile. Default 30 s.
    pub retry_delay: Duration,
    /// Fetch attempts of an unavailable robots.txt before giving up: waiting requests then
    /// fail with [`FetchError::RobotsUnavailable`](crate::FetchError::RobotsUnavailable).
    /// Default 3.
    pub max_attempts: u32,
    /// After giving up, new requests to the origin fail at once for this long, then
    /// robots.txt is tried again. Default 10 min.
    pub unavailable_for: Duration,
    /// Largest `Crawl-delay` honoured. Default 60 s.
    pub max_crawl_delay: Duration,
}

impl Default for RobotsConfig {
    fn default() -> Self {
        RobotsConfig {
            ttl: Duration::from_secs(24 * 3600),
            cache_size: 10_000,
            max_size: 500 << 10,
            max_redirects: 5,
            retry_delay: Duration::from_secs(30),
            max_attempts: 3,
            unavailable_for: Duration::from_secs(600),
            max_crawl_delay: Duration::from_secs(60),
        }
    }
}
