//! `http_proxy` and `NO_PROXY` from the environment (either case), end to end through a
//! real proxy. Alone in its test binary, so changing the environment races with nothing.

downpour_conformance::driver!(
    Tokio,
    downpour_tokio,
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    |fetcher| runtime.block_on(fetcher.run()),
    until_closed: |fetcher| runtime.block_on(fetcher.run_until_closed())
);

#[test]
fn proxy_variables_from_the_environment_are_honoured() {
    downpour_conformance::cases::proxy_variables_from_the_environment_are_honoured(&Tokio);
}
