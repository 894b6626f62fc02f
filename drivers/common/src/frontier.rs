//! What a fetcher drives besides HTTP, the same on every driver: its [`Scheduler`], the
//! crawl's store in Redis (`store::Store`) when it has one, the hops in flight, where
//! finished requests and hand-offs go, and what its handles said. A driver's run loop feeds
//! it the handles' [`Command`]s, the hops' results and Redis's replies, starts the fetches it
//! hands out, and waits until its [`poll_timeout`](Frontier::poll_timeout).
//!
//! With a store, the application's requests are written to Redis first and reach a
//! scheduler (this one's or another worker's) once stored; without one they go to the
//! scheduler at once. Either way a driver's public methods are the same calls here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use downpour::{
    Action, EnqueueError, Fetch, FetchId, HandOff, HopResult, Request, Scheduler, Stats,
    TransportError, TransportErrorKind,
};
use rustc_hash::FxHashSet;

#[cfg(feature = "redis")]
use crate::store::{Store, StoreError};

/// What a fetcher's handles send it.
pub enum Command<R> {
    /// A request to enqueue (its URL already checked).
    Enqueue(R),
    /// A request another partition's scheduler handed off.
    HandOff(HandOff<R>),
    /// Stop gracefully: no new fetch starts.
    Stop,
    /// Stop, and abort the hops in flight.
    StopNow,
    /// No more requests will come through the handles.
    Close,
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
    /// Passes a hand-off to the fetcher that owns its partition.
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

/// What a run loop does next, once it carried out what was ready
/// ([`Frontier::next_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait for a hop's result, a command, Redis's reply or the deadline.
    Wait,
    /// A command came in while there was nothing to do: carry out what it led to first.
    Again,
    /// Nothing is left to do: the run returns.
    Return,
}

/// A fetcher's scheduler, its store in Redis when it has one, its hops in flight, its
/// outlets and its handles' close. See the [module docs](self).
pub struct Frontier<R> {
    /// The scheduler.
    pub scheduler: Scheduler<R>,
    /// The crawl's store, with Redis.
    #[cfg(feature = "redis")]
    pub store: Option<Store<R>>,
    /// Where finished requests and hand-offs go.
    pub outlets: Outlets<R>,
    closing: Closing,
    /// The fetches handed to the driver and not reported back yet. The ids the scheduler
    /// handed out (not from the network): a fast hash is safe.
    in_flight: FxHashSet<FetchId>,
}

impl<R> Frontier<R> {
    /// How many fetches the driver has and has not reported back.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The fetcher is dropped, with the commands its handles sent and no run took in
    /// (`waiting`). Its requests are not lost unsaid: without a store, a warning counts the
    /// unfinished ones, the handles' among them, which go with the fetcher
    /// (`take_unfinished` gives them back before); with a store, what the handles sent joins
    /// the requests never written to Redis, which the store's drop counts in its error (the
    /// others are stored). Returns that count.
    pub fn abandon(&mut self, waiting: impl IntoIterator<Item = Command<R>>) -> usize {
        let sent = waiting
            .into_iter()
            .filter(|c| matches!(c, Command::Enqueue(_) | Command::HandOff(_)))
            .count();
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.count_unwritten(sent);
            return store.unwritten_requests();
        }
        let lost = self.scheduler.len() + sent;
        if lost > 0 {
            log::warn!(
                "{lost} unfinished requests were dropped with the fetcher (take_unfinished gives them back before a fetcher is dropped)"
            );
        }
        lost
    }
}

impl<R: Request> Frontier<R> {
    /// A frontier of this scheduler, without a store.
    pub fn new(scheduler: Scheduler<R>) -> Self {
        Frontier {
            scheduler,
            #[cfg(feature = "redis")]
            store: None,
            outlets: Outlets::default(),
            closing: Closing::default(),
            in_flight: FxHashSet::default(),
        }
    }

