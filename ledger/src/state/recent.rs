//! A bounded cache of recently seen transfers, evicted oldest first.
//!
//! It answers idempotency checks for retries (which come soon after the original) without a disk
//! read, and it must hold every transfer of batches that are applied but not yet committed: those
//! are not in storage yet. Eviction therefore only drops entries of committed batches, and only
//! beyond `capacity`; the uncommitted window is bounded by the pipeline depth times the batch size.

use std::collections::VecDeque;

use super::{IdMap, Known};

pub struct RecentTransfers {
    entries: IdMap<(Known, u64)>,
    /// (sequence of the batch that wrote the entry, id), oldest first. May hold stale pairs for
    /// entries rewritten or rolled back since; those are skipped on eviction.
    order: VecDeque<(u64, u128)>,
    capacity: usize,
}

impl RecentTransfers {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "the recent-transfer cache needs room");
        // Sized up front: growing a map of a million entries rehashes it all at once, a stall of
        // hundreds of milliseconds in the middle of a batch.
        let entries = IdMap::with_capacity_and_hasher(capacity + capacity / 8, Default::default());
        RecentTransfers { entries, order: VecDeque::with_capacity(capacity * 2), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: u128) -> Option<&Known> {
        self.entries.get(&id).map(|(known, _)| known)
    }

    /// Inserts or replaces an entry written by batch `sequence`; returns the previous value.
    pub fn insert(&mut self, known: Known, sequence: u64) -> Option<Known> {
        let id = known.stored.transfer.id;
        self.order.push_back((sequence, id));
        self.entries.insert(id, (known, sequence)).map(|(previous, _)| previous)
    }

    /// Puts back the value an entry had before a rolled-back chain changed it.
    pub fn restore(&mut self, id: u128, previous: Option<Known>) {
        match previous {
            None => {
                self.entries.remove(&id);
            }
            Some(known) => {
                if let Some(entry) = self.entries.get_mut(&id) {
                    entry.0 = known;
                }
            }
        }
    }

    /// Drops the oldest entries of batches up to `committed_sequence` while over capacity.
    pub fn evict(&mut self, committed_sequence: u64) {
        while self.entries.len() > self.capacity || self.order.len() > self.capacity * 2 {
            let Some(&(sequence, id)) = self.order.front() else { break };
            if sequence > committed_sequence {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&id).is_some_and(|(_, written)| *written == sequence) {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::StoredTransfer;
    use crate::result::ResultCode;
    use crate::types::Transfer;

    fn known(id: u128) -> Known {
        Known {
            stored: StoredTransfer { transfer: Transfer { id, ..Transfer::default() }, result: ResultCode::Ok },
            resolution: None,
        }
    }

    #[test]
    fn evicts_oldest_committed_entries_only() {
        let mut recent = RecentTransfers::new(2);
        for id in 1..=4 {
            recent.insert(known(id), id as u64);
        }
        recent.evict(1);
        assert_eq!(recent.len(), 3, "only batch 1 is committed");
        assert!(recent.get(1).is_none());
        recent.evict(4);
        assert_eq!(recent.len(), 2);
        assert!(recent.get(3).is_some() && recent.get(4).is_some());
    }

    #[test]
    fn rewritten_entries_survive_eviction_of_their_older_position() {
        let mut recent = RecentTransfers::new(1);
        recent.insert(known(1), 1);
        recent.insert(known(2), 2);
        recent.insert(known(1), 3);
        recent.evict(3);
        assert!(recent.get(1).is_some(), "id 1 was rewritten by batch 3, the newest");
        assert!(recent.get(2).is_none());
    }

    #[test]
    fn restore_undoes_insert() {
        let mut recent = RecentTransfers::new(4);
        assert_eq!(recent.insert(known(1), 1), None);
        recent.restore(1, None);
        assert!(recent.is_empty());
    }
}
