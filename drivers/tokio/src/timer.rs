//! The run loop's one timer, precise to tens of microseconds on Linux.
//!
//! tokio's timer wheel counts whole milliseconds and rounds every deadline up, so its sleep
//! ends about a millisecond late (0.5 to 2 ms). A polite crawl waits for the timer before
//! every request to a host: over a thousand hosts at a 100 ms delay, that millisecond costs
//! a percent of the crawl's rate. On Linux the timer is a timerfd on tokio's reactor, which
//! wakes the run loop within tens of microseconds of the deadline; elsewhere, or when no
//! timerfd can be made (out of descriptors), it is tokio's sleep. Either way it never fires
//! early. Like hyper's sockets, it needs the runtime's I/O driver (`enable_all`).

use std::pin::Pin;
use std::time::Instant;

#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
#[cfg(target_os = "linux")]
use tokio::io::unix::AsyncFd;

/// A one-shot timer: [`reset`](Timer::reset) to a deadline, then [`fired`](Timer::fired)
/// waits for it.
pub(crate) struct Timer {
    /// The deadline last set.
    deadline: Option<Instant>,
    inner: Inner,
}

enum Inner {
    #[cfg(target_os = "linux")]
    Fd(AsyncFd<OwnedFd>),
    Sleep(Pin<Box<tokio::time::Sleep>>),
}

impl Timer {
    /// A timer with no deadline. Needs a tokio runtime with I/O and time enabled.
    pub(crate) fn new() -> Timer {
        #[cfg(target_os = "linux")]
        if let Some(fd) = timerfd() {
            return Timer {
                deadline: None,
                inner: Inner::Fd(fd),
            };
        }
        Timer {
            deadline: None,
            inner: sleep(None),
        }
    }

    /// Sets the deadline (the one before is forgotten).
    pub(crate) fn reset(&mut self, at: Instant) {
        self.deadline = Some(at);
        match &mut self.inner {
            #[cfg(target_os = "linux")]
            Inner::Fd(fd) => {
                if arm(fd, at).is_err() {
                    self.inner = sleep(Some(at));
                }
            }
            Inner::Sleep(sleep) => sleep.as_mut().reset(tokio::time::Instant::from_std(at)),
        }
    }

    /// Waits until the deadline has passed. Cancel-safe: dropped before it is ready, it
    /// consumes nothing.
    pub(crate) async fn fired(&mut self) {
        #[cfg(target_os = "linux")]
        if let Inner::Fd(fd) = &self.inner {
            match wait(fd).await {
                Ok(()) => return,
                // Not expected of a timerfd; tokio's sleep takes over.
                Err(_) => self.inner = sleep(self.deadline),
            }
        }
        if let Inner::Sleep(sleep) = &mut self.inner {
            sleep.as_mut().await;
        }
    }
}

fn sleep(at: Option<Instant>) -> Inner {
    // Without a deadline: far away (`fired` is only awaited with one set).
    let at = at.map_or_else(
        || tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365),
        tokio::time::Instant::from_std,
    );
    Inner::Sleep(Box::pin(tokio::time::sleep_until(at)))
}

#[cfg(target_os = "linux")]
fn timerfd() -> Option<AsyncFd<OwnedFd>> {
    use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )
    .ok()?;
    // Deprecated as unsound for types whose descriptor may change or close under tokio; an
    // `OwnedFd` moved into the `AsyncFd` does neither (its replacement, `register`, is
    // `unsafe` for that reason alone).
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
}

/// Arms the timerfd to expire once, at `at` (at once if that has passed). Arming also
/// clears an expiration not read yet.
#[cfg(target_os = "linux")]
fn arm(fd: &AsyncFd<OwnedFd>, at: Instant) -> rustix::io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let left = at.saturating_duration_since(Instant::now());
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        // All zero would disarm it: a deadline already passed is 1 ns away.
        it_value: Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().max(1).into(),
        },
    };
    timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec).map(drop)
}

/// Waits for the timerfd to expire and reads the expiration.
#[cfg(target_os = "linux")]
async fn wait(fd: &AsyncFd<OwnedFd>) -> std::io::Result<()> {
    let mut expirations = [0u8; 8];
    loop {
        let mut ready = fd.readable().await?;
        match rustix::io::read(fd.get_ref(), &mut expirations) {
            Ok(_) => return Ok(()),
            // Readiness left from an expiration that re-arming cleared.
            Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_runtime as runtime;
    use std::time::Duration;

    #[test]
    fn never_fires_before_the_deadline_and_a_reset_replaces_it() {
        runtime().block_on(async {
            let mut timer = Timer::new();
            let first = Instant::now() + Duration::from_millis(500);
            timer.reset(first);
            let second = Instant::now() + Duration::from_millis(30);
            timer.reset(second);
            timer.fired().await;
            let now = Instant::now();
            assert!(now >= second, "fired {:?} early", second - now);
            assert!(now < first, "the first deadline was kept");
            // A deadline already passed fires at once.
            timer.reset(Instant::now() - Duration::from_millis(5));
            tokio::time::timeout(Duration::from_secs(1), timer.fired())
                .await
                .expect("a passed deadline fires");
        });
    }

    #[test]
    fn an_expiration_left_unread_does_not_fire_the_next_deadline() {
        runtime().block_on(async {
            let mut timer = Timer::new();
            timer.reset(Instant::now() + Duration::from_millis(1));
            // Expires while nobody waits (the reactor may even see it).
            std::thread::sleep(Duration::from_millis(10));
            tokio::task::yield_now().await;
            let next = Instant::now() + Duration::from_millis(40);
            timer.reset(next);
            timer.fired().await;
            let now = Instant::now();
            assert!(now >= next, "fired {:?} early", next - now);
        });
    }

    /// The point of the timerfd: tokio's sleep ends about a millisecond late (half of them
    /// later than 1.1 ms on this kind of machine), this one within tens of microseconds.
    #[cfg(target_os = "linux")]
    #[test]
    fn fires_within_half_a_millisecond_of_the_deadline() {
        runtime().block_on(async {
            let mut timer = Timer::new();
            assert!(matches!(timer.inner, Inner::Fd(_)), "no timerfd");
            let mut late = Vec::new();
            for i in 0..41u64 {
                let at = Instant::now() + Duration::from_micros(1_000 + i * 53);
                timer.reset(at);
                timer.fired().await;
                late.push(Instant::now() - at);
            }
            late.sort();
            assert!(
                late[20] < Duration::from_micros(500),
                "median lateness {:?} (all: {late:?})",
                late[20]
            );
        });
    }
}
