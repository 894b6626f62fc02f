//! What every downpour driver shares, whatever its HTTP client: response bodies read and
//! decoded (gzip, deflate, brotli) under one size cap, so a decompression bomb stops at the
//! cap; and proxy rules (`http_proxy`, `https_proxy`, `all_proxy`, `no_proxy`, in either
//! case), with credentials kept out of every message. A [`Frontier`] is what each driver's
//! run loop drives besides HTTP: the scheduler, the store in Redis when there is one, the
//! hops in flight and the handles' commands, so that the drivers differ only in how they
//! fetch and wait.
//!
//! With the `redis` feature, the `store` module holds the durable queues in Redis: the layout,
//! scripts and replies, as a state machine each driver runs on its own connection.
//!
//! On Linux, [`arrival`] tells when a connection's bytes arrived (the kernel's receive
//! timestamps), for the drivers whose client gives them the socket.
//!
//! The drivers re-export the core; this crate is an implementation detail of theirs.

#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod arrival;
pub mod decode;
pub mod descriptors;
pub mod frontier;
pub mod proxy;
#[cfg(feature = "redis-aio")]
pub mod redis_link;
#[cfg(feature = "redis")]
pub mod store;

use downpour::EnqueueError;

pub use frontier::{Closing, Command, Frontier, Outlets, Step};

/// How many times, at most, a hop's request goes again when a reused connection drops it
/// before a byte of an answer: a server may close all its idle connections to a client at
/// once, and each resend may meet the next of them. As many as libcurl allows itself (the
/// smol driver's client, `CONN_MAX_RETRIES`), so that the drivers agree.
pub const MAX_RESENDS: u32 = 5;

/// A driver's `Handle` could not pass a request on.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<R> {
    /// The request can never be fetched (bad URL); it is handed back.
    #[error(transparent)]
    Refused(EnqueueError<R>),
    /// The fetcher is gone; the request is handed back.
    #[error("the fetcher was dropped")]
    Closed(R),
}
