use std::cmp::{Ordering, Reverse};
use std::collections::VecDeque;
use std::time::Instant;

use super::{Feedback, HostId, Policy, Queued};

/// First in, first out, with no politeness (the original `BaseFetcher`).
///
/// Up to [`Config::concurrency`](crate::Config::concurrency) hops in flight, in order of
/// priority and then acceptance; robots.txt is not consulted. Use it against your own
/// servers, or when something else keeps the pace.
#[derive(Debug, Default)]
pub struct Fifo {
    /// Kept sorted: highest priority first, then lowest sequence number. New requests of
    /// one priority arrive in order and go to the back at O(1); only retries and higher
    /// priorities need a binary search.
    queue: VecDeque<Queued>,
}

/// The order items leave in: higher priority first, then earlier acceptance.
fn order(a: &Queued, b: &Queued) -> Ordering {
    (Reverse(a.priority), a.seq).cmp(&(Reverse(b.priority), b.seq))
}

impl Fifo {
    /// A FIFO policy.
    pub fn new() -> Self {
        Fifo::default()
    }
}

impl Policy for Fifo {
    /// Never: a host's requests go as soon as there is room.
    fn paces(&self) -> bool {
        false
    }

    fn push(&mut self, _now: Instant, item: Queued) {
        match self.queue.back() {
            Some(last) if order(&item, last) == Ordering::Less => {
                let at = self
                    .queue
                    .partition_point(|q| order(q, &item) == Ordering::Less);
                self.queue.insert(at, item);
            }
            _ => self.queue.push_back(item),
        }
    }

    fn pop(&mut self, _now: Instant) -> Option<Queued> {
        self.queue.pop_front()
    }

    fn remove(&mut self, item: &Queued) -> bool {
        match self.queue.iter().position(|q| q.id == item.id) {
            Some(at) => {
                self.queue.remove(at);
                true
            }
            None => false,
        }
    }

    fn handle_finish(&mut self, _now: Instant, _host: HostId, _feedback: &Feedback) {}

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn drain(&mut self) -> Vec<Queued> {
        let mut items: Vec<Queued> = std::mem::take(&mut self.queue).into();
        items.sort_by_key(|q| q.seq);
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestId;

    fn q(index: u32, priority: i32) -> Queued {
        Queued {
            id: RequestId {
                index,
                generation: 0,
            },
            host: HostId(0),
            priority,
            seq: u64::from(index),
        }
    }

    /// Only a policy that paces hosts costs drivers the exact end of every response; a boxed
    /// one says what the policy it holds says.
    #[test]
    fn fifo_does_not_pace_and_polite_does() {
        use crate::{Config, Polite, Scheduler};
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Page(url::Url);
        impl crate::Request for Page {
            fn url(&self) -> &url::Url {
                &self.0
            }
        }
        let fifo = Scheduler::<Page>::new(Config::default(), Fifo::new()).unwrap();
        let polite = Scheduler::<Page>::new(Config::default(), Polite::new()).unwrap();
        let boxed: Box<dyn Policy> = Box::new(Fifo::new());
        let boxed = Scheduler::<Page>::with_policy(Config::default(), boxed).unwrap();
        assert!(!fifo.paces() && polite.paces() && !boxed.paces());
    }

    #[test]
    fn priority_then_order_of_arrival() {
        let now = crate::t0();
        let mut f = Fifo::new();
        for (i, p) in [(0, 0), (1, 5), (2, 0), (3, 5)] {
            f.push(now, q(i, p));
        }
        assert!(f.remove(&q(2, 0)));
        assert!(!f.remove(&q(2, 0)));
        let order: Vec<u32> = std::iter::from_fn(|| f.pop(now))
            .map(|q| q.id.index)
            .collect();
        assert_eq!(order, vec![1, 3, 0]);
    }
}
