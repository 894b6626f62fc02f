//! What every downpour driver shares, whatever its HTTP client: response bodies read and
//! decoded (gzip, deflate, brotli) under one size cap, so a decompression bomb stops at the
//! cap; and proxy rules (`http_proxy`, `https_proxy`, `all_proxy`, `no_proxy`, in either
//! case), with credentials kept out of every message.
//!
//! With the `redis` feature, [`store`] holds the durable queues in Redis: the layout,
//! scripts and replies, as a state machine each driver runs on its own connection.
//!
//! The drivers re-export the core; this crate is an implementation detail of theirs.

#![forbid(unsafe_code)]

pub mod decode;
pub mod descriptors;
pub mod proxy;
#[cfg(feature = "redis-aio")]
pub mod redis_link;
#[cfg(feature = "redis")]
pub mod store;

use std::time::{Duration, Instant};

use downpour::{EnqueueError, FetchId, HandOff, HopResult, Request, Scheduler};

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

/// Where a fetcher sends the requests its scheduler hands to another partition
/// ([`downpour::Action::HandOff`]): usually the owner's `Handle::hand_off`. One it gives back
/// (the owner is gone) is fetched by this fetcher after all.
pub type OnHandOff<R> = Box<dyn FnMut(HandOff<R>) -> Result<(), HandOff<R>> + Send>;

/// Carries out a [`downpour::Action::HandOff`]: to its owner through `sink`, or back into
/// `scheduler` when there is no sink or the owner is gone, so that the request is never lost.
pub fn pass_on<R: Request>(
    sink: &mut Option<OnHandOff<R>>,
    scheduler: &mut Scheduler<R>,
    hand_off: HandOff<R>,
) {
    let back = match sink {
        Some(send) => send(hand_off).err(),
        None => Some(hand_off),
    };
    if let Some(hand_off) = back {
        scheduler.handle_hand_off(Instant::now(), hand_off);
    }
}

/// Hands a hop's result to `scheduler` with the time the hop ended, which may be a while ago
/// (the result waited on another thread, or behind other results): the host's delay counts
/// from that end. A result that waited tells the present first, so that the hops it lets
/// start are stamped now rather than at its end.
pub fn hop_ended<R: Request>(
    scheduler: &mut Scheduler<R>,
    id: FetchId,
    result: HopResult,
    ended: Instant,
) {
    let now = Instant::now();
    // Within a millisecond, the end stands for the present: a call saved.
    if now.saturating_duration_since(ended) > Duration::from_millis(1) {
        scheduler.handle_timeout(now);
    }
    let _ = scheduler.handle_fetch(ended, id, result);
}