    /// Whether the crawl's requests live in Redis.
    pub fn has_store(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.store.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    // ----- the application's inputs -----

    /// Enqueues a request: to the scheduler, or with a store to its host's partition's inbox
    /// in Redis. One that could never be fetched comes back in the error.
    pub fn enqueue(&mut self, request: R) -> Result<(), EnqueueError<R>> {
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            return store.enqueue(request);
        }
        self.scheduler.enqueue(Instant::now(), request).map(drop)
    }

    /// Enqueues many requests; returns those refused, each with its reason.
    pub fn extend(&mut self, requests: impl IntoIterator<Item = R>) -> Vec<EnqueueError<R>> {
        if self.has_store() {
            return requests
                .into_iter()
                .filter_map(|r| self.enqueue(r).err())
                .collect();
        }
        self.scheduler.extend(Instant::now(), requests)
    }

    /// A hand-off from a handle. With a store it is stored, in the inbox of the partition
    /// that owns its target, as an enqueued request is: kept in memory only, a start over
    /// (the next run, or `resume`) would drop it.
    pub fn hand_in(&mut self, hand_off: HandOff<R>) {
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.handle_hand_off(Instant::now(), hand_off, &mut self.scheduler);
            return;
        }
        self.scheduler.handle_hand_off(Instant::now(), hand_off);
    }

    /// Stops gracefully: no new fetch starts; with a store, its writes are flushed and its
    /// lease given back.
    pub fn stop(&mut self) {
        self.scheduler.stop();
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.stop();
        }
    }

    /// Starts fetching again after a stop. With a store, once the run has returned, the
    /// next run takes a partition again and fetches what is stored.
    pub fn resume(&mut self) {
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.resume();
            return;
        }
        self.scheduler.resume(Instant::now());
    }

    /// A command from a handle. Whether it aborted the hops in flight (a
    /// [`Command::StopNow`]): their requests ended with an "aborted" error, and the driver
    /// drops what it holds of them, which closes their connections.
    pub fn handle_command(&mut self, command: Command<R>) -> bool {
        match command {
            // Checked by the handle already: the scheduler applies the same check.
            Command::Enqueue(request) => drop(self.enqueue(request)),
            Command::HandOff(hand_off) => self.hand_in(hand_off),
            Command::Stop => self.stop(),
            Command::Close => self.closing.close(),
            Command::StopNow => {
                self.stop();
                // With Redis, the aborted requests stay stored for the next run.
                #[cfg(feature = "redis")]
                if let Some(store) = &mut self.store {
                    store.stop_now();
                }
                let now = Instant::now();
                for id in std::mem::take(&mut self.in_flight) {
                    let aborted = TransportError::new(
                        TransportErrorKind::Other,
                        "aborted: the fetcher was stopped",
                    );
                    let _ = self
                        .scheduler
                        .handle_fetch(now, id, HopResult::Failed(aborted));
                }
                return true;
            }
        }
        false
    }

    /// Takes back the requests that did not start (after a stop), in order of acceptance,
    /// with those in the handles' `waiting` commands that no run has taken in yet. `waiting`
    /// gets the frontier, for whatever else it finds on its way to the next command.
    pub fn take_unfinished(
        &mut self,
        mut waiting: impl FnMut(&mut Self) -> Option<Command<R>>,
    ) -> Vec<R> {
        // The scheduler takes the waiting commands stopped: running, it would start some of
        // them, and a request in flight is not taken back.
        let running = !self.scheduler.is_stopped();
        self.scheduler.stop();
        let mut stop_sent = false;
        while let Some(command) = waiting(self) {
            stop_sent |= matches!(command, Command::Stop | Command::StopNow);
            self.handle_command(command);
        }
        let taken = self
            .scheduler
            .take_unfinished()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if running && !stop_sent {
            self.scheduler.resume(Instant::now());
        }
        taken
    }

    // ----- the run -----

    /// A run begins (with a store, see `Store::begin_run`).
    pub fn begin_run(&mut self) {
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.begin_run();
        }
    }

    /// What the run loop does next, once it has carried out what was ready. With a store,
    /// it returns when the store says the run is over and nothing is in flight. Without,
    /// when the scheduler is idle, nothing is in flight and no command is `waiting` (which
    /// gets the frontier as [`take_unfinished`](Frontier::take_unfinished)'s does), unless a
    /// `run_until_closed` (`until_closed`) waits for its handles.
    pub fn next_step(
        &mut self,
        until_closed: bool,
        waiting: impl FnOnce(&mut Self) -> Option<Command<R>>,
    ) -> Step {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            // Waiting for the handles, it waits for their requests: an enqueue starts the
            // store over.
            let ends = self.in_flight.is_empty()
                && store.ends_run(&self.scheduler, &self.closing, until_closed);
            return if ends { Step::Return } else { Step::Wait };
        }
        if !(self.scheduler.is_idle() && self.in_flight.is_empty()) {
            return Step::Wait;
        }
        match waiting(self) {
            Some(command) => {
                self.handle_command(command);
                Step::Again
            }
            None if self
                .closing
                .waits(until_closed, self.scheduler.is_stopped()) =>
            {
                Step::Wait
            }
            None => Step::Return,
        }
    }

    /// The run returned: with a store, the next run begins one. A `run_until_closed`
    /// (`until_closed`) used up the close that ended it, unless it ended early. The counters.
    pub fn end_run(&mut self, until_closed: bool) -> Stats {
        #[cfg(feature = "redis")]
        if let Some(store) = &mut self.store {
            store.end_run();
        }
        if until_closed {
            let ended_early = self.ended_early();
            self.closing.returned(ended_early);
        }
        self.scheduler.stats()
    }

    /// Whether the last run ended early: the application's stop (with a store, the store's
    /// record of it: the store also stops the scheduler whenever it holds no partition), or
    /// a failure of the store.
    pub fn ended_early(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            return store.ended_early();
        }
        self.scheduler.is_stopped()
    }

    /// The earlier of the scheduler's deadline and the store's.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let scheduler = self.scheduler.poll_timeout();
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store {
            return match (scheduler, store.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        scheduler
    }

    /// The next of the scheduler's actions, if any: give it to
    /// [`carry_out`](Frontier::carry_out).
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        self.scheduler.poll_action()
    }

    /// Carries out an action as every driver does, but a fetch, which is handed back for the
    /// driver to start (and counted in flight until [`handle_hop`](Frontier::handle_hop)):
    /// - callbacks run (each one's panic is trapped), their follow-ups go through the store,
    ///   and the finished request goes to its outlet (a panic there is trapped too);
    /// - persistence goes to the store (without one, nothing asks for it);
    /// - a hand-off goes to the store, which writes it to its partition's inbox, or else to
    ///   its owner through its outlet; one the outlet gives back (the owner is gone), or
    ///   with no outlet, goes back into the scheduler, so that it is never lost.
    pub fn carry_out(&mut self, action: Action<R>) -> Option<Fetch> {
        match action {
            Action::Fetch(fetch) => {
                self.in_flight.insert(fetch.id);
                return Some(fetch);
            }
            Action::Callback(callbacks) => {
                #[allow(unused_mut)]
                let mut report = callbacks.run();
                #[cfg(feature = "redis")]
                if let Some(store) = &mut self.store {
                    store.route_follow_ups(&mut report);
                }
                if let Ok(Some(request)) = self.scheduler.handle_callback(Instant::now(), report) {
                    if let Some(f) = &mut self.outlets.on_finished {
                        let _ = catch_unwind(AssertUnwindSafe(|| f(request)));
                    }
                }
            }
            Action::Persist(persist) => {
                #[cfg(feature = "redis")]
                if let Some(store) = &mut self.store {
                    store.handle_persist(persist, &self.scheduler);
                }
                #[cfg(not(feature = "redis"))]
                let _ = persist;
            }
            Action::HandOff(hand_off) => {
                #[cfg(feature = "redis")]
                if let Some(store) = &mut self.store {
                    store.handle_hand_off(Instant::now(), hand_off, &mut self.scheduler);
                    return None;
                }
                let back = match &mut self.outlets.on_hand_off {
                    Some(send) => send(hand_off).err(),
                    None => Some(hand_off),
                };
                if let Some(hand_off) = back {
                    self.scheduler.handle_hand_off(Instant::now(), hand_off);
                }
            }
        }
        None
    }

    /// A hop's result, with the time the hop ended, which may be a while ago (the result
    /// waited on another thread, or behind other results): the host's delay counts from
    /// that end. A result that waited tells the present first, so that the hops it lets
    /// start are stamped now rather than at its end. A hop no longer in flight (aborted) is
    /// ignored.
    pub fn handle_hop(&mut self, id: FetchId, result: HopResult, ended: Instant) {
        if !self.in_flight.remove(&id) {
            return;
        }
        let now = Instant::now();
        // Within a millisecond, the end stands for the present: a call saved.
        if now.saturating_duration_since(ended) > Duration::from_millis(1) {
            self.scheduler.handle_timeout(now);
        }
        let _ = self.scheduler.handle_fetch(ended, id, result);
    }

    /// The deadline passed.
    pub fn handle_timeout(&mut self) {
        self.scheduler.handle_timeout(Instant::now());
    }
}

