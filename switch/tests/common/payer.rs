//! A PSP paying without pause through whichever node of a cluster leads: it follows
//! NOT_LEADER's `switch-leader` trailer, moves on to another node on NO_LEADER, an unknown
//! outcome or a lost connection, and retries every payment with its own id until the switch
//! answers it, so a payment is never paid twice. Records which node acknowledged each payment
//! and when.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentState, Reason};
use switch::tls::DevelopmentCa;

use super::processes::WAIT;
use super::{pay, Endpoint};

type Client = PaymentServiceClient<tonic::transport::Channel>;

/// What the paying PSP knows of the cluster: every node's PSP address, and the CA.
#[derive(Clone)]
pub struct ClusterView {
    pub ports: Vec<SocketAddr>,
    pub ca: PathBuf,
}

impl ClusterView {
    pub fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.ports[index], ca: DevelopmentCa::new(&self.ca) }
    }

    /// A `bank-a` client of node `index`.
    pub async fn client(&self, index: usize) -> Result<Client, tonic::Status> {
        let pair = DevelopmentCa::new(&self.ca).psp("bank-a");
        let channel = self
            .endpoint(index)
            .channel(Some(&pair))
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        Ok(Client::new(channel))
    }

    /// The answer to a payment of `amount` from `ana@bank-a` to `bo@bank-b`, and the node that
    /// gave it, from whichever node leads: retried with the same id on NOT_LEADER (at the node
    /// named), NO_LEADER, an unknown outcome or a lost connection, until the switch answers it.
    /// Never paid twice: the id makes a retry return the first outcome.
    pub async fn pay(
        &self,
        leader: &Mutex<usize>,
        connected: &mut Option<(usize, Client)>,
        payment: u128,
        amount: u64,
    ) -> (proto::PaymentResult, usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let size = self.ports.len();
        loop {
            let at = *leader.lock().expect("leader");
            let attempt = async {
                if connected.as_ref().is_none_or(|(node, _)| *node != at) {
                    *connected = Some((at, self.client(at).await?));
                }
                let (_, client) = connected.as_mut().expect("connected above");
                client.pay(pay(payment, "ana@bank-a", "bo@bank-b", amount)).await
            };
            let next = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(answer)) => return (answer.into_inner(), at),
                Ok(Err(status)) => {
                    *connected = None;
                    let reason = switch::reason::reason_of(&status);
                    let named = status.metadata().get("switch-leader").and_then(|value| value.to_str().ok());
                    match (reason, named) {
                        (Some(Reason::NotLeader), Some(address)) => {
                            self.ports.iter().position(|node| node.to_string() == address).unwrap_or((at + 1) % size)
                        }
                        (Some(Reason::NoLeader | Reason::LedgerUnavailable | Reason::ShuttingDown), _) | (None, _) => {
                            (at + 1) % size
                        }
                        (Some(other), _) => panic!("payment {payment}: refused {other:?}: {status:?}"),
                    }
                }
                Err(_) => {
                    *connected = None;
                    (at + 1) % size
                }
            };
            *leader.lock().expect("leader") = next;
            assert!(tokio::time::Instant::now() < deadline, "payment {payment} never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One acknowledged payment: its id, the node that acknowledged it, and when.
#[derive(Clone, Copy, Debug)]
pub struct Acknowledged {
    pub payment: u128,
    pub node: usize,
    pub at: Instant,
}

/// The payer, in its own task: one payment at a time, ids counting up from the first given, each
/// retried to its answer, which must be COMPLETED.
pub struct Payer {
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Payer {
    pub fn start(view: ClusterView, first_node: usize, first_payment: u128, amount: u64) -> Payer {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            tokio::spawn(async move {
                let (leader, mut connected, mut payment) = (Mutex::new(first_node), None, first_payment);
                while !stop.load(Ordering::Relaxed) {
                    let (answer, node) = view.pay(&leader, &mut connected, payment, amount).await;
                    assert_eq!(answer.state, PaymentState::Completed as i32, "payment {payment}: {answer:?}");
                    acknowledged.lock().expect("acknowledged").push(Acknowledged { payment, node, at: Instant::now() });
                    payment += 1;
                }
            })
        };
        Payer { acknowledged, stop, task }
    }

    /// Payments acknowledged so far.
    pub fn count(&self) -> usize {
        self.acknowledged.lock().expect("acknowledged").len()
    }

    /// The `index`th acknowledgement, if there is one yet.
    pub fn get(&self, index: usize) -> Option<Acknowledged> {
        self.acknowledged.lock().expect("acknowledged").get(index).copied()
    }

    /// Waits until `count` payments beyond the first `before` are acknowledged, by any node
    /// `by` accepts: the cluster serves.
    pub async fn served(&self, before: usize, count: usize, by: impl Fn(usize) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let done = {
                let acknowledged = self.acknowledged.lock().expect("acknowledged");
                acknowledged.iter().skip(before).filter(|acknowledged| by(acknowledged.node)).count()
            };
            if done >= count {
                return;
            }
            assert!(!self.task.is_finished(), "the payer stopped");
            assert!(tokio::time::Instant::now() < deadline, "{what}: no payments acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops after the payment in flight; every payment acknowledged.
    pub async fn stop(self) -> Vec<u128> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the payer");
        let acknowledged = self.acknowledged.lock().expect("acknowledged");
        acknowledged.iter().map(|acknowledged| acknowledged.payment).collect()
    }
}
