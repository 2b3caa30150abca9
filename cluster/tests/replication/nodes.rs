//! Three nodes of the replicated ledger in one process, each with its own Raft log and ledger on
//! disk and real gRPC between them on loopback: payments acknowledged by the leader are on every
//! node; the leader stopped, another takes over and nothing acknowledged is lost; the old leader
//! restarted from its disk catches up; a new node catches up from a snapshot once the log it
//! would need is purged; with two of three nodes down nothing is acknowledged. Every node ends
//! with the same ledger (head hash, balances), and the balances sum to zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cluster::node::{self, Node, NodeOptions};
use cluster::types::Applied;
use cluster::{Proposal, SwitchNode};
use ledger::{Account, Event, LedgerConfig, ResultCode, Transfer, WideSum};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::Config;
use tokio::net::TcpListener;

/// Generous bounds for a shared 2-core machine; the tests wait for conditions, never for time.
const WAIT: Duration = Duration::from_secs(30);

fn raft_config(snapshot_every: u64) -> Arc<Config> {
    node::raft_config(snapshot_every).expect("valid raft config")
}

fn ledger_config(directory: &Path) -> LedgerConfig {
    let mut config = LedgerConfig::new(directory.join("ledger"));
    config.batch_size_max = 1_024;
    config.events_in_flight_max = 4_096;
    config.recent_transfers_max = 8_192;
    config
}

fn node_info(address: &str) -> SwitchNode {
    SwitchNode { peer_address: address.to_string(), psp_address: String::new() }
}

/// A CA, and certificates it issued for nodes 1 to 4 and for a PSP.
struct Pki {
    ca: String,
    nodes: BTreeMap<u64, (String, String)>,
    psp: (String, String),
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.clone().self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |uri: String| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
            params.subject_alt_names.push(SanType::URI(uri.try_into().expect("uri")));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            (params.signed_by(&key, &issuer).expect("sign").pem(), key.serialize_pem())
        };
        let nodes = (1..=4).map(|id| (id, leaf(cluster::identity::node_uri(id)))).collect();
        let psp = leaf("spiffe://switch/psp/bank-a".to_string());
        Pki { ca: ca_pem, nodes, psp }
    }

    fn client(&self, (certificate, key): &(String, String)) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .identity(tonic::transport::Identity::from_pem(certificate, key))
    }

    fn server(&self, id: u64) -> tonic::transport::ServerTlsConfig {
        let (certificate, key) = &self.nodes[&id];
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(certificate, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
    }
}

async fn start(id: u64, directory: &Path, listener: TcpListener, snapshot_every: u64) -> Node {
    start_with(id, directory, listener, snapshot_every, None).await
}

/// Starts a node; with `pki`, its peer port and its calls to peers use mutual TLS and it serves
/// nodes only.
async fn start_with(id: u64, directory: &Path, listener: TcpListener, snapshot_every: u64, pki: Option<&Pki>) -> Node {
    let mut options = NodeOptions::new(id, directory, raft_config(snapshot_every));
    options.ledger = ledger_config(directory);
    options.tls = pki.map(|pki| (pki.server(id), pki.client(&pki.nodes[&id])));
    // Purge decisions often and with a small margin, so a test sees them.
    options.purge_interval = Duration::from_millis(100);
    options.purge_keep = 2;
    Node::start(options, listener).await.expect("start the node")
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// Binds the address a stopped node had (the kernel may take a moment to release it).
async fn rebind(address: &str) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(address).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {address} again");
}

async fn leader_of(nodes: &[&Node]) -> u64 {
    let metrics = nodes[0]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.current_leader.is_some_and(|leader| nodes.iter().any(|node| node.id == leader)),
            "a leader among the live nodes",
        )
        .await
        .expect("a leader is elected");
    let leader = metrics.current_leader.expect("checked above");
    // A new leader takes writes once a quorum has acknowledged it (its lease); until then it
    // answers that it is not (yet) the leader.
    let node = nodes.iter().find(|node| node.id == leader).expect("the leader is live");
    node.raft
        .wait(Some(WAIT))
        .leader_with_quorum_acked(None, "the leader's lease")
        .await
        .expect("a quorum acks the leader");
    leader
}

