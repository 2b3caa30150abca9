//! Three `switch serve` child processes on loopback that form one replicated switch, each with
//! its own data directory, configuration file and log under one temporary directory, and one
//! development CA that issues every certificate. A test may have the members advertise other
//! peer addresses than the nodes' own (a proxy in front of each) and give each node the address
//! its connections to peers leave from (`cluster.peer_source_address`). Afterwards: every
//! acknowledged payment completed once, and every node's ledger the same.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switch::proto::{self, PaymentState};
use switch::tls::DevelopmentCa;

use super::{id, Endpoint};

/// Generous bound for a shared 2-core machine; the tests wait for conditions, never for time.
pub const WAIT: Duration = Duration::from_secs(90);

pub struct NodePorts {
    pub psp: SocketAddr,
    pub operator: SocketAddr,
    pub health: SocketAddr,
    pub peer: SocketAddr,
}

/// How the nodes are laid out before they start.
pub struct Setup {
    pub ports: Vec<NodePorts>,
    /// Node by node, the peer address the members list (the node's own peer port, or a proxy).
    pub peer_addresses: Vec<SocketAddr>,
    /// Node by node, `cluster.peer_source_address` (`None`: the system's choice).
    pub peer_source_addresses: Vec<Option<IpAddr>>,
}

impl Setup {
    /// `size` nodes on free loopback ports, reaching each other directly.
    pub fn direct(size: usize) -> Setup {
        let ports: Vec<NodePorts> = (0..size).map(|_| NodePorts::free()).collect();
        let peer_addresses = ports.iter().map(|node| node.peer).collect();
        Setup { ports, peer_addresses, peer_source_addresses: vec![None; size] }
    }
}

impl NodePorts {
    /// Free loopback ports: bound and released, so a node can bind them by number (every member
    /// must know the others' addresses before any starts).
    pub fn free() -> NodePorts {
        NodePorts { psp: free_port(), operator: free_port(), health: free_port(), peer: free_port() }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address")
}

/// One `switch serve --config` child, SIGKILLed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub ports: Vec<NodePorts>,
    processes: Vec<Option<Process>>,
}

impl ProcessCluster {
    /// Three nodes reaching each other directly.
    pub fn start() -> ProcessCluster {
        ProcessCluster::start_with(Setup::direct(3))
    }

    pub fn start_with(setup: Setup) -> ProcessCluster {
        let Setup { ports, peer_addresses, peer_source_addresses } = setup;
        assert!(ports.len() == peer_addresses.len() && ports.len() == peer_source_addresses.len(), "one per node");
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = DevelopmentCa::new(dir.path().join("ca"));
        ca.ensure().expect("the development CA");
        let members: String = ports
            .iter()
            .zip(&peer_addresses)
            .enumerate()
            .map(|(index, (node, peer))| {
                format!(
                    "[[cluster.members]]\nid = {}\npeer_address = \"{peer}\"\npsp_address = \"{}\"\n",
                    index + 1,
                    node.psp
                )
            })
            .collect();
        let path = |path: PathBuf| path.display().to_string();
        for (index, node) in ports.iter().enumerate() {
            let id = index + 1;
            let pair = ca.issue_node(id as u64, &["localhost", "127.0.0.1"]).expect("node certificate");
            let server = ca.server();
            let source = peer_source_addresses[index]
                .map(|address| format!("peer_source_address = \"{address}\"\n"))
                .unwrap_or_default();
            let config = format!(
                "data_dir = \"{data}\"\nlisten = \"{psp}\"\n[tls]\nca_certificate = \"{ca_pem}\"\nserver_certificate = \"{server}\"\nserver_key = \"{server_key}\"\n[operator]\nhttp_listen = \"{operator}\"\nhealth_listen = \"{health}\"\n[cluster]\nnode_id = {id}\npeer_listen = \"{peer}\"\n{source}node_certificate = \"{node}\"\nnode_key = \"{node_key}\"\n{members}",
                data = path(dir.path().join(format!("node-{id}"))),
                psp = node.psp,
                ca_pem = path(ca.ca_certificate()),
                server = path(server.certificate),
                server_key = path(server.key),
                operator = node.operator,
                health = node.health,
                peer = node.peer,
                node = path(pair.certificate),
                node_key = path(pair.key),
            );
            std::fs::write(dir.path().join(format!("node-{id}.toml")), config).expect("write the configuration");
        }
        let mut cluster = ProcessCluster { dir, ports, processes: Vec::new() };
        for index in 0..cluster.ports.len() {
            let process = cluster.spawn(index);
            cluster.processes.push(Some(process));
        }
        cluster
    }

    pub fn size(&self) -> usize {
        self.ports.len()
    }