#[cfg(feature = "redis")]
impl<R: Request> Frontier<R> {
    /// Why the last run ended early with Redis, if it did.
    pub fn store_error(&self) -> Option<&StoreError> {
        self.store.as_ref().and_then(Store::error)
    }

    /// The partition of the crawl this fetcher runs now (with Redis).
    pub fn partition(&self) -> Option<u32> {
        self.store.as_ref().and_then(Store::partition)
    }

    /// The store's next pipeline, if it has one (see [`Store::poll_pipeline`]).
    pub fn poll_pipeline(&mut self, now: Instant) -> Option<redis::Pipeline> {
        let store = self.store.as_mut()?;
        store.poll_pipeline(now, &mut self.scheduler)
    }

    /// The reply to the store's last pipeline.
    pub fn handle_reply(&mut self, reply: redis::RedisResult<Vec<redis::Value>>) {
        if let Some(store) = &mut self.store {
            store.handle_reply(Instant::now(), reply, &mut self.scheduler);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use downpour::{Config, Context, FetchError, Polite, Url};
    use std::sync::{Arc, Mutex};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Page {
        url: Url,
        #[serde(skip)]
        errors: Option<Arc<Mutex<Vec<String>>>>,
    }

    impl Request for Page {
        fn url(&self) -> &Url {
            &self.url
        }
        fn on_error(&mut self, _ctx: &mut Context<Self>, error: &FetchError) {
            if let Some(errors) = &self.errors {
                errors.lock().unwrap().push(error.to_string());
            }
        }
    }

    fn page(path: &str) -> Page {
        Page {
            url: Url::parse(&format!("http://127.0.0.1/{path}")).unwrap(),
            errors: None,
        }
    }

    fn frontier() -> Frontier<Page> {
        let policy = Polite::new()
            .delay(Duration::ZERO)
            .per_host(4)
            .allow_all(true);
        Frontier::new(Scheduler::new(Config::default(), policy).unwrap())
    }

    /// Carries out every ready action; the fetches it hands out.
    fn drain(frontier: &mut Frontier<Page>) -> Vec<Fetch> {
        let mut fetches = Vec::new();
        while let Some(action) = frontier.poll_action() {
            fetches.extend(frontier.carry_out(action));
        }
        fetches
    }

    #[test]
    fn a_stop_now_aborts_what_is_in_flight_and_ignores_its_late_results() {
        let mut frontier = frontier();
        let errors = Arc::new(Mutex::new(Vec::new()));
        for path in ["a", "b"] {
            let mut page = page(path);
            page.errors = Some(errors.clone());
            frontier.enqueue(page).unwrap();
        }
        let fetches = drain(&mut frontier);
        assert_eq!(fetches.len(), 2);
        assert_eq!(frontier.in_flight(), 2);

        assert!(!frontier.handle_command(Command::Stop));
        assert!(frontier.handle_command(Command::StopNow));
        assert_eq!(frontier.in_flight(), 0);
        drain(&mut frontier);
        let errors = errors.lock().unwrap().clone();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.contains("aborted")), "{errors:?}");

        // The workers' results, once they come, are not reported twice.
        let finished = frontier.scheduler.stats().finished;
        frontier.handle_hop(
            fetches[0].id,
            HopResult::Failed(not_retried()),
            Instant::now(),
        );
        assert_eq!(frontier.scheduler.stats().finished, finished);
        assert_eq!(frontier.next_step(false, |_| None), Step::Return);
    }

