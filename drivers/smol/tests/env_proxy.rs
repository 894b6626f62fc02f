//! `http_proxy` and `NO_PROXY` from the environment (either case), end to end through a
//! real proxy. Alone in its test binary, so changing the environment races with nothing.

downpour_conformance::driver!(
    Smol,
    downpour_smol,
    |fetcher| smol::block_on(fetcher.run()),
    until_closed: |fetcher| smol::block_on(fetcher.run_until_closed())
);

#[test]
fn proxy_variables_from_the_environment_are_honoured() {
    downpour_conformance::cases::proxy_variables_from_the_environment_are_honoured(&Smol);
}
