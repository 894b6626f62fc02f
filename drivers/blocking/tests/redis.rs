//! The Redis part of the conformance suite, on the blocking driver: real `redis-server`,
//! worker processes killed with SIGKILL, three workers sharing a crawl, runs after the end
//! and after a stop.

downpour_conformance::redis_suite!(
    Blocking,
    downpour_blocking,
    connect: |config, policy, options, redis| Fetcher::with_redis(config, policy, options, redis),
    run: |fetcher| fetcher.run(),
    until_closed: |fetcher| fetcher.run_until_closed(),
);