    /// A failure that is not retried.
    fn not_retried() -> TransportError {
        TransportError::new(TransportErrorKind::Other, "failed")
    }

    #[test]
    fn nothing_to_do_returns_unless_a_command_waits_or_the_handles_are_awaited() {
        let mut frontier = frontier();
        assert_eq!(frontier.next_step(false, |_| None), Step::Return);

        // A command that came meanwhile is carried out before the run looks again.
        let step = frontier.next_step(false, |_| Some(Command::Enqueue(page("a"))));
        assert_eq!(step, Step::Again);
        let fetches = drain(&mut frontier);
        assert_eq!(fetches.len(), 1);
        // In flight: the loop waits for it, and `waiting` is not asked.
        let step = frontier.next_step(false, |_| panic!("nothing to wait for yet"));
        assert_eq!(step, Step::Wait);
        frontier.handle_hop(
            fetches[0].id,
            HopResult::Failed(not_retried()),
            Instant::now(),
        );
        drain(&mut frontier);

        // Until closed, it waits for the handles; a close ends the wait and is used up.
        assert_eq!(frontier.next_step(true, |_| None), Step::Wait);
        assert_eq!(
            frontier.next_step(true, |_| Some(Command::Close)),
            Step::Again
        );
        assert_eq!(frontier.next_step(true, |_| None), Step::Return);
        frontier.end_run(true);
        assert_eq!(frontier.next_step(true, |_| None), Step::Wait);
    }

