//! PostgreSQL baseline: the switch's workload shape, run against a conventional SQL ledger.
//!
//! The issue asks what the switch is worth compared with "a stored procedure that debits with a
//! net-debit-cap check, credits and inserts; synchronous commit". This module builds exactly that on
//! the same machine: a private, throw-away PostgreSQL cluster (installed from the distribution if
//! missing), a `pay(payer, payee, amount)` PL/pgSQL function, and a closed loop of client connections
//! calling it with the same payer/payee/amount picks the switch gets. It then checks that the ledger
//! is consistent (money conserved, every committed call recorded once, no balance below its cap),
//! stops the cluster and returns the rate and latency, so the load generator can print both figures
//! and their ratio.
//!
//! Fairness: the cluster is as durable as the switch (every commit waits for its WAL to be flushed to
//! disk, `fsync` and full-page writes on); it gets memory and WAL sizing that any OLTP deployment
//! would give it, and nothing that trades durability for speed.
//!
//! Root: PostgreSQL refuses to run as root, so when this process is root the cluster's programs run as
//! the `postgres` system user (created if missing) via `runuser` (or `su`), and the cluster's files
//! are owned by that user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

/// Who pays whom, in the baseline's account numbering (0..accounts), and how much (minor units).
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    pub payer: u32,
    pub payee: u32,
    pub amount: u64,
}

/// What to run. `dir` (created if missing; may be relative) is the baseline's own working directory:
/// its `data/`, `socket/` and `postgres.log` are replaced on every run and left behind afterwards for
/// inspection; nothing else in it is touched. When running as root, the `postgres` user must reach
/// `dir`: it gets the "others may search" bit if it lacks it, and if a parent is still closed (e.g.
/// /root) the cluster goes to `<temp dir>/loadgen-baseline-<port>` instead (see
/// [`BaselineResult::cluster_dir`]).
pub struct BaselineOptions {
    /// Participants (PSPs), e.g. 20.
    pub accounts: u32,
    /// Each account's opening balance.
    pub funding_minor: i64,
    /// How far below zero an account may go.
    pub net_debit_cap_minor: i64,
    /// Concurrent client connections (closed loop), e.g. 32.
    pub connections: u32,
    pub duration: Duration,
    /// Working directory for the cluster (data dir, socket, log).
    pub dir: PathBuf,
    /// TCP port for the private cluster (listening on 127.0.0.1 only), e.g. 55432.
    pub port: u16,
}

pub struct BaselineResult {
    /// `SHOW server_version`, e.g. "15.14 (Debian 15.14-0+deb12u1)".
    pub server_version: String,
    /// Procedure calls that committed a payment.
    pub committed: u64,
    /// Calls refused by the net-debit-cap check (committed nothing).
    pub refused: u64,
    /// Calls retried after a serialization failure or deadlock (each retry counted once; the call's
    /// latency includes its retries). Expected to be 0: the procedure locks in id order.
    pub retries: u64,
    /// Sum of the amounts of committed payments (minor units).
    pub committed_amount_minor: i128,
    /// Wall time from the first call to the last call's answer (slightly above the requested
    /// duration: calls in flight at the deadline are waited for and counted).
    pub duration: Duration,
    /// Microseconds per committed or refused call.
    pub latency: Histogram<u64>,
    /// What the post-run verification checked, human readable.
    pub checks: Vec<String>,
    /// Where the cluster's `data/`, `socket/` and `postgres.log` are (left there for inspection):
    /// `options.dir` made absolute, or, when running as root and the `postgres` user cannot reach
    /// `options.dir` (e.g. under /root), `<temp dir>/loadgen-baseline-<port>`.
    pub cluster_dir: PathBuf,
}

impl BaselineResult {
    /// Committed payments per second of `duration`.
    pub fn committed_per_sec(&self) -> f64 {
        per_sec(self.committed, self.duration)
    }

    /// Calls (committed + refused) per second of `duration`: what pgbench would call its tps.
    pub fn calls_per_sec(&self) -> f64 {
        per_sec(self.committed + self.refused, self.duration)
    }
}

