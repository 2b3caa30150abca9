//! `switch`: run the payment switch, and manage development certificates.
//!
//! - `switch serve [--config FILE] [--data DIR] [--listen ADDR]`: with no arguments, runs on the
//!   embedded defaults (data under `./data`, a development CA created on first start).
//! - `switch certs issue --psp ID` / `--operator NAME` / `--node N`: certificates from the
//!   development CA (a node's is for the node-to-node port of a replicated switch).
//! - `switch client --as NAME ...`: register, fund, alias, pay, status by hand (see `--help`).
//! - `switch cluster status --node HOST:PORT ...`: every node's place in a replicated switch;
//!   `switch cluster add --id N --peer HOST:PORT --psp HOST:PORT` and `remove --id N`: change
//!   its members (operator).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switch::config::Config;
use switch::server::{Listeners, TlsFiles};
use switch::tls::DevelopmentCa;

/// mimalloc instead of glibc malloc: see the workspace Cargo.toml for the measured reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switch", version, about = "Real-time payment switch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines (for collectors) instead of human-readable text.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch.
    Serve {
        /// TOML configuration (see switch/switch.example.toml); defaults apply to what it omits.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `operator.http_listen` (metrics, dashboard).
        #[arg(long)]
        operator_listen: Option<SocketAddr>,
        /// Overrides `operator.health_listen` (plain gRPC health checking).
        #[arg(long)]
        health_listen: Option<SocketAddr>,
        /// Overrides `cluster.peer_listen` (the node-to-node port).
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
        /// Overrides `cluster.node_id`.
        #[arg(long)]
        node_id: Option<u64>,
    },
    /// Development certificate authority (not for production).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Write the Grafana dashboard and Prometheus alert rules generated from code.
    Observability {
        /// The deploy directory: writes grafana/payment-switch.json and prometheus/alerts.yml in it.
        #[arg(long, default_value = "deploy")]
        deploy_dir: PathBuf,
    },
    /// The replicated switch's nodes.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Call a running switch with a certificate from the development CA.
    Client {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(subcommand)]
        command: switch::client::ClientCommand,
    },
}

