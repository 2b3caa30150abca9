//! How payments reach the switch: one PayRequest per unary RPC, PayBatch calls, or pipelined over
//! PayStream (one bidirectional stream per connection, answers matched by correlation id, opened
//! again when it ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentResult};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::connect::describe;
use crate::setup::Psp;

/// How payments are submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submission {
    Single,
    Batch(usize),
    Stream,
}

impl Submission {
    pub fn name(self) -> String {
        match self {
            Submission::Single => "one payment per RPC".into(),
            Submission::Batch(size) => format!("batches of up to {size}"),
            Submission::Stream => "PayStream".into(),
        }
    }
}

/// A PSP's clients: one per connection, used round-robin.
pub struct PspClients {
    pub id: String,
    payments: Vec<PaymentServiceClient<Channel>>,
    streams: Vec<StreamSlot>,
    next: AtomicUsize,
}

/// One connection's PayStream, opened again when it has ended (the switch restarted, or a new
/// leader took over: its connection follows the leader, the stream does not).
struct StreamSlot {
    client: PaymentServiceClient<Channel>,
    current: RwLock<Arc<PayStream>>,
    reopening: tokio::sync::Mutex<()>,
}

impl PspClients {
    pub async fn new(psp: &Psp, submission: Submission) -> anyhow::Result<PspClients> {
        let payments: Vec<_> = psp
            .channels
            .iter()
            .map(|channel| PaymentServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20))
            .collect();
        let mut streams = Vec::new();
        if submission == Submission::Stream {
            for client in &payments {
                let stream = PayStream::open(client.clone())
                    .await
                    .map_err(|status| anyhow::anyhow!("opening PayStream as {}: {}", psp.id, describe(&status)))?;
                streams.push(StreamSlot {
                    client: client.clone(),
                    current: RwLock::new(stream),
                    reopening: tokio::sync::Mutex::new(()),
                });
            }
        }
        Ok(PspClients { id: psp.id.clone(), payments, streams, next: AtomicUsize::new(0) })
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A unary client (cheap clone of a connection handle).
    pub fn client(&self) -> PaymentServiceClient<Channel> {
        self.payments[self.pick() % self.payments.len()].clone()
    }

    /// Whether the run submits over streams.
    pub fn streams(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Sends one payment on one of the PSP's streams (round-robin), opening it again first if
    /// it has ended; `timeout` bounds the opening and the answer, each.
    pub async fn pay_streamed(&self, payment: proto::PayRequest, timeout: Duration) -> Answer {
        let slot = &self.streams[self.pick() % self.streams.len()];
        let mut stream = slot.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if stream.closed.load(Ordering::Acquire) {
            let _reopening = slot.reopening.lock().await;
            stream = slot.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
            if stream.closed.load(Ordering::Acquire) {
                // A node that accepts the connection but never answers (cut off, frozen) must not
                // hold every payment of this connection for ever.
                stream = tokio::time::timeout(timeout, PayStream::open(slot.client.clone()))
                    .await
                    .map_err(|_| tonic::Status::deadline_exceeded("the PayStream did not open in time"))??;
                *slot.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = stream.clone();
            }
        }
        stream.pay(payment, timeout).await
    }
}

type Answer = Result<PaymentResult, tonic::Status>;

/// One PayStream: requests go out through a channel the gRPC stream reads; a reader task hands each
/// answer to the waiting caller. In flight is bounded by the API's PAY_STREAM_IN_FLIGHT_MAX.
pub struct PayStream {
    sender: mpsc::Sender<proto::PayStreamRequest>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    next: AtomicU64,
    permits: Arc<Semaphore>,
    /// Set once the stream has ended: nothing sent on it will be answered.
    closed: Arc<AtomicBool>,
}

/// PAY_STREAM_IN_FLIGHT_MAX (common.proto).
const STREAM_IN_FLIGHT_MAX: usize = 16_384;

impl PayStream {
    async fn open(mut client: PaymentServiceClient<Channel>) -> Result<Arc<PayStream>, tonic::Status> {
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT_MAX);
        let mut answers = client.pay_stream(ReceiverStream::new(receiver)).await?.into_inner();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let stream = Arc::new(PayStream {
            sender,
            pending: pending.clone(),
            next: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(STREAM_IN_FLIGHT_MAX)),
            closed: closed.clone(),
        });
        tokio::spawn(async move {
            let ended = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let waiter = pending
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&answer.correlation_id);
                        if let (Some(waiter), Some(result)) = (waiter, answer.result) {
                            let _ = waiter.send(Ok(result));
                        }
                    }
                    Ok(None) => break tonic::Status::unavailable("the switch ended the PayStream"),
                    Err(status) => break status,
                }
            };
            // Everyone still waiting learns the stream is gone: their payments' outcomes are unknown.
            closed.store(true, Ordering::Release);
            let waiting: Vec<_> = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain().collect();
            for (_, waiter) in waiting {
                let _ = waiter.send(Err(ended.clone()));
            }
        });
        Ok(stream)
    }

    /// Sends one payment and waits for its answer.
    pub async fn pay(&self, payment: proto::PayRequest, timeout: Duration) -> Answer {
        let _permit = self.permits.acquire().await.map_err(|_| tonic::Status::cancelled("stream closed"))?;
        let correlation_id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(correlation_id, sender);
        let request = proto::PayStreamRequest { correlation_id, payment: Some(payment) };
        if self.sender.send(request).await.is_err() {
            self.closed.store(true, Ordering::Release);
            self.forget(correlation_id);
            return Err(tonic::Status::unavailable("the PayStream is closed"));
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(tonic::Status::unavailable("the PayStream ended")),
            Err(_) => {
                self.forget(correlation_id);
                Err(tonic::Status::deadline_exceeded("no answer on the PayStream in time"))
            }
        }
    }

    fn forget(&self, correlation_id: u64) {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&correlation_id);
    }
}
