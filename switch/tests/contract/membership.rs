//! OperatorService.AddNode and RemoveNode (operator.proto, "Nodes of a replicated switch"), on a
//! switch that is a cluster of one: every refusal with its reason and field, and that it changed
//! nothing; a node that cannot catch up stays a learner (MEMBERSHIP_CHANGE_PENDING, and the same
//! call again carries on); a removal is final (the id is never accepted again, and removing it
//! again is answered, not refused). On three nodes: a removed node that still runs does not
//! disturb the others. The catch-up and promotion of a real node are tested with `switch serve`
//! processes in `tests/membership.rs`.

use std::time::{Duration, Instant};

use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::{self, Reason};
use tonic::transport::Channel;

use crate::common::cluster::TestCluster;
use crate::common::{pay, TestSwitch};
use crate::support::{assert_refusal, assert_refused, Unchanged};

fn add(node_id: u64, peer_address: &str, psp_address: &str) -> proto::AddNodeRequest {
    proto::AddNodeRequest { node_id, peer_address: peer_address.into(), psp_address: psp_address.into() }
}

fn remove(node_id: u64) -> proto::RemoveNodeRequest {
    proto::RemoveNodeRequest { node_id }
}

/// A loopback address where nothing listens.
fn unused_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// This node as its membership names it: (peer address, PSP address).
fn this_node(test: &TestSwitch) -> (String, String) {
    use openraft::async_runtime::watch::WatchReceiver;
    let metrics = test.switch.leadership.raft().metrics().borrow_watched().clone();
    let node = metrics.membership_config.membership().get_node(&1).cloned().expect("node 1 is a member");
    (node.peer_address, node.psp_address)
}

/// The members (id, voter), as a call answered them.
fn members(membership: &proto::ClusterMembership) -> Vec<(u64, bool)> {
    membership.nodes.iter().map(|node| (node.node_id, node.voter)).collect()
}

