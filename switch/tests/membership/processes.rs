//! A replicated switch of real `switch serve` processes on loopback, each configured by a TOML
//! file the way an operator would write it, with one development CA (under `<dir>/certs`, so that
//! `switch cluster ... --data <dir> --as admin` finds the operator's certificate). Each *slot*
//! keeps its ports for the whole test; the node id running in a slot can change (a wiped node
//! rejoins under a new id on the same machine). Children are SIGKILLed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switch::proto::{self, PaymentState};
use switch::tls::DevelopmentCa;

use crate::common::{id, Endpoint};

/// Generous bound for a shared 2-core machine; the tests wait for conditions, never for time.
pub const WAIT: Duration = Duration::from_secs(90);
/// What the paying PSP is funded with, and what each payment moves.
pub const FUNDS: u64 = 1_000_000_000;
pub const AMOUNT: u64 = 7;
/// Most ids in one GetPayments call (operator.proto).
const BATCH_SIZE_MAX: usize = 8_190;

pub struct NodePorts {
    pub psp: SocketAddr,
    pub operator: SocketAddr,
    pub health: SocketAddr,
    pub peer: SocketAddr,
}

/// One `switch serve --config` child, SIGKILLed when dropped.
pub struct Process {
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
    /// The node id running in each slot.
    pub ids: Vec<u64>,
    pub processes: Vec<Option<Process>>,
    /// Lines added to every node's `[cluster]` section.
    cluster_options: String,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address")
}

