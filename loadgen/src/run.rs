//! One whole run: set up the population, start the simulated payees, drive the load with a live
//! progress line, drain, verify against the switch's ledger, optionally run the PostgreSQL
//! baseline, and report. A failure after the load started still produces a (partial) report.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::rngs::SmallRng;

use crate::cli::{Args, Checked};
use crate::connect::Connector;
use crate::drive::{self, Load, Model};
use crate::leader::Leader;
use crate::payee::{self, Behaviour};
use crate::report::model::{self, Report};
use crate::report::{self, fmt_count};
use crate::setup::{self, Onboarding};
use crate::stats::summarize;
use crate::submit::PspClients;
use crate::workload::{IdSpace, Kind, Population, Traffic};
use crate::{baseline, verify};

/// How a run ended, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Ran, verified (or verification skipped) and everything agreed.
    Passed,
    /// The verification found disagreements.
    VerificationFailed,
    /// The run stopped early (the switch rejected or stopped answering); the report is partial.
    Aborted,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub async fn run(args: Args, checked: Checked) -> anyhow::Result<Ending> {
    let quiet = args.quiet;
    let note = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let population = Population::new(&args.psp_prefix, args.psps, args.users);
    // Checked before any setup; each measured phase draws from a traffic of its own.
    Traffic::new(population.clone(), checked.skew, args.amount_min, args.amount_max)
        .map_err(|message| anyhow::anyhow!(message))?;
    let mut connector = Connector::new(&args.server, &args.certs, &args.domain)?;
    connector.follow(&args.operator).await?;
    let started_ms = unix_ms();
    let ids = IdSpace::new(started_ms, (args.seed ^ u64::from(std::process::id())) as u16 ^ (started_ms >> 48) as u16);

    note(format!("loadgen: {} PSPs, {} users, switch {}", args.psps, fmt_count(args.users), connector.target()));
    let mut operator = setup::operator(&connector, &args.operator).await?;
    let onboarding = Onboarding {
        currency: args.currency.clone(),
        mode: checked.mode,
        net_debit_cap: args.net_debit_cap,
        funding: args.funding,
    };
    setup::participants(&mut operator, &population, &onboarding, ids).await?;
    let psps = setup::connect(&connector, &population, args.connections).await?;
    if args.skip_aliases {
        note("  aliases: skipped (--skip-aliases)".into());
    } else {
        setup::aliases(&psps, &population, quiet).await?;
    }
    let behaviour =
        Behaviour { decline_rate: args.decline_rate, think_time: checked.think_time, ack_every: args.ack_every };
    let payees = payee::start(&psps, behaviour, args.seed).await?;
    let before = verify::Baseline {
        positions: setup::positions(&mut operator).await?,
        window: verify::open_window(&mut operator).await?,
    };
    let mut clients = Vec::with_capacity(psps.len());
    for psp in &psps {
        clients.push(PspClients::new(psp, checked.submission).await?);
    }
    let clients = Arc::new(clients);

    let title = format!(
        "{}, {}, {}, {}",
        match checked.model {
            Model::Open { rate } => format!("open loop {}/s", fmt_count(rate as u64)),
            Model::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
        },
        checked.submission.name(),
        checked.skew.name(),
        checked.mode.as_str_name().trim_start_matches("CONFIRMATION_MODE_").to_lowercase()
    );
    let (phase, sweep, all_sent) = if checked.sweep.is_empty() && checked.flood.is_none() {
        note(format!("  load: {title} for {:.0} s", checked.duration.as_secs_f64()));
        let mut phase = measure(
            &args,
            &checked,
            &population,
            &clients,
            &connector.leader,
            ids,
            checked.model,
            args.abort_error_ratio,
        )
        .await?;
        let sent = std::mem::take(&mut phase.totals.sent);
        (phase, None, sent)
    } else {
        let (phase, sweep, sent) =
            crate::sweep::run(&args, &checked, &population, &clients, &connector.leader, &note).await?;
        (phase, Some(sweep), sent)
    };
    let Phase { totals, measured, aborted, cpu: (cpu_before, cpu_after) } = phase;
    let title = match &sweep {
        Some(sweep) if checked.sweep.is_empty() => format!(
            "fairness: one PSP at {} x {}/s beside the others, {}",
            checked.flood.map_or(0.0, |(multiple, _)| multiple),
            fmt_count(sweep.capacity_per_s as u64),
            checked.submission.name()
        ),
        Some(sweep) => format!(
            "overload sweep at {} x {}/s, {}",
            checked.sweep.iter().map(|multiple| format!("{multiple}")).collect::<Vec<_>>().join(", "),
            fmt_count(sweep.capacity_per_s as u64),
            checked.submission.name()
        ),
        None => title,
    };

    // Collects end when the payer's simulator decides; give the outcome events a moment to arrive.
    let collects = totals.sent.iter().filter(|sent| sent.kind == Kind::Collect && !sent.outcome.is_error()).count();
    let waiting_since = Instant::now();
    while payees.collect_outcomes_seen() < collects && waiting_since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let share = |seconds: f64| {
        format!(
            "{seconds:.1} CPU-s ({:.0}% of {cores} cores)",
            seconds * 100.0 / (measured.as_secs_f64().max(1e-9) * cores)
        )
    };
    let cpu = match (cpu_before, cpu_after) {
        ((Some(own_before), switch_before), (Some(own_after), switch_after)) => {
            let switch = match (switch_before, switch_after) {
                (Some(before), Some(after)) => share(after - before),
                _ => "not measured (pass --switch-pid: every node's, each running to the end)".into(),
            };
            Some(format!("switch {switch}; loadgen {}", share(own_after - own_before)))
        }
        _ => None,
    };
    if let Some(path) = &args.save_completed {
        save_completed(path, &all_sent)?;
    }
    let answered = totals.answered();
    let seconds = measured.as_secs_f64().max(1e-9);
    let mut report = Report {
        title,
        started_at_unix_ms: started_ms,
        settings: settings(&args, &checked),
        duration_s: seconds,
        offered_per_s: match (sweep.as_ref().and_then(|sweep| sweep.levels.last()), checked.model) {
            (Some(level), _) => Some(level.offered_per_s),
            (None, Model::Open { rate }) => Some(rate),
            (None, Model::Closed { .. }) => None,
        },
        achieved_per_s: answered as f64 / seconds,
        sent: totals.sent_count,
        answered,
        unanswered: totals.sent_count.saturating_sub(answered),
        outcomes: totals.outcome_counts(),
        latency: summarize(&totals.latency),
        timeline: totals.timeline.clone(),
        verification: None,
        baseline: None,
        aborted: aborted.clone(),
        sweep,
        failovers: failovers(&connector, &totals.timeline),
    };
    // What completed is what the switch's throughput means; the headline rate counts answers.
    let completed = totals
        .outcomes
        .iter()
        .filter(|(_, outcome, _)| {
            matches!(outcome, crate::stats::Outcome::State(switch::proto::PaymentState::Completed, _))
        })
        .map(|(_, _, count)| count)
        .sum::<u64>();
    if let Some(cpu) = cpu {
        report.settings.push(("CPU during the load".into(), cpu));
    }
    report
        .settings
        .push(("completed per second".into(), format!("{}/s", fmt_count((completed as f64 / seconds) as u64))));
    if collects > 0 {
        // A collect is answered AWAITING_APPROVAL and completes later, on the payer's decision,
        // so the line above does not count it: its outcome event does.
        let outcomes = payees.collect_outcomes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let done = outcomes.values().filter(|state| **state == switch::proto::PaymentState::Completed).count();
        report.settings.push((
            "collects completed".into(),
            format!(
                "{} of {} requested (by their outcome events, {} outcomes seen)",
                fmt_count(done as u64),
                fmt_count(collects as u64),
                fmt_count(outcomes.len() as u64)
            ),
        ));
    }
    report.settings.push((
        "payee events".into(),
        format!(
            "{} received, {} credit requests, {} collect requests, {} declined, {} late decisions, {} reconnects",
            fmt_count(payees.events.load(Ordering::Relaxed)),
            fmt_count(payees.credit_requests.load(Ordering::Relaxed)),
            fmt_count(payees.collect_requests.load(Ordering::Relaxed)),
            fmt_count(payees.declined.load(Ordering::Relaxed)),
            fmt_count(payees.late_decisions.load(Ordering::Relaxed)),
            fmt_count(payees.reconnects.load(Ordering::Relaxed)),
        ),
    ));
    if let Some(why) = payees.last_disconnect.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() {
        report.settings.push(("last event stream end".into(), why));
    }
    payees.stop();

    if !args.no_verify {
        note(format!("  verifying {} records against the switch's ledger...", fmt_count(all_sent.len() as u64)));
        let checked_at = Instant::now();
        report.verification =
            Some(match verified(&connector, &mut operator, &before, &all_sent, &payees, &population).await {
                Ok(verification) => verification,
                Err(error) => model::Verification {
                    passed: false,
                    payments_checked: 0,
                    checks: Vec::new(),
                    problems: vec![format!("the verification could not run: {error:#}")],
                },
            });
        note(format!("  verified in {:.1} s", checked_at.elapsed().as_secs_f64()));
    }

    if args.baseline.is_some() && aborted.is_none() {
        note(format!("  baseline: PostgreSQL, same workload shape, {:.0} s...", args.baseline_duration));
        match run_baseline(&args, &population, checked.skew, report.achieved_per_s).await {
            Ok((baseline, version)) => {
                let what =
                    format!("PostgreSQL {version}: PL/pgSQL pay() (cap check, credit, insert), synchronous commit");
                report.settings.push(("baseline".into(), what));
                report.baseline = Some(baseline);
            }
            Err(error) => {
                report.aborted.get_or_insert_with(|| format!("the PostgreSQL baseline failed: {error:#}"));
            }
        }
    }

    let html = report::write_files(&report, &args.report_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::text(&report));
        println!("\n   report: {}", html.display());
    }
    Ok(if report.aborted.is_some() {
        Ending::Aborted
    } else if report.verification.as_ref().is_some_and(|verification| !verification.passed) {
        Ending::VerificationFailed
    } else {
        Ending::Passed
    })
}

