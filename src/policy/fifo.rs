use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use super::{Feedback, HostId, Policy, Queued};

/// First in, first out, with no politeness (the original `BaseFetcher`).
///
/// Up to [`Config::concurrency`](crate::Config::concurrency) hops in flight, in order of
/// priority and then acceptance; robots.txt is not consulted. Use it against your own
/// servers, or when something else keeps the pace.
#[derive(Debug, Default)]
pub struct Fifo {
    heap: BinaryHeap<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item(Queued);

impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.0.priority, Reverse(self.0.seq)).cmp(&(other.0.priority, Reverse(other.0.seq)))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Fifo {
    /// A FIFO policy.
    pub fn new() -> Self {
        Fifo::default()
    }
}

impl Policy for Fifo {
    fn push(&mut self, _now: Instant, item: Queued) {
        self.heap.push(Item(item));
    }

    fn pop(&mut self, _now: Instant) -> Option<Queued> {
        self.heap.pop().map(|i| i.0)
    }

    fn remove(&mut self, item: &Queued) -> bool {
        let before = self.heap.len();
        self.heap.retain(|i| i.0.id != item.id);
        self.heap.len() != before
    }

    fn handle_finish(&mut self, _now: Instant, _host: HostId, _feedback: &Feedback) {}

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }

    fn len(&self) -> usize {
        self.heap.len()
    }

    fn drain(&mut self) -> Vec<Queued> {
        let mut items: Vec<Queued> = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|i| i.0)
            .collect();
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
