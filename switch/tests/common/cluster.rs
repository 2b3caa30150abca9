//! A replicated switch of several nodes in this process (`server::Background` each), on
//! loopback ports the OS picked, with one development CA shared by all: it issues every node's
//! server and node certificates and the PSPs' and operators' client certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switch::config::{Config, Member};
use switch::core::Switch;
use switch::server::Background;
use switch::tls::DevelopmentCa;

use super::Endpoint;

/// Generous bound for a shared 2-core machine; the tests wait for conditions, never for time.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<Config>,
    /// `None`: that node is stopped.
    pub nodes: Vec<Option<Background>>,
}

/// Free loopback ports: bound and released, so a node can bind them by number (every member
/// must know the others' addresses before any starts).
fn free_ports(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> =
        (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("address")).collect()
}

impl TestCluster {
    /// Starts `size` nodes, ids 1 to `size`, that form one cluster.
    pub async fn start(size: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = DevelopmentCa::new(dir.path().join("ca"));
        ca.ensure().expect("the development CA");
        let ports = free_ports(size * 2);
        let members: Vec<Member> = (0..size)
            .map(|index| Member {
                id: index as u64 + 1,
                peer_address: ports[index * 2 + 1].to_string(),
                psp_address: ports[index * 2].to_string(),
            })
            .collect();
        let configs: Vec<Config> = (0..size)
            .map(|index| {
                let id = index as u64 + 1;
                let node = ca.issue_node(id, &["localhost", "127.0.0.1"]).expect("node certificate");
                let server = ca.server();
                let mut config = Config { data_dir: dir.path().join(format!("node-{id}")), ..Config::default() }
                    .on_ephemeral_ports();
                config.listen = ports[index * 2];
                config.cluster.peer_listen = ports[index * 2 + 1];
                config.cluster.node_id = id;
                config.cluster.members = members.clone();
                config.cluster.node_certificate = Some(node.certificate);
                config.cluster.node_key = Some(node.key);
                config.tls.ca_certificate = Some(ca.ca_certificate());
                config.tls.server_certificate = Some(server.certificate);
                config.tls.server_key = Some(server.key);
                config
            })
            .collect();
        let mut nodes = Vec::new();
        for config in &configs {
            nodes.push(Some(Background::start(config.clone()).await.expect("start a node")));
        }
        TestCluster { dir, configs, nodes }
    }

    /// The shared CA (client certificates for PSPs and operators).
    pub fn ca(&self) -> DevelopmentCa {
        DevelopmentCa::new(self.dir.path().join("ca"))
    }

    /// Where PSPs reach node `index` (0-based).
    pub fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.configs[index].listen, ca: self.ca() }
    }

    /// Waits until one running node leads and serves its switch, and every running follower has
    /// its whole log (a settled cluster: the leader's first writes do not wait on a follower
    /// still catching up): its index and switch.
    pub async fn leader(&self) -> (usize, Arc<Switch>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let running: Vec<u64> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.is_some())
            .map(|(index, _)| index as u64 + 1)
            .collect();
        loop {
            for (index, node) in self.nodes.iter().enumerate() {
                let Some(switch) = node.as_ref().and_then(Background::switch) else { continue };
                let status = switch.leadership.status();
                let settled = status
                    .replication
                    .iter()
                    .filter(|follower| running.contains(&follower.node_id))
                    .all(|follower| follower.lag == Some(0) && follower.matched_index.is_some());
                if settled {
                    return (index, switch);
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no node leads a settled cluster");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `index` gracefully.
    pub async fn stop(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].take() {
            node.stop().await.expect("the node stopped cleanly");
        }
    }

    /// Starts node `index` again on its data.
    pub async fn restart(&mut self, index: usize) {
        assert!(self.nodes[index].is_none(), "node {index} is running");
        self.nodes[index] = Some(Background::start(self.configs[index].clone()).await.expect("restart a node"));
    }

    pub async fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.stop(index).await;
        }
    }
}