fn account(id: u128) -> Account {
    Account { id, ledger: 1, code: 10, ..Account::default() }
}

const ACCOUNTS: u128 = 8;

/// Writes `count` proposals of payments through `leader`, each a small batch; returns the ids of
/// the payments acknowledged as completed.
async fn pay(leader: &Node, first_id: u128, count: usize) -> Vec<u128> {
    let mut acknowledged = Vec::new();
    for round in 0..count {
        let events: Vec<Event> = (0..4u128)
            .map(|offset| {
                let id = first_id + round as u128 * 4 + offset;
                Event::CreateTransfer(Transfer {
                    id,
                    debit_account_id: 1 + id % ACCOUNTS,
                    credit_account_id: 1 + (id + 3) % ACCOUNTS,
                    amount: 10 + id % 7,
                    ledger: 1,
                    code: 1,
                    ..Transfer::default()
                })
            })
            .collect();
        let ids: Vec<u128> = events
            .iter()
            .filter_map(|event| match event {
                Event::CreateTransfer(transfer) => Some(transfer.id),
                _ => None,
            })
            .collect();
        let response = write(leader, Proposal { timestamp: now(), events }).await;
        let Applied(Some(batch)) = response.data else { panic!("a proposal of events applies as a batch") };
        assert!(batch.results.iter().all(|result| *result == ResultCode::Ok), "{:?}", batch.results);
        acknowledged.extend(ids);
    }
    acknowledged
}

/// Writes through `leader`, retrying while it answers that it has no lease yet: such a refusal
/// comes before the entry is appended, so the retry cannot apply it twice.
async fn write(leader: &Node, proposal: Proposal) -> openraft::raft::ClientWriteResponse<cluster::TypeConfig> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match leader.raft.client_write(proposal.clone()).await {
            Ok(response) => return response,
            Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(forward)))
                if forward.leader_id.is_none_or(|id| id == leader.id) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("write through node {}: {error}", leader.id),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64)
}

async fn wait_applied(node: &Node, index: Option<u64>) {
    node.raft.wait(Some(WAIT)).applied_index_at_least(index, "caught up").await.expect("the node catches up");
}

fn balances(node: &Node) -> Vec<(u128, u128, u128)> {
    node.machine
        .read(|applier| {
            let mut accounts: Vec<_> =
                applier.accounts().map(|account| (account.id, account.debits_posted, account.credits_posted)).collect();
            accounts.sort_unstable();
            accounts
        })
        .expect("read balances")
}

/// Every node holds the same ledger, money is conserved, and every acknowledged payment is there.
fn assert_same_ledger(nodes: &[&Node], acknowledged: &[u128]) {
    let head = nodes[0].machine.head().expect("head");
    let expected = balances(nodes[0]);
    let (mut debits, mut credits) = (WideSum::default(), WideSum::default());
    for (_, debited, credited) in &expected {
        debits.add(*debited);
        credits.add(*credited);
    }
    assert_eq!(debits, credits, "balances sum to zero");
    for node in nodes {
        assert_eq!(node.machine.head().expect("head"), head, "node {} has another ledger head", node.id);
        assert_eq!(balances(node), expected, "node {} has other balances", node.id);
        let ids = acknowledged.to_vec();
        let stored = node.machine.read(move |applier| applier.store().transfers(&ids).expect("read")).expect("read");
        let missing: Vec<u128> =
            acknowledged.iter().zip(&stored).filter(|(_, stored)| stored.is_none()).map(|(id, _)| *id).collect();
        assert!(missing.is_empty(), "node {} lacks acknowledged payments {missing:?}", node.id);
    }
}

/// Waits until every node has applied what the leader has, checks they hold the same ledger with
/// every acknowledged payment, and stops them.
async fn converge_and_check(nodes: Vec<Node>, leader: u64, acknowledged: &[u128]) {
    let last =
        nodes.iter().find(|node| node.id == leader).expect("leader").raft.metrics().borrow_watched().last_applied;
    for node in &nodes {
        wait_applied(node, last.map(|log_id| log_id.index)).await;
    }
    assert_same_ledger(&nodes.iter().collect::<Vec<_>>(), acknowledged);
    for node in nodes {
        node.stop().await;
    }
}

