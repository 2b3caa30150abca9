//! After every run: does what loadgen saw agree with the switch's ledger? Every payment, collect and
//! refund sent is looked up (GetPayments, 8,190 ids a call): an acknowledged COMPLETED payment must
//! be there, COMPLETED, with its amount and PSPs; a refused one must not have moved money; one whose
//! answer was lost is resolved from the ledger. Then each PSP's balance change must equal the sum of
//! its completed payments, the changes must sum to zero, no reservation may be left open, and the
//! settlement window's counts must agree. Any disagreement fails the run.

use std::collections::HashMap;

use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::{self, PaymentState};
use tonic::transport::Channel;

use crate::connect::describe;
use crate::payee::PayeeStats;
use crate::report::model::Verification;
use crate::setup::Positions;
use crate::stats::{Outcome, Sent};
use crate::workload::{Kind, Population};

const LOOKUP_BATCH: usize = 8_190;
/// Problems listed in full; beyond this they are counted.
const PROBLEMS_SHOWN: usize = 20;

/// What the switch has for one id (only what the check needs).
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub state: PaymentState,
    pub amount: u64,
    pub payer_psp: String,
    pub payee_psp: String,
}

/// Per-PSP totals the switch should show, from loadgen's side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    pub balance_change: i128,
    pub sent_count: u64,
    pub received_count: u64,
}

/// The pure part of the check: compares the records of what was sent with what the switch has.
/// Returns the per-PSP expectations, and adds checks and problems to `verification`.
pub fn compare(
    sent: &[Sent],
    found: &HashMap<u128, Found>,
    collect_outcomes: &dyn Fn(u128) -> Option<PaymentState>,
    population: &Population,
    verification: &mut Verification,
) -> Vec<Expected> {
    let mut expected = vec![Expected::default(); population.psp_ids.len()];
    let (mut completed, mut resolved_completed, mut resolved_absent, mut mismatched) = (0u64, 0u64, 0u64, 0u64);
    let mut problem = |verification: &mut Verification, text: String| {
        mismatched += 1;
        if verification.problems.len() < PROBLEMS_SHOWN {
            verification.problems.push(text);
        }
    };
    for item in sent {
        let record = found.get(&item.id);
        let payer = &population.psp_ids[usize::from(item.payer_psp)];
        let payee = &population.psp_ids[usize::from(item.payee_psp)];
        let name = Named(item);
        if let Some(record) = record {
            if record.amount != item.amount || &record.payer_psp != payer || &record.payee_psp != payee {
                problem(
                    verification,
                    format!(
                        "{name}: sent {} from {payer} to {payee}, the switch has {} from {} to {}",
                        item.amount, record.amount, record.payer_psp, record.payee_psp
                    ),
                );
                continue;
            }
        }
        let state = record.map(|record| record.state);
        let moved = match (item.outcome, state) {
            // Acknowledged final states must be in the ledger exactly as acknowledged.
            (Outcome::State(acked, _), _) if is_final(acked) && acked != PaymentState::Rejected => {
                if state != Some(acked) {
                    problem(verification, format!("{name}: acknowledged {acked:?}, the switch has {state:?}"));
                    continue;
                }
                acked == PaymentState::Completed
            }
            // REJECTED means nothing was recorded and the id stays unused.
            (Outcome::State(PaymentState::Rejected, _), None) => false,
            (Outcome::State(PaymentState::Rejected, _), Some(state)) => {
                problem(verification, format!("{name}: answered REJECTED, yet the switch has it {state:?}"));
                continue;
            }
            // A collect acknowledged as recorded: it must be there; it ends as the payer decided.
            (Outcome::State(_, _), None) => {
                problem(verification, format!("{name}: acknowledged as recorded, the switch does not have it"));
                continue;
            }
            (Outcome::State(_, _), Some(state)) => {
                if item.kind == Kind::Collect {
                    if let Some(seen) = collect_outcomes(item.id) {
                        if seen != state {
                            problem(
                                verification,
                                format!("{name}: outcome event said {seen:?}, the switch has {state:?}"),
                            );
                            continue;
                        }
                    }
                }
                state == PaymentState::Completed
            }
            // Refused: nothing may have moved (a liquidity failure is recorded FAILED, the rest not at all).
            (Outcome::Refused(..), Some(PaymentState::Completed | PaymentState::Pending)) => {
                problem(verification, format!("{name}: refused, yet the switch has it {state:?}"));
                continue;
            }
            (Outcome::Refused(..), _) | (Outcome::Found, _) => false,
            // Never sent: the switch must not know it.
            (Outcome::Overrun, Some(state)) => {
                problem(verification, format!("{name}: never sent, yet the switch has it {state:?}"));
                continue;
            }
            (Outcome::Overrun, None) => false,
            // The answer was lost: the ledger decides.
            (Outcome::Unanswered(_), None) => {
                resolved_absent += 1;
                false
            }
            (Outcome::Unanswered(_), Some(state)) => {
                let done = state == PaymentState::Completed;
                resolved_completed += u64::from(done);
                done
            }
        };
        if moved {
            completed += 1;
            let amount = i128::from(item.amount);
            let payer = &mut expected[usize::from(item.payer_psp)];
            payer.balance_change -= amount;
            payer.sent_count += 1;
            let payee = &mut expected[usize::from(item.payee_psp)];
            payee.balance_change += amount;
            payee.received_count += 1;
        }
    }
    if mismatched > PROBLEMS_SHOWN as u64 {
        verification.problems.push(format!("... {} more disagreements", mismatched - PROBLEMS_SHOWN as u64));
    }
    verification.checks.push(format!(
        "{} records of what was sent looked up: {completed} completed ({resolved_completed} of them answer-lost, completed in the ledger), {resolved_absent} answer-lost and not in the ledger, {mismatched} disagreements",
        sent.len()
    ));
    expected
}

