//! `grpc_ceiling`: how many payments per second one payment per RPC can reach on this machine
//! over the switch's own mTLS transport when the server does no work (`benches::echo`), driven
//! the way loadgen drives the switch (`benches::ceiling`). The switch's figure under
//! `loadgen --submit single` divided by this one is the share of the transport's ceiling the
//! switch keeps; the difference in CPU per request is what the switch's own path costs.
//!
//!   cargo run --release -p benches --bin grpc_ceiling -- --duration 30
//!
//! Starts its echo server as a child process (a separate process, as the switch is), runs the
//! closed loop, prints throughput, latency and each side's CPU, and stops the child.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use benches::ceiling::{self, Plan};
use benches::echo::Transport;
use clap::{Parser, Subcommand};
use loadgen::connect::Connector;

/// The same allocator as the switch and loadgen, so the ceiling is measured as they run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "The gRPC mTLS transport ceiling for one payment per RPC on this machine")]
struct Args {
    #[command(subcommand)]
    command: Option<Role>,
    /// Simulated PSPs, each with its own client certificate.
    #[arg(long, default_value_t = 20)]
    psps: usize,
    /// HTTP/2 connections per PSP (loadgen's default).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Calls in flight (loadgen's default for one payment per RPC).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Seconds run before measuring (connections warm, TLS sessions made).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Plaintext HTTP/2 with tonic's defaults on both sides instead of the switch's mutual TLS
    /// transport: the bare tonic reference.
    #[arg(long)]
    plaintext: bool,
    /// Directory of the development CA and certificates (created when missing).
    #[arg(long, default_value = "target/grpc-ceiling/certs")]
    certs: PathBuf,
}

#[derive(Subcommand)]
enum Role {
    /// The echo server alone (what the driver starts as its child): prints `listening on ADDR`,
    /// serves until its standard input closes.
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.command {
        Some(Role::Serve { listen }) => runtime.block_on(serve(transport(&args), &args.certs, listen)),
        None => runtime.block_on(measure(&args)),
    }
}

fn transport(args: &Args) -> Transport {
    if args.plaintext {
        Transport::BarePlaintext
    } else {
        Transport::SwitchMtls
    }
}

async fn serve(transport: Transport, certs: &std::path::Path, listen: SocketAddr) -> anyhow::Result<()> {
    // The parent holds our standard input: its end (exit or crash) is our stop.
    let stop = async {
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
    };
    benches::echo::serve(transport, certs, listen, |address| println!("listening on {address}"), stop).await
}

/// The echo server child, stopped when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &Args) -> anyhow::Result<(Server, SocketAddr)> {
    let mut command = Command::new(std::env::current_exe().context("finding this executable")?);
    command.arg("--certs").arg(&args.certs);
    if args.plaintext {
        command.arg("--plaintext");
    }
    let child = command
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the echo server")?;
    let mut server = Server { child };
    let stdout = server.child.stdout.take().context("the echo server's output")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading the echo server's address")?;
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        bail!("the echo server did not start (it said {line:?})");
    };
    let address = address.parse().with_context(|| format!("the echo server's address {address:?}"))?;
    Ok((server, address))
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let seconds = |value: f64, flag: &str| {
        Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("{flag} must be a number of seconds"))
    };
    let plan = Plan {
        psps: args.psps,
        connections_per_psp: args.connections,
        concurrency: args.concurrency,
        warmup: seconds(args.warmup, "--warmup")?,
        duration: seconds(args.duration, "--duration")?,
    };
    if plan.duration.is_zero() {
        bail!("--duration must be above zero");
    }
    std::fs::create_dir_all(&args.certs).with_context(|| format!("creating {}", args.certs.display()))?;
    let (server, address) = start_server(args)?;
    let clients = match transport(args) {
        Transport::SwitchMtls => {
            let server = format!("https://localhost:{}", address.port());
            ceiling::connect(&Connector::new(std::slice::from_ref(&server), &args.certs, "localhost")?, &plan).await?
        }
        Transport::BarePlaintext => ceiling::connect_plaintext(address, &plan).await?,
    };
    println!(
        "grpc_ceiling: {:?}, {} PSPs x {} connections, {} calls in flight, {:?} warm-up, {:?} measured",
        transport(args),
        plan.psps,
        plan.connections_per_psp,
        plan.concurrency,
        plan.warmup,
        plan.duration
    );

    let cpu = |pid: u32| loadgen::cpu::seconds(pid).unwrap_or(f64::NAN);
    let (server_pid, own_pid) = (server.child.id(), std::process::id());
    let driving = tokio::spawn({
        let plan = plan.clone();
        async move { ceiling::drive(clients, &plan).await }
    });
    tokio::time::sleep(plan.warmup).await;
    let (server_before, own_before) = (cpu(server_pid), cpu(own_pid));
    tokio::time::sleep(plan.duration).await;
    let (server_after, own_after) = (cpu(server_pid), cpu(own_pid));
    let measured = driving.await??;
    drop(server);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let wall = plan.duration.as_secs_f64();
    let (server_cpu, own_cpu) = (server_after - server_before, own_after - own_before);
    let latency = |q: f64| Duration::from_micros(measured.latency_us.value_at_quantile(q));
    println!(
        "achieved {:.0} payments/s ({} answered, {} failed)",
        measured.per_second(),
        measured.completed,
        measured.failed
    );
    println!("latency  p50 {:?}  p99 {:?}  p99.9 {:?}", latency(0.5), latency(0.99), latency(0.999));
    println!(
        "CPU during the measured phase: echo server {:.0}%, client {:.0}% of {cores} cores; echo server {:.1} us per payment",
        100.0 * server_cpu / wall / cores,
        100.0 * own_cpu / wall / cores,
        1e6 * server_cpu / measured.completed.max(1) as f64
    );
    if let Some(failure) = &measured.first_failure {
        bail!("{} calls failed; the first: {failure}", measured.failed);
    }
    Ok(())
}
