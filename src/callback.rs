//! Running a request's callbacks, with panics trapped.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use http::{HeaderMap, StatusCode, Version};
use url::Url;

use crate::outcome::{FetchError, Outcome};
use crate::request::{Context, Request, RequestId};

/// A response that is not the request's last (a redirect, or an attempt that is retried).
#[derive(Debug)]
pub(crate) struct HopEvents {
    pub version: Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Run these callbacks of a request, then hand the report back with
/// [`Scheduler::handle_callback`](crate::Scheduler::handle_callback).
///
/// The request is lent to you for the call: [`run`](Callback::run) calls, in order,
/// `on_status` and `on_headers` (for a response), `on_url` (for a redirect), then, when the
/// request is finished, `on_success` or `on_error`, and `on_done`. Each callback's panic is
/// caught; `on_done` still runs.
#[derive(Debug)]
pub struct Callback<R> {
    pub(crate) id: RequestId,
    pub(crate) request: R,
    pub(crate) now: Instant,
    pub(crate) hop: Option<HopEvents>,
    pub(crate) redirect: Option<Url>,
    pub(crate) outcome: Option<Box<Outcome>>,
}

/// What running a [`Callback`] did.
#[derive(Debug)]
pub struct CallbackReport<R> {
    pub(crate) id: RequestId,
    pub(crate) request: R,
    pub(crate) follow_ups: Vec<R>,
    pub(crate) panic: Option<(&'static str, String)>,
    pub(crate) succeeded: Option<bool>,
}

impl<R: Request> Callback<R> {
    /// The request whose callbacks these are.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The request.
    pub fn request(&self) -> &R {
        &self.request
    }

    /// The outcome, when this is the request's last delivery (`on_done` will run).
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_deref()
    }

    /// Runs the callbacks, trapping panics.
    pub fn run(self) -> CallbackReport<R> {
        let Callback {
            id,
            mut request,
            now,
            hop,
            redirect,
            mut outcome,
        } = self;
        let mut ctx = Context::new(now);
        let mut panic = None;
        {
            let mut call = |name: &'static str, f: &mut dyn FnMut(&mut R, &mut Context<R>)| {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&mut request, &mut ctx))) {
                    if panic.is_none() {
                        panic = Some((name, panic_message(payload.as_ref())));
                    }
                }
            };
            let response = outcome
                .as_ref()
                .and_then(|o| o.result.as_ref().map_or_else(|e| e.response(), Some));
            if let Some(h) = &hop {
                call("on_status", &mut |r, c| r.on_status(c, h.version, h.status));
                call("on_headers", &mut |r, c| r.on_headers(c, &h.headers));
            } else if let Some(resp) = response {
                call("on_status", &mut |r, c| {
                    r.on_status(c, resp.version, resp.status)
                });
                call("on_headers", &mut |r, c| r.on_headers(c, &resp.headers));
            }
            if let Some(url) = &redirect {
                call("on_url", &mut |r, c| r.on_url(c, url));
            }
        }
        let succeeded = match &mut outcome {
            None => None,
            Some(outcome) => {
                // A panic in this delivery's earlier callbacks ends the request with an error.
                if let Some((callback, message)) = &panic {
                    outcome.fail(FetchError::CallbackPanicked {
                        callback,
                        message: message.clone(),
                    });
                }
                let mut call = |name: &'static str, f: &mut dyn FnMut(&mut R, &mut Context<R>)| {
                    if let Err(payload) =
                        catch_unwind(AssertUnwindSafe(|| f(&mut request, &mut ctx)))
                    {
                        if panic.is_none() {
                            panic = Some((name, panic_message(payload.as_ref())));
                        }
                    }
                };
                let outcome = &**outcome;
                match &outcome.result {
                    Ok(resp) => call("on_success", &mut |r, c| r.on_success(c, resp)),
                    Err(err) => call("on_error", &mut |r, c| r.on_error(c, err)),
                }
                call("on_done", &mut |r, c| r.on_done(c, outcome));
                Some(outcome.result.is_ok())
            }
        };
        CallbackReport {
            id,
            request,
            follow_ups: ctx.follow_ups,
            panic,
            succeeded,
        }
    }
}

impl<R> CallbackReport<R> {
    /// The request.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The first callback that panicked, and its message.
    pub fn panic(&self) -> Option<(&'static str, &str)> {
        self.panic.as_ref().map(|(c, m)| (*c, m.as_str()))
    }

    /// Follow-up requests the callbacks enqueued.
    pub fn follow_ups(&self) -> &[R] {
        &self.follow_ups
    }

    /// Follow-up requests the callbacks enqueued, to take some out before the report goes
    /// back to the scheduler: a distributed driver sends the ones whose host another worker
    /// owns to that worker's queue instead.
    pub fn follow_ups_mut(&mut self) -> &mut Vec<R> {
        &mut self.follow_ups
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic payload)".to_string()
    }
}
