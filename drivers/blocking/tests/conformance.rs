//! The driver conformance suite, run on the blocking driver.

downpour_conformance::driver_suite!(
    Blocking,
    downpour_blocking,
    |fetcher| fetcher.run(),
    until_closed: |fetcher| fetcher.run_until_closed()
);