/// One measured phase: the load driven for the run's duration, then drained.
pub struct Phase {
    pub totals: crate::stats::Totals,
    /// From the phase's start to its last answer (the drain included).
    pub measured: Duration,
    /// Why the phase stopped early, if it did.
    pub aborted: Option<String>,
    /// CPU seconds so far of loadgen and the switch at the phase's start and at its end.
    pub cpu: (CpuSoFar, CpuSoFar),
}

/// CPU seconds so far of (loadgen, the switch), where /proc tells.
pub type CpuSoFar = (Option<f64>, Option<f64>);

/// Drives `model` over `clients` for the run's duration with a live progress line and the
/// abort rule (`abort_ratio`), and returns what it measured. `ids` must differ between phases.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    args: &Args,
    checked: &Checked,
    population: &Population,
    clients: &Arc<Vec<PspClients>>,
    leader: &Option<Arc<Leader>>,
    ids: IdSpace,
    model: Model,
    abort_ratio: f64,
) -> anyhow::Result<Phase> {
    let traffic = Traffic::new(population.clone(), checked.skew, args.amount_min, args.amount_max)
        .map_err(|message| anyhow::anyhow!(message))?;
    let load = Arc::new(Load::new(
        traffic,
        args.mix,
        ids,
        args.currency.clone(),
        checked.submission,
        Arc::clone(clients),
        checked.call_timeout,
        leader.clone(),
        args.in_flight_max,
        args.seed,
    ));
    let watchdog = tokio::spawn(watch(load.clone(), abort_ratio, args.quiet));
    let interrupt = {
        let load = load.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                load.stop();
            }
        })
    };
    if let Some(leader) = leader {
        leader.set_epoch(load.recorder.start());
    }
    let cpu_before = (crate::cpu::seconds(std::process::id()), crate::cpu::total_seconds(&args.switch_pid));
    let finished = drive::run(load.clone(), model, checked.duration).await;
    let cpu_after = (crate::cpu::seconds(std::process::id()), crate::cpu::total_seconds(&args.switch_pid));
    load.stop();
    let aborted = watchdog.await.unwrap_or(None);
    interrupt.abort();
    let measured = finished.saturating_duration_since(load.recorder.start());
    let totals = load.recorder.finish(measured);
    Ok(Phase { totals, measured, aborted, cpu: (cpu_before, cpu_after) })
}

