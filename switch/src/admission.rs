//! Admission at the edge: bounded budgets of payments in flight, one per payer PSP and one for
//! the whole switch, decided before any work on a payment and costing two atomic additions.
//!
//! A payment is in flight from its admission until it is answered: for `Pay` and `PayStream`
//! that includes a confirming payee's decision (the call, or the stream's item, is open and
//! holds the switch's memory and a timer), for `PayBatch` until the batch's answer (which does
//! not wait for payees). A PSP whose payees are slow to decide thus uses its own budget, not the
//! others'. A PSP at its own budget is refused RATE_LIMITED, whatever the others do, so one bank's
//! flood cannot take the room the others need (admission per PSP, not first come first served);
//! the global budget (SWITCH_BUSY) bounds the queue the ledger can build, and with it the latency
//! of everything admitted. Refused work is answered at once and costs no more than the check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::proto::Reason;
use crate::reason::Refusal;

/// The budgets, and what each PSP and the switch hold of them now.
pub struct Admission {
    global_max: u64,
    per_psp_max: u64,
    global: Arc<AtomicU64>,
    /// Payments in flight per payer PSP; an entry lives as long as the switch (PSPs are bounded
    /// by `participants_max`).
    psps: papaya::HashMap<String, Arc<AtomicU64>>,
}

/// Payments admitted together; their room is given back when the permit is dropped.
#[must_use = "the payments are admitted only while the permit lives"]
pub struct Permit {
    count: u64,
    psp: Arc<AtomicU64>,
    global: Arc<AtomicU64>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.psp.fetch_sub(self.count, Ordering::AcqRel);
        self.global.fetch_sub(self.count, Ordering::AcqRel);
    }
}

impl Admission {
    /// Budgets of payments in flight: `global_max` for the switch, `per_psp_max` for each payer PSP.
    pub fn new(global_max: u64, per_psp_max: u64) -> Self {
        Admission { global_max, per_psp_max, global: Arc::new(AtomicU64::new(0)), psps: papaya::HashMap::new() }
    }

    /// Admits `count` payments of `psp` together, all or none. A unit larger than a budget (a
    /// big PayBatch) is admitted when that budget is otherwise empty, so that it can always
    /// progress; it then holds the budget alone.
    pub fn admit(&self, psp: &str, count: u64) -> Result<Permit, Refusal> {
        let counter = {
            let psps = self.psps.pin();
            match psps.get(psp) {
                Some(counter) => Arc::clone(counter),
                None => Arc::clone(psps.get_or_insert(psp.to_string(), Arc::new(AtomicU64::new(0)))),
            }
        };
        if !take(&counter, count, self.per_psp_max) {
            return Err(Refusal::new(
                Reason::RateLimited,
                "this PSP's payments in flight are at its admission budget; retry after the trailer's delay",
            ));
        }
        if !take(&self.global, count, self.global_max) {
            counter.fetch_sub(count, Ordering::AcqRel);
            return Err(Refusal::new(
                Reason::SwitchBusy,
                "the switch's payments in flight are at its admission budget; retry after the trailer's delay",
            ));
        }
        Ok(Permit { count, psp: counter, global: Arc::clone(&self.global) })
    }

    /// Payments in flight now: the switch's and one PSP's (metrics, tests).
    pub fn in_flight(&self, psp: &str) -> (u64, u64) {
        let psp = self.psps.pin().get(psp).map_or(0, |counter| counter.load(Ordering::Acquire));
        (self.global.load(Ordering::Acquire), psp)
    }
}

/// Adds `count` to `counter` if the result stays within `max`, or if `counter` held nothing.
fn take(counter: &AtomicU64, count: u64, max: u64) -> bool {
    let mut current = counter.load(Ordering::Acquire);
    loop {
        let fits = current.checked_add(count).is_some_and(|total| total <= max);
        if !fits && current != 0 {
            return false;
        }
        match counter.compare_exchange_weak(current, current.saturating_add(count), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psp_at_its_budget_is_rate_limited_and_others_are_not() {
        let admission = Admission::new(10, 3);
        let held: Vec<Permit> = (0..3).map(|_| admission.admit("bank-a", 1).expect("within budget")).collect();
        let refused = admission.admit("bank-a", 1).err().map(|refusal| refusal.reason);
        assert_eq!(refused, Some(Reason::RateLimited));
        assert!(admission.admit("bank-b", 1).is_ok(), "another PSP has its own budget");
        drop(held);
        assert_eq!(admission.in_flight("bank-a"), (0, 0), "dropped permits give their room back");
        assert!(admission.admit("bank-a", 3).is_ok());
    }

    #[test]
    fn the_global_budget_refuses_with_switch_busy_and_gives_the_psp_room_back() {
        let admission = Admission::new(4, 3);
        let _a = admission.admit("bank-a", 3).expect("within budget");
        let refused = admission.admit("bank-b", 2).err().map(|refusal| refusal.reason);
        assert_eq!(refused, Some(Reason::SwitchBusy));
        assert_eq!(admission.in_flight("bank-b"), (3, 0), "a refusal holds nothing");
        assert!(admission.admit("bank-b", 1).is_ok());
    }

    #[test]
    fn a_unit_is_admitted_whole_or_not_at_all_and_an_oversized_one_alone() {
        let admission = Admission::new(100, 10);
        let first = admission.admit("bank-a", 6).expect("fits");
        assert!(admission.admit("bank-a", 5).is_err(), "5 more would exceed 10: none of them admitted");
        assert_eq!(admission.in_flight("bank-a"), (6, 6));
        drop(first);
        let big = admission.admit("bank-a", 50).expect("an oversized unit when the budget is empty");
        assert!(admission.admit("bank-a", 1).is_err(), "it then holds the budget alone");
        drop(big);
        assert_eq!(admission.in_flight("bank-a"), (0, 0));
    }
}