    #[test]
    fn a_close_outlasts_a_run_that_a_stop_ended() {
        let mut frontier = frontier();
        frontier.handle_command(Command::Close);
        frontier.stop();
        assert_eq!(frontier.next_step(true, |_| None), Step::Return);
        frontier.end_run(true);
        assert!(frontier.ended_early());
        frontier.resume();
        assert_eq!(frontier.next_step(true, |_| None), Step::Return);
    }

    #[test]
    fn unfinished_requests_come_back_with_the_handles_waiting_ones() {
        let mut frontier = frontier();
        frontier.stop();
        frontier.enqueue(page("queued")).unwrap();
        let mut waiting = vec![Command::Enqueue(page("sent"))];
        let taken = frontier.take_unfinished(|_| waiting.pop());
        let paths: Vec<_> = taken.iter().map(|p| p.url.path().to_owned()).collect();
        assert_eq!(paths, ["/queued", "/sent"]);
        assert!(frontier.scheduler.is_stopped(), "stopped before: stays so");

        // Taken while running, the scheduler runs on (it was stopped only to take them).
        frontier.resume();
        let mut waiting = vec![Command::Enqueue(page("late"))];
        let taken = frontier.take_unfinished(|_| waiting.pop());
        assert_eq!(taken.len(), 1);
        assert!(!frontier.scheduler.is_stopped());
        assert!(drain(&mut frontier).is_empty(), "nothing started meanwhile");
    }