fn per_sec(count: u64, duration: Duration) -> f64 {
    let secs = duration.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Where Debian/Ubuntu install the server binaries, one directory per major version.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";
/// The system user PostgreSQL runs as when we are root (Debian's package creates it).
const PG_USER: &str = "postgres";
/// Histogram ceiling; slower calls are recorded as this value rather than dropped.
const LATENCY_MAX_MICROS: u64 = 60_000_000;
/// How long `pg_ctl start` may take (crash recovery of a stale cluster is not expected: fresh initdb).
const START_TIMEOUT_SECS: u32 = 60;
/// How long to keep retrying the first connection after `pg_ctl start` returned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections beyond the clients: our admin connection, autovacuum launcher headroom, a `psql` for
/// someone looking at the cluster during a run.
const EXTRA_CONNECTIONS: u32 = 10;
/// A call that keeps hitting serialization failures or deadlocks this often is a bug, not load.
const MAX_RETRIES_PER_CALL: u32 = 100;
/// Unix socket paths must fit `sun_path` (108 bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// apt-get can be slow on a cold mirror, but not this slow.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The schema. `cap` is per account so the check lives in the data, like a participant's setting.
const SCHEMA_SQL: &str = "
CREATE TABLE accounts (
    id      int PRIMARY KEY,
    balance bigint NOT NULL,
    cap     bigint NOT NULL
);
CREATE TABLE payments (
    id         bigserial PRIMARY KEY,
    payer      int NOT NULL,
    payee      int NOT NULL,
    amount     bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// The stored procedure the issue describes. Parameters are referred to as `pay.x` because they share
/// names with columns (PL/pgSQL would otherwise reject the ambiguity).
const PAY_FUNCTION_SQL: &str = "
CREATE FUNCTION pay(payer int, payee int, amount bigint) RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Lock both rows in id order first: A->B and B->A running together then queue on the lower id
    -- instead of each holding one row and waiting for the other (a deadlock). LockRows runs above
    -- the Sort, so the locks really are taken in this order. payer = payee locks the one row.
    PERFORM 1 FROM accounts WHERE id IN (pay.payer, pay.payee) ORDER BY id FOR UPDATE;
    -- The debit carries the net-debit-cap check: it only happens if the payer stays at or above -cap.
    UPDATE accounts SET balance = balance - pay.amount
     WHERE id = pay.payer AND balance - pay.amount >= -cap;
    IF NOT FOUND THEN
        RETURN false; -- refused: nothing changed
    END IF;
    UPDATE accounts SET balance = balance + pay.amount WHERE id = pay.payee;
    IF NOT FOUND THEN
        -- Rolls the debit back with the transaction: money is never lost to a bad payee.
        RAISE EXCEPTION 'pay: unknown payee %', pay.payee;
    END IF;
    INSERT INTO payments (payer, payee, amount) VALUES (pay.payer, pay.payee, pay.amount);
    RETURN true;
END
$fn$;
";

/// What each client calls: one statement, so one implicit transaction and one synchronous commit.
const PAY_CALL_SQL: &str = "SELECT pay($1, $2, $3)";

/// Starts (installing if missing) a private PostgreSQL cluster, loads the schema, drives it closed-loop
/// for `duration` with `connections` clients each calling the stored procedure with picks from `pick`,
/// verifies the result, stops the cluster and returns the figures. Errors say clearly what failed.
pub async fn run(
    options: &BaselineOptions,
    pick: Arc<dyn Fn(&mut SmallRng) -> Pick + Send + Sync>,
) -> Result<BaselineResult> {
    validate(options)?;
    let bin = find_or_install().await?;
    tracing::info!(dir = %bin.dir.display(), version = %bin.version_text, "baseline: using PostgreSQL");
    let requested = absolute_dir(&options.dir).await?;
    let mut runner = Runner::for_current_user(&requested).await?;
    let cluster_dir = reachable_cluster_dir(&runner, &requested, options.port).await?;
    runner.cwd = cluster_dir.clone();
    let layout = Layout::new(&cluster_dir);
    prepare_dir(&bin, &runner, &layout).await?;
    initdb(&bin, &runner, &layout).await?;
    let socket_enabled = socket_path_fits(&layout.socket, options.port);
    if !socket_enabled {
        tracing::warn!(
            socket_dir = %layout.socket.display(),
            "baseline: socket path too long for a unix socket; the cluster listens on TCP only"
        );
    }
    let conf = config_text(options, &layout.socket, socket_enabled)?;
    append_config(&layout.data, &conf).await?;

    // From here on the cluster may be running: the guard stops it if we return early, fail or are
    // cancelled (the future dropped); the normal path stops it explicitly below.
    let mut guard = ClusterGuard { stop: stop_argv(&bin, &layout, "immediate")?, runner: runner.clone() };
    start(&bin, &runner, &layout).await?;

    let outcome = drive_and_verify(options, pick, &layout).await.map(|mut result| {
        result.cluster_dir = cluster_dir;
        result
    });

    let stopped = stop(&bin, &runner, &layout).await;
    if stopped.is_ok() {
        guard.disarm();
    }
    match (outcome, stopped) {
        (Err(e), Err(stop_error)) => {
            tracing::error!(error = format!("{stop_error:#}"), "baseline: could not stop the cluster after a failure");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(result), Err(stop_error)) => Err(stop_error.context(format!(
            "the baseline run finished ({} committed, {} refused) but the cluster did not stop",
            result.committed, result.refused
        ))),
        (Ok(result), Ok(())) => Ok(result),
    }
}

fn validate(options: &BaselineOptions) -> Result<()> {
    if options.accounts == 0 || i32::try_from(options.accounts).is_err() {
        bail!("baseline: accounts must be in 1..={}, got {}", i32::MAX, options.accounts);
    }
    if options.connections == 0 {
        bail!("baseline: connections must be at least 1");
    }
    if options.funding_minor < 0 || options.net_debit_cap_minor < 0 {
        bail!(
            "baseline: funding ({}) and net debit cap ({}) must not be negative",
            options.funding_minor,
            options.net_debit_cap_minor
        );
    }
    if options.duration.is_zero() {
        bail!("baseline: duration must be above zero");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Finding (and installing) PostgreSQL
// ---------------------------------------------------------------------------------------------------

/// A directory holding `initdb`, `pg_ctl` and `postgres` of one version.
#[derive(Clone, Debug, PartialEq)]
struct PgBin {
    dir: PathBuf,
    /// Numeric version, e.g. [15, 14]; empty when unknown (sorts lowest).
    version: Vec<u32>,
    version_text: String,
}

impl PgBin {
    fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

const PG_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

async fn find_or_install() -> Result<PgBin> {
    if let Some(found) = find_pg_bin().await {
        return Ok(found);
    }
    let how_to = "install the PostgreSQL server (e.g. `apt-get install -y postgresql` on Debian/Ubuntu) or put a \
                  directory holding initdb, pg_ctl and postgres in PATH";
    if effective_uid().await? != 0 {
        bail!("PostgreSQL server binaries not found in PATH or {PG_LIB_DIR}/*/bin, and not root to install them: {how_to}");
    }
    tracing::info!("baseline: PostgreSQL not found; installing it with apt-get");
    install_postgresql().await.with_context(|| format!("installing PostgreSQL failed; {how_to}"))?;
    find_pg_bin().await.with_context(|| {
        format!("apt-get installed postgresql but initdb/pg_ctl/postgres are still not in PATH or {PG_LIB_DIR}/*/bin; {how_to}")
    })
}

/// Candidate directories: every PATH entry holding the three programs (resolved through symlinks, so
/// `pg_ctl` finds its `postgres` next to it), then every `/usr/lib/postgresql/<version>/bin`.
async fn find_pg_bin() -> Option<PgBin> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for entry in std::env::split_paths(&path) {
            if let Ok(real) = std::fs::canonicalize(entry.join("pg_ctl")) {
                if let Some(parent) = real.parent() {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(PG_LIB_DIR) {
        let mut lib_dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        lib_dirs.sort();
        dirs.extend(lib_dirs);
    }
    let mut candidates: Vec<PgBin> = Vec::new();
    for dir in dirs {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if candidates.iter().any(|c| c.dir == dir) || !PG_PROGRAMS.iter().all(|p| dir.join(p).is_file()) {
            continue;
        }
        let version_text = program_version(&dir.join("postgres")).await.unwrap_or_default();
        let version = parse_pg_version(&version_text).or_else(|| version_from_path(&dir)).unwrap_or_default();
        candidates.push(PgBin { dir, version, version_text });
    }
    pick_highest(candidates)
}

async fn program_version(program: &Path) -> Option<String> {
    let output = tokio::process::Command::new(program).arg("--version").stdin(Stdio::null()).output().await.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" -> [15, 14]; "16beta1" -> [16].
fn parse_pg_version(text: &str) -> Option<Vec<u32>> {
    let after = text.split("(PostgreSQL)").nth(1)?;
    let token = after.split_whitespace().next()?;
    let mut version = Vec::new();
    for part in token.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse() {
            Ok(n) => version.push(n),
            Err(_) => break,
        }
        if digits.len() != part.len() {
            break; // "16beta1": the rest is not a number
        }
    }
    (!version.is_empty()).then_some(version)
}

/// ".../postgresql/15/bin" -> [15]: the Debian layout names the major version.
fn version_from_path(dir: &Path) -> Option<Vec<u32>> {
    let components: Vec<&str> = dir.iter().filter_map(|c| c.to_str()).collect();
    components.windows(2).find(|w| w[0] == "postgresql").and_then(|w| w[1].parse().ok()).map(|major| vec![major])
}

/// Highest version wins; on a tie the earlier candidate (PATH before the Debian directories) wins.
fn pick_highest(candidates: Vec<PgBin>) -> Option<PgBin> {
    let mut best: Option<PgBin> = None;
    for candidate in candidates {
        if best.as_ref().is_none_or(|b| candidate.version > b.version) {
            best = Some(candidate);
        }
    }
    best
}

async fn install_postgresql() -> Result<()> {
    let install = ["install", "-y", "--no-install-recommends", "postgresql"];
    if apt_get(&install).await.is_ok() {
        return Ok(());
    }
    // The usual reason for a failed install on a fresh machine or CI image: empty or stale lists.
    apt_get(&["update"]).await.context("apt-get update failed")?;
    apt_get(&install).await.context("apt-get install postgresql failed (also after apt-get update)")
}

async fn apt_get(args: &[&str]) -> Result<()> {
    let mut command = tokio::process::Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null());
    let output = tokio::time::timeout(INSTALL_TIMEOUT, command.output())
        .await
        .with_context(|| format!("apt-get {} timed out after {:?}", args.join(" "), INSTALL_TIMEOUT))?
        .with_context(|| format!("could not run apt-get {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("apt-get {} exited with {}: {}", args.join(" "), output.status, output_tail(&output));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Running the cluster's programs as the right user
// ---------------------------------------------------------------------------------------------------

/// How to run initdb/pg_ctl: directly, or as the `postgres` user when we are root.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RunAs {
    CurrentUser,
    Runuser,
    Su,
}

#[derive(Clone, Debug)]
struct Runner {
    run_as: RunAs,
    /// Working directory for the programs: the cluster dir, which the postgres user can enter (our own
    /// working directory may be closed to it, e.g. under /root).
    cwd: PathBuf,
}

impl Runner {
    async fn for_current_user(dir: &Path) -> Result<Runner> {
        let cwd = dir.to_path_buf();
        if effective_uid().await? != 0 {
            return Ok(Runner { run_as: RunAs::CurrentUser, cwd });
        }
        ensure_pg_user().await?;
        // runuser is util-linux's su for root (no password, no PAM auth); su is the fallback.
        for run_as in [RunAs::Runuser, RunAs::Su] {
            let runner = Runner { run_as, cwd: cwd.clone() };
            let probe = runner.command(&["true".to_string()]).output().await;
            if matches!(&probe, Ok(output) if output.status.success()) {
                return Ok(runner);
            }
        }
        bail!(
            "running as root, and neither `runuser -u {PG_USER} -- true` nor `su {PG_USER} -s /bin/sh -c true` works; \
             PostgreSQL refuses to run as root, so run the load generator as a non-root user or fix runuser/su"
        )
    }

    /// The full command line: `argv` as is, or wrapped to run as the postgres user.
    fn wrap(&self, argv: &[String]) -> Vec<String> {
        match self.run_as {
            RunAs::CurrentUser => argv.to_vec(),
            RunAs::Runuser => {
                ["runuser", "-u", PG_USER, "--"].iter().map(|s| s.to_string()).chain(argv.iter().cloned()).collect()
            }
            RunAs::Su => {
                let line = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
                ["su", PG_USER, "-s", "/bin/sh", "-c"].iter().map(|s| s.to_string()).chain([line]).collect()
            }
        }
    }

    fn std_command(&self, argv: &[String]) -> std::process::Command {
        let full = self.wrap(argv);
        let mut command = std::process::Command::new(&full[0]);
        command
            .args(&full[1..])
            .current_dir(&self.cwd)
            // initdb and the server read the locale from the environment; an unset or uninstalled
            // one (common in containers) makes initdb fail. C is always there and fine for a ledger.
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        command
    }

    fn command(&self, argv: &[String]) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(argv))
    }

    /// Runs `argv`, returning its stdout; a failure carries the command's output.
    async fn run(&self, what: &str, argv: &[String]) -> Result<String> {
        let output = self.command(argv).output().await.with_context(|| format!("could not run {what}"))?;
        if !output.status.success() {
            bail!("{what} exited with {}: {}", output.status, output_tail(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// POSIX shell single-quoting: 'it'\''s'.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

fn output_tail(output: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn effective_uid() -> Result<u32> {
    if let Ok(status) = tokio::fs::read_to_string("/proc/self/status").await {
        if let Some(uid) = parse_effective_uid(&status) {
            return Ok(uid);
        }
    }
    let output = tokio::process::Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .await
        .context("could not tell whether we run as root: /proc/self/status unreadable and `id -u` failed")?;
    String::from_utf8_lossy(&output.stdout).trim().parse().context("could not parse the output of `id -u`")
}

/// The "Uid:" line of /proc/self/status lists real, effective, saved and filesystem ids; PostgreSQL
/// checks the effective one.
fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

async fn ensure_pg_user() -> Result<()> {
    let exists = tokio::process::Command::new("id").arg("-u").arg(PG_USER).stdin(Stdio::null()).output().await;
    if matches!(&exists, Ok(output) if output.status.success()) {
        return Ok(());
    }
    tracing::info!("baseline: creating the {PG_USER} system user");
    let output = tokio::process::Command::new("useradd")
        .args(["--system", PG_USER])
        .stdin(Stdio::null())
        .output()
        .await
        .context("could not run useradd")?;
    if !output.status.success() {
        bail!("useradd --system {PG_USER} exited with {}: {}", output.status, output_tail(&output));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------------

struct Layout {
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        Layout { data: dir.join("data"), socket: dir.join("socket"), log: dir.join("postgres.log") }
    }
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("path {} is not UTF-8; choose another baseline dir", path.display()))
}

/// `dir` created and made absolute: the cluster's programs run with their own working directory, and
/// the caller's is often relative (e.g. a report dir).
async fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
    tokio::fs::canonicalize(dir).await.with_context(|| format!("resolving {}", dir.display()))
}

/// Where the cluster can live: `dir` if whoever runs the server can reach it, else (as root, when a
/// parent such as /root is closed to others) a directory of its own under the temp dir.
async fn reachable_cluster_dir(runner: &Runner, dir: &Path, port: u16) -> Result<PathBuf> {
    if runner.run_as == RunAs::CurrentUser {
        return Ok(dir.to_path_buf());
    }
    if postgres_can_enter(runner, dir).await? {
        return Ok(dir.to_path_buf());
    }
    let fallback = absolute_dir(&std::env::temp_dir().join(format!("loadgen-baseline-{port}"))).await?;
    tracing::warn!(
        requested = %dir.display(),
        using = %fallback.display(),
        "baseline: the {PG_USER} user cannot reach the requested dir (a parent is closed to others); using a temp dir"
    );
    if postgres_can_enter(runner, &fallback).await? {
        return Ok(fallback);
    }
    bail!(
        "the {PG_USER} user can reach neither {} nor {}: make one of them and its parents searchable by others",
        dir.display(),
        fallback.display()
    )
}

/// Gives `dir` the "others may search" bit if it lacks it (a temp dir is often 0700), then asks the
/// postgres user whether it can pass through `dir` and all its parents.
async fn postgres_can_enter(runner: &Runner, dir: &Path) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = tokio::fs::metadata(dir).await.with_context(|| format!("reading {}", dir.display()))?;
    let mode = metadata.permissions().mode();
    if mode & 0o001 == 0 {
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
            .await
            .with_context(|| format!("making {} searchable for the {PG_USER} user", dir.display()))?;
    }
    let probe = ["test".to_string(), "-x".to_string(), path_str(dir)?];
    Ok(runner.run("test -x <dir> as postgres", &probe).await.is_ok())
}

/// A fresh data dir, socket dir and log, owned by whoever runs the server.
async fn prepare_dir(bin: &PgBin, runner: &Runner, layout: &Layout) -> Result<()> {
    // A server left running by an interrupted earlier run would keep the port and the old files.
    if layout.data.join("postmaster.pid").exists() {
        tracing::warn!(data = %layout.data.display(), "baseline: stopping a server left over from an earlier run");
        if let Err(e) = runner.run("pg_ctl stop (leftover server)", &stop_argv(bin, layout, "immediate")?).await {
            tracing::warn!(error = format!("{e:#}"), "baseline: could not stop the leftover server; trying anyway");
        }
    }
    for dir in [&layout.data, &layout.socket] {
        if dir.exists() {
            tokio::fs::remove_dir_all(dir).await.with_context(|| format!("removing old {}", dir.display()))?;
        }
    }
    // initdb accepts an existing empty directory; creating it ourselves lets us hand it to the
    // postgres user even when that user may not write to `dir`.
    for dir in [&layout.data, &layout.socket] {
        tokio::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    tokio::fs::write(&layout.log, b"").await.with_context(|| format!("creating {}", layout.log.display()))?;
    if runner.run_as == RunAs::CurrentUser {
        return Ok(());
    }
    let chown: Vec<String> = ["chown", "-R", &format!("{PG_USER}:")]
        .iter()
        .map(|s| s.to_string())
        .chain([path_str(&layout.data)?, path_str(&layout.socket)?, path_str(&layout.log)?])
        .collect();
    let output = tokio::process::Command::new(&chown[0])
        .args(&chown[1..])
        .stdin(Stdio::null())
        .output()
        .await
        .context("could not run chown")?;
    if !output.status.success() {
        bail!("{} exited with {}: {}", chown.join(" "), output.status, output_tail(&output));
    }
    let probe = ["test".to_string(), "-w".to_string(), path_str(&layout.data)?];
    runner
        .run("test -w <data dir> as postgres", &probe)
        .await
        .with_context(|| format!("the {PG_USER} user cannot write to {} after chown", layout.data.display()))?;
    Ok(())
}

async fn initdb(bin: &PgBin, runner: &Runner, layout: &Layout) -> Result<()> {
    let argv = vec![
        path_str(&bin.program("initdb"))?,
        "-D".into(),
        path_str(&layout.data)?,
        // Only we connect, over 127.0.0.1 or our own socket: no passwords to manage.
        "-A".into(),
        "trust".into(),
        "-U".into(),
        PG_USER.into(),
        "-E".into(),
        "UTF8".into(),
        "--locale=C".into(),
        // initdb's own fsync of the template files: irrelevant to the durability of the run.
        "--no-sync".into(),
    ];
    runner.run("initdb", &argv).await.map(|_| ())
}

fn socket_path_fits(socket_dir: &Path, port: u16) -> bool {
    socket_dir.join(format!(".s.PGSQL.{port}")).as_os_str().len() <= MAX_SOCKET_PATH
}

/// Settings appended to postgresql.conf (later lines win over initdb's).
fn config_text(options: &BaselineOptions, socket_dir: &Path, socket_enabled: bool) -> Result<String> {
    let socket = if socket_enabled { path_str(socket_dir)?.replace('\'', "''") } else { String::new() };
    let max_connections = options.connections.saturating_add(EXTRA_CONNECTIONS);
    Ok(format!(
        "
# --- loadgen baseline: appended by loadgen, overrides the defaults above ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket}'
max_connections = {max_connections}

# Durability as the switch has it: a commit returns only once its WAL is flushed to disk. These are
# the defaults, spelled out so nobody wonders. commit_delay also stays at its default (0): concurrent
# commits already share a WAL flush (group commit) without it.
fsync = on
synchronous_commit = on
full_page_writes = on

# Memory and WAL sizing any OLTP deployment would have, none of which weakens durability: the working
# set in memory, room for the WAL of many concurrent commits, and checkpoints rare enough (one at most
# every 30 minutes or 4 GB of WAL) not to dominate a run of a minute or two.
shared_buffers = 1GB
wal_buffers = 64MB
checkpoint_timeout = 30min
max_wal_size = 4GB
min_wal_size = 1GB

# Only the post-run verification scans whole tables; no parallel workers keeps it off /dev/shm,
# which is tiny in containers. The payment path (single-row index lookups) never runs in parallel.
max_parallel_workers_per_gather = 0

log_checkpoints = on
",
        port = options.port,
    ))
}

async fn append_config(data: &Path, text: &str) -> Result<()> {
    let path = data.join("postgresql.conf");
    let mut conf = tokio::fs::read_to_string(&path).await.with_context(|| format!("reading {}", path.display()))?;
    conf.push_str(text);
    // Rewriting an existing file keeps its owner (the postgres user when we are root).
    tokio::fs::write(&path, conf).await.with_context(|| format!("writing {}", path.display()))
}

async fn start(bin: &PgBin, runner: &Runner, layout: &Layout) -> Result<()> {
    let argv = vec![
        path_str(&bin.program("pg_ctl"))?,
        "-D".into(),
        path_str(&layout.data)?,
        "-l".into(),
        path_str(&layout.log)?,
        "-w".into(),
        "-t".into(),
        START_TIMEOUT_SECS.to_string(),
        "start".into(),
    ];
    if let Err(e) = runner.run("pg_ctl start", &argv).await {
        // The server's own log says why (port taken, not enough memory, ...): put it last, in full.
        bail!(
            "the PostgreSQL cluster did not start ({e:#}); server log {} ends with:\n{}",
            layout.log.display(),
            log_tail(&layout.log).await
        );
    }
    Ok(())
}

fn stop_argv(bin: &PgBin, layout: &Layout, mode: &str) -> Result<Vec<String>> {
    Ok(vec![
        path_str(&bin.program("pg_ctl"))?,
        "-D".into(),
        path_str(&layout.data)?,
        "-m".into(),
        mode.into(),
        "-w".into(),
        "stop".into(),
    ])
}

async fn stop(bin: &PgBin, runner: &Runner, layout: &Layout) -> Result<()> {
    // fast: disconnect clients, roll back what is in flight, shut down cleanly (checkpoint).
    runner.run("pg_ctl stop -m fast", &stop_argv(bin, layout, "fast")?).await.map(|_| ())
}

/// Stops the cluster if `run` leaves without stopping it (error, panic, future dropped).
struct ClusterGuard {
    stop: Vec<String>,
    runner: Runner,
}

impl ClusterGuard {
    fn disarm(&mut self) {
        self.stop.clear();
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if self.stop.is_empty() {
            return;
        }
        // Blocking here is acceptable: a drop path, and an immediate stop takes well under a second.
        match self.runner.std_command(&self.stop).output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => tracing::warn!(output = output_tail(&output), "baseline: stopping the cluster failed"),
            Err(e) => tracing::warn!(error = %e, "baseline: could not run pg_ctl stop"),
        }
    }
}

async fn log_tail(log: &Path) -> String {
    match tokio::fs::read_to_string(log).await {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }
        Err(e) => format!("(could not read it: {e})"),
    }
}

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    // TCP over loopback, like the switch's clients (gRPC over TCP), rather than the unix socket.
    config
        .host("127.0.0.1")
        .port(port)
        .user(PG_USER)
        .dbname("postgres")
        .application_name("loadgen-baseline")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "baseline: connection closed with an error");
        }
    });
    Ok(client)
}

/// `pg_ctl start -w` has already waited for the server; retrying covers the short window in which
/// a just-started server still refuses connections.
async fn connect_when_ready(port: u16, log: &Path) -> Result<Client> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match connect(port).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "baseline: server not accepting connections yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                bail!(
                    "the PostgreSQL cluster on 127.0.0.1:{port} did not accept connections within {CONNECT_TIMEOUT:?} \
                     ({e}); server log {} ends with:\n{}",
                    log.display(),
                    log_tail(log).await
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Schema, load, verification
// ---------------------------------------------------------------------------------------------------

async fn drive_and_verify(
    options: &BaselineOptions,
    pick: Arc<dyn Fn(&mut SmallRng) -> Pick + Send + Sync>,
    layout: &Layout,
) -> Result<BaselineResult> {
    let admin = connect_when_ready(options.port, &layout.log).await?;
    let server_version = admin
        .query_one("SHOW server_version", &[])
        .await
        .context("SHOW server_version")?
        .try_get::<_, String>(0)
        .context("reading server_version")?;
    load_schema(&admin, options).await?;

    // All connections and prepared statements exist before the clock starts.
    let mut clients = Vec::new();
    for i in 0..options.connections {
        let client = connect(options.port).await.with_context(|| format!("opening client connection {i}"))?;
        let statement = client.prepare(PAY_CALL_SQL).await.with_context(|| format!("preparing {PAY_CALL_SQL}"))?;
        clients.push((client, statement));
    }

    tracing::info!(connections = options.connections, duration = ?options.duration, "baseline: running");
    let started = Instant::now();
    let deadline = started + options.duration;
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (client, statement)) in clients.into_iter().enumerate() {
        let pick = Arc::clone(&pick);
        let failed = Arc::clone(&failed);
        let accounts = options.accounts;
        // Distinct, reproducible streams per client.
        let rng = SmallRng::seed_from_u64(0x6261_7365_6c69_6e65 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(async move {
            let result = client_loop(&client, &statement, pick.as_ref(), rng, accounts, deadline, &failed).await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed); // the run is invalid: stop the others early
            }
            result.with_context(|| format!("client {i}"))
        }));
    }
    let mut totals = ClientStats::new()?;
    let mut first_error = None;
    for (i, task) in tasks.into_iter().enumerate() {
        let error = match task.await {
            Ok(Ok(stats)) => {
                totals.merge(&stats)?;
                continue;
            }
            Ok(Err(e)) => e,
            Err(join_error) => anyhow::anyhow!("client {i} panicked (in the pick function?): {join_error}"),
        };
        failed.store(true, Ordering::Relaxed);
        first_error.get_or_insert(error);
    }
    let duration = started.elapsed();
    if let Some(e) = first_error {
        return Err(e.context("the baseline load failed"));
    }

    let checks = verify(&admin, options, &totals).await?;
    Ok(BaselineResult {
        server_version,
        committed: totals.committed,
        refused: totals.refused,
        retries: totals.retries,
        committed_amount_minor: totals.amount,
        duration,
        latency: totals.latency,
        checks,
        cluster_dir: PathBuf::new(), // filled in by run()
    })
}

async fn load_schema(admin: &Client, options: &BaselineOptions) -> Result<()> {
    admin.batch_execute(SCHEMA_SQL).await.context("creating the baseline tables")?;
    admin.batch_execute(PAY_FUNCTION_SQL).await.context("creating the pay() function")?;
    let accounts = i32::try_from(options.accounts).context("accounts does not fit an int")?;
    admin
        .execute(
            "INSERT INTO accounts (id, balance, cap) SELECT g, $1::bigint, $2::bigint FROM generate_series(0, $3::int - 1) g",
            &[&options.funding_minor, &options.net_debit_cap_minor, &accounts],
        )
        .await
        .context("funding the accounts")?;
    // As pgbench does before a run: fresh statistics and visibility map, and a checkpoint so the run
    // starts from a clean WAL instead of paying for the load's.
    // One statement per call: several in one simple query form a transaction block, and VACUUM
    // refuses to run inside one.
    for statement in ["VACUUM ANALYZE accounts", "VACUUM ANALYZE payments", "CHECKPOINT"] {
        admin.batch_execute(statement).await.with_context(|| format!("preparing for the run: {statement}"))?;
    }
    Ok(())
}

struct ClientStats {
    committed: u64,
    refused: u64,
    retries: u64,
    amount: i128,
    latency: Histogram<u64>,
}

impl ClientStats {
    fn new() -> Result<ClientStats> {
        let latency = Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).context("creating a latency histogram")?;
        Ok(ClientStats { committed: 0, refused: 0, retries: 0, amount: 0, latency })
    }

    fn merge(&mut self, other: &ClientStats) -> Result<()> {
        self.committed += other.committed;
        self.refused += other.refused;
        self.retries += other.retries;
        self.amount += other.amount;
        self.latency.add(&other.latency).context("merging latency histograms")
    }
}

