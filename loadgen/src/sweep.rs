//! The overload sweep (`--overload-sweep 1,2,3`): the switch's closed-loop capacity (measured, or
//! given), then open loop at each multiple of it, one measured phase per level. What a level
//! shows is whether the switch sheds load at the edge or collapses: completed payments per second
//! (should stay near capacity), refusals at admission by reason and how fast they come back, what
//! got no answer at all (connection teardowns, timeouts: should be none), and the switch's memory.

use std::sync::Arc;

use switch::proto::Reason;

use crate::cli::{Args, Checked};
use crate::drive::Model;
use crate::leader::Leader;
use crate::report::fmt_count;
use crate::report::model::{Fairness, FairnessPhase, Sweep, SweepLevel};
use crate::run::{measure, Phase};
use crate::stats::{summarize, Sent};
use crate::submit::PspClients;
use crate::workload::{IdSpace, Population, Skew};

/// Refusals are the point of the sweep, not a reason to stop it: a level stops early only when
/// the switch stops answering (the watchdog's other rule).
const NEVER_ABORT: f64 = 1.0;

/// Measures the capacity unless given, then each level. Returns the last level's phase (the
/// report's headline figures), the sweep, and every payment sent in every phase (verified
/// together at the end).
pub async fn run(
    args: &Args,
    checked: &Checked,
    population: &Population,
    clients: &Arc<Vec<PspClients>>,
    leader: &Option<Arc<Leader>>,
    note: &impl Fn(String),
) -> anyhow::Result<(Phase, Sweep, Vec<Sent>)> {
    let mut sent = Vec::new();
    // Each phase numbers its payments from the same start: an id space per phase, its time
    // prefix past the run's and every earlier phase's, keeps them apart.
    let mut phases = 0u16;
    let mut next_ids = || {
        phases += 1;
        IdSpace::new(crate::run::unix_ms() + u64::from(phases), phases)
    };
    let (capacity_per_s, capacity_from) = match args.capacity {
        Some(capacity) => (capacity, "given (--capacity)".to_string()),
        None => {
            let Model::Closed { concurrency } = checked.model else {
                anyhow::bail!("the capacity is measured closed loop; give --capacity or --concurrency, not --rate");
            };
            note(format!("  sweep: measuring capacity, closed loop, {concurrency} in flight..."));
            let mut phase =
                measure(args, checked, population, clients, leader, next_ids(), checked.model, args.abort_error_ratio)
                    .await?;
            let seconds = phase.measured.as_secs_f64().max(1e-9);
            let capacity = phase.totals.completed() as f64 / seconds;
            sent.append(&mut phase.totals.sent);
            if let Some(why) = phase.aborted {
                anyhow::bail!("the capacity run stopped early: {why}");
            }
            if capacity <= 0.0 {
                anyhow::bail!("the capacity run completed no payment");
            }
            (capacity, format!("measured: closed loop, {concurrency} in flight, {:.0} s", seconds))
        }
    };
    note(format!("  sweep: capacity {}/s ({capacity_from})", fmt_count(capacity_per_s as u64)));
    let mut levels = Vec::with_capacity(checked.sweep.len());
    let mut last = None;
    for &multiple in &checked.sweep {
        let rate = capacity_per_s * multiple;
        note(format!("  sweep: {multiple} x capacity, open loop {}/s...", fmt_count(rate as u64)));
        let mut phase =
            measure(args, checked, population, clients, leader, next_ids(), Model::Open { rate }, NEVER_ABORT).await?;
        let level = level(multiple, rate, &phase, &args.switch_pid);
        note(format!(
            "  sweep: {multiple} x: completed {}/s, refused {}/s RATE_LIMITED + {}/s SWITCH_BUSY, {} without an answer",
            fmt_count(level.completed_per_s as u64),
            fmt_count(level.rate_limited_per_s as u64),
            fmt_count(level.switch_busy_per_s as u64),
            fmt_count(level.unanswered)
        ));
        levels.push(level);
        sent.append(&mut phase.totals.sent);
        let stopped = phase.aborted.is_some();
        last = Some(phase);
        if stopped {
            break;
        }
    }
    let fairness = match checked.flood {
        Some((multiple, others)) => {
            let (fairness, phase) = fairness(
                args,
                checked,
                population,
                clients,
                leader,
                &mut next_ids,
                capacity_per_s,
                multiple,
                others,
                &mut sent,
                note,
            )
            .await?;
            last = Some(phase);
            Some(fairness)
        }
        None => None,
    };
    let phase = last.ok_or_else(|| anyhow::anyhow!("the sweep has no level"))?;
    Ok((phase, Sweep { capacity_per_s, capacity_from, levels, fairness }, sent))
}

