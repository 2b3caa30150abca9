//! `PayStream`: pipelined payments on one bidirectional stream, answered by correlation id.
//!
//! The reader takes what has already arrived on the stream, up to `GROUP_MAX` payments, as one
//! group: one task, one ledger submission (a few if the group outgrows a ledger batch), one
//! wake-up when it is durable. Before, each payment had a task, a submission and a wake-up of its
//! own, and at 25,000 payments/s those hand-offs on two cores were most of a payment's time in
//! the switch. Grouping never waits for more to arrive: a lone payment is a group of one.
//!
//! A payment to a confirming payee waits for the payee's answer on a task of its own, so it never
//! holds up the automatic payments of its group; its answer is its final state, as for `Pay`.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};

use super::payments::{answered_batch, final_answer, pay_together, result_message, Answer, RateLimiter};
use crate::core::Switch;
use crate::participants::Participant;
use crate::proto;

/// Most payments in flight on one stream (`PAY_STREAM_IN_FLIGHT_MAX`). At the bound the reader
/// stops reading, and HTTP/2 flow control pushes back on the client.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// Most payments taken into one group.
const GROUP_MAX: usize = 1_024;

type Responses = mpsc::Sender<Result<proto::PayStreamResponse, Status>>;

/// Reads the stream to its end, paying each group of what has arrived. The response stream ends
/// when the last payment is answered (every task holds a sender).
pub async fn serve(
    switch: Arc<Switch>,
    limiter: Arc<RateLimiter>,
    payer: Arc<Participant>,
    mut incoming: Streaming<proto::PayStreamRequest>,
    sender: Responses,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut ended = false;
    let mut broken = None;
    while !ended {
        let first = match incoming.message().await {
            Ok(Some(first)) => first,
            Ok(None) => break,
            Err(status) => {
                broken = Some(status);
                break;
            }
        };
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match arrived(&mut incoming) {
                Some(Ok(Some(item))) => group.push(item),
                Some(Ok(None)) => {
                    ended = true; // the client half-closed: pay what came
                    break;
                }
                Some(Err(status)) => {
                    broken = Some(status); // the stream broke: pay what came
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let Ok(permits) = Arc::clone(&in_flight).acquire_many_owned(group.len() as u32).await else { break };
        // Admission is per payment, as if each had come alone.
        let admitted: Vec<bool> = group.iter().map(|_| limiter.allow_many(&payer.psp_id, 1)).collect();
        let (switch, payer, sender) = (Arc::clone(&switch), Arc::clone(&payer), sender.clone());
        tokio::spawn(async move { pay_group(&switch, &payer, group, admitted, permits, &sender).await });
    }
    // An item the switch refused to read (bytes that do not decode, `crate::codec`) ends the
    // stream with its status, after the payments before it are answered: the status is the
    // response stream's last word. A broken connection (no reason) has no one to answer.
    if let Some(status) = broken.filter(|status| crate::reason::reason_of(status).is_some()) {
        let _all_answered = in_flight.acquire_many(IN_FLIGHT_MAX as u32).await;
        let _ = sender.send(Err(status)).await;
    }
}

/// The stream's next message if it has already arrived, without waiting. `message` keeps its
/// state in the stream, so dropping it unfinished loses nothing.
fn arrived<T>(incoming: &mut Streaming<T>) -> Option<Result<Option<T>, Status>> {
    let mut context = Context::from_waker(Waker::noop());
    match std::pin::pin!(incoming.message()).poll(&mut context) {
        Poll::Ready(message) => Some(message),
        Poll::Pending => None,
    }
}

/// Pays one group and answers each payment (confirmed ones once their payee has decided).
async fn pay_group(
    switch: &Arc<Switch>,
    payer: &Participant,
    group: Vec<proto::PayStreamRequest>,
    admitted: Vec<bool>,
    mut permits: OwnedSemaphorePermit,
    sender: &Responses,
) {
    let started = Instant::now();
    let payments: Vec<(u64, proto::PayRequest)> =
        group.into_iter().map(|item| (item.correlation_id, item.payment.unwrap_or_default())).collect();
    let requests: Vec<(&proto::PayRequest, bool)> =
        payments.iter().zip(admitted).map(|((_, payment), admitted)| (payment, admitted)).collect();
    // The payer as it is now, not as it was when the stream opened: a PSP suspended since then
    // may not start payments (common.proto), and its items are refused in-band.
    let answers = match switch.active_participant(&payer.psp_id) {
        Ok(payer) => pay_together(switch, &payer, &requests).await,
        Err(refusal) => requests.iter().map(|_| Answer::Now(Err(refusal.clone()))).collect(),
    };
    let mut answered = Vec::with_capacity(payments.len());
    for ((correlation_id, payment), answer) in payments.iter().zip(answers) {
        match answer {
            Answer::Now(answer) => {
                let result = answer.unwrap_or_else(|refusal| result_message(&payment.payment_id, Err(refusal)));
                answered.push((*correlation_id, result));
            }
            // Its own task waits for the payee, so the rest of the group is answered now.
            Answer::AwaitPayee { id, deadline, accepted_at, waiter } => {
                let (switch, sender, payment_id) = (Arc::clone(switch), sender.clone(), payment.payment_id.clone());
                let (correlation_id, permit) = (*correlation_id, permits.split(1));
                tokio::spawn(async move {
                    let answer = final_answer(&switch, &payment_id, id, deadline, accepted_at, waiter).await;
                    let result = answer.unwrap_or_else(|refusal| result_message(&payment_id, Err(refusal)));
                    switch.metrics.answered(result.state, result.reason, 1, started.elapsed());
                    let _ = sender.send(Ok(proto::PayStreamResponse { correlation_id, result: Some(result) })).await;
                    drop(permit);
                });
            }
        }
    }
    answered_batch(switch, answered.iter().map(|(_, result)| result), started);
    for (correlation_id, result) in answered {
        let response = proto::PayStreamResponse { correlation_id, result: Some(result) };
        if sender.send(Ok(response)).await.is_err() {
            break; // the client is gone; its payments stand, and status tells their outcome
        }
    }
}