impl ProcessCluster {
    /// Starts `size` nodes, ids 1 to `size`, forming one cluster; `cluster_options` are TOML
    /// lines for their `[cluster]` section (e.g. `snapshot_every_entries = 64`).
    pub fn start(size: usize, cluster_options: &str) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        DevelopmentCa::new(dir.path().join("certs")).ensure().expect("the development CA");
        let ports = (0..size)
            .map(|_| NodePorts { psp: free_port(), operator: free_port(), health: free_port(), peer: free_port() })
            .collect();
        let ids: Vec<u64> = (1..=size as u64).collect();
        let mut cluster = ProcessCluster {
            dir,
            ports,
            ids,
            processes: (0..size).map(|_| None).collect(),
            cluster_options: cluster_options.to_string(),
        };
        let members = cluster.ids.clone();
        for slot in 0..size {
            cluster.write_config(slot, &members);
            cluster.processes[slot] = Some(cluster.spawn(slot));
        }
        cluster
    }

    pub fn ca(&self) -> DevelopmentCa {
        DevelopmentCa::new(self.dir.path().join("certs"))
    }

    fn path(&self, name: String) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `node-<id>.toml` for the node in `slot`: its ports, its certificate, and as
    /// members the node ids `members` of each slot, at that slot's addresses.
    fn write_config(&self, slot: usize, members: &[u64]) {
        let id = self.ids[slot];
        let ca = self.ca();
        let members: String = members
            .iter()
            .zip(&self.ports)
            .map(|(member, ports)| {
                format!(
                    "[[cluster.members]]\nid = {member}\npeer_address = \"{}\"\npsp_address = \"{}\"\n",
                    ports.peer, ports.psp
                )
            })
            .collect();
        let pair = ca.issue_node(id, &["localhost", "127.0.0.1"]).expect("node certificate");
        let server = ca.server();
        let ports = &self.ports[slot];
        let path = |path: PathBuf| path.display().to_string();
        let config = format!(
            "data_dir = \"{data}\"\nlisten = \"{psp}\"\n[tls]\nca_certificate = \"{ca_pem}\"\nserver_certificate = \"{server}\"\nserver_key = \"{server_key}\"\n[operator]\nhttp_listen = \"{operator}\"\nhealth_listen = \"{health}\"\n[cluster]\nnode_id = {id}\npeer_listen = \"{peer}\"\nnode_certificate = \"{node}\"\nnode_key = \"{node_key}\"\n{options}{members}",
            data = path(self.data_dir(id)),
            psp = ports.psp,
            ca_pem = path(ca.ca_certificate()),
            server = path(server.certificate),
            server_key = path(server.key),
            operator = ports.operator,
            health = ports.health,
            peer = ports.peer,
            node = path(pair.certificate),
            node_key = path(pair.key),
            options = self.cluster_options,
        );
        std::fs::write(self.path(format!("node-{id}.toml")), config).expect("write the configuration");
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.path(format!("node-{id}"))
    }

    /// Where the node in `slot` logs.
    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.path(format!("node-{}.log", self.ids[slot]))
    }

    fn spawn(&self, slot: usize) -> Process {
        let id = self.ids[slot];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(slot)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["serve", "--config"])
            .arg(self.path(format!("node-{id}.toml")))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start switch serve");
        Process { child }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.ports.len()).filter(|slot| self.processes[*slot].is_some()).collect()
    }

    /// SIGKILL.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut process) = self.processes[slot].take() {
            process.child.kill().expect("SIGKILL");
            process.child.wait().expect("reaped");
        }
    }

    /// SIGTERM, and waits for the graceful stop.
    pub fn terminate(&mut self, slot: usize) {
        if let Some(mut process) = self.processes[slot].take() {
            let pid = process.child.id().to_string();
            // The shell's own `kill`: no procps needed on the machine.
            let sent = Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().expect("kill -TERM");
            assert!(sent.success(), "SIGTERM to slot {slot}");
            let status = process.child.wait().expect("reaped");
            assert!(status.success(), "node {} stopped with {status}: {}", self.ids[slot], self.logs());
        }
    }

    /// Starts the node in `slot` again on its data.
    pub fn restart(&mut self, slot: usize) {
        assert!(self.processes[slot].is_none(), "slot {slot} is running");
        self.processes[slot] = Some(self.spawn(slot));
    }

    /// The machine of stopped `slot` comes back with an empty disk, as node `new_id` (a node
    /// never rejoins under its old id): its data directory is wiped, and it starts with its own
    /// configuration naming the current members, not itself, so it waits to be added.
    pub fn rejoin_wiped(&mut self, slot: usize, new_id: u64) {
        assert!(self.processes[slot].is_none(), "slot {slot} is running");
        std::fs::remove_dir_all(self.data_dir(self.ids[slot])).expect("wipe the data directory");
        let members = self.ids.clone();
        self.ids[slot] = new_id;
        self.write_config(slot, &members);
        self.processes[slot] = Some(self.spawn(slot));
    }

    pub fn endpoint(&self, slot: usize) -> Endpoint {
        Endpoint { address: self.ports[slot].psp, ca: self.ca() }
    }

    /// `GET /cluster` of a running node, if it answers.
    pub async fn status(&self, slot: usize) -> Option<serde_json::Value> {
        let (code, body) = crate::common::try_http_get(self.ports[slot].operator, "/cluster").await?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Waits until the node in `slot` answers `GET /cluster`, and returns that.
    pub async fn status_when_up(&self, slot: usize) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.status(slot).await {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "slot {slot} never answered: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a running node says it leads; its slot. Of two that say so, the one in
    /// the higher term: a killed leader restarted restores its lead at start (openraft's leader
    /// restore) and says so until it hears of the newer term, though it can commit nothing.
    pub async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut leading = None;
            for slot in self.running() {
                if let Some(status) = self.status(slot).await {
                    let term = status["term"].as_u64().unwrap_or(0);
                    if status["role"] == "leader" && leading.is_none_or(|(_, highest)| term > highest) {
                        leading = Some((slot, term));
                    }
                }
            }
            if let Some((slot, _)) = leading {
                return slot;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node has applied the same last index.
    pub async fn converged(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut applied = Vec::new();
            for slot in self.running() {
                applied.push(self.status(slot).await.and_then(|status| status["applied_index"].as_u64()));
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
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
            .unwrap_or_default();
        names.retain(|path| path.extension().is_some_and(|extension| extension == "log"));
        names.sort();
        names
            .iter()
            .map(|path| {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                format!("--- {name}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ledger_path(&self, slot: usize) -> PathBuf {
        self.data_dir(self.ids[slot]).join("ledger")
    }

    /// After the load: every running node converged; every acknowledged payment (from
    /// `ana@bank-a` to `bo@bank-b`, AMOUNT each) completed on the leader, and none paid twice
    /// (the payee holds exactly them); then, every node stopped, the same ledger head (hash
    /// chain) and accounts on each, balances summing to zero.
    pub async fn verify(&mut self, acked: &[u128]) {
        self.converged().await;
        let leading = self.endpoint(self.leader().await);
        // The operator's batched lookup (a PSP's status queries are rate limited).
        let mut operator = leading.operator().await;
        for chunk in acked.chunks(BATCH_SIZE_MAX) {
            let request = proto::GetPaymentsRequest { payment_ids: chunk.iter().map(|payment| id(*payment)).collect() };
            let found = operator.get_payments(request).await.expect("a lookup").into_inner().payments;
            assert_eq!(found.len(), chunk.len(), "one answer per id");
            for (payment, lookup) in chunk.iter().zip(found) {
                let state = lookup.payment.filter(|_| lookup.found).map(|payment| payment.state);
                assert_eq!(state, Some(PaymentState::Completed as i32), "acknowledged payment {payment}");
            }
        }
        let bank_a = leading.psp("bank-a").await;
        let payee = leading.psp("bank-b").await.position().await;
        let payer = bank_a.position().await;
        assert_eq!(payee.balance_minor, (acked.len() as u64 * AMOUNT) as i64, "the payee's position");
        assert_eq!(payer.balance_minor + payee.balance_minor, FUNDS as i64, "money created or lost");

        let stopped = self.running();
        for slot in &stopped {
            self.terminate(*slot);
        }
        let ledgers: Vec<_> =
            stopped.iter().map(|slot| (self.ids[*slot], ledger_of(&self.ledger_path(*slot)))).collect();
        let (first, reference) = &ledgers[0];
        for (node, ledger) in &ledgers[1..] {
            assert_eq!(ledger.0, reference.0, "node {node} has another head than node {first}");
            assert_eq!(ledger.1, reference.1, "node {node} has other accounts than node {first}");
        }
        let (debits, credits) = reference.1.iter().fold((0u128, 0u128), |(debits, credits), account| {
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