/// "pay <id>" in a problem line, formatted only when a problem is reported (not once per payment).
struct Named<'a>(&'a Sent);

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:032x}", self.0.kind.name(), self.0.id)
    }
}

fn is_final(state: PaymentState) -> bool {
    matches!(
        state,
        PaymentState::Completed
            | PaymentState::Declined
            | PaymentState::Expired
            | PaymentState::Failed
            | PaymentState::Rejected
    )
}

/// Looks every sent id up in the switch, several calls in flight.
pub async fn lookup(operator: &OperatorServiceClient<Channel>, sent: &[Sent]) -> anyhow::Result<HashMap<u128, Found>> {
    let ids: Vec<u128> = sent.iter().filter(|item| item.outcome != Outcome::Found).map(|item| item.id).collect();
    let mut found = HashMap::with_capacity(ids.len());
    let mut calls = tokio::task::JoinSet::new();
    let mut chunks = ids.chunks(LOOKUP_BATCH).map(<[u128]>::to_vec);
    // Four calls at a time: enough to keep the switch's two cores busy without starving it.
    for chunk in chunks.by_ref().take(4) {
        calls.spawn(lookup_chunk(operator.clone(), chunk));
    }
    while let Some(result) = calls.join_next().await {
        let answers = result.map_err(|error| anyhow::anyhow!("lookup task failed: {error}"))??;
        found.extend(answers);
        if let Some(chunk) = chunks.next() {
            calls.spawn(lookup_chunk(operator.clone(), chunk));
        }
    }
    Ok(found)
}

async fn lookup_chunk(
    mut operator: OperatorServiceClient<Channel>,
    ids: Vec<u128>,
) -> anyhow::Result<Vec<(u128, Found)>> {
    let request = proto::GetPaymentsRequest { payment_ids: ids.iter().map(|id| id.to_be_bytes().to_vec()).collect() };
    let response = operator
        .get_payments(request)
        .await
        .map_err(|status| anyhow::anyhow!("looking payments up: {}", describe(&status)))?
        .into_inner();
    if response.payments.len() != ids.len() {
        anyhow::bail!("GetPayments answered {} of {} ids", response.payments.len(), ids.len());
    }
    Ok(ids
        .into_iter()
        .zip(response.payments)
        .filter_map(|(id, lookup)| {
            let payment = lookup.payment.filter(|_| lookup.found)?;
            let state = PaymentState::try_from(payment.state).unwrap_or(PaymentState::Unspecified);
            Some((
                id,
                Found {
                    state,
                    amount: payment.amount_minor,
                    payer_psp: payment.payer_psp_id,
                    payee_psp: payment.payee_psp_id,
                },
            ))
        })
        .collect())
}

/// The provisional report of the open settlement window (its id found by walking from window 1).
pub async fn open_window(operator: &mut OperatorServiceClient<Channel>) -> anyhow::Result<proto::SettlementReport> {
    let mut window_id = 1;
    loop {
        let report = operator
            .get_settlement_report(proto::GetSettlementReportRequest { window_id })
            .await
            .map_err(|status| anyhow::anyhow!("reading settlement window {window_id}: {}", describe(&status)))?
            .into_inner();
        if report.state == proto::SettlementWindowState::Open as i32 {
            return Ok(report);
        }
        window_id += 1;
    }
}

/// Before the load: what the verification compares against.
pub struct Baseline {
    pub positions: Positions,
    pub window: proto::SettlementReport,
}