/// Where a client command connects, and as whom (mutual TLS).
#[derive(clap::Args)]
struct ConnectionArgs {
    /// Any node of the switch: a node that does not lead names the leader, and the command is
    /// sent there.
    #[arg(long, default_value = "https://localhost:50051")]
    server: String,
    /// The data directory whose development CA (`<data>/certs`) issued the certificates.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Act as this operator (e.g. `admin`) or PSP (e.g. `bank-a`) of the development CA in
    /// `<data>/certs`. Not needed with `--cert` and `--key`.
    #[arg(long = "as", required_unless_present = "cert")]
    caller: Option<String>,
    /// The DNS name the server's certificate must carry (production certificates rarely
    /// name `localhost`, e.g. when reaching the switch through a port-forward).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// CA certificate (PEM) that issued the server's certificate; default: the development CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to act with, instead of the development CA's (`--as`).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

impl ConnectionArgs {
    fn connection(self) -> anyhow::Result<switch::client::Connection> {
        let ConnectionArgs { server, data, caller, domain, ca, cert, key } = self;
        switch::client::check_server(&server)?;
        let identity = match (cert, key, caller) {
            (Some(certificate), Some(key), _) => switch::client::Identity::Files { certificate, key },
            (_, _, Some(name)) => switch::client::Identity::Development(name),
            _ => anyhow::bail!("name the caller: --as NAME, or --cert and --key"),
        };
        Ok(switch::client::Connection { server, data, identity, domain, ca })
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every node's role, term, leader, log, commit and apply indexes and lag, read from each
    /// node's operator port, and the members. Exits non-zero when no node answers or none leads.
    Status {
        /// A node's operator HTTP address (host:port); repeat for each node.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
    /// Add a node (operator): started beforehand with its new id and the current members in
    /// `[cluster].members`, it catches up from a snapshot and the log as a learner, then becomes
    /// a voter (docs/cluster.md).
    Add {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// The new node's id: never used before in this cluster.
        #[arg(long)]
        id: u64,
        /// host:port where the other nodes reach its peer port.
        #[arg(long)]
        peer: String,
        /// host:port of its PSP port.
        #[arg(long)]
        psp: String,
        /// How long to keep asking while the node catches up.
        #[arg(long, default_value_t = 600)]
        wait_seconds: u64,
    },
    /// Remove a node (operator): a dead machine, a wiped disk, or one being replaced. Its id is
    /// never accepted again.
    Remove {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[arg(long)]
        id: u64,
        /// How long to keep asking while the change commits.
        #[arg(long, default_value_t = 120)]
        wait_seconds: u64,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the CA, the server certificate and the `admin` operator certificate if missing.
    Init {
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Issue a client certificate for a PSP or an operator, or a node's certificate for the
    /// node-to-node port of a replicated switch (again: a new certificate for the key it already
    /// has, so a client reading the pair at that moment still gets a matching one).
    Issue {
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long, group = "holder", required_unless_present_any = ["operator", "node"])]
        psp: Option<String>,
        #[arg(long, group = "holder")]
        operator: Option<String>,
        /// A node id (a positive integer, never reused for another machine).
        #[arg(long, group = "holder")]
        node: Option<u64>,
        /// Host names and addresses the node is reached at by its peers (with --node).
        #[arg(long = "host", requires = "node", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
}

fn init_logging(format: &str) {
    // openraft narrates every election and vote at info: its warnings are what an operator needs.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into());
    // Colours only on a terminal: a log file or a collector gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Serve { config, data, listen, operator_listen, health_listen, peer_listen, node_id } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(data) = data {
                config.data_dir = data;
            }
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(address) = operator_listen {
                config.operator.http_listen = address;
            }
            if let Some(address) = health_listen {
                config.operator.health_listen = address;
            }
            if let Some(address) = peer_listen {
                config.cluster.peer_listen = address;
            }
            if let Some(id) = node_id {
                config.cluster.node_id = id;
            }
            config.check()?;
            run(config)
        }
        Command::Client { connection, command } => {
            let connection = connection.connection()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(switch::client::run_following_the_leader(connection, command))
        }
        Command::Cluster { command } => cluster(command),
        Command::Observability { deploy_dir } => {
            switch::observability::write(&deploy_dir)
                .with_context(|| format!("writing to {}", deploy_dir.display()))?;
            println!(
                "wrote {} and {} under {}",
                switch::observability::DASHBOARD_FILE,
                switch::observability::ALERTS_FILE,
                deploy_dir.display()
            );
            Ok(())
        }
        Command::Certs { command: CertsCommand::Init { data } } => {
            let ca = DevelopmentCa::new(data.join("certs"));
            let created = ca.ensure()?;
            println!("{} development CA in {}", if created { "created" } else { "kept the" }, ca.dir.display());
            Ok(())
        }
        Command::Certs { command: CertsCommand::Issue { data, psp, operator, node, hosts } } => {
            let ca = DevelopmentCa::new(data.join("certs"));
            ca.ensure()?;
            let pair = match (psp, operator, node) {
                (Some(psp), _, _) => ca.issue_psp(&psp)?,
                (None, Some(operator), _) => ca.issue_operator(&operator)?,
                (None, None, Some(0)) => anyhow::bail!("node ids start at 1"),
                (None, None, Some(node)) => {
                    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                    ca.issue_node(node, &hosts)?
                }
                (None, None, None) => anyhow::bail!("name a --psp, an --operator or a --node"),
            };
            println!("certificate {}\nkey         {}", pair.certificate.display(), pair.key.display());
            Ok(())
        }
    }
}

fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    use switch::client::cluster::{change, status, Change};
    use switch::proto::{AddNodeRequest, RemoveNodeRequest};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        ClusterCommand::Status { nodes } => runtime.block_on(status(&nodes)),
        ClusterCommand::Add { connection, id, peer, psp, wait_seconds } => {
            let request = AddNodeRequest { node_id: id, peer_address: peer, psp_address: psp };
            let wait = std::time::Duration::from_secs(wait_seconds);
            runtime.block_on(change(connection.connection()?, Change::Add(request), wait))
        }
        ClusterCommand::Remove { connection, id, wait_seconds } => {
            let request = RemoveNodeRequest { node_id: id };
            let wait = std::time::Duration::from_secs(wait_seconds);
            runtime.block_on(change(connection.connection()?, Change::Remove(request), wait))
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let tls = TlsFiles::resolve(&config)?;
        let listeners = Listeners::bind(&config).await?;
        let addresses = listeners.addresses()?;
        let (node, members) = (config.cluster.node_id, config.cluster.members.len().max(1));
        println!("switch listening on {} (mutual TLS; CA {})", addresses.grpc, tls.ca_certificate.display());
        println!("dashboard   http://{0}/   metrics http://{0}/metrics", addresses.operator_http);
        println!("peers       {} (node {node} of a cluster of {members}; mutual TLS)", addresses.peer);
        println!("health      {} (plain gRPC, grpc.health.v1)", addresses.health);
        let (opened, _) = tokio::sync::watch::channel(None);
        switch::node::run(config, listeners, tls, stop_signal(), opened).await
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes, docker stop).
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still stops the switch");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
