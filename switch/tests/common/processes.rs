//! Three `switch serve` child processes on loopback that form one replicated switch, each with
//! its own data directory, configuration file and log under one temporary directory, and one
//! development CA that issues every certificate. A test may have the members advertise other
//! peer addresses than the nodes' own (a proxy in front of each) and give each node the address
//! its connections to peers leave from (`cluster.peer_source_address`). A node is known by its
//! index (its machine: its ports stay); the node id running there may change (a machine whose
//! disk was wiped rejoins under a new id). Afterwards: every acknowledged payment completed once,
//! and every node's ledger the same.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switch::proto::{self, PaymentState};
use switch::tls::DevelopmentCa;

use super::{id, Endpoint};

/// Generous bound for a shared 2-core machine; the tests wait for conditions, never for time.
pub const WAIT: Duration = Duration::from_secs(90);
/// Most ids in one GetPayments call (operator.proto).
const LOOKUP_IDS_MAX: usize = 8_190;

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
    /// The node id running at each index.
    pub ids: Vec<u64>,
    processes: Vec<Option<Process>>,
    peer_addresses: Vec<SocketAddr>,
    peer_source_addresses: Vec<Option<IpAddr>>,
    /// TOML lines added to every node's `[cluster]` section.
    cluster_options: String,
}

impl ProcessCluster {
    /// Three nodes reaching each other directly.
    pub fn start() -> ProcessCluster {
        ProcessCluster::start_with(Setup::direct(3))
    }

    pub fn start_with(setup: Setup) -> ProcessCluster {
        ProcessCluster::start_configured(setup, "")
    }

    /// Starts the nodes of `setup`, ids 1 to its size, with `cluster_options` (TOML lines, e.g.
    /// `snapshot_every_entries = 64`) in each node's `[cluster]` section.
    pub fn start_configured(setup: Setup, cluster_options: &str) -> ProcessCluster {
        let Setup { ports, peer_addresses, peer_source_addresses } = setup;
        assert!(ports.len() == peer_addresses.len() && ports.len() == peer_source_addresses.len(), "one per node");
        let dir = tempfile::tempdir().expect("temporary directory");
        DevelopmentCa::new(dir.path().join("ca")).ensure().expect("the development CA");
        let size = ports.len();
        let mut cluster = ProcessCluster {
            dir,
            ports,
            ids: (1..=size as u64).collect(),
            processes: Vec::new(),
            peer_addresses,
            peer_source_addresses,
            cluster_options: cluster_options.to_string(),
        };
        let members = cluster.ids.clone();
        for index in 0..size {
            cluster.write_config(index, &members);
            let process = cluster.spawn(index);
            cluster.processes.push(Some(process));
        }
        cluster
    }

    /// Writes the configuration of the node at `index` (`node-<id>.toml`): its ports, its
    /// certificate, and as members the node ids `members`, index for index, at their addresses.
    fn write_config(&self, index: usize, members: &[u64]) {
        let ca = DevelopmentCa::new(self.dir.path().join("ca"));
        let listed: String = members
            .iter()
            .zip(self.peer_addresses.iter().zip(&self.ports))
            .map(|(member, (peer, node))| {
                format!(
                    "[[cluster.members]]\nid = {member}\npeer_address = \"{peer}\"\npsp_address = \"{}\"\n",
                    node.psp
                )
            })
            .collect();
        let path = |path: PathBuf| path.display().to_string();
        let (id, node) = (self.ids[index], &self.ports[index]);
        let pair = ca.issue_node(id, &["localhost", "127.0.0.1"]).expect("node certificate");
        let server = ca.server();
        let source = self.peer_source_addresses[index]
            .map(|address| format!("peer_source_address = \"{address}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "data_dir = \"{data}\"\nlisten = \"{psp}\"\n[tls]\nca_certificate = \"{ca_pem}\"\nserver_certificate = \"{server}\"\nserver_key = \"{server_key}\"\n[operator]\nhttp_listen = \"{operator}\"\nhealth_listen = \"{health}\"\n[cluster]\nnode_id = {id}\npeer_listen = \"{peer}\"\n{source}node_certificate = \"{node_pem}\"\nnode_key = \"{node_key}\"\n{options}{listed}",
            data = path(self.data_dir(id)),
            psp = node.psp,
            ca_pem = path(ca.ca_certificate()),
            server = path(server.certificate),
            server_key = path(server.key),
            operator = node.operator,
            health = node.health,
            peer = node.peer,
            node_pem = path(pair.certificate),
            node_key = path(pair.key),
            options = self.cluster_options,
        );
        std::fs::write(self.dir.path().join(format!("node-{id}.toml")), config).expect("write the configuration");
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Where the node at `index` logs.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", self.ids[index]))
    }

    /// The machine of stopped node `index` comes back with an empty disk, as node `new_id` (a
    /// node never rejoins under its old id): its data directory is wiped, and it starts with its
    /// own configuration listing the current members, not itself, so it waits to be added.
    pub fn rejoin_wiped(&mut self, index: usize, new_id: u64) {
        assert!(self.processes[index].is_none(), "node {index} is running");
        std::fs::remove_dir_all(self.data_dir(self.ids[index])).expect("wipe the data directory");
        let members = self.ids.clone();
        self.ids[index] = new_id;
        self.write_config(index, &members);
        self.processes[index] = Some(self.spawn(index));
    }

    pub fn size(&self) -> usize {
        self.ports.len()
    }

    fn spawn(&self, index: usize) -> Process {
        let id = self.ids[index];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(index)).expect("log file");
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
            assert!(status.success(), "node {} stopped with {status}: {}", self.ids[index], self.logs());
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

    /// Waits until node `index` answers `GET /cluster`; that answer.
    pub async fn status_when_up(&self, index: usize) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.status(index).await {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {index} never answered: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        self.ids
            .iter()
            .map(|id| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- node {id}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ledger_path(&self, index: usize) -> PathBuf {
        self.data_dir(self.ids[index]).join("ledger")
    }

    /// On the leader: every acknowledged payment of `ana@bank-a` to `bo@bank-b` is completed,
    /// and nothing was paid twice or created (the payee holds exactly the acknowledged payments,
    /// the two positions sum to the payer's funds).
    pub async fn assert_acknowledged_paid_once(&self, acknowledged: &[u128], amount: u64, funds: u64) {
        let leading = self.endpoint(self.leader().await);
        // The operator's batched lookup: a PSP's status queries are rate limited, and a test
        // may have acknowledged thousands.
        let mut operator = leading.operator().await;
        for chunk in acknowledged.chunks(LOOKUP_IDS_MAX) {
            let payment_ids = chunk.iter().map(|payment| id(*payment)).collect();
            let found = operator.get_payments(proto::GetPaymentsRequest { payment_ids }).await.expect("a lookup");
            let found = found.into_inner().payments;
            assert_eq!(found.len(), chunk.len(), "one answer per id");
            for (payment, lookup) in chunk.iter().zip(found) {
                let state = lookup.payment.filter(|_| lookup.found).map(|payment| payment.state);
                assert_eq!(state, Some(PaymentState::Completed as i32), "acknowledged payment {payment}");
            }
        }
        let bank_a = leading.psp("bank-a").await;
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
            let (node, first) = (self.ids[index], self.ids[0]);
            assert_eq!(ledger.0, ledgers[0].0, "node {node} has another head than node {first}");
            assert_eq!(ledger.1, ledgers[0].1, "node {node} has other accounts than node {first}");
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