async fn refused_requests_change_nothing(test: &TestSwitch, operator: &mut OperatorServiceClient<Channel>) {
    let unchanged = Unchanged::take(test);
    let (peer, psp) = this_node(test);
    let free = unused_address();
    assert_refusal(operator.add_node(add(0, &free, &free)).await, Reason::FieldRequired, Some("node_id"));
    assert_refusal(operator.add_node(add(2, "", &free)).await, Reason::FieldRequired, Some("peer_address"));
    assert_refusal(operator.add_node(add(2, &free, "")).await, Reason::FieldRequired, Some("psp_address"));
    for malformed in ["127.0.0.1", "127.0.0.1:0", "https://127.0.0.1:50061", "a host:1", "[::1:80"] {
        let answer = operator.add_node(add(2, malformed, &free)).await;
        assert_refusal(answer, Reason::AddressMalformed, Some("peer_address"));
    }
    assert_refusal(operator.add_node(add(2, &free, "host:65536")).await, Reason::AddressMalformed, Some("psp_address"));
    // Node 1 is this node: at other addresses its id is taken.
    assert_refusal(operator.add_node(add(1, &free, &psp)).await, Reason::NodeIdTaken, Some("node_id"));
    assert_refusal(operator.remove_node(remove(0)).await, Reason::FieldRequired, Some("node_id"));
    assert_refusal(operator.remove_node(remove(7)).await, Reason::NodeNotFound, Some("node_id"));
    // The last voter: the cluster cannot do without it.
    assert_refusal(operator.remove_node(remove(1)).await, Reason::NodeRemovalUnsafe, None);
    // A PSP may not change the cluster.
    let pair = test.ca.issue_psp("bank-a").expect("PSP certificate");
    let mut as_psp = OperatorServiceClient::new(test.channel(Some(&pair)).await.expect("connects"));
    assert_refusal(as_psp.add_node(add(2, &free, &free)).await, Reason::NotAuthorized, None);
    assert_refusal(as_psp.remove_node(remove(1)).await, Reason::NotAuthorized, None);
    // Node 1 at its own addresses is a voter already: answered, unchanged.
    let answer = operator.add_node(add(1, &peer, &psp)).await.expect("a voter already").into_inner();
    assert_eq!(members(&answer), vec![(1, true)]);
    assert_eq!(test.switch.leadership.status().voters, vec![1]);
    unchanged.assert_still(test, "refused membership changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_checked_and_a_removed_id_is_never_accepted_again() {
    // A short catch-up bound: the node added below never catches up (nothing runs there).
    let test = TestSwitch::start_with(|config| config.cluster.catch_up_wait_ms = 300).await;
    let (mut bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut operator = test.operator().await;
    refused_requests_change_nothing(&test, &mut operator).await;

    // Node 2 is added as a learner; it never answers, so it never catches up: pending, again
    // and again, and it stays a learner (the cluster of one goes on committing without it).
    let (peer, psp) = (unused_address(), unused_address());
    for _ in 0..2 {
        let pending = operator.add_node(add(2, &peer, &psp)).await.expect_err("node 2 cannot catch up");
        assert_refused(&pending, Reason::MembershipChangePending, None);
        let status = test.switch.leadership.status();
        assert_eq!((status.voters, status.learners), (vec![1], vec![2]), "node 2 stays a learner");
    }
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", 100)).await.expect("the cluster serves");
    // Its id is taken while it is a member at those addresses.
    let other = unused_address();
    assert_refusal(operator.add_node(add(2, &other, &psp)).await, Reason::NodeIdTaken, Some("node_id"));

    // Removed; removing it again is answered the same (idempotent), not refused.
    for _ in 0..2 {
        let answer = operator.remove_node(remove(2)).await.expect("node 2 removed").into_inner();
        assert_eq!(members(&answer), vec![(1, true)]);
    }
    let status = test.switch.leadership.status();
    assert_eq!((status.voters, status.learners), (vec![1], Vec::<u64>::new()));
    // Never again, at any address: a removed id is taken for ever.
    assert_refusal(operator.add_node(add(2, &peer, &psp)).await, Reason::NodeIdTaken, Some("node_id"));
    assert_refusal(operator.add_node(add(2, &other, &other)).await, Reason::NodeIdTaken, Some("node_id"));

    bank_a.payments.pay(pay(2, "ana@bank-a", "bo@bank-b", 100)).await.expect("the cluster serves");
    assert_eq!(bank_a.position().await.balance_minor, 800);
    test.assert_money_conserved();
}

/// A removed node that is still running (its operator has not stopped it yet) takes no part:
/// it may still believe itself a voter and time out waiting for the leader, but its elections
/// are refused while the cluster has a leader (pre-vote, and the leader's lease), so the leader
/// keeps its term and the cluster serves on; the removed node serves no PSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_that_still_runs_does_not_disturb_the_cluster() {
    let mut cluster = TestCluster::start(3).await;
    let (leader, switch) = cluster.leader().await;
    let leading = cluster.endpoint(leader);
    let (mut bank_a, _bank_b) = leading.payer_and_payee(0, 1_000_000).await;
    let removed = (0..3).find(|index| *index != leader).expect("a follower");
    let removed_id = removed as u64 + 1;
    let mut operator = leading.operator().await;
    let answer = operator.remove_node(remove(removed_id)).await.expect("a running follower removed").into_inner();
    let others: Vec<(u64, bool)> = (1..=3).filter(|id| *id != removed_id).map(|id| (id, true)).collect();
    assert_eq!(members(&answer), others);

    // Payments for several election timeouts of the removed node: time for it to try.
    let term = switch.leadership.status().term;
    let election_timeout = Duration::from_millis(switch.leadership.raft().config().election_timeout_max);
    let started = Instant::now();
    let mut payment = 1;
    while started.elapsed() < election_timeout * 3 {
        let paid = bank_a.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 100)).await;
        assert_eq!(paid.expect("the cluster serves").into_inner().state, proto::PaymentState::Completed as i32);
        payment += 1;
    }
    let status = switch.leadership.status();
    assert_eq!((status.term, status.leader), (term, Some(leader as u64 + 1)), "the removed node caused an election");
    assert!(!status.voters.contains(&removed_id) && !status.learners.contains(&removed_id), "{status:?}");
    let mut at_removed = cluster.endpoint(removed).psp("bank-a").await;
    let refused = at_removed.payments.pay(pay(payment, "ana@bank-a", "bo@bank-b", 100)).await.expect_err("removed");
    assert!(
        matches!(switch::reason::reason_of(&refused), Some(Reason::NotLeader | Reason::NoLeader)),
        "a removed node serves nothing: {refused:?}"
    );
    assert_eq!(bank_a.position().await.balance_minor, 1_000_000 - (payment as i64 - 1) * 100);
    let accounts = switch.ledger.store().expect("the store").all_accounts().expect("accounts");
    let debits: u128 = accounts.iter().map(|account| account.debits_posted + account.debits_pending).sum();
    let credits: u128 = accounts.iter().map(|account| account.credits_posted + account.credits_pending).sum();
    assert_eq!(debits, credits, "money created or lost");
    cluster.stop_all().await;
}