/// The fairness run: the other PSPs alone at `others` x capacity, then the same beside the first
/// PSP at `multiple` x capacity. Returns the figures and the flooded phase.
#[allow(clippy::too_many_arguments)]
async fn fairness(
    args: &Args,
    checked: &Checked,
    population: &Population,
    clients: &Arc<Vec<PspClients>>,
    leader: &Option<Arc<Leader>>,
    next_ids: &mut impl FnMut() -> IdSpace,
    capacity_per_s: f64,
    multiple: f64,
    others: f64,
    sent: &mut Vec<Sent>,
    note: &impl Fn(String),
) -> anyhow::Result<(Fairness, Phase)> {
    let (others_rate, flooder_rate) = (capacity_per_s * others, capacity_per_s * multiple);
    let run = |share: f64, rate: f64, ids: IdSpace| {
        let checked = Checked { skew: Skew::Flood { share }, ..checked.clone() };
        async move { measure(args, &checked, population, clients, leader, ids, Model::Open { rate }, NEVER_ABORT).await }
    };
    note(format!("  fairness: the other PSPs alone, open loop {}/s...", fmt_count(others_rate as u64)));
    let mut alone = run(0.0, others_rate, next_ids()).await?;
    let unloaded = fairness_phase(&alone);
    sent.append(&mut alone.totals.sent);
    note(format!(
        "  fairness: the first PSP at {}/s beside the others at {}/s...",
        fmt_count(flooder_rate as u64),
        fmt_count(others_rate as u64)
    ));
    let total = others_rate + flooder_rate;
    let mut flooded_phase = run(flooder_rate / total, total, next_ids()).await?;
    let flooded = fairness_phase(&flooded_phase);
    sent.append(&mut flooded_phase.totals.sent);
    note(format!(
        "  fairness: others {:.3}% completed alone, {:.3}% beside the flood; p99 {} µs then {} µs",
        unloaded.others_success * 100.0,
        flooded.others_success * 100.0,
        unloaded.others_p99_us,
        flooded.others_p99_us
    ));
    let fairness = Fairness {
        flood_multiple: multiple,
        others_offered_per_s: others_rate,
        flooder_offered_per_s: flooder_rate,
        unloaded,
        flooded,
    };
    Ok((fairness, flooded_phase))
}

/// A fairness phase's figures: the others' from their own group, the flooder's as the rest.
fn fairness_phase(phase: &Phase) -> FairnessPhase {
    let totals = &phase.totals;
    let seconds = phase.measured.as_secs_f64().max(1e-9);
    let others = &totals.others;
    let latency = summarize(&others.completed_latency);
    FairnessPhase {
        others_success: if others.recorded == 0 { 0.0 } else { others.completed as f64 / others.recorded as f64 },
        others_completed_per_s: others.completed as f64 / seconds,
        others_p50_us: latency.p50_us,
        others_p99_us: latency.p99_us,
        flooder_completed_per_s: totals.completed().saturating_sub(others.completed) as f64 / seconds,
        rate_limited_per_s: totals.shed(Reason::RateLimited) as f64 / seconds,
        switch_busy_per_s: totals.shed(Reason::SwitchBusy) as f64 / seconds,
        unanswered: totals.unanswered(),
    }
}

/// One level's figures from its phase.
fn level(multiple: f64, offered_per_s: f64, phase: &Phase, switch_pids: &[u32]) -> SweepLevel {
    let totals = &phase.totals;
    let seconds = phase.measured.as_secs_f64().max(1e-9);
    let completed = totals.completed();
    let (rate_limited, switch_busy) = (totals.shed(Reason::RateLimited), totals.shed(Reason::SwitchBusy));
    let other = totals.answered().saturating_sub(completed + rate_limited + switch_busy);
    let switch_cpu = match phase.cpu {
        ((_, Some(before)), (_, Some(after))) if completed > 0 => Some((after - before) * 1e6 / completed as f64),
        _ => None,
    };
    SweepLevel {
        multiple,
        offered_per_s,
        sent: totals.sent_count,
        completed_per_s: completed as f64 / seconds,
        rate_limited_per_s: rate_limited as f64 / seconds,
        switch_busy_per_s: switch_busy as f64 / seconds,
        other_per_s: other as f64 / seconds,
        unanswered: totals.unanswered(),
        completed_p99_us: summarize(&totals.completed_latency).p99_us,
        shed_p99_us: summarize(&totals.shed_latency).p99_us,
        switch_rss_bytes: crate::cpu::total_rss_bytes(switch_pids),
        switch_cpu_us_per_payment: switch_cpu,
    }
}
