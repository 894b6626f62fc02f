//! The Redis part of the conformance suite, on the smol driver: real `redis-server`,
//! worker processes killed with SIGKILL, three workers sharing a crawl, runs after the end
//! and after a stop.

downpour_conformance::redis_suite!(
    Smol,
    downpour_smol,
    connect: |config, policy, options, redis| smol::block_on(Fetcher::with_redis(config, policy, options, redis)),
    run: |fetcher| smol::block_on(fetcher.run()),
    until_closed: |fetcher| smol::block_on(fetcher.run_until_closed()),
);
