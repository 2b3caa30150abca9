//! Three `switch serve` processes on loopback; the test partitions the leader from the other two
//! while a PSP pays without pause through whichever node leads (following NOT_LEADER's
//! `switch-leader` trailer, retrying every payment with its own id), then heals the partition;
//! three times, each time isolating the node that leads then. Checked each time: the isolated
//! node acknowledges nothing once the partition is in force (new payments keep being sent to it:
//! each is refused, NOT_LEADER, NO_LEADER or LEDGER_UNAVAILABLE, or times out, and none is ever
//! in the ledger); the two others elect a leader in a newer term that serves the payer;
//! after healing, the old leader is a follower in the new leader's term, which stays the leader
//! (pre-vote: the returning node disturbs nothing), and catches up. At the end: every
//! acknowledged payment completed exactly once, balances sum to zero, and once stopped every
//! node's ledger has the same head (hash chain) and the same accounts.
//!
//! How the partition is made. The address a node dials for a peer is the peer's `peer_address`
//! in the replicated membership, the same for every node, and a leader's appends travel on
//! connections the leader opens. So a proxy in front of each node (common/proxy.rs: the members
//! advertise the proxies) sees what reaches its node, but to cut the leader's appends to a
//! follower while the follower still hears the other follower, it must know who dialled. Each
//! node's connections to peers therefore leave from an address of its own, 127.0.0.11 to .13
//! (`cluster.peer_source_address`, a real option for hosts that must replicate over a given
//! interface; all of 127.0.0.0/8 is loopback on Linux), and the proxies cut or freeze by source.
//! Chosen over network namespaces, which need root and iproute2 and would make `cargo test`
//! depend on the machine; with distinct non-default source addresses, a node that ignored its
//! option would show up as a connection from 127.0.0.1, which the proxies refuse and count.
//! The partitions alternate between refusing (connections closed) and freezing (connections
//! held open, nothing delivered, as when a network drops packets), which exercise different
//! failure detection: an error at once, or a request and keep-alive timeout.
//!
//! Printed for the record (`--nocapture`), never asserted: how long the majority took to elect a
//! leader and to acknowledge a payment after each partition, and what the isolated node
//! answered.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::payer::{ClusterView, Payer};
use common::processes::{NodePorts, ProcessCluster, Setup, WAIT};
use common::proxy::{Link, PeerProxies};
use common::{id, pay};
use switch::proto::{self, PaymentState, Reason};

/// The partitions, in order; each isolates the node that leads when it starts.
const PARTITIONS: [Link; 3] = [Link::Cut, Link::Freeze, Link::Cut];
/// Payments acknowledged before each partition, and by the new leader during it.
const ACKED_BETWEEN: usize = 30;
const FUNDS: u64 = 1_000_000_000;
const AMOUNT: u64 = 7;
/// The payments sent to the isolated node: ids far above the payer's.
const PROBE_IDS: u128 = 1 << 64;
/// How often a new payment is sent to the isolated node.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Payments sent to the new leader as soon as it is elected: ids far above the payer's too.
const SERVED_IDS: u128 = 1 << 80;

/// The address node `index`'s connections to its peers leave from.
fn source_address(index: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + index as u8])
}

/// What the isolated node answered one new payment.
#[derive(Debug)]
enum Answer {
    /// Refused with a reason (the outcome is known: not paid, or unknown for
    /// LEDGER_UNAVAILABLE): sent this long into the partition, answered after this long.
    Refused(Reason, Duration, Duration),
    /// No answer in time, or a transport error: unknown, resolved by status later.
    Unknown(String),
    /// Anything else is a failure of the test: an acknowledgement, another reason.
    Unexpected(String),
}