async fn three_nodes(root: &Path, snapshot_every: u64) -> Vec<Node> {
    three_nodes_with(root, snapshot_every, None).await
}

async fn three_nodes_with(root: &Path, snapshot_every: u64, pki: Option<&Pki>) -> Vec<Node> {
    let listeners = [listener().await, listener().await, listener().await];
    let addresses: Vec<String> =
        listeners.iter().map(|listener| listener.local_addr().expect("address").to_string()).collect();
    let mut nodes = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let id = index as u64 + 1;
        nodes.push(start_with(id, &root.join(format!("node-{id}")), listener, snapshot_every, pki).await);
    }
    let members: BTreeMap<u64, SwitchNode> =
        addresses.iter().enumerate().map(|(index, address)| (index as u64 + 1, node_info(address))).collect();
    nodes[0].raft.initialize(members).await.expect("initialize the cluster");
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let leader = nodes.iter().find(|node| node.id == leader).expect("the leader is one of them");
    let accounts = (1..=ACCOUNTS).map(|id| Event::CreateAccount(account(id))).collect();
    write(leader, Proposal { timestamp: now(), events: accounts }).await;
    nodes
}

fn take(nodes: &mut Vec<Node>, id: u64) -> Node {
    let position = nodes.iter().position(|node| node.id == id).expect("that node is running");
    nodes.remove(position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_the_leader_stopping_and_the_old_leader_catches_up() {
    let root = tempfile::tempdir().expect("directory");
    let mut nodes = three_nodes(root.path(), 10_000).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let mut acknowledged = pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 1_000, 20).await;

    // The leader stops; the two others elect one of themselves and go on.
    let (old_id, old_directory, old_address) = take(&mut nodes, leader).stop().await;
    let new_leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    assert_ne!(new_leader, old_id);
    let leader_node = nodes.iter().find(|node| node.id == new_leader).expect("new leader");
    acknowledged.extend(pay(leader_node, 5_000, 10).await);

    // The old leader comes back from its disk and catches up from the new leader's log.
    let restarted = start(old_id, &old_directory, rebind(&old_address).await, 10_000).await;
    nodes.push(restarted);
    converge_and_check(nodes, new_leader, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_when_the_log_is_purged() {
    let root = tempfile::tempdir().expect("directory");
    let mut nodes = three_nodes(root.path(), 10).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let leader_node = nodes.iter().find(|node| node.id == leader).expect("leader");
    let acknowledged = pay(leader_node, 1_000, 30).await;
    // A snapshot, then the log below it purged on the leader: a new node cannot be sent it.
    leader_node.raft.trigger().snapshot().await.expect("snapshot");
    let snapshot = leader_node
        .raft
        .wait(Some(WAIT))
        .metrics(|metrics| metrics.snapshot.is_some_and(|log_id| log_id.index >= 30), "a snapshot past the payments")
        .await
        .expect("snapshot taken")
        .snapshot
        .expect("checked above");
    leader_node.raft.trigger().purge_log(snapshot.index).await.expect("purge");
    leader_node
        .raft
        .wait(Some(WAIT))
        .metrics(|metrics| metrics.purged.is_some_and(|log_id| log_id.index >= snapshot.index), "log purged")
        .await
        .expect("purged");

    // Node 4 (ids are never reused) joins as a learner, then a voter: it must get the snapshot.
    let listener = listener().await;
    let address = listener.local_addr().expect("address").to_string();
    // Node 4 never snapshots on its own: a snapshot it holds is one it was sent.
    let fourth = start(4, &root.path().join("node-4"), listener, 1 << 40).await;
    leader_node.raft.add_learner(4, node_info(&address), true).await.expect("add the learner");
    leader_node
        .raft
        .change_membership(openraft::ChangeMembers::AddVoterIds(BTreeSet::from([4])), false)
        .await
        .expect("make it a voter");
    nodes.push(fourth);
    let fourth = nodes.last().expect("just pushed");
    // It cannot have been sent the purged entries: it must install the leader's snapshot.
    fourth
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.snapshot.is_some_and(|log_id| log_id.index >= snapshot.index),
            "node 4 installed the snapshot",
        )
        .await
        .expect("node 4 installed the leader's snapshot");
    converge_and_check(nodes, leader, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_nodes_down_nothing_is_acknowledged_until_one_returns() {
    let root = tempfile::tempdir().expect("directory");
    let mut nodes = three_nodes(root.path(), 10_000).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let mut acknowledged = pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 1_000, 5).await;
    let followers: Vec<u64> = nodes.iter().map(|node| node.id).filter(|id| *id != leader).collect();
    let mut stopped = Vec::new();
    for id in &followers {
        stopped.push(take(&mut nodes, *id).stop().await);
    }
    // The lone node cannot reach a quorum: the write is not acknowledged (it may still be
    // pending, or refused once the node notices it lost its quorum).
    let lone = &nodes[0];
    let event = Event::CreateTransfer(Transfer {
        id: 9_999,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 5,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    });
    let write = tokio::time::timeout(
        Duration::from_secs(3),
        lone.raft.client_write(Proposal { timestamp: now(), events: vec![event] }),
    )
    .await;
    assert!(!matches!(write, Ok(Ok(_))), "a write was acknowledged without a quorum: {write:?}");

    // One follower returns: a quorum again, and writes are acknowledged.
    let (id, directory, address) = stopped.remove(0);
    nodes.push(start(id, &directory, rebind(&address).await, 10_000).await);
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    acknowledged.extend(pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 7_000, 3).await);
    converge_and_check(nodes, leader, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_mutual_tls_and_refuse_a_certificate_that_names_no_node() {
    let root = tempfile::tempdir().expect("directory");
    let pki = Pki::new();
    let nodes = three_nodes_with(root.path(), 10_000, Some(&pki)).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let acknowledged = pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 1_000, 5).await;

    // A PSP's certificate from the same CA gets through the handshake, and no further: it may
    // not vote (a vote for a huge term would otherwise depose the leader).
    let target = nodes.iter().find(|node| node.id == leader).expect("leader");
    let term = target.raft.metrics().borrow_watched().current_term;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", target.address))
        .expect("endpoint")
        .tls_config(pki.client(&pki.psp))
        .expect("client TLS")
        .connect()
        .await
        .expect("the handshake succeeds: the certificate is the CA's");
    let request = openraft::raft::VoteRequest {
        vote: cluster::Vote {
            leader_id: cluster::types::LeaderId { term: term + 1_000, node_id: 9 },
            committed: false,
        },
        last_log_id: None,
        leadership_transfer: false,
    };
    let refused = cluster::proto::raft_client::RaftClient::new(channel)
        .vote(cluster::proto::Frame { body: cluster::wire::encode_vote_request(&request) })
        .await
        .expect_err("a PSP may not vote");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(target.raft.metrics().borrow_watched().current_term, term, "the refused vote changed nothing");
    assert_eq!(target.raft.metrics().borrow_watched().current_leader, Some(leader));
    converge_and_check(nodes, leader, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_keeps_the_log_a_stopped_follower_needs_and_it_catches_up_from_it() {
    let root = tempfile::tempdir().expect("directory");
    let mut nodes = three_nodes(root.path(), 10).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let mut acknowledged = pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 1_000, 3).await;
    let behind = nodes.iter().map(|node| node.id).find(|id| *id != leader).expect("a follower");
    let leader_node = nodes.iter().find(|node| node.id == leader).expect("leader");
    let last = leader_node.raft.metrics().borrow_watched().last_log_index;
    let matched = leader_node
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|members| members.get(&behind).cloned().flatten())
                    .map(|log_id| log_id.index)
                    == last
            },
            "the follower has everything so far",
        )
        .await
        .expect("replicated")
        .last_log_index
        .expect("entries exist");
    let (id, directory, address) = take(&mut nodes, behind).stop().await;

    // Many entries and snapshots later, the leader has purged, but nothing the stopped follower lacks.
    let leader_node = nodes.iter().find(|node| node.id == leader).expect("leader");
    acknowledged.extend(pay(leader_node, 5_000, 40).await);
    let metrics = leader_node
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.purged.is_some() && metrics.snapshot.is_some_and(|log_id| log_id.index > matched + 20),
            "purged once a snapshot is past",
        )
        .await
        .expect("the leader snapshots and purges");
    let purged = metrics.purged.expect("checked above").index;
    assert!(purged <= matched, "the leader purged up to {purged}, past {matched}, which the stopped follower has");

    // The follower returns and catches up from the log the leader kept: it is sent no snapshot
    // (and takes none of its own).
    nodes.push(start(id, &directory, rebind(&address).await, 1 << 40).await);
    let last = leader_node_last_applied(&nodes, leader);
    let returned = nodes.iter().find(|node| node.id == id).expect("restarted");
    wait_applied(returned, last).await;
    assert_eq!(returned.raft.metrics().borrow_watched().snapshot, None, "the follower was sent a snapshot");
    converge_and_check(nodes, leader, &acknowledged).await;
}

