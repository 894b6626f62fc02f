//! What every downpour driver shares, whatever its HTTP client: response bodies read and
//! decoded (gzip, deflate, brotli) under one size cap, so a decompression bomb stops at the
//! cap; and proxy rules (`http_proxy`, `https_proxy`, `all_proxy`, `no_proxy`, in either
//! case), with credentials kept out of every message.
//!
//! With the `redis` feature, [`store`] holds the durable queues in Redis: the layout,
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
pub mod proxy;
#[cfg(feature = "redis-aio")]
pub mod redis_link;
#[cfg(feature = "redis")]
pub mod store;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use downpour::{Action, EnqueueError, Fetch, FetchId, HandOff, HopResult, Request, Scheduler};

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

/// What a fetcher calls with every request once it is finished (after its `on_done`).
pub type OnFinished<R> = Box<dyn FnMut(R) + Send>;

/// Where a fetcher sends the requests its scheduler hands to another partition
/// ([`downpour::Action::HandOff`]): usually the owner's `Handle::hand_off`. One it gives back
/// (the owner is gone) is fetched by this fetcher after all.
pub type OnHandOff<R> = Box<dyn FnMut(HandOff<R>) -> Result<(), HandOff<R>> + Send>;

/// Where a fetcher hands requests out: each finished one, and those its scheduler hands to
/// another partition. Without them, finished requests are dropped and hand-offs are fetched
/// here.
pub struct Outlets<R> {
    /// Called with every request once it is finished (after its `on_done`).
    pub on_finished: Option<OnFinished<R>>,
    /// Passes a hand-off to the fetcher that owns its partition (see [`pass_on`]).
    pub on_hand_off: Option<OnHandOff<R>>,
}

impl<R> Default for Outlets<R> {
    fn default() -> Self {
        Outlets {
            on_finished: None,
            on_hand_off: None,
        }
    }
}

/// Whether a fetcher's handles said that no more requests will come (`Handle::close`), and
/// what that means for its `run_until_closed`: the same rule on every driver.
#[derive(Debug, Default)]
pub struct Closing {
    closed: bool,
}

impl Closing {
    /// A handle closed.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether a run with nothing left to do waits for more from the handles: in
    /// `run_until_closed` (`until_closed`), until a close or the application's stop
    /// (`stopped`; with Redis, the store's record of it: the store also stops the scheduler
    /// whenever it holds no partition).
    pub fn waits(&self, until_closed: bool, stopped: bool) -> bool {
        until_closed && !self.closed && !stopped
    }

    /// A `run_until_closed` returned: the close that ended it is used up. When the run ended
    /// early (`ended_early`: the application's stop; with Redis also a failure of the store),
    /// one that came stays for the run that finishes the rest.
    pub fn returned(&mut self, ended_early: bool) {
        if !ended_early {
            self.closed = false;
        }
    }
}

/// The crawl's store in Redis, when a fetcher has one.
#[cfg(feature = "redis")]
pub type StoreRef<'a, R> = Option<&'a mut store::Store<R>>;
/// Without the `redis` feature there is never a store.
#[cfg(not(feature = "redis"))]
pub type StoreRef<'a, R> = Option<&'a mut std::marker::PhantomData<R>>;

/// Carries out an action as every driver does, but a fetch, which is handed back for the
/// driver to start:
/// - callbacks run (each one's panic is trapped), their follow-ups go through the store
///   with Redis, and the finished request goes to its outlet (a panic there is trapped
///   too);
/// - persistence goes to the store (without one, nothing asks for it);
/// - a hand-off goes to the store, which writes it to its partition's inbox, or else to its
///   owner through its outlet (see [`pass_on`]).
pub fn carry_out<R: Request>(
    action: Action<R>,
    scheduler: &mut Scheduler<R>,
    store: StoreRef<'_, R>,
    outlets: &mut Outlets<R>,
) -> Option<Fetch> {
    #[cfg(not(feature = "redis"))]
    let _ = store;
    match action {
        Action::Fetch(fetch) => return Some(fetch),
        Action::Callback(callbacks) => {
            #[allow(unused_mut)]
            let mut report = callbacks.run();
            #[cfg(feature = "redis")]
            if let Some(store) = store {
                store.route_follow_ups(&mut report);
            }
            if let Ok(Some(request)) = scheduler.handle_callback(Instant::now(), report) {
                if let Some(f) = &mut outlets.on_finished {
                    let _ = catch_unwind(AssertUnwindSafe(|| f(request)));
                }
            }
        }
        Action::Persist(persist) => {
            #[cfg(feature = "redis")]
            if let Some(store) = store {
                store.handle_persist(persist, scheduler);
            }
            #[cfg(not(feature = "redis"))]
            let _ = persist;
        }
        Action::HandOff(hand_off) => {
            #[cfg(feature = "redis")]
            if let Some(store) = store {
                store.handle_hand_off(Instant::now(), hand_off, scheduler);
                return None;
            }
            pass_on(&mut outlets.on_hand_off, scheduler, hand_off);
        }
    }
    None
}

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
