//! `peer_source_address`: a node's connections to its peers leave from the configured address
//! of this host (what lets a multi-homed host replicate over one interface, and what the
//! switch's partition test tells nodes apart by), and a node configured with an address that
//! is not this host's refuses to start instead of finding every peer unreachable.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use cluster::node::{self, Node, NodeOptions};
use cluster::SwitchNode;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

fn options(directory: &std::path::Path, source: &str) -> NodeOptions {
    let mut options = NodeOptions::new(1, directory, node::raft_config(10_000).expect("valid raft config"));
    options.peer_source_address = Some(source.parse::<IpAddr>().expect("an address"));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_peers_leave_from_the_configured_source_address() {
    let root = tempfile::tempdir().expect("directory");
    // Node 2 is this listener: it only records where connections come from.
    let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let own = listener.local_addr().expect("address").to_string();
    // All of 127.0.0.0/8 is loopback on Linux: 127.0.0.7 is an address of this host.
    let node = Node::start(options(root.path(), "127.0.0.7"), listener).await.expect("start the node");
    let peer_address = peer.local_addr().expect("address").to_string();
    let members = BTreeMap::from([
        (1, SwitchNode { peer_address: own, psp_address: String::new() }),
        (2, SwitchNode { peer_address, psp_address: String::new() }),
    ]);
    node.raft.initialize(members).await.expect("initialize");
    // Node 1 campaigns: its (pre-)vote request dials node 2.
    let (_connection, from) = tokio::time::timeout(WAIT, peer.accept()).await.expect("node 1 dials").expect("accept");
    assert_eq!(from.ip(), "127.0.0.7".parse::<IpAddr>().expect("an address"), "the connection's source");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_address_that_is_not_this_hosts_stops_the_node_at_start() {
    let root = tempfile::tempdir().expect("directory");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    // TEST-NET-1 (RFC 5737): documentation only, never an address of a host.
    let error = match Node::start(options(root.path(), "192.0.2.1"), listener).await {
        Ok(_) => panic!("a node started with a source address it cannot bind"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(message.contains("peer_source_address 192.0.2.1"), "the error names the option: {message}");
    assert!(!root.path().join("raft").exists(), "nothing was created before the check");
}
