//! `http_proxy` and `NO_PROXY` from the environment (either case), end to end through a
//! real proxy. Alone in its test binary, so changing the environment races with nothing.

downpour_conformance::driver!(
    Blocking,
    downpour_blocking,
    |fetcher| fetcher.run(),
    until_closed: |fetcher| fetcher.run_until_closed()
);

#[test]
fn proxy_variables_from_the_environment_are_honoured() {
    downpour_conformance::cases::proxy_variables_from_the_environment_are_honoured(&Blocking);
}