fn settings(args: &Args, checked: &Checked) -> Vec<(String, String)> {
    let model = match (checked.model, checked.sweep.is_empty() && checked.flood.is_none()) {
        (_, false) if checked.sweep.is_empty() => format!(
            "fairness: the other PSPs at {} x capacity ({}), alone then beside the first PSP at {} x, {} s each",
            checked.flood.map_or(0.0, |(_, others)| others),
            args.capacity
                .map_or_else(|| "measured closed loop first".into(), |rate| format!("{}/s", fmt_count(rate as u64))),
            checked.flood.map_or(0.0, |(multiple, _)| multiple),
            args.duration
        ),
        (_, false) => format!(
            "overload sweep: open loop at {} x capacity ({}), {} s each",
            checked.sweep.iter().map(|multiple| format!("{multiple}")).collect::<Vec<_>>().join(", "),
            args.capacity
                .map_or_else(|| "measured closed loop first".into(), |rate| format!("{}/s", fmt_count(rate as u64))),
            args.duration
        ),
        (Model::Open { rate }, true) => format!("open loop at {}/s", fmt_count(rate as u64)),
        (Model::Closed { concurrency }, true) => format!("closed loop, {concurrency} in flight"),
    };
    vec![
        ("switch".into(), args.server.join(", ")),
        ("PSPs".into(), format!("{} ({}-01 ..), {} connections each", args.psps, args.psp_prefix, args.connections)),
        ("users (aliases)".into(), fmt_count(args.users)),
        ("acceptance".into(), format!("{:?}", args.acceptance).to_lowercase()),
        ("load model".into(), model),
        ("submission".into(), checked.submission.name()),
        ("skew".into(), checked.skew.name()),
        ("mix".into(), args.mix.describe()),
        ("amounts".into(), format!("{} to {} minor units", fmt_count(args.amount_min), fmt_count(args.amount_max))),
        ("payee decline rate".into(), format!("{}", args.decline_rate)),
        ("payee think time".into(), format!("{} ms", args.think_time_ms)),
        ("payee acknowledges every".into(), format!("{} events", fmt_count(args.ack_every))),
        ("duration".into(), format!("{} s", args.duration)),
        ("seed".into(), args.seed.to_string()),
    ]
}

