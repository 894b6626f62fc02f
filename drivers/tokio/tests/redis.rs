//! The Redis part of the conformance suite, on the tokio driver: real `redis-server`,
//! worker processes killed with SIGKILL, three workers sharing a crawl, runs after the end
//! and after a stop.

downpour_conformance::redis_suite!(
    Tokio,
    downpour_tokio,
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    connect: |config, policy, options, redis| runtime.block_on(Fetcher::with_redis(config, policy, options, redis)),
    run: |fetcher| runtime.block_on(fetcher.run()),
    until_closed: |fetcher| runtime.block_on(fetcher.run_until_closed()),
);
