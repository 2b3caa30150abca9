//! Keyed turn-taking for read-modify-writes that span a ledger commit: work on one key (a collect,
//! a payment's refund total) takes turns, work on different keys does not.
//!
//! A collect resolves once and a payment's refunds never pass its amount because each reads a
//! record, decides, and commits the new record before the next turn on that key. One lock for
//! all keys made every collect request, decision and expiry in the switch take turns, each
//! holding it across a commit round trip: about 2,300 collect requests/s with the decisions
//! falling behind (BENCHMARKS.md, eleventh session). Here a key picks one of a fixed set of
//! stripes, so memory is bounded whatever the number of keys, and unrelated keys wait for each
//! other only when they share a stripe. The stripe is chosen by a hash keyed at random per
//! process: ids are chosen by clients, and one client must not be able to pick ids that all
//! land on the stripes other PSPs' work uses.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};

/// Stripes per `KeyLocks` (`KEY_LOCK_STRIPES`): with this many, two of a few hundred keys in
/// flight at once rarely share one; each costs a few dozen bytes.
pub const KEY_LOCK_STRIPES: usize = 4_096;

pub struct KeyLocks {
    stripes: Box<[Mutex<()>]>,
    hasher: RandomState,
}

/// Held turns: dropping it lets the next waiter on each stripe in.
pub struct Turn<'a> {
    _first: MutexGuard<'a, ()>,
    _second: Option<MutexGuard<'a, ()>>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks::new(KEY_LOCK_STRIPES)
    }
}

impl KeyLocks {
    pub fn new(stripes: usize) -> KeyLocks {
        assert!(stripes > 0, "at least one stripe");
        KeyLocks { stripes: (0..stripes).map(|_| Mutex::new(())).collect(), hasher: RandomState::new() }
    }

    fn stripe(&self, key: u128) -> usize {
        (self.hasher.hash_one(key) % self.stripes.len() as u64) as usize
    }

    /// Waits for the turn on `key`.
    pub async fn lock(&self, key: u128) -> Turn<'_> {
        Turn { _first: self.stripes[self.stripe(key)].lock().await, _second: None }
    }

    /// Waits for the turn on both keys. Stripes are always taken in ascending order, so two
    /// callers locking the same pair in opposite orders cannot deadlock.
    pub async fn lock_two(&self, a: u128, b: u128) -> Turn<'_> {
        let (low, high) = {
            let (x, y) = (self.stripe(a), self.stripe(b));
            (x.min(y), x.max(y))
        };
        let first = self.stripes[low].lock().await;
        let second = if high == low { None } else { Some(self.stripes[high].lock().await) };
        Turn { _first: first, _second: second }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_takes_turns_and_other_keys_do_not_wait() {
        // Two stripes: find two keys on different stripes.
        let locks = KeyLocks::new(2);
        let other = (1..).find(|key| locks.stripe(*key) != locks.stripe(0)).expect("a key on the other stripe");
        let held = locks.lock(0).await;
        assert!(locks.stripes[locks.stripe(0)].try_lock().is_err(), "the key's stripe is held");
        // A different stripe is free while the first is held.
        drop(locks.lock(other).await);
        drop(held);
        assert!(locks.stripes[locks.stripe(0)].try_lock().is_ok(), "released on drop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pairs_locked_in_opposite_orders_do_not_deadlock() {
        let locks = Arc::new(KeyLocks::new(8));
        let (a, b) = (0u128, (1..).find(|key| locks.stripe(*key) != locks.stripe(0)).expect("another stripe"));
        let mut tasks = Vec::new();
        for round in 0..200u32 {
            let locks = Arc::clone(&locks);
            tasks.push(tokio::spawn(async move {
                let _turn = if round % 2 == 0 { locks.lock_two(a, b).await } else { locks.lock_two(b, a).await };
                tokio::task::yield_now().await;
            }));
        }
        let all = async {
            for task in tasks {
                task.await.expect("task");
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all).await.expect("no deadlock");
        // Both stripes are free again, and a pair on one stripe takes it once (no self-deadlock).
        drop(locks.lock_two(a, a).await);
        assert!(locks.stripes[locks.stripe(a)].try_lock().is_ok());
        assert!(locks.stripes[locks.stripe(b)].try_lock().is_ok());
    }
}