/// The live progress line, and the abort rule: returns why the run was stopped early, if it was.
async fn watch(load: Arc<Load>, abort_ratio: f64, quiet: bool) -> Option<String> {
    let terminal = std::io::stderr().is_terminal();
    let start = load.recorder.start();
    let (mut last_answered, mut last_progress_at) = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut second = 0u64;
    loop {
        tick.tick().await;
        second += 1;
        let now = Instant::now();
        let answered = load.recorder.answered.load(Ordering::Relaxed);
        let errors = load.recorder.errors.load(Ordering::Relaxed);
        let rate = answered - last_answered;
        if answered != last_answered {
            last_progress_at = now;
        }
        last_answered = answered;
        if !quiet && (terminal || second.is_multiple_of(5)) {
            let p99 = load.recorder.latency_so_far().value_at_quantile(0.99);
            let line = format!(
                "  [{:>4.0}s] {:>10} answered  {:>9}/s  errors {:>8}  in flight {:>7}  p99 so far {}",
                now.duration_since(start).as_secs_f64(),
                fmt_count(answered),
                fmt_count(rate),
                fmt_count(errors),
                fmt_count(load.in_flight() as u64),
                report::fmt_us(p99)
            );
            if terminal {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        if load.stopping() {
            if terminal && !quiet {
                eprintln!();
            }
            return None;
        }
        let (recent, failed) = load.recorder.recent(now, 5);
        if second >= 5 && recent >= 100 && failed as f64 > abort_ratio * recent as f64 {
            load.stop();
            return Some(format!(
                "{} of the {} operations answered in the last 5 s failed (over {:.0}%): the switch is rejecting",
                fmt_count(failed),
                fmt_count(recent),
                abort_ratio * 100.0
            ));
        }
        // Following a replicated switch, operations wait out a failover (up to FAILOVER_WAIT) and a
        // new leader may first wait for a restarted follower to catch up before it commits.
        let silence_max = if load.leader.is_some() { crate::leader::FAILOVER_WAIT } else { Duration::from_secs(15) };
        if load.in_flight() > 0 && now.duration_since(last_progress_at) > silence_max {
            load.stop();
            return Some(format!("no answer from the switch for {} s", silence_max.as_secs()));
        }
    }
}

/// The baseline's figures, and the server's full version string.
async fn run_baseline(
    args: &Args,
    population: &Population,
    skew: crate::workload::Skew,
    switch_rate: f64,
) -> anyhow::Result<(model::Baseline, String)> {
    // The same shape: the baseline's accounts are the PSPs, payers drawn by the same skew over
    // the same population, so the hot PSP is as hot there as in the switch.
    let traffic = Arc::new(
        Traffic::new(population.clone(), skew, args.amount_min, args.amount_max)
            .map_err(|message| anyhow::anyhow!(message))?,
    );
    let pick = {
        let traffic = traffic.clone();
        Arc::new(move |rng: &mut SmallRng| {
            let parties = traffic.draw(rng);
            baseline::Pick { payer: parties.payer_psp, payee: parties.payee_psp, amount: parties.amount }
        })
    };
    let options = baseline::BaselineOptions {
        accounts: population.psps,
        funding_minor: i64::try_from(args.funding).context("--funding is too large for PostgreSQL's bigint")?,
        net_debit_cap_minor: i64::try_from(args.net_debit_cap).unwrap_or(i64::MAX / 4),
        connections: args.baseline_connections,
        duration: Duration::from_secs_f64(args.baseline_duration),
        dir: args.report_dir.join("postgres"),
        port: args.baseline_port,
    };
    let result = baseline::run(&options, pick).await?;
    let seconds = result.duration.as_secs_f64().max(1e-9);
    let achieved = result.committed as f64 / seconds;
    let baseline = model::Baseline {
        // "15.18 (Debian 15.18-0+deb12u1)" → "PostgreSQL 15.18": the packaging is in the settings.
        name: format!("PostgreSQL {}", result.server_version.split_whitespace().next().unwrap_or("?")),
        connections: args.baseline_connections,
        duration_s: seconds,
        committed: result.committed,
        refused: result.refused,
        achieved_per_s: achieved,
        latency: summarize(&result.latency),
        ratio: if achieved > 0.0 { switch_rate / achieved } else { 0.0 },
        verification: result.checks,
    };
    Ok((baseline, result.server_version))
}

/// The verification (read-only, so it may be run again). Following a replicated switch, a leader
/// lost while it runs (its reads refused: NO_LEADER, NOT_LEADER, a dead connection) is waited for
/// and the whole check made again, a few times.
async fn verified(
    connector: &Connector,
    operator: &mut switch::proto::operator_service_client::OperatorServiceClient<tonic::transport::Channel>,
    before: &verify::Baseline,
    sent: &[crate::stats::Sent],
    payees: &payee::PayeeStats,
    population: &Population,
) -> anyhow::Result<model::Verification> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        let generation = connector.leader.as_ref().map(|leader| leader.generation());
        let result = verify::verify(operator, before, sent, payees, population).await;
        match (&result, &connector.leader, generation) {
            (Err(error), Some(leader), Some(generation)) if attempt < ATTEMPTS => {
                eprintln!("  the verification failed ({error:#}): waiting for a leader and checking again");
                leader.lost(generation).await?;
                attempt += 1;
            }
            _ => return result,
        }
    }
}

/// The failovers loadgen sat through, each with the silent stretch around it measured from the
/// timeline (seconds in which nothing completed).
fn failovers(connector: &Connector, timeline: &[model::Second]) -> Vec<crate::leader::Failover> {
    let Some(leader) = &connector.leader else { return Vec::new() };
    let mut failovers = leader.failovers();
    let completed: Vec<(u32, u64)> =
        timeline.iter().map(|second| (second.t_s, second.answered.saturating_sub(second.failed))).collect();
    crate::leader::fill_gaps(&mut failovers, &completed);
    failovers
}

/// One `<id as 32 hex digits> <amount>` line per payment, collect or refund acknowledged COMPLETED.
fn save_completed(path: &std::path::Path, sent: &[crate::stats::Sent]) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for item in sent {
        if matches!(item.outcome, crate::stats::Outcome::State(switch::proto::PaymentState::Completed, _)) {
            writeln!(out, "{:032x} {}", item.id, item.amount)?;
        }
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}