    #[test]
    fn a_dropped_fetcher_counts_its_unfinished_requests_with_the_handles_ones() {
        let mut frontier = frontier();
        frontier.enqueue(page("in-flight")).unwrap();
        assert_eq!(drain(&mut frontier).len(), 1);
        frontier.enqueue(page("queued")).unwrap();
        let waiting = [
            Command::Stop,
            Command::Enqueue(page("sent")),
            Command::HandOff(hand_off("handed")),
            Command::Close,
        ];
        assert_eq!(frontier.abandon(waiting), 4);
        assert_eq!(self::frontier().abandon([Command::Close]), 0);
    }

    /// With a store, the requests the scheduler holds are stored; those never written
    /// are counted, the handles' among them.
    #[cfg(feature = "redis")]
    #[test]
    fn a_dropped_fetcher_with_a_store_counts_what_was_never_written() {
        let mut frontier = frontier();
        let store = Store::new(crate::store::RedisOptions::default(), "test".into()).unwrap();
        frontier.store = Some(store);
        frontier.enqueue(page("enqueued")).unwrap();
        let waiting = [Command::Enqueue(page("sent")), Command::StopNow];
        assert_eq!(frontier.abandon(waiting), 2);
    }

    /// A frontier of one of two partitions whose first fetch, of its own host, is answered
    /// with a redirect to `path` on a host of the other partition; the hand-off that makes
    /// goes to `outlet` once the frontier's actions are carried out. The frontier, the
    /// redirect's location, and the other partition.
    fn redirected_away(path: &str, outlet: OnHandOff<Page>) -> (Frontier<Page>, String, u32) {
        let index = downpour::partition_of("127.0.0.1", 2);
        let elsewhere = (2..=255)
            .map(|i| format!("127.0.0.{i}"))
            .find(|host| downpour::partition_of(host, 2) != index)
            .unwrap();
        let config = Config {
            partition: Some(downpour::Partition { index, count: 2 }),
            ..Config::default()
        };
        let policy = Polite::new().delay(Duration::ZERO).allow_all(true);
        let mut frontier = Frontier::new(Scheduler::new(config, policy).unwrap());
        frontier.outlets.on_hand_off = Some(outlet);
        frontier.enqueue(page("moved")).unwrap();
        let fetch = drain(&mut frontier).pop().unwrap();
        let mut moved = downpour::HopResponse::new(http::StatusCode::MOVED_PERMANENTLY);
        let location = format!("http://{elsewhere}/{path}");
        moved.headers.insert("location", location.parse().unwrap());
        frontier.handle_hop(fetch.id, HopResult::Response(moved), Instant::now());
        (frontier, location, 1 - index)
    }

    /// A hand-off, as another partition's scheduler makes one.
    fn hand_off(path: &str) -> HandOff<Page> {
        let handed = Arc::new(Mutex::new(None));
        let into = handed.clone();
        let (mut other, _, _) = redirected_away(
            path,
            Box::new(move |hand_off: HandOff<Page>| {
                *into.lock().unwrap() = Some(hand_off);
                Ok(())
            }),
        );
        drain(&mut other);
        let hand_off = handed.lock().unwrap().take();
        hand_off.expect("a redirect to another partition's host is handed off")
    }

    #[test]
    fn a_hand_off_its_owner_refuses_is_fetched_here() {
        let offered = Arc::new(Mutex::new(Vec::new()));
        let seen = offered.clone();
        let (mut frontier, location, owner) = redirected_away(
            "new",
            Box::new(move |hand_off: HandOff<Page>| {
                seen.lock().unwrap().push(hand_off.partition());
                Err(hand_off)
            }),
        );

        let fetches = drain(&mut frontier);
        assert_eq!(*offered.lock().unwrap(), [owner], "offered to its owner");
        assert_eq!(fetches.len(), 1, "refused, so fetched here");
        assert_eq!(fetches[0].url.as_str(), location);
        assert_eq!(frontier.in_flight(), 1);
    }
}
