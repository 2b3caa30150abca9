//! The client side of the transport ceiling: loadgen's one-payment-per-RPC closed loop (the same
//! connector, certificates, HTTP/2 windows and request shape: N PSPs, each with its own client
//! certificate and its own connections), against any server that answers `Pay`. Latency is from
//! each call's send to its answer; throughput and CPU are over the measured phase only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use loadgen::connect::{describe, Connector};
use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::{self, PaymentState};
use tonic::transport::Channel;

/// A call not answered in this long counts as failed (a stuck server ends the run instead of
/// hanging it).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to drive and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub psps: usize,
    pub connections_per_psp: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the measured phase gave.
#[derive(Debug)]
pub struct Measured {
    pub completed: u64,
    pub failed: u64,
    /// The first failure, described, if any.
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    /// Microseconds from send to answer.
    pub latency_us: Histogram<u64>,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Opens every PSP's connections over mutual TLS, as loadgen does (issuing each PSP's certificate
/// from the CA in the connector's directory when missing).
pub async fn connect(connector: &Connector, plan: &Plan) -> anyhow::Result<Vec<PaymentServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(plan.psps * plan.connections_per_psp);
    for psp in 0..plan.psps {
        let pair = connector.psp_certificate(&format!("ceiling{psp:02}"))?;
        for _ in 0..plan.connections_per_psp {
            clients.push(PaymentServiceClient::new(connector.connect(&pair).await?));
        }
    }
    Ok(clients)
}

/// Opens as many plaintext HTTP/2 connections (tonic's client defaults, `TCP_NODELAY`), for the
/// bare tonic reference.
pub async fn connect_plaintext(address: SocketAddr, plan: &Plan) -> anyhow::Result<Vec<PaymentServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(plan.psps * plan.connections_per_psp);
    for _ in 0..plan.psps * plan.connections_per_psp {
        let channel = Channel::from_shared(format!("http://{address}"))?.tcp_nodelay(true).connect().await?;
        clients.push(PaymentServiceClient::new(channel));
    }
    Ok(clients)
}

/// A payment shaped like loadgen's: a 16-byte id, two aliases of the 1M-user population, an
/// amount, the currency, no note.
fn request(worker: usize, sequence: u64, psps: usize) -> proto::PayRequest {
    let id = ((worker as u128) << 64) | u128::from(sequence);
    let payer = (sequence * 7_919 + worker as u64) % 1_000_000;
    let payee = (sequence * 104_729 + 1) % 1_000_000;
    proto::PayRequest {
        payment_id: id.to_be_bytes().to_vec(),
        payer_alias: format!("u{payer}@ceiling{:02}", worker % psps),
        payee_alias: format!("u{payee}@ceiling{:02}", (worker + 1) % psps),
        amount_minor: 100 + sequence % 100_000,
        currency: "XTS".into(),
        note: String::new(),
        deadline_unix_ms: 0,
    }
}

/// Microseconds, from 1 µs to a minute (past the call timeout), 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// Runs `plan.concurrency` workers, each sending one `Pay` and waiting for its answer, spread
/// evenly over the connections; counts what is answered inside the measured phase.
pub async fn drive(clients: Vec<PaymentServiceClient<Channel>>, plan: &Plan) -> anyhow::Result<Measured> {
    if clients.is_empty() || plan.concurrency == 0 {
        bail!("nothing to drive: no connections or no concurrency");
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let measure_until = measure_from + plan.duration;
    let stopping = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..plan.concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let stopping = Arc::clone(&stopping);
        let psps = plan.psps;
        workers.spawn(async move {
            let mut latency = latency_histogram()?;
            let (mut completed, mut failed, mut first_failure) = (0u64, 0u64, None);
            let mut sequence = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                sequence += 1;
                let sent = Instant::now();
                let answer = match tokio::time::timeout(CALL_TIMEOUT, client.pay(request(worker, sequence, psps))).await
                {
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded("no answer within the call timeout")),
                };
                let answered = Instant::now();
                if sent < measure_from || answered > measure_until {
                    continue;
                }
                match answer {
                    Ok(result) if result.get_ref().state == PaymentState::Completed as i32 => {
                        completed += 1;
                        latency.saturating_record(u64::try_from((answered - sent).as_micros()).unwrap_or(u64::MAX));
                    }
                    Ok(result) => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| format!("answered {:?}", result.get_ref()));
                    }
                    Err(status) => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| describe(&status));
                    }
                }
            }
            anyhow::Ok((latency, completed, failed, first_failure))
        });
    }
    tokio::time::sleep_until((measure_until).into()).await;
    stopping.store(true, Ordering::Relaxed);
    let mut measured = Measured {
        completed: 0,
        failed: 0,
        first_failure: None,
        elapsed: plan.duration,
        latency_us: latency_histogram()?,
    };
    while let Some(joined) = workers.join_next().await {
        let (latency, completed, failed, first_failure) = joined??;
        measured.latency_us.add(&latency).context("merging latency histograms")?;
        measured.completed += completed;
        measured.failed += failed;
        if measured.first_failure.is_none() {
            measured.first_failure = first_failure;
        }
    }
    Ok(measured)
}