    fn spawn(&self, index: usize) -> Process {
        let id = index + 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["serve", "--config"])
            .arg(self.dir.path().join(format!("node-{id}.toml")))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start switch serve");
        Process { child }
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.processes[index].take() {
            process.child.kill().expect("SIGKILL");
            process.child.wait().expect("reaped");
        }
    }

    /// SIGTERM, and waits for the graceful stop.
    pub fn terminate(&mut self, index: usize) {
        if let Some(mut process) = self.processes[index].take() {
            let pid = process.child.id().to_string();
            // The shell's own `kill`: no procps needed on the machine.
            let sent = Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().expect("kill -TERM");
            assert!(sent.success(), "SIGTERM to node {index}");
            let status = process.child.wait().expect("reaped");
            assert!(status.success(), "node {} stopped with {status}: {}", index + 1, self.logs());
        }
    }

    pub fn restart(&mut self, index: usize) {
        assert!(self.processes[index].is_none(), "node {index} is running");
        self.processes[index] = Some(self.spawn(index));
    }

    pub fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.ports[index].psp, ca: DevelopmentCa::new(self.dir.path().join("ca")) }
    }

    /// What a paying PSP knows of the cluster: every node's PSP address, and the CA.
    pub fn view(&self) -> super::payer::ClusterView {
        super::payer::ClusterView {
            ports: self.ports.iter().map(|node| node.psp).collect(),
            ca: self.dir.path().join("ca"),
        }
    }

    /// `GET /cluster` of a running node, if it answers.
    pub async fn status(&self, index: usize) -> Option<serde_json::Value> {
        let (code, body) = super::try_http_get(self.ports[index].operator, "/cluster").await?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Waits until a running node says it leads; its index.
    pub async fn leader(&self) -> usize {
        self.leader_among(&(0..self.size()).collect::<Vec<_>>()).await
    }

    /// Waits until one of the running nodes `among` says it leads; its index. Of two that say
    /// so, the one in the higher term: a killed leader restarted restores its lead at start
    /// (openraft's leader restore), and a leader cut off from the others stays leader by its own
    /// account, until either hears of the newer term, though neither can commit anything.
    pub async fn leader_among(&self, among: &[usize]) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut leading = None;
            for index in among.iter().copied().filter(|index| self.processes[*index].is_some()) {
                if let Some(status) = self.status(index).await {
                    let term = status["term"].as_u64().unwrap_or(0);
                    if status["role"] == "leader" && leading.is_none_or(|(_, highest)| term > highest) {
                        leading = Some((index, term));
                    }
                }
            }
            if let Some((index, _)) = leading {
                return index;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader among {among:?}: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node has applied the same last index.
    pub async fn converged(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut applied = Vec::new();
            for index in 0..self.size() {
                applied.push(self.status(index).await.and_then(|status| status["applied_index"].as_u64()));
            }
            if applied.iter().all(Option::is_some) && applied.windows(2).all(|pair| pair[0] == pair[1]) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "nodes did not converge: {applied:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every node's log, for a failure's message.
    pub fn logs(&self) -> String {
        (1..=self.size())
            .map(|id| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- node {id}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ledger_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}", index + 1)).join("ledger")
    }

    /// On the leader: every acknowledged payment of `ana@bank-a` to `bo@bank-b` is completed,
    /// and nothing was paid twice or created (the payee holds exactly the acknowledged payments,
    /// the two positions sum to the payer's funds).
    pub async fn assert_acknowledged_paid_once(&self, acknowledged: &[u128], amount: u64, funds: u64) {
        let leading = self.endpoint(self.leader().await);
        let bank_a = leading.psp("bank-a").await;
        let mut payments = bank_a.payments.clone();
        for payment in acknowledged {
            let status = payments
                .get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(*payment) })
                .await
                .expect("an acknowledged payment is found")
                .into_inner();
            assert_eq!(status.state, PaymentState::Completed as i32, "payment {payment}");
        }
        let bank_b = leading.psp("bank-b").await;
        let (payer, payee) = (bank_a.position().await, bank_b.position().await);
        assert_eq!(payee.balance_minor, (acknowledged.len() as u64 * amount) as i64, "the payee's position");
        assert_eq!(payer.balance_minor + payee.balance_minor, funds as i64, "money created or lost");
    }

    /// Stops every node gracefully, then: every node's ledger has the same head (hash chain) and
    /// the same accounts, and its balances sum to zero.
    pub fn stop_and_assert_same_ledgers(&mut self) {
        for index in 0..self.size() {
            self.terminate(index);
        }
        let ledgers: Vec<_> = (0..self.size()).map(|index| ledger_of(&self.ledger_path(index))).collect();
        for (index, ledger) in ledgers.iter().enumerate().skip(1) {
            assert_eq!(ledger.0, ledgers[0].0, "node {} has another head than node 1", index + 1);
            assert_eq!(ledger.1, ledgers[0].1, "node {} has other accounts than node 1", index + 1);
        }
        let (debits, credits) = ledgers[0].1.iter().fold((0u128, 0u128), |(debits, credits), account| {
            (
                debits + account.debits_posted + account.debits_pending,
                credits + account.credits_posted + account.credits_pending,
            )
        });
        assert_eq!(debits, credits, "balances sum to zero");
    }
}

/// The accounts and head of a stopped node's ledger.
fn ledger_of(path: &Path) -> (ledger::Head, Vec<ledger::Account>) {
    let store = ledger::Store::open_read_only(path, &ledger::StoreOptions::default()).expect("open the ledger");
    let mut accounts = store.all_accounts().expect("accounts");
    accounts.sort_by_key(|account| account.id);
    (store.head().expect("head"), accounts)
}