/// The event streams' promises, as the simulated PSPs checked them on every event, across every
/// reconnection (a restart or a failover): in sequence, no gap, nothing acknowledged sent again.
fn event_streams(payees: &PayeeStats, verification: &mut Verification) {
    let problems = payees.stream_problems.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    if problems.is_empty() {
        verification.checks.push(format!(
            "event streams: every PSP's events in sequence with no gap and none it acknowledged sent again ({} events, {} reconnections, {} unacknowledged events sent again and skipped)",
            payees.events.load(std::sync::atomic::Ordering::Relaxed),
            payees.reconnects.load(std::sync::atomic::Ordering::Relaxed),
            payees.redelivered.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    const SHOWN: usize = 20;
    let count = problems.len();
    verification.problems.extend(problems.into_iter().take(SHOWN));
    if count > SHOWN {
        verification.problems.push(format!("... and {} more event-stream problems", count - SHOWN));
    }
}

/// The whole check against a running switch.
pub async fn verify(
    operator: &mut OperatorServiceClient<Channel>,
    before: &Baseline,
    sent: &[Sent],
    payees: &PayeeStats,
    population: &Population,
) -> anyhow::Result<Verification> {
    let mut verification = Verification { payments_checked: sent.len() as u64, ..Verification::default() };
    let found = lookup(operator, sent).await?;
    let expected = compare(sent, &found, &|id| payees.collect_outcome(id), population, &mut verification);

    event_streams(payees, &mut verification);
    let after = crate::setup::positions(operator).await?;
    let window = open_window(operator).await?;
    let same_window = window.window_id == before.window.window_id;
    let window_of = |report: &proto::SettlementReport, psp: &str| {
        report.positions.iter().find(|position| position.psp_id == psp).cloned().unwrap_or_default()
    };
    let mut total_change: i128 = 0;
    for (index, psp) in population.psp_ids.iter().enumerate() {
        let (Some(old), Some(new)) = (before.positions.get(psp), after.get(psp)) else {
            verification.problems.push(format!("PSP {psp} is missing from the switch's participant list"));
            continue;
        };
        let change = i128::from(new.balance_minor) - i128::from(old.balance_minor);
        total_change += change;
        let wanted = &expected[index];
        if change != wanted.balance_change {
            verification.problems.push(format!(
                "PSP {psp}: balance changed by {change}, its completed payments add up to {}",
                wanted.balance_change
            ));
        }
        if new.reserved_minor != 0 || new.incoming_pending_minor != 0 {
            verification.problems.push(format!(
                "PSP {psp}: {} reserved and {} incoming still pending after the run drained",
                new.reserved_minor, new.incoming_pending_minor
            ));
        }
        if same_window {
            let (old, new) = (window_of(&before.window, psp), window_of(&window, psp));
            let sent_count = new.sent_count.saturating_sub(old.sent_count);
            let received_count = new.received_count.saturating_sub(old.received_count);
            if (sent_count, received_count) != (wanted.sent_count, wanted.received_count) {
                verification.problems.push(format!(
                    "PSP {psp}: the settlement window counts {sent_count} sent / {received_count} received, loadgen {} / {}",
                    wanted.sent_count, wanted.received_count
                ));
            }
        }
    }
    verification.checks.push(format!(
        "balance change of each of the {} PSPs equals its completed payments; the changes sum to {total_change}",
        population.psp_ids.len()
    ));
    if total_change != 0 {
        verification
            .problems
            .push(format!("the PSPs' balance changes sum to {total_change}, not zero: money was created or lost"));
    }
    verification.checks.push("no reservation left open after the run drained".into());
    if same_window {
        verification.checks.push(format!(
            "settlement window {}: sent and received counts per PSP equal loadgen's completed payments",
            window.window_id
        ));
    } else {
        verification.checks.push("settlement window closed during the run: window counts not compared".into());
    }
    verification.passed = verification.problems.is_empty();
    Ok(verification)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch::proto::Reason;

    fn population() -> Population {
        Population::new("lg", 2, 10)
    }

    fn sent(id: u128, kind: Kind, outcome: Outcome) -> Sent {
        Sent { id, kind, payer_psp: 0, payee_psp: 1, amount: 100, outcome }
    }

    fn found(state: PaymentState) -> Found {
        Found { state, amount: 100, payer_psp: "lg-01".into(), payee_psp: "lg-02".into() }
    }

    fn completed() -> Outcome {
        Outcome::State(PaymentState::Completed, Reason::Unspecified)
    }

    fn check(sent: &[Sent], found: &HashMap<u128, Found>) -> (Vec<Expected>, Verification) {
        let mut verification = Verification::default();
        let expected = compare(sent, found, &|_| None, &population(), &mut verification);
        (expected, verification)
    }

    #[test]
    fn agreeing_records_pass_and_move_money_both_ways() {
        let records = vec![
            sent(1, Kind::Pay, completed()),
            sent(2, Kind::Pay, Outcome::State(PaymentState::Rejected, Reason::SwitchBusy)),
            sent(3, Kind::Pay, Outcome::Unanswered(tonic::Code::Unavailable)),
            sent(4, Kind::Pay, Outcome::Unanswered(tonic::Code::Unavailable)),
            sent(5, Kind::Pay, Outcome::Refused(tonic::Code::FailedPrecondition, Reason::InsufficientLiquidity)),
        ];
        let found: HashMap<u128, Found> = [
            (1, found(PaymentState::Completed)),
            (3, found(PaymentState::Completed)),
            (5, found(PaymentState::Failed)),
        ]
        .into();
        let (expected, verification) = check(&records, &found);
        assert!(verification.problems.is_empty(), "{:?}", verification.problems);
        assert_eq!(expected[0], Expected { balance_change: -200, sent_count: 2, received_count: 0 });
        assert_eq!(expected[1], Expected { balance_change: 200, sent_count: 0, received_count: 2 });
        assert_eq!(expected.iter().map(|psp| psp.balance_change).sum::<i128>(), 0);
    }

    #[test]
    fn a_lost_acknowledged_payment_fails_loudly() {
        let (_, verification) = check(&[sent(1, Kind::Pay, completed())], &HashMap::new());
        assert_eq!(verification.problems.len(), 1);
        assert!(verification.problems[0].contains("acknowledged Completed"), "{:?}", verification.problems);
    }

    #[test]
    fn a_different_amount_or_payee_is_a_disagreement() {
        let mut other = found(PaymentState::Completed);
        other.amount = 101;
        let (_, verification) = check(&[sent(1, Kind::Pay, completed())], &[(1, other)].into());
        assert!(verification.problems[0].contains("sent 100"), "{:?}", verification.problems);
        let mut other = found(PaymentState::Completed);
        other.payee_psp = "lg-03".into();
        let (_, verification) = check(&[sent(1, Kind::Pay, completed())], &[(1, other)].into());
        assert_eq!(verification.problems.len(), 1);
    }

    #[test]
    fn money_that_moved_without_an_acknowledgement_of_it_is_caught() {
        let records = [
            sent(1, Kind::Pay, Outcome::State(PaymentState::Rejected, Reason::SwitchBusy)),
            sent(2, Kind::Pay, Outcome::Refused(tonic::Code::ResourceExhausted, Reason::RateLimited)),
            sent(3, Kind::Pay, Outcome::Overrun),
            sent(4, Kind::Pay, Outcome::State(PaymentState::Declined, Reason::PayeeDeclined)),
        ];
        let found: HashMap<u128, Found> = [1, 2, 3, 4].map(|id| (id, found(PaymentState::Completed))).into();
        let (expected, verification) = check(&records, &found);
        assert_eq!(verification.problems.len(), 4, "{:?}", verification.problems);
        assert_eq!(expected[0].balance_change, 0, "nothing is expected to have moved");
    }

    #[test]
    fn collects_follow_the_ledger_and_their_outcome_events() {
        let records = [sent(7, Kind::Collect, Outcome::State(PaymentState::AwaitingApproval, Reason::Unspecified))];
        let found: HashMap<u128, Found> = [(7, found(PaymentState::Completed))].into();
        let mut verification = Verification::default();
        let expected = compare(&records, &found, &|_| Some(PaymentState::Completed), &population(), &mut verification);
        assert!(verification.problems.is_empty());
        assert_eq!(expected[1].balance_change, 100);
        let mut verification = Verification::default();
        compare(&records, &found, &|_| Some(PaymentState::Declined), &population(), &mut verification);
        assert_eq!(verification.problems.len(), 1, "the outcome event and the ledger disagree");
        let (_, verification) = check(&records, &HashMap::new());
        assert_eq!(verification.problems.len(), 1, "an acknowledged collect must be recorded");
    }

    #[test]
    fn long_problem_lists_are_capped_but_counted() {
        let records: Vec<Sent> = (1..=50).map(|id| sent(id, Kind::Pay, completed())).collect();
        let (_, verification) = check(&records, &HashMap::new());
        assert_eq!(verification.problems.len(), PROBLEMS_SHOWN + 1);
        assert!(verification.problems.last().is_some_and(|last| last.contains("30 more")));
    }
}
