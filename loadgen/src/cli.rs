//! Command-line flags, checked before anything connects: a nonsense flag is an error message and
//! exit code 2, never a half-started run.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switch::proto::ConfirmationMode;

use crate::drive::Model;
use crate::submit::Submission;
use crate::workload::{Mix, Skew};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SubmitMode {
    /// One payment per unary Pay RPC.
    Single,
    /// PayBatch calls of up to --batch-size payments (grouped by payer PSP).
    Batch,
    /// Pipelined over one PayStream per connection.
    Stream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SkewKind {
    Uniform,
    Zipf,
    Hot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Acceptance {
    /// Payees credit automatically (single-phase commit, credit notification).
    Automatic,
    /// Payees confirm every credit (reservation, credit request, accept/decline).
    Confirmed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BaselineKind {
    /// A PostgreSQL ledger on this machine (installed from Debian's packages when missing).
    Postgres,
}

/// Population-scale load generator for the payment switch: registers PSPs and their customers'
/// aliases, drives payments open- or closed-loop, verifies every acknowledged payment against the
/// switch's ledger, and reports throughput and latency (terminal, JSON, HTML).
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version, args_override_self = true)]
pub struct Args {
    /// The switch's gRPC address; for a replicated switch, its nodes' addresses, comma-separated:
    /// loadgen finds the leader, follows it through failovers, and sends an
    /// operation whose outcome a failover left in doubt again with the same id.
    #[arg(long, default_value = "https://localhost:50051", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Directory of the CA certificate, the operator certificate and the PSP certificates (the
    /// switch's development CA; PSP certificates are issued there when the CA key is present).
    #[arg(long, default_value = "data/certs")]
    pub certs: PathBuf,
    /// The server certificate's DNS name.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Operator certificate name (operator-<NAME>.pem).
    #[arg(long, default_value = "admin")]
    pub operator: String,

    /// Simulated PSPs, each with its own certificate.
    #[arg(long, default_value_t = 20)]
    pub psps: u32,
    /// PSP ids are <PREFIX>-01, <PREFIX>-02, ...
    #[arg(long, default_value = "lg")]
    pub psp_prefix: String,
    /// Customers (aliases u<N>@<psp>), spread over the PSPs.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Skip alias registration (they exist from an earlier run with the same --users and --psps).
    #[arg(long)]
    pub skip_aliases: bool,
    /// How payees accept credits.
    #[arg(long, value_enum, default_value_t = Acceptance::Automatic)]
    pub acceptance: Acceptance,
    /// Currency of every PSP and payment.
    #[arg(long, default_value = "INR")]
    pub currency: String,
    /// Net debit cap of each PSP, minor units.
    #[arg(long, default_value_t = 1_000_000_000_000_000)]
    pub net_debit_cap: u64,
    /// Prefunding of each PSP per run, minor units (0: none).
    #[arg(long, default_value_t = 1_000_000_000)]
    pub funding: u64,

    /// Open loop: operations per second, each due at a fixed time (latency counted from then).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: operations (or batches) in flight. The default when --rate is not given.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Length of the measured run, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// How payments are submitted.
    #[arg(long, value_enum, default_value_t = SubmitMode::Stream)]
    pub submit: SubmitMode,
    /// Payments per PayBatch (1 to 8,190).
    #[arg(long, default_value_t = 1_024)]
    pub batch_size: usize,
    /// HTTP/2 connections per PSP.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Operation mix, e.g. pay=90,collect=4,refund=3,status=3.
    #[arg(long, default_value = "pay=100")]
    pub mix: Mix,
    /// Who pays: uniform, zipf (see --zipf-exponent) or hot (--hot-share of payments from the top
    /// --hot-fraction of users).
    #[arg(long, value_enum, default_value_t = SkewKind::Hot)]
    pub skew: SkewKind,
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    #[arg(long, default_value_t = 0.8)]
    pub hot_share: f64,
    #[arg(long, default_value_t = 0.01)]
    pub hot_fraction: f64,
    /// Smallest and largest payment, minor units (uniform in between).
    #[arg(long, default_value_t = 100)]
    pub amount_min: u64,
    #[arg(long, default_value_t = 100_000)]
    pub amount_max: u64,

    /// Share of credit and collect requests the simulated PSPs decline (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub decline_rate: f64,
    /// How long a simulated PSP takes to decide a credit or collect request, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub think_time_ms: u64,
    /// A simulated PSP acknowledges its events after this many (1: each one, as a simple PSP
    /// would), or after 20 ms without an acknowledgement. At most 8,192, the switch's window.
    #[arg(long, default_value_t = 1_024, value_parser = clap::value_parser!(u64).range(1..=8_192))]
    pub ack_every: u64,

    /// Give up on one call after this many seconds (its outcome is then looked up in the ledger).
    #[arg(long, default_value_t = 35.0)]
    pub call_timeout: f64,
    /// Open loop: operations in flight beyond which new ones are counted as not sent.
    #[arg(long, default_value_t = 200_000)]
    pub in_flight_max: usize,
    /// Abort (with a partial report) when more than this share of the last 5 s failed.
    #[arg(long, default_value_t = 0.5)]
    pub abort_error_ratio: f64,
    /// Skip the post-run verification against the switch's ledger.
    #[arg(long)]
    pub no_verify: bool,
    /// Also run the same workload shape against this baseline and report the ratio.
    #[arg(long, value_enum)]
    pub baseline: Option<BaselineKind>,
    /// Baseline run length, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub baseline_duration: f64,
    /// Baseline client connections.
    #[arg(long, default_value_t = 32)]
    pub baseline_connections: u32,
    /// Baseline TCP port (a private cluster is started there).
    #[arg(long, default_value_t = 55_432)]
    pub baseline_port: u16,

    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Where report.html and report.json are written.
    #[arg(long, default_value = "loadgen-report")]
    pub report_dir: PathBuf,
    /// Also write every payment acknowledged COMPLETED to this file (one `<id hex> <amount>` line
    /// each), so it can be checked against the ledger again later, e.g. after a restart.
    #[arg(long)]
    pub save_completed: Option<PathBuf>,
    /// Overload sweep: open loop at each of these multiples of the switch's capacity, one
    /// --duration each, e.g. `--overload-sweep 1,2,3`. The capacity is --capacity, or measured
    /// first by a closed-loop run of the same submission mode (--concurrency, or the mode's
    /// default). Per level the report gives offered vs completed vs refused by reason
    /// (RATE_LIMITED, SWITCH_BUSY), the p99 of completed payments and of refusals, operations
    /// without an answer, and with --switch-pid the switch's RSS and CPU per payment; report.html
    /// draws the curves. Every payment of every level is verified against the ledger at the end.
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    pub overload_sweep: Vec<f64>,
    /// The closed-loop capacity the sweep multiplies, payments per second (skips measuring it).
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Fairness run: after the capacity (and any --overload-sweep levels), the other PSPs pay
    /// alone at --flood-others x capacity, open loop, for --duration; then again while the first
    /// PSP offers this multiple of the capacity beside them, e.g. `--flood 3`. The report compares
    /// the others' success rate and latency in the two phases. Loadgen bounds the flooding PSP's
    /// in-flight payments apart from the others' (as two banks' clients would be).
    #[arg(long, conflicts_with = "rate")]
    pub flood: Option<f64>,
    /// The other PSPs' offered load in the fairness run, as a share of the capacity (together).
    #[arg(long, default_value_t = 0.1, requires = "flood")]
    pub flood_others: f64,
    /// The switch's process id, when it runs on this machine: the report then splits CPU time
    /// between the switch and loadgen. For a replicated switch on this machine, every node's,
    /// comma-separated: their CPU is added up (not measured if one ends during the run).
    #[arg(long, value_delimiter = ',')]
    pub switch_pid: Vec<u32>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Random seed of the workload (same seed, same sequence of payments).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The checked settings of a run.
#[derive(Clone, Debug)]
pub struct Checked {
    pub model: Model,
    /// The overload sweep's multiples of capacity (empty: a plain run of `model`).
    pub sweep: Vec<f64>,
    /// The fairness run (`--flood`): the flooding PSP's multiple of capacity and the others' share.
    pub flood: Option<(f64, f64)>,
    pub submission: Submission,
    pub skew: Skew,
    pub mode: ConfirmationMode,
    pub duration: Duration,
    pub call_timeout: Duration,
    pub think_time: Duration,
}

/// Default closed-loop concurrency per submission mode: enough to keep two cores busy.
fn default_concurrency(submit: SubmitMode) -> usize {
    match submit {
        SubmitMode::Single => 512,
        SubmitMode::Stream => 4_096,
        SubmitMode::Batch => 8,
    }
}

impl Args {
    pub fn check(&self) -> Result<Checked, String> {
        let positive = |value: f64, name: &str| {
            if value.is_finite() && value > 0.0 {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(format!("{name} must be a positive number of seconds"))
            }
        };
        let duration = positive(self.duration, "--duration")?;
        let call_timeout = positive(self.call_timeout, "--call-timeout")?;
        positive(self.baseline_duration, "--baseline-duration")?;
        let model = match (self.rate, self.concurrency) {
            (Some(rate), _) if !(rate.is_finite() && rate > 0.0) => return Err("--rate must be positive".into()),
            (Some(rate), _) => Model::Open { rate },
            (None, Some(0)) => return Err("--concurrency must be at least 1".into()),
            (None, Some(concurrency)) => Model::Closed { concurrency },
            (None, None) => Model::Closed { concurrency: default_concurrency(self.submit) },
        };
        if self.overload_sweep.len() > 10
            || self.overload_sweep.iter().any(|multiple| !(multiple.is_finite() && *multiple > 0.0))
        {
            return Err("--overload-sweep takes 1 to 10 positive multiples, e.g. 1,2,3".into());
        }
        if self.capacity.is_some_and(|capacity| !(capacity.is_finite() && capacity > 0.0)) {
            return Err("--capacity must be positive".into());
        }
        if self.capacity.is_some() && self.overload_sweep.is_empty() && self.flood.is_none() {
            return Err("--capacity is for --overload-sweep or --flood".into());
        }
        if self.flood.is_some_and(|multiple| !(multiple.is_finite() && multiple > 0.0 && multiple <= 10.0)) {
            return Err("--flood takes a multiple of the capacity, above 0 and at most 10".into());
        }
        if !(self.flood_others.is_finite() && self.flood_others > 0.0 && self.flood_others <= 1.0) {
            return Err("--flood-others is a share of the capacity, above 0 and at most 1".into());
        }
        if !(1..=8_190).contains(&self.batch_size) {
            return Err("--batch-size must be 1 to 8,190 (the switch's BATCH_SIZE_MAX)".into());
        }
        if !(1..=64).contains(&self.connections) {
            return Err("--connections must be 1 to 64".into());
        }
        if !(2..=99).contains(&self.psps) {
            return Err("--psps must be 2 to 99".into());
        }
        if !(0.0..=1.0).contains(&self.decline_rate) {
            return Err("--decline-rate is a share between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.abort_error_ratio) {
            return Err("--abort-error-ratio is a share between 0 and 1".into());
        }
        if self.in_flight_max == 0 || self.in_flight_max > u32::MAX as usize / 2 {
            return Err("--in-flight-max must be positive".into());
        }
        if !switch::tls::valid_name(&format!("{}-01", self.psp_prefix)) {
            return Err("--psp-prefix: lower-case letters, digits and '-', at most 29 bytes".into());
        }
        let skew = match self.skew {
            SkewKind::Uniform => Skew::Uniform,
            SkewKind::Zipf if self.zipf_exponent.is_finite() && self.zipf_exponent > 0.0 => {
                Skew::Zipf(self.zipf_exponent)
            }
            SkewKind::Zipf => return Err("--zipf-exponent must be positive".into()),
            SkewKind::Hot => Skew::Hot { share: self.hot_share, fraction: self.hot_fraction },
        };
        let submission = match self.submit {
            SubmitMode::Single => Submission::Single,
            SubmitMode::Batch => Submission::Batch(self.batch_size),
            SubmitMode::Stream => Submission::Stream,
        };
        let mode = match self.acceptance {
            Acceptance::Automatic => ConfirmationMode::Automatic,
            Acceptance::Confirmed => ConfirmationMode::Confirmed,
        };
        Ok(Checked {
            model,
            sweep: self.overload_sweep.clone(),
            flood: self.flood.map(|multiple| (multiple, self.flood_others)),
            submission,
            skew,
            mode,
            duration,
            call_timeout,
            think_time: Duration::from_millis(self.think_time_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_a_valid_population_scale_run() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!((args.psps, args.users), (20, 1_000_000));
        let checked = args.check().expect("defaults are valid");
        assert_eq!(checked.model, Model::Closed { concurrency: 4_096 });
        assert_eq!(checked.submission, Submission::Stream);
        assert_eq!(checked.skew, Skew::HOT);
        assert_eq!(checked.duration, Duration::from_secs(60));
    }

    #[test]
    fn flags_select_the_load_model_and_submission() {
        let args = parse(&["--rate", "25000", "--submit", "single", "--skew", "uniform", "--users", "10000000"])
            .expect("parse");
        let checked = args.check().expect("valid");
        assert_eq!(checked.model, Model::Open { rate: 25_000.0 });
        assert_eq!((checked.submission, checked.skew), (Submission::Single, Skew::Uniform));
        let args =
            parse(&["--submit", "batch", "--batch-size", "512", "--concurrency", "4", "--acceptance", "confirmed"])
                .expect("parse");
        let checked = args.check().expect("valid");
        assert_eq!((checked.model, checked.submission), (Model::Closed { concurrency: 4 }, Submission::Batch(512)));
        assert_eq!(checked.mode, ConfirmationMode::Confirmed);
    }

    #[test]
    fn nonsense_flags_are_refused_with_a_reason() {
        assert!(parse(&["--bogus"]).is_err(), "unknown flag");
        assert!(parse(&["--users", "many"]).is_err(), "not a number");
        assert!(parse(&["--submit", "carrier-pigeon"]).is_err(), "unknown mode");
        assert!(parse(&["--mix", "pay=1,teleport=2"]).is_err(), "unknown kind in the mix");
        assert!(parse(&["--rate", "5", "--concurrency", "5"]).is_err(), "open and closed loop at once");
        assert!(parse(&["--ack-every", "0"]).is_err(), "acknowledging never");
        assert!(parse(&["--ack-every", "8193"]).is_err(), "beyond the switch's window");
        assert_eq!(parse(&["--ack-every", "1"]).expect("each event").ack_every, 1);
        let refused = |args: &[&str]| parse(args).expect("parses").check().expect_err("refused");
        assert!(refused(&["--rate", "0"]).contains("--rate"));
        assert!(refused(&["--rate=-5"]).contains("--rate"));
        assert!(refused(&["--duration", "0"]).contains("--duration"));
        assert!(refused(&["--batch-size", "9000"]).contains("--batch-size"));
        assert!(refused(&["--psps", "1"]).contains("--psps"));
        assert!(refused(&["--decline-rate", "1.5"]).contains("--decline-rate"));
        assert!(refused(&["--concurrency", "0"]).contains("--concurrency"));
        assert!(refused(&["--psp-prefix", "Bad_Prefix"]).contains("--psp-prefix"));
        assert!(refused(&["--skew", "zipf", "--zipf-exponent", "0"]).contains("--zipf-exponent"));
        assert!(refused(&["--overload-sweep", "1,0"]).contains("--overload-sweep"));
        assert!(refused(&["--overload-sweep", "1", "--capacity", "0"]).contains("--capacity"));
        assert!(parse(&["--overload-sweep", "1", "--rate", "5"]).is_err(), "a sweep sets its own rates");
        assert!(refused(&["--capacity", "5"]).contains("--capacity"), "a capacity without a sweep");
        assert!(refused(&["--flood", "0"]).contains("--flood"));
        assert!(refused(&["--flood", "3", "--flood-others", "2"]).contains("--flood-others"));
        assert!(parse(&["--flood", "3", "--rate", "5"]).is_err(), "a fairness run sets its own rates");
    }

    #[test]
    fn an_overload_sweep_lists_its_multiples() {
        let args = parse(&["--overload-sweep", "1,2,3", "--capacity", "20000", "--submit", "single"]).expect("parse");
        let checked = args.check().expect("valid");
        assert_eq!(checked.sweep, vec![1.0, 2.0, 3.0]);
        assert_eq!(args.capacity, Some(20_000.0));
        assert_eq!(checked.model, Model::Closed { concurrency: 512 }, "the capacity run's model");
    }
}
