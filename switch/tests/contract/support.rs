//! What every contract test checks of a refusal: status, reason, trailers, and nothing changed.

#![allow(dead_code)] // each area uses a different subset

use switch::proto::Reason;
use tonic::{Code, Status};

use crate::common::TestSwitch;

/// The value of a trailer, if present and text.
pub fn trailer<'a>(status: &'a Status, name: &str) -> Option<&'a str> {
    status.metadata().get(name).and_then(|value| value.to_str().ok())
}

/// `switch-retry-after-ms`, parsed.
pub fn retry_after_ms(status: &Status) -> Option<u64> {
    trailer(status, "switch-retry-after-ms").and_then(|value| value.parse().ok())
}

/// A refusal as the catalogue promises it: the status code the reason travels with, the reason
/// in `switch-reason`, and `switch-field` naming `field` (or absent when `field` is `None`).
#[track_caller]
pub fn assert_refused(status: &Status, reason: Reason, field: Option<&str>) {
    assert_eq!(trailer(status, "switch-reason"), Some(reason.as_str_name()), "reason trailer of {status:?}");
    assert_eq!(status.code(), switch::reason::code_of(reason), "status code of {status:?}");
    assert_eq!(trailer(status, "switch-field"), field, "field trailer of {status:?}");
    if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) {
        assert!(retry_after_ms(status).is_some(), "errors.proto promises switch-retry-after-ms: {status:?}");
    }
}

/// `result` must be a refusal as `assert_refused` checks it.
#[track_caller]
pub fn assert_refusal<T: std::fmt::Debug>(result: Result<T, Status>, reason: Reason, field: Option<&str>) {
    match result {
        Ok(answer) => panic!("expected {reason:?}, got {answer:?}"),
        Err(status) => assert_refused(&status, reason, field),
    }
}

/// The switch's durable state at one moment: the ledger's hash-chain head (any commit moves it)
/// and every account's balances. A refusal that "changes nothing" leaves both as they were.
#[derive(Debug, PartialEq, Eq)]
pub struct Unchanged {
    head: ledger::Head,
    accounts: Vec<ledger::Account>,
}

impl Unchanged {
    pub fn take(test: &TestSwitch) -> Unchanged {
        let ledger = &test.switch.ledger;
        let head = ledger.head().expect("ledger head");
        let mut accounts = ledger.store().expect("the store").all_accounts().expect("accounts");
        accounts.sort_by_key(|account| account.id);
        Unchanged { head, accounts }
    }

    /// Nothing was committed since `self` was taken.
    #[track_caller]
    pub fn assert_still(&self, test: &TestSwitch, what: &str) {
        assert_eq!(&Unchanged::take(test), self, "{what} changed the switch's state");
    }
}
