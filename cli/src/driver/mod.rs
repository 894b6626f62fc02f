//! The driver the command runs on, chosen by a cargo feature: `tokio` (the default), `smol`
//! or `blocking`. Everything else in the command is the same for all three; each module here
//! holds only what differs: the run loop (with the progress detail) and how
//! `Fetcher::with_redis` is called. Each exports `Driver` (`new`, `with_redis`, `run`),
//! `NAME` and `VERSION`; `lib` is the driver crate.

#[cfg(any(
    all(feature = "tokio", feature = "smol"),
    all(feature = "tokio", feature = "blocking"),
    all(feature = "smol", feature = "blocking"),
))]
compile_error!(
    "downpour-cli runs on exactly one driver: enable one of the features `tokio` (default), \
     `smol` or `blocking`, e.g. `--no-default-features --features smol`"
);

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "blocking")))]
compile_error!(
    "downpour-cli needs a driver: enable one of the features `tokio` (default), `smol` or \
     `blocking`, e.g. `--no-default-features --features blocking`"
);

#[cfg(feature = "tokio")]
mod tokio;
#[cfg(feature = "tokio")]
pub use {self::tokio::*, downpour_tokio as lib};

#[cfg(all(feature = "smol", not(feature = "tokio")))]
mod smol;
#[cfg(all(feature = "smol", not(feature = "tokio")))]
pub use {self::smol::*, downpour_smol as lib};

#[cfg(all(feature = "blocking", not(any(feature = "tokio", feature = "smol"))))]
mod blocking;
#[cfg(all(feature = "blocking", not(any(feature = "tokio", feature = "smol"))))]
pub use {self::blocking::*, downpour_blocking as lib};
