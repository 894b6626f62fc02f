//! The driver conformance suite, run on the smol driver.

downpour_conformance::driver_suite!(
    Smol,
    downpour_smol,
    |fetcher| smol::block_on(fetcher.run()),
    until_closed: |fetcher| smol::block_on(fetcher.run_until_closed())
);
