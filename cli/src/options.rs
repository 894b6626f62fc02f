//! The options of `downpour fetch`, and the scheduler and client settings they make.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use crate::driver::lib::http::HeaderName;
use crate::driver::lib::{ClientOptions, Config, Fifo, Policy, Polite, Proxy, RedisOptions, Url};
use crate::units;

#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyName {
    /// Per-host delay and in-flight limit, robots.txt obeyed
    Polite,
    /// First in, first out: no per-host pacing, no robots.txt
    Fifo,
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// File of URLs, one per line (`-` for stdin); blank lines and `#` comments are skipped
    pub urls: String,
    /// Write the JSON lines here instead of stdout (with --redis, appended to: a crawl goes
    /// on over several runs)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Scheduling policy
    #[arg(long, value_enum, default_value = "polite")]
    pub policy: PolicyName,
    /// Time between the end of a response from a host and the next fetch to it (polite) [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub delay: Option<Duration>,
    /// Most fetches in flight to one host (polite) [default: 1]
    #[arg(long, value_name = "N")]
    pub per_host: Option<u32>,
    /// Most fetches in flight over all hosts [default: 64]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// URLs of the list read ahead of the fetches: at most this many are queued or in flight
    /// at once, and each one that finishes lets the next line in, so memory stays bounded
    /// for a list of any length. A list sorted by host needs enough to span many hosts, or
    /// the polite policy has few hosts to take turns between (without Redis)
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub backlog: u64,
    /// Threads that fetch, each with its own share of the hosts (so each host is still
    /// fetched by one of them, with its delay) and of --concurrency; with Redis, each is a
    /// worker with partitions of its own. More than 1 helps only when one core is the limit:
    /// many fast hosts, e.g. on a local network
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Do not fetch or obey robots.txt (polite; fifo never does)
    #[arg(long)]
    pub allow_all: bool,
    /// Attempts at a robots.txt that answers 5xx or 429 or cannot be reached, before its
    /// host's URLs fail as robots_unavailable; 1 fails them at the first failure [default: 3]
    #[arg(long, value_name = "N", help_heading = "robots.txt")]
    pub robots_attempts: Option<u32>,
    /// Wait before the second attempt at such a robots.txt, doubled for each next one; the
    /// host's URLs wait meanwhile [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "robots.txt")]
    pub robots_retry_delay: Option<Duration>,
    /// After the last attempt failed, new URLs of the host fail at once for this long, then
    /// robots.txt is tried again [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "robots.txt")]
    pub robots_unavailable_for: Option<Duration>,
    /// Largest Crawl-delay of a robots.txt honoured [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "robots.txt")]
    pub max_crawl_delay: Option<Duration>,
    /// User-Agent sent and matched against robots.txt [default: downpour/VERSION]
    #[arg(long, value_name = "TEXT")]
    pub user_agent: Option<String>,
    /// Timeout of one hop, connect to last body byte [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub timeout: Option<Duration>,
    /// Timeout of a TCP connect, to the host or the proxy [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Largest decoded body read, e.g. 10MiB; longer ones fail [default: 16MiB]
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub max_body_size: Option<u64>,
    /// Largest response head (status line and headers) [default: 64KiB]
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub max_header_size: Option<u64>,
    /// Redirects followed before failing [default: 10]
    #[arg(long, value_name = "N")]
    pub max_redirects: Option<u32>,
    /// Retries of connect errors, timeouts, resets, 5xx and 429 [default: 2]
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// First wait before a retry, doubled for each next one (with jitter) [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub retry_delay: Option<Duration>,
    /// Longest Retry-After obeyed; a longer one fails the URL and pauses its host [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub max_retry_after: Option<Duration>,
    /// Send every request through this proxy (http:// or https:// URL, credentials allowed);
    /// without it, http_proxy, https_proxy, all_proxy and no_proxy are honoured
    #[arg(long, value_name = "URL")]
    pub proxy: Option<Url>,
    /// Ignore http_proxy, https_proxy, all_proxy and no_proxy from the environment
    #[arg(long)]
    pub no_proxy_env: bool,
    /// Copy this response header into the records (repeatable; content-type,
    /// content-length, last-modified, etag and location are always copied)
    #[arg(long = "header", value_name = "NAME")]
    pub headers: Vec<HeaderName>,
    /// Save every successful body as DIR/<sha256> (written to a file of its own, then
    /// renamed: a file under a digest is whole, even after a crash)
    #[arg(long, value_name = "DIR")]
    pub save_bodies: Option<PathBuf>,
    /// Archive every final response (any status) in this WARC/1.1 file, one gzip member
    /// per record if the name ends in .gz. Stored: the status line, the headers and the
    /// decoded body, with a Content-Length of that body (no Content-Encoding). With --redis,
    /// appended to
    #[arg(long, value_name = "FILE")]
    pub warc: Option<PathBuf>,
    /// No progress and no summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    /// Keep the crawl in Redis (redis://[user:password@]host:port/db): nothing is lost on a
    /// crash or Ctrl-C, and several workers (processes, machines) share one crawl. The URL
    /// file seeds the crawl once; later runs resume it, and add the lines written at the
    /// file's end since
    #[arg(long, value_name = "URL", help_heading = "Redis")]
    pub redis: Option<String>,
    /// Name of the crawl: the prefix of its keys, so that several crawls share one Redis
    /// [default: downpour]
    #[arg(long, value_name = "NAME", help_heading = "Redis")]
    pub prefix: Option<String>,
    /// Partitions the hosts are split into: the most workers that fetch at once; fixed when
    /// the crawl starts [default: 1]
    #[arg(long, value_name = "N", help_heading = "Redis")]
    pub partitions: Option<u32>,
    /// Run only partition K (0 to N-1), waiting for it while another worker holds it
    /// [default: any free one]
    #[arg(long, value_name = "K", help_heading = "Redis")]
    pub partition: Option<u32>,
    /// How long a worker's lease on its partition (or on seeding the crawl) outlives it: a
    /// killed worker's partition, or seeding, waits this long for another worker [default:
    /// 10s]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Redis")]
    pub lease_ttl: Option<Duration>,
    /// How long Redis may stay unreachable (or out of memory) during a run before it ends
    /// with an error (everything unfinished stays in Redis) [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, help_heading = "Redis")]
    pub redis_give_up: Option<Duration>,
}