async fn client_loop(
    client: &Client,
    statement: &Statement,
    pick: &(dyn Fn(&mut SmallRng) -> Pick + Send + Sync),
    mut rng: SmallRng,
    accounts: u32,
    deadline: Instant,
    failed: &AtomicBool,
) -> Result<ClientStats> {
    let mut stats = ClientStats::new()?;
    while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
        let p = pick(&mut rng);
        if p.payer >= accounts || p.payee >= accounts {
            bail!("pick returned payer {} / payee {} outside the baseline's accounts 0..{accounts}", p.payer, p.payee);
        }
        // In range of int by the check above and validate() (accounts <= i32::MAX).
        let (payer, payee) = (p.payer as i32, p.payee as i32);
        let amount =
            i64::try_from(p.amount).with_context(|| format!("pick amount {} does not fit a bigint", p.amount))?;
        let started = Instant::now();
        let mut attempts = 0;
        let paid = loop {
            match client.query_one(statement, &[&payer, &payee, &amount]).await {
                Ok(row) => break row.try_get::<_, bool>(0).context("reading pay()'s result")?,
                Err(e) if is_retryable(&e) && attempts < MAX_RETRIES_PER_CALL => {
                    attempts += 1;
                    stats.retries += 1;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("pay({payer}, {payee}, {amount}) failed after {attempts} retries")))
                }
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.latency.saturating_record(micros.max(1));
        if paid {
            stats.committed += 1;
            stats.amount += i128::from(amount);
        } else {
            stats.refused += 1;
        }
    }
    Ok(stats)
}

fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Reads a `numeric` sent as text (tokio-postgres has no numeric type without extra features).
fn parse_numeric(text: &str, what: &str) -> Result<i128> {
    text.parse().with_context(|| format!("{what}: server returned {text:?}, not an integer"))
}

async fn verify(admin: &Client, options: &BaselineOptions, totals: &ClientStats) -> Result<Vec<String>> {
    let mut checks = Vec::new();

    let row = admin
        .query_one(
            "SELECT count(*), sum(balance)::text, count(*) FILTER (WHERE balance < -cap), \
             min(balance::numeric + cap)::text \
             FROM accounts",
            &[],
        )
        .await
        .context("verification: reading accounts")?;
    let account_rows: i64 = row.try_get(0).context("verification: count(accounts)")?;
    let balance_sum =
        parse_numeric(&row.try_get::<_, String>(1).context("verification: sum(balance)")?, "sum(balance)")?;
    let below_cap: i64 = row.try_get(2).context("verification: accounts below cap")?;
    let min_headroom =
        parse_numeric(&row.try_get::<_, String>(3).context("verification: min(balance + cap)")?, "min(balance + cap)")?;

    if account_rows != i64::from(options.accounts) {
        bail!("verification failed: {account_rows} account rows, expected {}", options.accounts);
    }
    checks.push(format!("accounts: {account_rows} rows, as funded"));

    let expected_sum = i128::from(options.accounts) * i128::from(options.funding_minor);
    if balance_sum != expected_sum {
        bail!(
            "verification failed: money not conserved: sum(balance) = {balance_sum}, expected {expected_sum} \
             ({} accounts x {} funding)",
            options.accounts,
            options.funding_minor
        );
    }
    checks.push(format!(
        "money conserved: sum(balance) = {balance_sum} = {} accounts x {} funding",
        options.accounts, options.funding_minor
    ));

    if below_cap != 0 {
        bail!("verification failed: {below_cap} accounts are below their net debit cap (min balance + cap = {min_headroom})");
    }
    checks.push(format!("net debit cap held: no balance below -cap (lowest balance + cap = {min_headroom})"));

    let row = admin
        .query_one("SELECT count(*), coalesce(sum(amount), 0)::text FROM payments", &[])
        .await
        .context("verification: reading payments")?;
    let payment_rows: i64 = row.try_get(0).context("verification: count(payments)")?;
    let amount_sum =
        parse_numeric(&row.try_get::<_, String>(1).context("verification: sum(amount)")?, "sum(payments.amount)")?;
    if u64::try_from(payment_rows).ok() != Some(totals.committed) {
        bail!("verification failed: {payment_rows} payment rows, but clients saw {} committed calls", totals.committed);
    }
    checks.push(format!("payments: {payment_rows} rows = {} calls the clients saw commit", totals.committed));
    if amount_sum != totals.amount {
        bail!("verification failed: sum(payments.amount) = {amount_sum}, but the clients committed {}", totals.amount);
    }
    checks.push(format!("payments: sum(amount) = {amount_sum} = the sum the clients committed"));

    // Each balance must be explained by the payments: funding - paid + received.
    let row = admin
        .query_one(
            "SELECT count(*) FROM accounts a \
             LEFT JOIN (SELECT payer AS id, sum(amount) AS paid FROM payments GROUP BY payer) o USING (id) \
             LEFT JOIN (SELECT payee AS id, sum(amount) AS received FROM payments GROUP BY payee) i USING (id) \
             WHERE a.balance <> $1::bigint - coalesce(o.paid, 0) + coalesce(i.received, 0)",
            &[&options.funding_minor],
        )
        .await
        .context("verification: reconciling balances with payments")?;
    let mismatched: i64 = row.try_get(0).context("verification: mismatched accounts")?;
    if mismatched != 0 {
        bail!("verification failed: {mismatched} accounts' balances differ from funding - paid + received");
    }
    checks.push(format!("every balance = funding - paid + received over payments ({account_rows} accounts)"));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn bin(dir: &str, version: &[u32]) -> PgBin {
        PgBin { dir: PathBuf::from(dir), version: version.to_vec(), version_text: String::new() }
    }

    #[test]
    fn picks_the_highest_version() {
        let found = pick_highest(vec![
            bin("/usr/lib/postgresql/13/bin", &[13, 9]),
            bin("/usr/lib/postgresql/16/bin", &[16, 2]),
            bin("/usr/lib/postgresql/15/bin", &[15, 14]),
            bin("/opt/unknown", &[]),
        ]);
        assert_eq!(found.map(|b| b.dir), Some(PathBuf::from("/usr/lib/postgresql/16/bin")));
    }

    #[test]
    fn on_a_tie_the_earlier_candidate_wins_and_none_gives_none() {
        let found =
            pick_highest(vec![bin("/usr/local/pgsql/bin", &[15, 14]), bin("/usr/lib/postgresql/15/bin", &[15, 14])]);
        assert_eq!(found.map(|b| b.dir), Some(PathBuf::from("/usr/local/pgsql/bin")));
        assert_eq!(pick_highest(Vec::new()), None);
    }

    #[test]
    fn minor_versions_order_numerically() {
        let found = pick_highest(vec![bin("/a", &[15, 9]), bin("/b", &[15, 14])]);
        assert_eq!(found.map(|b| b.dir), Some(PathBuf::from("/b")));
    }

    #[test]
    fn parses_postgres_version_output() {
        assert_eq!(parse_pg_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"), Some(vec![15, 14]));
        assert_eq!(parse_pg_version("pg_ctl (PostgreSQL) 9.6.24"), Some(vec![9, 6, 24]));
        assert_eq!(parse_pg_version("postgres (PostgreSQL) 17beta1"), Some(vec![17]));
        assert_eq!(parse_pg_version("something else"), None);
    }

    #[test]
    fn reads_the_major_version_from_the_debian_path() {
        assert_eq!(version_from_path(Path::new("/usr/lib/postgresql/16/bin")), Some(vec![16]));
        assert_eq!(version_from_path(Path::new("/usr/local/bin")), None);
    }

    #[test]
    fn reads_the_effective_uid() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tcat\n"), None);
    }

    #[test]
    fn the_pay_function_checks_the_cap_in_the_debit_and_locks_in_order() {
        assert!(PAY_FUNCTION_SQL.contains("WHERE id = pay.payer AND balance - pay.amount >= -cap"));
        assert!(PAY_FUNCTION_SQL.contains("ORDER BY id FOR UPDATE"));
        assert!(PAY_FUNCTION_SQL.contains("IF NOT FOUND THEN\n        RETURN false;"));
        assert!(PAY_FUNCTION_SQL.contains("INSERT INTO payments"));
        assert_eq!(PAY_CALL_SQL, "SELECT pay($1, $2, $3)");
    }

    fn options(dir: PathBuf, port: u16) -> BaselineOptions {
        BaselineOptions {
            accounts: 5,
            funding_minor: 10_000,
            net_debit_cap_minor: 5_000,
            connections: 4,
            duration: Duration::from_secs(2),
            dir,
            port,
        }
    }

    #[test]
    fn the_config_is_durable_and_sized_for_the_clients() -> Result<()> {
        let text = config_text(&options(PathBuf::from("/tmp/x"), 55432), Path::new("/tmp/x/socket"), true)?;
        for line in [
            "fsync = on",
            "synchronous_commit = on",
            "full_page_writes = on",
            "shared_buffers = 1GB",
            "port = 55432",
            "max_connections = 14",
            "unix_socket_directories = '/tmp/x/socket'",
            "listen_addresses = '127.0.0.1'",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let quoted = config_text(&options(PathBuf::from("/tmp/x"), 1), Path::new("/tmp/it's"), true)?;
        assert!(quoted.contains("unix_socket_directories = '/tmp/it''s'"));
        let no_socket = config_text(&options(PathBuf::from("/tmp/x"), 1), Path::new("/tmp/x/socket"), false)?;
        assert!(no_socket.contains("unix_socket_directories = ''"));
        Ok(())
    }

    #[test]
    fn long_socket_paths_are_detected() {
        assert!(socket_path_fits(Path::new("/tmp/baseline/socket"), 55432));
        assert!(!socket_path_fits(&Path::new("/tmp").join("x".repeat(100)), 55432));
    }

    #[test]
    fn su_command_lines_are_quoted() {
        let runner = Runner { run_as: RunAs::Su, cwd: PathBuf::from("/tmp") };
        let argv = runner.wrap(&["/usr/bin/pg_ctl".to_string(), "-D".to_string(), "/tmp/it's here".to_string()]);
        assert_eq!(argv[..5], ["su", "postgres", "-s", "/bin/sh", "-c"]);
        assert_eq!(argv[5], r"'/usr/bin/pg_ctl' '-D' '/tmp/it'\''s here'");
        let runner = Runner { run_as: RunAs::Runuser, cwd: PathBuf::from("/tmp") };
        assert_eq!(runner.wrap(&["true".to_string()]), ["runuser", "-u", "postgres", "--", "true"]);
    }

    #[test]
    fn options_are_validated() {
        let mut o = options(PathBuf::from("/tmp/x"), 1);
        assert!(validate(&o).is_ok());
        o.connections = 0;
        assert!(validate(&o).is_err());
        o.connections = 1;
        o.net_debit_cap_minor = -1;
        assert!(validate(&o).is_err());
    }

    /// Runs the real thing briefly against a private cluster (installing PostgreSQL if missing and
    /// running as root). Account 0 pays 80% of the time with a small funding and cap, so both commits
    /// and net-debit-cap refusals happen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_a_short_baseline_against_a_private_cluster() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("loadgen-baseline-test-{}", std::process::id()));
        // A free port for this test, so it can run beside a real baseline on the default port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pick = Arc::new(|rng: &mut SmallRng| {
            let payer = if rng.random_bool(0.8) { 0 } else { rng.random_range(0..5) };
            let payee = (payer + rng.random_range(1..5)) % 5;
            Pick { payer, payee, amount: rng.random_range(1..=1_000) }
        });
        let result = run(&options(dir.clone(), port), pick).await;
        let _ = std::fs::remove_dir_all(&dir);
        let result = result?;
        assert!(result.committed > 0, "nothing committed");
        assert!(result.refused > 0, "the cap never refused a payment");
        assert_eq!(result.latency.len(), result.committed + result.refused);
        assert_eq!(result.checks.len(), 6, "{:?}", result.checks);
        assert!(!result.server_version.is_empty());
        Ok(())
    }
}