fn leader_node_last_applied(nodes: &[Node], leader: u64) -> Option<u64> {
    let node = nodes.iter().find(|node| node.id == leader).expect("leader");
    node.raft.metrics().borrow_watched().last_applied.map(|log_id| log_id.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_calls_for_another_node_and_incomplete_snapshots_are_refused_and_change_nothing() {
    use cluster::proto::raft_client::RaftClient;
    use cluster::proto::Frame;
    use cluster::wire::{encode_snapshot_frame, SnapshotFrame};

    let root = tempfile::tempdir().expect("directory");
    let nodes = three_nodes(root.path(), 10_000).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let acknowledged = pay(nodes.iter().find(|node| node.id == leader).expect("leader"), 1_000, 3).await;
    let target = nodes.iter().find(|node| node.id != leader).expect("a follower");
    // Settled first: the follower has applied all the leader's log holds (not only what the
    // leader had applied: an entry it applied a moment later once moved the follower during the
    // frames, a flaky failure), so any later change is the frames'.
    let leader_log =
        nodes.iter().find(|node| node.id == leader).expect("leader").raft.metrics().borrow_watched().last_log_index;
    wait_applied(target, leader_log).await;
    let before = target.raft.metrics().borrow_watched().clone();
    let mut client = RaftClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", target.address))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    let frame = |body: Vec<u8>| Frame { body };
    for body in [vec![], vec![0xff; 3], vec![1; 40]] {
        let append = client.append(frame(body.clone())).await.expect_err("a garbage append frame");
        assert_eq!(append.code(), tonic::Code::InvalidArgument, "{append:?}");
        let vote = client.vote(frame(body.clone())).await.expect_err("a garbage vote frame");
        assert_eq!(vote.code(), tonic::Code::InvalidArgument, "{vote:?}");
    }
    // A call meant for another node is refused before it is read (a node that rejoined under a
    // new id on the old one's address must not answer for it); one meant for this node is read.
    let addressed = |target: &str| {
        let mut request = tonic::Request::new(frame(vec![1; 40]));
        let value = target.parse().expect("a header value");
        request.metadata_mut().insert(cluster::service::TARGET_NODE_HEADER, value);
        request
    };
    for other in ["99", "node-2"] {
        let refused = client.append(addressed(other)).await.expect_err("a call for another node");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    let read = client.append(addressed(&target.id.to_string())).await.expect_err("garbage for this node");
    assert_eq!(read.code(), tonic::Code::InvalidArgument, "{read:?}");
    // A snapshot stream without its end frame, one whose file name leaves the directory, and one
    // that does not start with its header: none is installed.
    let vote = target.raft.metrics().borrow_watched().vote;
    let header = encode_snapshot_frame(&SnapshotFrame::Header { vote, meta: vec![0] });
    let chunk = |file: &str| encode_snapshot_frame(&SnapshotFrame::Chunk { file: file.into(), data: vec![7; 10] });
    let escape = {
        // Built by hand: the encoder is not the point, the receiver's check is.
        let mut bytes = vec![2u8];
        bytes.extend_from_slice(&(5u16).to_le_bytes());
        bytes.extend_from_slice(b"../up");
        bytes.extend_from_slice(&(1u32).to_le_bytes());
        bytes.push(7);
        bytes
    };
    for frames in [vec![header.clone(), chunk("000001.sst")], vec![header.clone(), escape], vec![chunk("000001.sst")]] {
        let stream = tokio_stream::iter(frames.into_iter().map(frame).collect::<Vec<_>>());
        let refused = client.snapshot(stream).await.expect_err("an incomplete or unsafe snapshot");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    assert!(!target.directory.join("up").exists() && !target.directory.join("incoming/up").exists());
    let after = target.raft.metrics().borrow_watched().clone();
    assert_eq!(
        (after.current_term, after.snapshot, after.last_applied),
        (before.current_term, before.snapshot, before.last_applied),
        "a refused frame changed the node"
    );
    converge_and_check(nodes, leader, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_api_submits_through_the_leader_and_a_follower_answers_not_leader() {
    let root = tempfile::tempdir().expect("directory");
    let mut nodes = three_nodes(root.path(), 10_000).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let transfer = |id: u128, from: u128, to: u128| {
        Event::CreateTransfer(Transfer {
            id,
            debit_account_id: from,
            credit_account_id: to,
            amount: 25,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        })
    };
    // Through the leader's ledger, as the switch submits: several submissions, each its results.
    let leader_node = nodes.iter().find(|node| node.id == leader).expect("leader");
    let mut completions = Vec::new();
    for id in 0..20u128 {
        let events = vec![transfer(50_000 + 2 * id, 1, 2), transfer(50_001 + 2 * id, 2, 3)];
        completions.push(leader_node.ledger.submit(events).expect("queued"));
    }
    let mut acknowledged = Vec::new();
    for (index, completion) in completions.into_iter().enumerate() {
        let results = completion.await.expect("applied");
        assert_eq!(&results[..], &[ResultCode::Ok, ResultCode::Ok], "submission {index}");
        acknowledged.extend([50_000 + 2 * index as u128, 50_001 + 2 * index as u128]);
    }
    // A repeated id with another amount is refused by the ledger, as on a single node.
    let refused = leader_node
        .ledger
        .submit(vec![Event::CreateTransfer(Transfer {
            amount: 26,
            ..match transfer(50_000, 1, 2) {
                Event::CreateTransfer(transfer) => transfer,
                _ => unreachable!("built as a transfer"),
            }
        })])
        .expect("queued")
        .await
        .expect("applied");
    assert_eq!(&refused[..], &[ResultCode::ExistsWithDifferentAmount]);

    // A follower's ledger does not propose: it names the leader.
    let follower = nodes.iter().find(|node| node.id != leader).expect("a follower");
    let error =
        follower.ledger.submit(vec![transfer(60_000, 1, 2)]).expect("queued").await.expect_err("not the leader");
    assert_eq!(error, ledger::LedgerError::NotLeader { leader: Some(leader), address: None });
    let ids = [60_000];
    assert_eq!(follower.ledger.lookup_transfers(&ids).expect("read"), vec![None], "nothing was applied");

    // Reads on every node see the same applied payments once they caught up.
    let last = leader_node_last_applied(&nodes, leader);
    for node in &nodes {
        wait_applied(node, last).await;
        let found = node.ledger.lookup_transfers(&acknowledged).expect("read");
        assert!(found.iter().all(Option::is_some), "node {} lacks an acknowledged transfer", node.id);
    }

    // The leader stops; the new leader's ledger takes the next submission.
    let _ = take(&mut nodes, leader).stop().await;
    let new_leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let new_leader_node = nodes.iter().find(|node| node.id == new_leader).expect("new leader");
    let deadline = tokio::time::Instant::now() + WAIT;
    let results = loop {
        match new_leader_node.ledger.submit(vec![transfer(70_000, 3, 1)]).expect("queued").await {
            Ok(results) => break results,
            // Elected but without its lease yet: refused before anything was appended.
            Err(ledger::LedgerError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the new leader's ledger: {error}"),
        }
    };
    assert_eq!(&results[..], &[ResultCode::Ok]);
    acknowledged.push(70_000);
    converge_and_check(nodes, new_leader, &acknowledged).await;
}