const DEFAULT_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "last-modified",
    "etag",
    "location",
];

/// The policy chosen, made once per thread (each thread schedules its own hosts).
pub enum PolicyChoice {
    Fifo,
    Polite {
        allow_all: bool,
        delay: Option<Duration>,
        per_host: Option<u32>,
    },
}

impl PolicyChoice {
    pub fn make(&self) -> Box<dyn Policy> {
        match *self {
            PolicyChoice::Fifo => Box::new(Fifo::new()),
            PolicyChoice::Polite {
                allow_all,
                delay,
                per_host,
            } => {
                let mut policy = Polite::new().allow_all(allow_all);
                if let Some(delay) = delay {
                    policy = policy.delay(delay);
                }
                if let Some(n) = per_host {
                    policy = policy.per_host(n);
                }
                Box::new(policy)
            }
        }
    }
}

/// What the options make, checked.
pub struct Settings {
    pub config: Config,
    pub policy: PolicyChoice,
    pub client: ClientOptions,
    /// Response headers copied into the records.
    pub headers: Vec<HeaderName>,
    /// Whether robots.txt is fetched and obeyed.
    pub obeys_robots: bool,
    /// Where the crawl is kept, with `--redis`.
    pub redis: Option<RedisOptions>,
}

impl FetchArgs {
    /// Checks the options and makes the settings, or says what is wrong in one line.
    pub fn settings(&self) -> Result<Settings, String> {
        let polite = matches!(self.policy, PolicyName::Polite);
        if !polite && (self.delay.is_some() || self.per_host.is_some() || self.allow_all) {
            return Err("--delay, --per-host and --allow-all only apply to --policy polite".into());
        }
        let obeys_robots = polite && !self.allow_all;
        let robots_options = self.robots_attempts.is_some()
            || self.robots_retry_delay.is_some()
            || self.robots_unavailable_for.is_some()
            || self.max_crawl_delay.is_some();
        if robots_options && !obeys_robots {
            return Err(
                "the robots.txt options only apply when robots.txt is obeyed (--policy polite without --allow-all)"
                    .into(),
            );
        }
        if self.per_host == Some(0) {
            return Err("invalid options: --per-host must be at least 1".into());
        }
        if self.robots_attempts == Some(0) {
            return Err("invalid options: --robots-attempts must be at least 1".into());
        }
        if self.connect_timeout == Some(Duration::ZERO) {
            return Err("invalid options: --connect-timeout must be more than 0".into());
        }
        let redis = self.redis_options()?;

        let defaults = Config::default();
        let mut robots = defaults.robots.clone();
        robots.max_attempts = self.robots_attempts.unwrap_or(robots.max_attempts);
        robots.retry_delay = self.robots_retry_delay.unwrap_or(robots.retry_delay);
        robots.unavailable_for = self
            .robots_unavailable_for
            .unwrap_or(robots.unavailable_for);
        robots.max_crawl_delay = self.max_crawl_delay.unwrap_or(robots.max_crawl_delay);
        let max_header_size = match self.max_header_size {
            Some(size) => usize::try_from(size)
                .map_err(|_| format!("invalid options: --max-header-size {size} is too large"))?,
            None => defaults.max_header_size,
        };
        let config = Config {
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
            user_agent: self
                .user_agent
                .clone()
                .unwrap_or(defaults.user_agent.clone()),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            max_body_size: self.max_body_size.unwrap_or(defaults.max_body_size),
            max_header_size,
            max_redirects: self.max_redirects.unwrap_or(defaults.max_redirects),
            max_retries: self.retries.unwrap_or(defaults.max_retries),
            retry_base: self.retry_delay.unwrap_or(defaults.retry_base),
            max_retry_after: self.max_retry_after.unwrap_or(defaults.max_retry_after),
            robots,
            ..defaults
        };
        config
            .validate()
            .map_err(|e| format!("invalid options: {e}"))?;

        let policy = if polite {
            PolicyChoice::Polite {
                allow_all: self.allow_all,
                delay: self.delay,
                per_host: self.per_host,
            }
        } else {
            PolicyChoice::Fifo
        };
        if let Some(redis) = &redis {
            if self.threads > 1 && redis.partition.is_some() {
                return Err(
                    "invalid options: --partition runs one partition, on one thread: leave out --threads"
                        .into(),
                );
            }
            if self.threads > redis.partitions {
                return Err(format!(
                    "invalid options: --threads {} is more than --partitions {}: a partition is fetched by one worker at a time",
                    self.threads, redis.partitions
                ));
            }
        }
        if self.threads as usize > config.concurrency {
            return Err(format!(
                "invalid options: --threads {} is more than --concurrency {}: each thread needs at least one fetch",
                self.threads, config.concurrency
            ));
        }

        let proxy = match (&self.proxy, self.no_proxy_env) {
            (Some(url), _) => Proxy::Rules {
                http: Some(url.clone()),
                https: Some(url.clone()),
                no: String::new(),
            },
            (None, true) => Proxy::None,
            (None, false) => Proxy::FromEnv,
        };
        let defaults = ClientOptions::default();
        let client = ClientOptions {
            proxy,
            connect_timeout: self.connect_timeout.unwrap_or(defaults.connect_timeout),
            ..defaults
        };

        let mut headers: Vec<HeaderName> = DEFAULT_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for h in &self.headers {
            if !headers.contains(h) {
                headers.push(h.clone());
            }
        }
        Ok(Settings {
            config,
            policy,
            client,
            headers,
            obeys_robots,
            redis,
        })
    }

