//! The replicated switch's promises to clients (errors.proto): a node that is not the leader
//! refuses every call UNAVAILABLE with REASON_NOT_LEADER and names the leader's PSP address in
//! `switch-leader` (where the same call then succeeds), and with no leader (two of three nodes
//! down) every call is refused with REASON_NO_LEADER or NOT_LEADER and nothing is acknowledged.

use std::time::Duration;

use switch::proto::{self, Reason};

use crate::common::cluster::{TestCluster, WAIT};
use crate::common::{id, pay};
use crate::support::{assert_refused, retry_after_ms, trailer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_names_the_leader_and_without_a_quorum_nothing_is_acknowledged() {
    let mut cluster = TestCluster::start(3).await;
    let (leader, _) = cluster.leader().await;
    let leader_address = cluster.configs[leader].listen.to_string();
    let leading = cluster.endpoint(leader);
    let (mut bank_a, _bank_b) = leading.payer_and_payee(0, 10_000).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid through the leader");

    // Every follower refuses, naming the leader; nothing is decoded, so any method will do.
    for follower in (0..3).filter(|index| *index != leader) {
        let mut at_follower = cluster.endpoint(follower).psp("bank-a").await;
        let refused = at_follower.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 100)).await.expect_err("a follower");
        assert_refused(&refused, Reason::NotLeader, None);
        assert_eq!(trailer(&refused, "switch-leader"), Some(leader_address.as_str()));
        assert_eq!(retry_after_ms(&refused), Some(0), "the leader is known: go there at once");
        let read = at_follower.payments.get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(1) }).await;
        assert_refused(&read.expect_err("reads are the leader's too"), Reason::NotLeader, None);
    }
    // Sent again where the trailer says, the same payment is paid, once.
    let paid = bank_a.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 100)).await.expect("paid at the leader");
    assert_eq!(paid.into_inner().state, proto::PaymentState::Completed as i32);

    // The two followers stop: the leader cannot reach a quorum.
    for follower in (0..3).filter(|index| *index != leader) {
        cluster.stop(follower).await;
    }
    // Until its lease runs out a call may be appended and wait for a quorum that does not come:
    // its outcome is unknown (LEDGER_UNAVAILABLE, after the proposal's bound). After that every
    // call is refused at once. Nothing is ever acknowledged.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut payment = 3;
    loop {
        let refused = bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 100)).await.expect_err("no quorum");
        if switch::reason::reason_of(&refused) == Some(Reason::NoLeader) {
            assert_refused(&refused, Reason::NoLeader, None);
            assert_eq!(trailer(&refused, "switch-leader"), None, "no leader to name");
            break;
        }
        assert_refused(&refused, Reason::LedgerUnavailable, None);
        assert!(tokio::time::Instant::now() < deadline, "still no NO_LEADER");
        payment += 1;
    }
    let read = bank_a.payments.get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(1) }).await;
    assert_refused(&read.expect_err("no linearizable read without a quorum"), Reason::NoLeader, None);

    // One follower back: a quorum again, and the cluster serves (the same call, answered).
    let back = (0..3).find(|index| *index != leader).expect("a follower");
    cluster.restart(back).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (_, switch) = loop {
        let (index, switch) = cluster.leader().await;
        let mut bank_a = cluster.endpoint(index).psp("bank-a").await;
        match bank_a.payments.pay(pay(100, "ana@bank-a", "bo@bank-b", 100)).await {
            Ok(paid) => {
                assert_eq!(paid.into_inner().state, proto::PaymentState::Completed as i32);
                break (index, switch);
            }
            Err(status) => assert!(tokio::time::Instant::now() < deadline, "not served again: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let accounts = switch.ledger.store().expect("the store").all_accounts().expect("accounts");
    let debits: u128 = accounts.iter().map(|account| account.debits_posted + account.debits_pending).sum();
    let credits: u128 = accounts.iter().map(|account| account.credits_posted + account.credits_pending).sum();
    assert_eq!(debits, credits, "money created or lost");
    cluster.stop_all().await;
}
