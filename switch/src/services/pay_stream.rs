//! `PayStream`: pipelined payments on one bidirectional stream, answered by correlation id.
//!
//! The reader takes what has already arrived on the stream, up to `GROUP_MAX` payments, as one
//! group: one task, one ledger submission (a few if the group outgrows a ledger batch), one
//! wake-up when it is durable. Before, each payment had a task, a submission and a wake-up of its
//! own, and at 25,000 payments/s those hand-offs on two cores were most of a payment's time in
//! the switch. Grouping never waits for more to arrive: a lone payment is a group of one.
//!
//! Admission is per payment, as if each had come alone (`Gate`): a payment the PSP's or the
//! switch's in-flight budget has no room for is answered at once, in-band, REJECTED with
//! RATE_LIMITED or SWITCH_BUSY, and the reader goes on reading. So a stream is held (not read)
//! only while its own `IN_FLIGHT_MAX` answers are unsent, never because the switch is busy: the
//! switch sheds its overload with reasons, not with HTTP/2 flow control.
//!
//! A payment to a confirming payee waits for the payee's answer on a task of its own, so it never
//! holds up the automatic payments of its group; its answer is its final state, as for `Pay`.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};

use super::payments::{answered_batch, final_answer, pay_together, result_message, Answer, Gate};
use crate::admission::Permit;
use crate::core::Switch;
use crate::participants::Participant;
use crate::proto;
use crate::proto::Reason;
use crate::reason::Refusal;

/// Most payments in flight on one stream (`PAY_STREAM_IN_FLIGHT_MAX`): admitted and not yet
/// answered, a confirming payee's decision included. Beyond it a payment is answered at once,
/// in-band, REJECTED with RATE_LIMITED, and the reader goes on reading.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// Most items read from one stream and not yet answered (payments in flight and answers the
/// client has not taken yet). At this bound the reader stops reading and HTTP/2 flow control
/// pushes back: only a client that does not read its answers gets there.
const UNANSWERED_MAX: usize = 2 * IN_FLIGHT_MAX;
/// Most payments taken into one group.
const GROUP_MAX: usize = 1_024;

type Responses = mpsc::Sender<Result<proto::PayStreamResponse, Status>>;

/// Reads the stream to its end, paying each group of what has arrived. The response stream ends
/// when the last payment is answered (every task holds a sender).
pub async fn serve(
    switch: Arc<Switch>,
    gate: Arc<Gate>,
    payer: Arc<Participant>,
    mut incoming: Streaming<proto::PayStreamRequest>,
    sender: Responses,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let unanswered = Arc::new(Semaphore::new(UNANSWERED_MAX));
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
        let Ok(answering) = Arc::clone(&unanswered).acquire_many_owned(group.len() as u32).await else { break };
        // The stream's own bound first, then the gate, per payment as if each had come alone.
        let room = in_flight.available_permits().min(group.len());
        let paying = Arc::clone(&in_flight).try_acquire_many_owned(room as u32).ok();
        let room = if paying.is_some() { room } else { 0 };
        let admitted: Vec<Result<Permit, Refusal>> = (0..group.len())
            .map(|index| if index < room { gate.admit(&payer.psp_id, 1) } else { Err(stream_full()) })
            .collect();
        let (switch, payer, sender) = (Arc::clone(&switch), Arc::clone(&payer), sender.clone());
        let permits = StreamPermits { paying, answering };
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

/// A payment beyond the stream's `IN_FLIGHT_MAX`.
fn stream_full() -> Refusal {
    Refusal::new(Reason::RateLimited, "this stream has PAY_STREAM_IN_FLIGHT_MAX payments in flight")
}

/// What a group holds of its stream's bounds until it is answered: the room of its admitted
/// payments (`None` when the stream had none) and of every item.
struct StreamPermits {
    paying: Option<OwnedSemaphorePermit>,
    answering: OwnedSemaphorePermit,
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
    admitted: Vec<Result<Permit, Refusal>>,
    mut permits: StreamPermits,
    sender: &Responses,
) {
    let started = Instant::now();
    let payments: Vec<(u64, proto::PayRequest)> =
        group.into_iter().map(|item| (item.correlation_id, item.payment.unwrap_or_default())).collect();
    // Each admitted payment holds its room in the budgets until it is answered.
    let mut admissions: Vec<Option<Permit>> = Vec::with_capacity(admitted.len());
    let requests: Vec<(&proto::PayRequest, Result<(), Refusal>)> = payments
        .iter()
        .zip(admitted)
        .map(|((_, payment), admitted)| {
            let (permit, admitted) = match admitted {
                Ok(permit) => (Some(permit), Ok(())),
                Err(refusal) => (None, Err(refusal)),
            };
            admissions.push(permit);
            (payment, admitted)
        })
        .collect();
    // The payer as it is now, not as it was when the stream opened: a PSP suspended since then
    // may not start payments (common.proto), and its items are refused in-band.
    let answers = match switch.active_participant(&payer.psp_id) {
        Ok(payer) => pay_together(switch, &payer, &requests).await,
        Err(refusal) => requests.iter().map(|_| Answer::Now(Err(refusal.clone()))).collect(),
    };
    let mut answered = Vec::with_capacity(payments.len());
    for (((correlation_id, payment), answer), admission) in payments.iter().zip(answers).zip(admissions) {
        match answer {
            Answer::Now(answer) => {
                drop(admission);
                let result = answer.unwrap_or_else(|refusal| result_message(&payment.payment_id, Err(refusal)));
                answered.push((*correlation_id, result));
            }
            // Its own task waits for the payee, so the rest of the group is answered now.
            Answer::AwaitPayee { id, deadline, accepted_at, waiter } => {
                let (switch, sender, payment_id) = (Arc::clone(switch), sender.clone(), payment.payment_id.clone());
                let correlation_id = *correlation_id;
                let stream = (permits.paying.as_mut().and_then(|paying| paying.split(1)), permits.answering.split(1));
                tokio::spawn(async move {
                    let answer = final_answer(&switch, &payment_id, id, deadline, accepted_at, waiter).await;
                    let result = answer.unwrap_or_else(|refusal| result_message(&payment_id, Err(refusal)));
                    switch.metrics.answered(result.state, result.reason, 1, started.elapsed());
                    drop(admission);
                    let _ = sender.send(Ok(proto::PayStreamResponse { correlation_id, result: Some(result) })).await;
                    drop(stream);
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
