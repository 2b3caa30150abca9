//! Three `switch serve` processes on loopback form one replicated switch. A PSP pays without
//! pause through whichever node leads, following NOT_LEADER's `switch-leader` trailer and
//! retrying every payment with its own id until it has an answer, while the test SIGKILLs the
//! leader again and again (each killed node restarted on its data). Afterwards: every
//! acknowledged payment is completed on the leader, nothing was paid twice (the payee's position
//! is exactly the acknowledged payments), balances sum to zero, and once stopped every node's
//! ledger has the same head (hash chain) and the same accounts.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{id, pay, Endpoint};
use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentState, Reason};
use switch::tls::DevelopmentCa;

/// Leader kills in the test (issue 22 asks for at least 10).
const KILLS: usize = 10;
/// Payments acknowledged between two kills: the cluster serves again before the next one.
const ACKED_BETWEEN_KILLS: usize = 40;
/// Generous bound for a shared 2-core machine; the test waits for conditions, never for time.
const WAIT: Duration = Duration::from_secs(90);
const FUNDS: u64 = 1_000_000_000;
const AMOUNT: u64 = 7;

struct NodePorts {
    psp: SocketAddr,
    operator: SocketAddr,
    health: SocketAddr,
    peer: SocketAddr,
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

struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<NodePorts>,
    processes: Vec<Option<Process>>,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address")
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = DevelopmentCa::new(dir.path().join("ca"));
        ca.ensure().expect("the development CA");
        let ports: Vec<NodePorts> = (0..3)
            .map(|_| NodePorts { psp: free_port(), operator: free_port(), health: free_port(), peer: free_port() })
            .collect();
        let members: String = ports
            .iter()
            .enumerate()
            .map(|(index, node)| {
                format!(
                    "[[cluster.members]]\nid = {}\npeer_address = \"{}\"\npsp_address = \"{}\"\n",
                    index + 1,
                    node.peer,
                    node.psp
                )
            })
            .collect();
        let path = |path: PathBuf| path.display().to_string();
        for (index, node) in ports.iter().enumerate() {
            let id = index + 1;
            let pair = ca.issue_node(id as u64, &["localhost", "127.0.0.1"]).expect("node certificate");
            let server = ca.server();
            let config = format!(
                "data_dir = \"{data}\"\nlisten = \"{psp}\"\n[tls]\nca_certificate = \"{ca_pem}\"\nserver_certificate = \"{server}\"\nserver_key = \"{server_key}\"\n[operator]\nhttp_listen = \"{operator}\"\nhealth_listen = \"{health}\"\n[cluster]\nnode_id = {id}\npeer_listen = \"{peer}\"\nnode_certificate = \"{node}\"\nnode_key = \"{node_key}\"\n{members}",
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
        let mut cluster = Cluster { dir, ports, processes: Vec::new() };
        for index in 0..3 {
            let process = cluster.spawn(index);
            cluster.processes.push(Some(process));
        }
        cluster
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

    fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.processes[index].take() {
            process.child.kill().expect("SIGKILL");
            process.child.wait().expect("reaped");
        }
    }

    /// SIGTERM, and waits for the graceful stop.
    fn terminate(&mut self, index: usize) {
        if let Some(mut process) = self.processes[index].take() {
            let pid = process.child.id().to_string();
            // The shell's own `kill`: no procps needed on the machine.
            let sent = Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]).status().expect("kill -TERM");
            assert!(sent.success(), "SIGTERM to node {index}");
            let status = process.child.wait().expect("reaped");
            assert!(status.success(), "node {} stopped with {status}: {}", index + 1, self.logs());
        }
    }

    fn restart(&mut self, index: usize) {
        assert!(self.processes[index].is_none(), "node {index} is running");
        self.processes[index] = Some(self.spawn(index));
    }

    fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.ports[index].psp, ca: DevelopmentCa::new(self.dir.path().join("ca")) }
    }

    /// `GET /cluster` of a running node, if it answers.
    async fn status(&self, index: usize) -> Option<serde_json::Value> {
        let (code, body) = common::try_http_get(self.ports[index].operator, "/cluster").await?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Waits until a running node says it leads; its index. Of two that say so, the one in
    /// the higher term: a killed leader restarted restores its lead at start (openraft's leader
    /// restore) and says so until it hears of the newer term, though it can commit nothing.
    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut leading = None;
            for index in (0..3).filter(|index| self.processes[*index].is_some()) {
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
            assert!(tokio::time::Instant::now() < deadline, "no leader: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node has applied the same last index.
    async fn converged(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut applied = Vec::new();
            for index in 0..3 {
                applied.push(self.status(index).await.and_then(|status| status["applied_index"].as_u64()));
            }
            if applied.iter().all(Option::is_some) && applied.windows(2).all(|pair| pair[0] == pair[1]) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "nodes did not converge: {applied:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        (1..=3)
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
}

type Client = PaymentServiceClient<tonic::transport::Channel>;

/// What the paying PSP knows of the cluster: every node's PSP address, and the CA.
#[derive(Clone)]
struct ClusterView {
    ports: Vec<SocketAddr>,
    ca: PathBuf,
}

impl ClusterView {
    fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.ports[index], ca: DevelopmentCa::new(&self.ca) }
    }

    /// The answer to a payment, from whichever node leads: retried with the same id on
    /// NOT_LEADER (at the node named), NO_LEADER, an unknown outcome or a lost connection, until
    /// the switch answers it. Never paid twice: the id makes a retry return the first outcome.
    async fn pay(
        &self,
        leader: &Mutex<usize>,
        connected: &mut Option<(usize, Client)>,
        payment: u128,
    ) -> proto::PaymentResult {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let at = *leader.lock().expect("leader");
            let attempt = async {
                if connected.as_ref().is_none_or(|(node, _)| *node != at) {
                    let pair = DevelopmentCa::new(&self.ca).psp("bank-a");
                    let channel = self
                        .endpoint(at)
                        .channel(Some(&pair))
                        .await
                        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
                    *connected = Some((at, Client::new(channel)));
                }
                let (_, client) = connected.as_mut().expect("connected above");
                client.pay(pay(payment, "ana@bank-a", "bo@bank-b", AMOUNT)).await
            };
            let next = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(answer)) => return answer.into_inner(),
                Ok(Err(status)) => {
                    *connected = None;
                    let reason = switch::reason::reason_of(&status);
                    let named = status.metadata().get("switch-leader").and_then(|value| value.to_str().ok());
                    match (reason, named) {
                        (Some(Reason::NotLeader), Some(address)) => {
                            self.ports.iter().position(|node| node.to_string() == address).unwrap_or((at + 1) % 3)
                        }
                        (Some(Reason::NoLeader | Reason::LedgerUnavailable | Reason::ShuttingDown), _) | (None, _) => {
                            (at + 1) % 3
                        }
                        (Some(other), _) => panic!("payment {payment}: refused {other:?}: {status:?}"),
                    }
                }
                Err(_) => {
                    *connected = None;
                    (at + 1) % 3
                }
            };
            *leader.lock().expect("leader") = next;
            assert!(tokio::time::Instant::now() < deadline, "payment {payment} never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The accounts and head of a stopped node's ledger.
fn ledger_of(path: &Path) -> (ledger::Head, Vec<ledger::Account>) {
    let store = ledger::Store::open_read_only(path, &ledger::StoreOptions::default()).expect("open the ledger");
    let mut accounts = store.all_accounts().expect("accounts");
    accounts.sort_by_key(|account| account.id);
    (store.head().expect("head"), accounts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_ten_times_under_load_loses_no_acknowledged_payment() {
    let mut cluster = Cluster::start();
    let first = cluster.leader().await;
    let leading = cluster.endpoint(first);
    let (mut bank_a, _bank_b) = leading.payer_and_payee(0, FUNDS).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", AMOUNT)).await.expect("a first payment");

    let view =
        ClusterView { ports: cluster.ports.iter().map(|node| node.psp).collect(), ca: cluster.dir.path().join("ca") };
    let acked: Arc<Mutex<Vec<u128>>> = Arc::new(Mutex::new(vec![1]));
    // When each was acknowledged (index for index with `acked`).
    let acked_times = Arc::new(Mutex::new(vec![std::time::Instant::now()]));
    let stop = Arc::new(AtomicBool::new(false));
    let leader = Arc::new(Mutex::new(first));
    // The payer: one payment at a time, each retried to its answer.
    let payer = {
        let (acked, stop, leader) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&leader));
        let acked_times = Arc::clone(&acked_times);
        tokio::spawn(async move {
            let (mut payment, mut connected) = (2u128, None);
            while !stop.load(Ordering::Relaxed) {
                let answer = view.pay(&leader, &mut connected, payment).await;
                assert_eq!(answer.state, PaymentState::Completed as i32, "payment {payment}: {answer:?}");
                acked.lock().expect("acked").push(payment);
                acked_times.lock().expect("times").push(std::time::Instant::now());
                payment += 1;
            }
        })
    };

    // Waits for payments acknowledged beyond `before`: the cluster serves.
    async fn served(acked: &Mutex<Vec<u128>>, payer: &tokio::task::JoinHandle<()>, before: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while acked.lock().expect("acked").len() < before + ACKED_BETWEEN_KILLS {
            assert!(!payer.is_finished(), "the payer stopped");
            assert!(tokio::time::Instant::now() < deadline, "{what}: no payments acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for kill in 0..KILLS {
        let before = acked.lock().expect("acked").len();
        served(&acked, &payer, before, &format!("before kill {kill}")).await;
        let victim = cluster.leader().await;
        let (killed_at, acked_at_kill) = (std::time::Instant::now(), acked.lock().expect("acked").len());
        cluster.kill(victim);
        // The two others elect a leader among themselves and serve; only then does the victim
        // come back (restarted at once, it would take its lead back without an election).
        let elected = cluster.leader().await;
        assert_ne!(elected, victim, "a stopped node leads");
        let before = acked.lock().expect("acked").len();
        served(&acked, &payer, before, &format!("after kill {kill}")).await;
        // For BENCHMARKS.md (never asserted): the time from the kill to the first payment
        // acknowledged after it, an upper bound of the failover gap (one payment at a time).
        let first_after = acked_times.lock().expect("times").get(acked_at_kill).copied();
        let gap = first_after.map(|at| at.saturating_duration_since(killed_at));
        println!("kill {kill}: node {} killed, node {} leads; failover gap {gap:?}", victim + 1, elected + 1);
        cluster.restart(victim);
    }
    stop.store(true, Ordering::Relaxed);
    payer.await.expect("the payer");

    cluster.converged().await;
    let acked = acked.lock().expect("acked").clone();
    let leading = cluster.endpoint(cluster.leader().await);
    let bank_a = leading.psp("bank-a").await;
    let mut payments = bank_a.payments.clone();
    for payment in &acked {
        let status = payments
            .get_payment_status(proto::GetPaymentStatusRequest { payment_id: id(*payment) })
            .await
            .expect("an acknowledged payment is found")
            .into_inner();
        assert_eq!(status.state, PaymentState::Completed as i32, "payment {payment}");
    }
    // Nothing paid twice: the payee holds exactly the acknowledged payments.
    let bank_b = leading.psp("bank-b").await;
    let payee = bank_b.position().await;
    let payer = bank_a.position().await;
    assert_eq!(payee.balance_minor, (acked.len() as u64 * AMOUNT) as i64, "the payee's position");
    assert_eq!(payer.balance_minor + payee.balance_minor, FUNDS as i64, "money created or lost");

    // Stopped, every node's ledger is the same.
    let mut cluster = cluster;
    for index in 0..3 {
        cluster.terminate(index);
    }
    let ledgers: Vec<_> = (0..3).map(|index| ledger_of(&cluster.ledger_path(index))).collect();
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
