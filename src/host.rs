//! Hosts interned to small ids, and forgotten once nothing refers to them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::policy::{HostId, Policy};

struct Slot {
    name: Box<str>,
    refs: u32,
    /// Bumped each time `refs` drops to zero, so a stale entry of `forget` is recognised.
    epoch: u32,
}

/// Host names ↔ [`HostId`], with reference counts held by the scheduler's entries.
#[derive(Default)]
pub(crate) struct Hosts {
    ids: FxHashMap<Box<str>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Hosts nothing refers to, by the time their policy state may be forgotten.
    forget: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Hosts {
    /// The id of `name`, taking a reference to it.
    pub fn acquire(&mut self, name: &str) -> HostId {
        if let Some(&id) = self.ids.get(name) {
            if let Some(slot) = self.slots[id as usize].as_mut() {
                slot.refs += 1;
            }
            return HostId(id);
        }
        let slot = Slot {
            name: name.into(),
            refs: 1,
            epoch: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(name.into(), id);
        HostId(id)
    }

    /// Drops a reference; a host left with none is forgotten once its policy allows.
    pub fn release(&mut self, now: Instant, host: HostId, policy: &dyn Policy) {
        let Some(slot) = self.slots.get_mut(host.index()).and_then(Option::as_mut) else {
            return;
        };
        slot.refs -= 1;
        if slot.refs == 0 {
            slot.epoch = slot.epoch.wrapping_add(1);
            let at = policy.forget_at(host).map_or(now, |t| t.max(now));
            self.forget.push(Reverse((at, host.0, slot.epoch)));
        }
    }

    /// Forgets the hosts whose time has come and that are still unreferenced.
    pub fn sweep(&mut self, now: Instant, policy: &mut dyn Policy) {
        while let Some(&Reverse((at, id, epoch))) = self.forget.peek() {
            if at > now {
                break;
            }
            self.forget.pop();
            let forget = matches!(
                &self.slots[id as usize],
                Some(slot) if slot.refs == 0 && slot.epoch == epoch
            );
            if forget {
                if let Some(slot) = self.slots[id as usize].take() {
                    self.ids.remove(&slot.name);
                }
                policy.forget_host(HostId(id));
                self.free.push(id);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<HostId> {
        self.ids.get(name).map(|&id| HostId(id))
    }

    pub fn name(&self, host: HostId) -> &str {
        self.slots
            .get(host.index())
            .and_then(Option::as_ref)
            .map_or("", |s| &s.name)
    }

    /// Hosts known.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Every known host, in id order.
    pub fn iter(&self) -> impl Iterator<Item = HostId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| HostId(i as u32))
    }
}
