//! A PSP paying without pause through whichever node of a process cluster leads: one payment at
//! a time from `ana@bank-a` to `bo@bank-b`, each retried with its own id (following NOT_LEADER's
//! `switch-leader` trailer, or the next node on NO_LEADER, an unknown outcome or a lost
//! connection) until the switch answers it; never paid twice, since the id makes a retry return
//! the first outcome. What it acknowledged is what the test checks after the failures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentState, Reason};
use switch::tls::DevelopmentCa;

use super::processes::{AMOUNT, WAIT};
use crate::common::{pay, Endpoint};

type Client = PaymentServiceClient<tonic::transport::Channel>;

/// What the paying PSP knows of the cluster: every node's PSP address, and the CA.
#[derive(Clone)]
pub struct ClusterView {
    pub ports: Vec<SocketAddr>,
    /// The development CA's directory.
    pub ca: PathBuf,
}

impl ClusterView {
    fn endpoint(&self, index: usize) -> Endpoint {
        Endpoint { address: self.ports[index], ca: DevelopmentCa::new(&self.ca) }
    }

    /// The answer to a payment, from whichever node leads (see the module header).
    async fn pay(
        &self,
        leader: &Mutex<usize>,
        connected: &mut Option<(usize, Client)>,
        payment: u128,
    ) -> proto::PaymentResult {
        let deadline = tokio::time::Instant::now() + WAIT;
        let nodes = self.ports.len();
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
                            self.ports.iter().position(|node| node.to_string() == address).unwrap_or((at + 1) % nodes)
                        }
                        (Some(Reason::NoLeader | Reason::LedgerUnavailable | Reason::ShuttingDown), _) | (None, _) => {
                            (at + 1) % nodes
                        }
                        (Some(other), _) => panic!("payment {payment}: refused {other:?}: {status:?}"),
                    }
                }
                Err(_) => {
                    *connected = None;
                    (at + 1) % nodes
                }
            };
            *leader.lock().expect("leader") = next;
            assert!(tokio::time::Instant::now() < deadline, "payment {payment} never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The paying task, and what it has acknowledged.
pub struct Payer {
    /// Payment ids acknowledged COMPLETED, in order.
    pub acked: Arc<Mutex<Vec<u128>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Payer {
    /// Pays from payment id `first` on, starting at node `leader`; `acked` holds the payments
    /// acknowledged before it started.
    pub fn start(view: ClusterView, leader: usize, first: u128, acked: Vec<u128>) -> Payer {
        let acked = Arc::new(Mutex::new(acked));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            tokio::spawn(async move {
                let (leader, mut payment, mut connected) = (Mutex::new(leader), first, None);
                while !stop.load(Ordering::Relaxed) {
                    let answer = view.pay(&leader, &mut connected, payment).await;
                    assert_eq!(answer.state, PaymentState::Completed as i32, "payment {payment}: {answer:?}");
                    acked.lock().expect("acked").push(payment);
                    payment += 1;
                }
            })
        };
        Payer { acked, stop, task }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Waits until `more` payments beyond those acknowledged now are acknowledged: the cluster
    /// serves.
    pub async fn served(&self, more: usize, what: &str) {
        let target = self.acked_count() + more;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.acked_count() < target {
            assert!(!self.task.is_finished(), "the payer stopped ({what})");
            assert!(tokio::time::Instant::now() < deadline, "{what}: no payments acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops after the payment under way is answered; every payment acknowledged.
    pub async fn stop(self) -> Vec<u128> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the payer");
        let acked = self.acked.lock().expect("acked").clone();
        acked
    }
}