    /// The Redis options, with `--redis`; the other Redis options need it.
    fn redis_options(&self) -> Result<Option<RedisOptions>, String> {
        let Some(url) = &self.redis else {
            let given = [
                ("--prefix", self.prefix.is_some()),
                ("--partitions", self.partitions.is_some()),
                ("--partition", self.partition.is_some()),
                ("--lease-ttl", self.lease_ttl.is_some()),
                ("--redis-give-up", self.redis_give_up.is_some()),
            ];
            return match given.iter().find(|(_, given)| *given) {
                Some((name, _)) => Err(format!("{name} only applies with --redis URL")),
                None => Ok(None),
            };
        };
        let defaults = RedisOptions::default();
        let options = RedisOptions {
            url: url.clone(),
            prefix: self.prefix.clone().unwrap_or(defaults.prefix.clone()),
            partitions: self.partitions.unwrap_or(defaults.partitions),
            partition: self.partition,
            lease_ttl: self.lease_ttl.unwrap_or(defaults.lease_ttl),
            give_up_after: self.redis_give_up.unwrap_or(defaults.give_up_after),
            ..defaults
        };
        if options.partitions == 0 {
            return Err("invalid options: --partitions must be at least 1".into());
        }
        if let Some(k) = options.partition {
            if k >= options.partitions {
                return Err(format!(
                    "invalid options: --partition {k} does not exist: with --partitions {} they are 0 to {}",
                    options.partitions,
                    options.partitions - 1
                ));
            }
        }
        if options.lease_ttl < Duration::from_millis(300) {
            return Err("invalid options: --lease-ttl must be at least 300ms".into());
        }
        if options.prefix.is_empty() || options.prefix.contains(['{', '}']) {
            return Err(format!(
                "invalid options: --prefix `{}` must be non-empty, without `{{` or `}}`",
                options.prefix
            ));
        }
        options.validate().map_err(|e| e.to_string())?;
        Ok(Some(options))
    }
}
