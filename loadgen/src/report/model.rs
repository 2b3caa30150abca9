//! The data of one run's report: what the terminal summary, `--json` and the HTML report all show.
//! Plain data with serde, so the three renderings cannot disagree.

use serde::Serialize;

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// One line saying what ran, e.g. "open loop 25,000/s, stream, hot skew, automatic".
    pub title: String,
    /// When the measured phase started, Unix milliseconds.
    pub started_at_unix_ms: u64,
    /// The settings of the run, in display order (name, value).
    pub settings: Vec<(String, String)>,
    /// Length of the measured phase, seconds.
    pub duration_s: f64,
    /// The open-loop arrival rate asked for, operations per second (None in closed loop).
    pub offered_per_s: Option<f64>,
    /// Operations answered per second over the measured phase.
    pub achieved_per_s: f64,
    /// Operations sent, answered (any outcome), and not answered (transport errors, timeouts).
    pub sent: u64,
    pub answered: u64,
    pub unanswered: u64,
    /// Answers by outcome label ("COMPLETED", "REJECTED/REASON_SWITCH_BUSY", "transport/Unavailable"),
    /// largest first.
    pub outcomes: Vec<OutcomeCount>,
    /// Latency of every answered operation, measured from its intended send time.
    pub latency: LatencySummary,
    /// One entry per second of the measured phase.
    pub timeline: Vec<Second>,
    /// The post-run check against the switch's ledger (None when it was skipped).
    pub verification: Option<Verification>,
    /// The PostgreSQL baseline run with the same workload shape (None unless asked for).
    pub baseline: Option<Baseline>,
    /// Why the run ended early, when it did; the report is then partial.
    pub aborted: Option<String>,
    /// The overload sweep (`--overload-sweep`), when the run was one: the figures above are then
    /// those of its last level.
    pub sweep: Option<Sweep>,
    /// Following a replicated switch: each change of leader during the measured phase.
    pub failovers: Vec<crate::leader::Failover>,
}

/// Open loop at multiples of the switch's capacity: what it completed and shed at each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sweep {
    /// Completed payments per second the multiples apply to.
    pub capacity_per_s: f64,
    /// How the capacity was found: "given" (--capacity) or the closed-loop run that measured it.
    pub capacity_from: String,
    pub levels: Vec<SweepLevel>,
    /// The fairness run (`--flood`), when asked for.
    pub fairness: Option<Fairness>,
}

/// One PSP floods the switch while the others pay at a modest rate: do the others still get
/// through, and how much slower? Measured against the same others' load with no flood.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fairness {
    /// The flooding PSP's offered rate as a multiple of the capacity.
    pub flood_multiple: f64,
    /// Offered per second: the other PSPs' together, and the flooding PSP's.
    pub others_offered_per_s: f64,
    pub flooder_offered_per_s: f64,
    /// The others alone, then the others beside the flood.
    pub unloaded: FairnessPhase,
    pub flooded: FairnessPhase,
}

/// One phase of the fairness run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FairnessPhase {
    /// The other PSPs' payments: the share completed of every one drawn (refused, failed, never
    /// answered and never sent count against it), completed per second, and their latency.
    pub others_success: f64,
    pub others_completed_per_s: f64,
    pub others_p50_us: u64,
    pub others_p99_us: u64,
    /// The flooding PSP's payments completed per second, and everyone's refusals at admission.
    pub flooder_completed_per_s: f64,
    pub rate_limited_per_s: f64,
    pub switch_busy_per_s: f64,
    /// Operations never answered or never sent (loadgen's own bound), all PSPs.
    pub unanswered: u64,
}

/// One level of the sweep.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepLevel {
    /// The multiple of the capacity offered (1.0, 2.0, ...).
    pub multiple: f64,
    pub offered_per_s: f64,
    /// Operations sent (due in the measured phase), and per second.
    pub sent: u64,
    pub completed_per_s: f64,
    /// Shed at admission, per second: REASON_RATE_LIMITED and REASON_SWITCH_BUSY.
    pub rate_limited_per_s: f64,
    pub switch_busy_per_s: f64,
    /// Other refusals and failures (any other reason), per second.
    pub other_per_s: f64,
    /// Operations without an answer (transport errors, connection teardowns, timeouts) or never
    /// sent (loadgen's own in-flight bound): counts, not rates. Goal: 0.
    pub unanswered: u64,
    /// p99 latency of completed payments and of refusals at admission, microseconds, from each
    /// operation's intended send time.
    pub completed_p99_us: u64,
    pub shed_p99_us: u64,
    /// The switch's resident memory at the level's end, bytes (with --switch-pid).
    pub switch_rss_bytes: Option<u64>,
    /// The switch's CPU time per completed payment over the level, microseconds (with --switch-pid).
    pub switch_cpu_us_per_payment: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OutcomeCount {
    pub label: String,
    pub count: u64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One second of the measured phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    /// Seconds since the measured phase started (0-based).
    pub t_s: u32,
    /// Operations sent (intended send time in this second).
    pub sent: u64,
    /// Operations answered in this second, and how many of those were not COMPLETED.
    pub answered: u64,
    pub failed: u64,
    /// Latency of the operations answered in this second, microseconds (0 when none).
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What the post-run verification found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    pub passed: bool,
    /// Payments looked up in the switch.
    pub payments_checked: u64,
    /// Facts checked, each with what was expected and found ("PSP lg-03 balance change: expected
    /// -1200, found -1200").
    pub checks: Vec<String>,
    /// Disagreements; any entry fails the run.
    pub problems: Vec<String>,
}

/// The PostgreSQL baseline's figures, and how the switch compares.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baseline {
    pub name: String,
    pub connections: u32,
    pub duration_s: f64,
    pub committed: u64,
    pub refused: u64,
    pub achieved_per_s: f64,
    pub latency: LatencySummary,
    /// The switch's achieved rate divided by the baseline's.
    pub ratio: f64,
    /// What the baseline's own check found (balances sum to zero, rows match commits).
    pub verification: Vec<String>,
}