/// Sends node `node` a new payment (fresh ids from `first`) every `PROBE_EVERY` until `stop`,
/// each without waiting for the ones before (so they arrive all through the partition: while
/// the node still holds its lease and after); then each id with what the node answered.
async fn probe(
    view: ClusterView,
    node: usize,
    first: u128,
    partitioned_at: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(u128, Answer)> {
    let client = loop {
        match view.client(node).await {
            Ok(client) => break client,
            Err(error) => {
                assert!(!stop.load(Ordering::Relaxed), "cannot connect to node {}: {error}", node + 1);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        }
    };
    let mut sent = tokio::task::JoinSet::new();
    let mut payment = first;
    while !stop.load(Ordering::Relaxed) {
        let mut client = client.clone();
        sent.spawn(async move {
            let started = Instant::now();
            let call = client.pay(pay(payment, "ana@bank-a", "bo@bank-b", AMOUNT));
            let answer = match tokio::time::timeout(Duration::from_secs(10), call).await {
                Ok(Ok(acknowledged)) => Answer::Unexpected(format!("acknowledged: {:?}", acknowledged.into_inner())),
                Ok(Err(status)) => match common::reason(&status) {
                    Some(reason @ (Reason::NotLeader | Reason::NoLeader | Reason::LedgerUnavailable)) => {
                        Answer::Refused(reason, started.saturating_duration_since(partitioned_at), started.elapsed())
                    }
                    Some(other) => Answer::Unexpected(format!("refused {other:?}: {status:?}")),
                    None => Answer::Unknown(format!("{status:?}")),
                },
                Err(_) => Answer::Unknown("no answer in 10 s".into()),
            };
            (payment, answer)
        });
        payment += 1;
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let mut answers = sent.join_all().await;
    answers.sort_by_key(|(payment, _)| *payment);
    answers
}

/// One line on what the isolated node answered: per reason, how many, when they were sent, how
/// many waited over a second for their answer and the longest wait.
fn summary(answers: &[(u128, Answer)]) -> String {
    let mut lines = Vec::new();
    for reason in [Reason::LedgerUnavailable, Reason::NoLeader, Reason::NotLeader] {
        let times: Vec<(Duration, Duration)> = answers
            .iter()
            .filter_map(|(_, answer)| match answer {
                Answer::Refused(refused, sent, took) if *refused == reason => Some((*sent, *took)),
                _ => None,
            })
            .collect();
        let (Some(first), Some(last)) = (times.iter().map(|time| time.0).min(), times.iter().map(|time| time.0).max())
        else {
            continue;
        };
        let waited = times.iter().filter(|time| time.1 > Duration::from_secs(1)).count();
        let longest = times.iter().map(|time| time.1).max().unwrap_or_default();
        lines.push(format!(
            "{} {reason:?} (sent {first:.1?} to {last:.1?} into the partition; {waited} waited over 1 s, the longest {longest:.1?})",
            times.len()
        ));
    }
    let unknown: Vec<&str> = answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Unknown(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    lines.push(format!("{} unknown {unknown:?}", unknown.len()));
    lines.join(", ")
}

/// Waits until node `node` follows `leader` in the leader's term.
async fn follows(cluster: &ProcessCluster, node: usize, leader: usize) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, leading) = (cluster.status(node).await, cluster.status(leader).await);
        if let (Some(status), Some(leading)) = (&status, &leading) {
            let term = leading["term"].as_u64();
            if status["role"] == "follower"
                && status["term"].as_u64() == term
                && status["leader"].as_u64() == Some(leader as u64 + 1)
                && leading["role"] == "leader"
            {
                return term.unwrap_or(0);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} does not follow node {}: {status:?} / {leading:?}\n{}",
            node + 1,
            leader + 1,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pays `payment` at node `node`, which leads: sent again with the same id while the node is not
/// yet serving (a new leader first applies what was committed before its term), until it is
/// acknowledged.
async fn pay_at(view: &ClusterView, node: usize, payment: u128) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut client = view.client(node).await.expect("connect to the new leader");
    loop {
        match client.pay(pay(payment, "ana@bank-a", "bo@bank-b", AMOUNT)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                assert_eq!(answer.state, PaymentState::Completed as i32, "payment {payment}: {answer:?}");
                return;
            }
            Err(status) => {
                let reason = common::reason(&status);
                assert!(
                    matches!(reason, Some(Reason::NoLeader | Reason::LedgerUnavailable)),
                    "payment {payment} at node {}: {status:?}",
                    node + 1
                );
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "node {} never served payment {payment}", node + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node `node` has applied index `index`.
async fn applied(cluster: &ProcessCluster, node: usize, index: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let at = cluster.status(node).await.and_then(|status| status["applied_index"].as_u64());
        if at.is_some_and(|at| at >= index) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {} is stuck at {at:?} below {index}", node + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn term_of(cluster: &ProcessCluster, node: usize) -> u64 {
    let status = cluster.status(node).await.expect("the node answers /cluster");
    status["term"].as_u64().expect("a term")
}

/// One partition: waits for the payer to be served, isolates the leader (`link` both ways with
/// each other node), probes it, waits for the majority to elect a leader and serve, heals, and
/// waits for the old leader to follow and catch up. Returns the ids sent to the isolated node,
/// and the one acknowledged by the new leader.
async fn partition_and_heal(
    cluster: &ProcessCluster,
    proxies: &PeerProxies,
    payer: &Payer,
    partition: usize,
    link: Link,
) -> (Vec<u128>, u128) {
    payer.served(payer.count(), ACKED_BETWEEN, |_| true, &format!("before partition {partition}")).await;
    let isolated = cluster.leader().await;
    let majority: Vec<usize> = (0..3).filter(|node| *node != isolated).collect();
    let term_before = term_of(cluster, isolated).await;
    proxies.isolate(isolated, link).await;
    let (partitioned_at, acked_at_partition) = (Instant::now(), payer.count());

    // From now on the isolated node is sent new payments it must not acknowledge.
    let stop_probing = Arc::new(AtomicBool::new(false));
    let first_probe = PROBE_IDS + partition as u128 * 1_000_000;
    let probing = tokio::spawn(probe(cluster.view(), isolated, first_probe, partitioned_at, Arc::clone(&stop_probing)));

    // The majority elects a leader in a newer term, which serves: a payment sent to it, and the
    // payer's.
    let elected = cluster.leader_among(&majority).await;
    let elected_after = partitioned_at.elapsed();
    let elected_term = term_of(cluster, elected).await;
    assert!(elected_term > term_before, "node {} leads in term {elected_term}, not after {term_before}", elected + 1);
    let served = SERVED_IDS + partition as u128;
    pay_at(&cluster.view(), elected, served).await;
    let serving_after = partitioned_at.elapsed();
    payer
        .served(acked_at_partition, ACKED_BETWEEN, |node| node == elected, &format!("during partition {partition}"))
        .await;
    let payer_served_after = (acked_at_partition..payer.count())
        .filter_map(|index| payer.get(index))
        .find(|acknowledged| acknowledged.node != isolated)
        .map(|acknowledged| acknowledged.at.saturating_duration_since(partitioned_at));
    let isolated_status = cluster.status(isolated).await.unwrap_or_default();

    stop_probing.store(true, Ordering::Relaxed);
    let answers = probing.await.expect("the probe");
    assert!(!answers.is_empty(), "partition {partition}: no payment reached the isolated node");
    for (payment, answer) in &answers {
        if let Answer::Unexpected(what) = answer {
            panic!("partition {partition}: the isolated node {} answered payment {payment}: {what}", isolated + 1);
        }
    }
    eprintln!(
        "partition {partition} ({link:?}): node {} isolated in term {term_before}; node {} elected in term \
         {elected_term} after {elected_after:.1?}, serving (a payment acknowledged) after {serving_after:.1?}; \
         the payer's first payment acknowledged by the majority after {payer_served_after:.1?}",
        isolated + 1,
        elected + 1,
    );
    eprintln!(
        "partition {partition}: the isolated node, then {} in term {}, answered {} new payments: {}",
        isolated_status["role"],
        isolated_status["term"],
        answers.len(),
        summary(&answers),
    );

    // Healed: the old leader follows the new one in its term, and catches up.
    proxies.heal().await;
    let healed_at = Instant::now();
    let term = follows(cluster, isolated, elected).await;
    let committed = cluster.status(elected).await.and_then(|status| status["committed_index"].as_u64());
    applied(cluster, isolated, committed.expect("the leader's committed index")).await;
    eprintln!(
        "partition {partition}: healed; node {} follows node {} in term {term} and caught up after {:.1?}",
        isolated + 1,
        elected + 1,
        healed_at.elapsed()
    );
    (answers.into_iter().map(|(payment, _)| payment).collect(), served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_the_majority_serves_and_it_rejoins() {
    let ports: Vec<NodePorts> = (0..3).map(|_| NodePorts::free()).collect();
    let sources: Vec<IpAddr> = (0..3).map(source_address).collect();
    let proxies = PeerProxies::start(&ports.iter().map(|node| node.peer).collect::<Vec<_>>(), &sources).await;
    let setup = Setup {
        ports,
        peer_addresses: proxies.addresses(),
        peer_source_addresses: sources.iter().copied().map(Some).collect(),
    };
    let mut cluster = ProcessCluster::start_with(setup);
    let first = cluster.leader().await;
    let (mut bank_a, _bank_b) = cluster.endpoint(first).payer_and_payee(0, FUNDS).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", AMOUNT)).await.expect("a first payment");

    let payer = Payer::start(cluster.view(), first, 2, AMOUNT);
    let (mut probes, mut served_payments) = (Vec::new(), Vec::new());
    for (partition, link) in PARTITIONS.into_iter().enumerate() {
        let (sent_to_isolated, served) = partition_and_heal(&cluster, &proxies, &payer, partition, link).await;
        probes.extend(sent_to_isolated);
        served_payments.push(served);
    }
    let mut acknowledged = payer.stop().await;
    acknowledged.push(1);
    acknowledged.extend(served_payments);

    cluster.converged().await;
    cluster.assert_acknowledged_paid_once(&acknowledged, AMOUNT, FUNDS).await;
    // What the isolated nodes were sent is in no ledger: refused, or an unknown outcome that
    // resolves to never paid.
    let leading = cluster.endpoint(cluster.leader().await);
    let mut payments = leading.psp("bank-a").await.payments;
    for payment in probes {
        let request = proto::GetPaymentStatusRequest { payment_id: id(payment) };
        match payments.get_payment_status(request).await {
            Err(status) => assert_eq!(common::reason(&status), Some(Reason::PaymentNotFound), "payment {payment}"),
            Ok(found) => {
                panic!("payment {payment}, sent to an isolated node, is in the ledger: {:?}", found.into_inner())
            }
        }
    }
    assert_eq!(proxies.unknown_sources(), 0, "connections between nodes left from no node's source address");
    cluster.stop_and_assert_same_ledgers();
}
