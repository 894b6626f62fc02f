//! What the scheduler asks its driver to do.

use crate::callback::Callback;
use crate::fetch::Fetch;
use crate::partition::HandOff;
use crate::request::RequestId;

/// One thing for the driver to do, from [`Scheduler::poll_action`](crate::Scheduler::poll_action).
#[derive(Debug)]
pub enum Action<R> {
    /// Fetch one hop, then report with [`Scheduler::handle_fetch`](crate::Scheduler::handle_fetch).
    Fetch(Fetch),
    /// Run callbacks ([`Callback::run`]), then report with
    /// [`Scheduler::handle_callback`](crate::Scheduler::handle_callback).
    Callback(Callback<R>),
    /// Record a change in durable storage (only when [`Config::persist`](crate::Config::persist) is on).
    Persist(Persist),
    /// Pass a request to the scheduler of another partition, which owns the host a redirect
    /// took it to (only with [`Config::partition`](crate::Config::partition)): its
    /// [`Scheduler::handle_hand_off`](crate::Scheduler::handle_hand_off). A driver with no
    /// way there gives it back to this scheduler, which then fetches that host itself.
    /// With [`Config::persist`](crate::Config::persist), the request's
    /// [`Persist::Finished`] follows: store the hand-off before it.
    HandOff(HandOff<R>),
}

/// A change to the set of unfinished requests, for durable storage.
///
/// Execute them in the order given: a request's `Finished` always comes after the
/// `Accepted` of every follow-up its callbacks enqueued, and after its
/// [`Action::HandOff`] when it was handed to another partition, so a crash never loses work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// A request was accepted: store it. Serialize it from
    /// [`Scheduler::request`](crate::Scheduler::request) before polling the next action
    /// (the request is still there, even when its callbacks are the next action).
    Accepted {
        /// The request.
        id: RequestId,
        /// The request whose callback enqueued it, if any.
        parent: Option<RequestId>,
    },
    /// A request finished (its `on_done` ran), or was handed to another partition: remove it.
    Finished {
        /// The request.
        id: RequestId,
    },
}
