//! The driver conformance suite, run on the tokio driver.

downpour_conformance::driver_suite!(
    Tokio,
    downpour_tokio,
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    |fetcher| runtime.block_on(fetcher.run()),
    until_closed: |fetcher| runtime.block_on(fetcher.run_until_closed())
);
