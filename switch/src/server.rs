//! The ports of one switch node and the leader's server on the PSP port: the PSP-facing gRPC
//! port (mutual TLS: the services, health checking, reflection, RED metrics on every call), the
//! plain gRPC health port for orchestrators' probes, the operator HTTP port (metrics,
//! dashboard) and the node-to-node port; `Background`, a node run in-process. What a node serves
//! in each role, and the ports that outlive roles: `node`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::Config;
use crate::core::Switch;
use crate::proto::directory_service_server::DirectoryServiceServer;
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::operator_service_server::OperatorServiceServer;
use crate::proto::payment_service_server::PaymentServiceServer;
use crate::services::{directory::Directory, events::Events, operator::Operator, payments::Payments};
use crate::tls::DevelopmentCa;

/// Idle time before the kernel probes a silent PSP connection, so a peer that vanished (power
/// loss, a dropped NAT entry) frees its event stream instead of holding it open forever.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest request the server decodes (a full PayBatch of 8,190 payments is ~2.5 MB).
const MESSAGE_BYTES_MAX: usize = 8 << 20;

/// HTTP/2 receive window of each stream: what a client may send ahead of the switch reading it
/// (hyper's default, set here because the connection window below is sized from it).
const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 receive window of each connection. h2 (0.4.16 on; `proto/streams/counts.rs`) also
/// derives from it a budget for unread small DATA frames: half of it; each non-final DATA frame
/// under 256 bytes costs 256 minus its length when it arrives and gives it back only when the
/// application reads it (or the stream is dropped); past the budget h2 closes the connection
/// with GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames", and every call on it is lost. Small
/// messages are this API's normal traffic: a unary request's message is one such frame (its
/// END_STREAM comes in an empty frame, not charged), and so is each pipelined PayStream item and
/// event-stream decision (72-byte payments cost ~2.6 budget bytes per byte, 30-byte decisions
/// ~7.5). What stays unread is bounded twice: by `STREAMS_PER_CONNECTION_MAX` for calls not yet
/// read, and by the switch reading every stream while its client reads the answers (PayStream
/// refuses in-band rather than stopping; see `services::pay_stream`), so a held stream is one
/// whose client does not read, with one stream window unread. 16 MiB gives an 8 MiB budget.
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Most concurrent calls on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). tonic leaves it
/// unbounded (it overrides hyper's default of 200 with none): under open-loop unary load beyond
/// capacity, calls arrive faster than their tasks first run, each call's unread request frame
/// charges the small-frame budget above, and with no bound on streams the charges grow with the
/// backlog until h2 closes the connection (issue 21 measured that teardown at 25,000/s offered:
/// 19.7% of payments without an answer; BENCHMARKS.md, "Overload"). With this bound the unread request
/// frames of a connection cost at most 1,024 x 256 B = 256 KiB of the 8 MiB budget, whatever
/// the load; a client with more calls queues them on its side. The switch sheds the load itself,
/// with reasons, by admission (`admission`), which answers a call beyond budget in microseconds.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// The PEM files the server uses: configured ones, or the development CA's.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_certificate: PathBuf,
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// Uses the configured files; creates and uses the development CA where none are configured.
    pub fn resolve(config: &Config) -> anyhow::Result<TlsFiles> {
        let development = DevelopmentCa::new(config.data_dir.join("certs"));
        let needs_development = config.tls.ca_certificate.is_none() || config.tls.server_certificate.is_none();
        if needs_development && development.ensure()? {
            tracing::warn!(dir = %development.dir.display(), "created a development CA: not for production");
        }
        let server = development.server();
        Ok(TlsFiles {
            ca_certificate: config.tls.ca_certificate.clone().unwrap_or_else(|| development.ca_certificate()),
            server_certificate: config.tls.server_certificate.clone().unwrap_or(server.certificate),
            server_key: config.tls.server_key.clone().unwrap_or(server.key),
        })
    }

    fn server_tls(&self) -> anyhow::Result<ServerTlsConfig> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))
        };
        let identity = Identity::from_pem(read(&self.server_certificate)?, read(&self.server_key)?);
        // A client certificate chaining to this CA is required: no certificate, no handshake.
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(&self.ca_certificate)?))
            .client_auth_optional(false))
    }
}

/// The switch's bound ports.
pub struct Listeners {
    /// PSPs and operators: gRPC over mutual TLS. A std listener, so that each role a node takes
    /// serves it in turn (`node`): each gets its own handle on the one bound socket.
    pub grpc: std::net::TcpListener,
    /// Operators: HTTP metrics, dashboard, health.
    pub operator_http: TcpListener,
    /// Orchestrators: plain gRPC health checking.
    pub health: TcpListener,
    /// The other nodes of the cluster: Raft over gRPC, mutual TLS with node certificates.
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds every port the configuration names.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let bind = |address: std::net::SocketAddr, what: &'static str| async move {
            TcpListener::bind(address)
                .await
                .map_err(|error| anyhow::anyhow!("binding the {what} port {address}: {error}"))
        };
        let grpc = bind(config.listen, "gRPC").await?.into_std()?;
        Ok(Listeners {
            grpc,
            operator_http: bind(config.operator.http_listen, "operator HTTP").await?,
            health: bind(config.operator.health_listen, "health").await?,
            peer: bind(config.cluster.peer_listen, "peer").await?,
        })
    }

    /// The addresses bound.
    pub fn addresses(&self) -> std::io::Result<Addresses> {
        Ok(Addresses {
            grpc: self.grpc.local_addr()?,
            operator_http: self.operator_http.local_addr()?,
            health: self.health.local_addr()?,
            peer: self.peer.local_addr()?,
        })
    }
}

/// Where a node's ports are bound.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub grpc: SocketAddr,
    pub operator_http: SocketAddr,
    pub health: SocketAddr,
    pub peer: SocketAddr,
}

/// The connections a listener accepts, with `TCP_NODELAY` and keepalive set. tonic applies its
/// own `tcp_nodelay` default only to sockets it binds itself, not to an incoming stream handed to
/// it, and without it Nagle's algorithm holds each small answer back until the peer acknowledges
/// the previous one: milliseconds added to payments for nothing.
pub fn accepted(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(KEEPALIVE_IDLE))
}

/// A handle of its own on the PSP port for one role's server: dropping it when the role ends
/// leaves the socket bound and listening for the next.
pub fn psp_listener(grpc: &std::net::TcpListener) -> std::io::Result<TcpListener> {
    let handle = grpc.try_clone()?;
    handle.set_nonblocking(true)?;
    TcpListener::from_std(handle)
}

/// The PSP port's transport: mutual TLS and the HTTP/2 windows above. Shared with the transport
/// ceiling benchmark (`benches`, `grpc_ceiling`), so what it measures is this port's own cost.
pub fn psp_transport(tls: &TlsFiles) -> anyhow::Result<Server> {
    Ok(Server::builder()
        .tls_config(tls.server_tls()?)?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX))
}

/// The PSP services' names, as health checking knows them.
pub const SERVICE_NAMES: [&str; 4] = [
    crate::proto::payment_service_server::SERVICE_NAME,
    crate::proto::directory_service_server::SERVICE_NAME,
    crate::proto::operator_service_server::SERVICE_NAME,
    crate::proto::event_service_server::SERVICE_NAME,
];

/// Serves the switch on the PSP port, as the cluster's leader, until `shutdown` resolves; then
/// finishes in-flight requests and ends open streams. The node (`node::run`) serves the other
/// ports and owns the ledger, which outlives this.
pub async fn serve_leader(
    switch: Arc<Switch>,
    grpc: &std::net::TcpListener,
    tls: &TlsFiles,
    health_reporter: tonic_health::server::HealthReporter,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let rearmed = crate::confirm::rearm_after_restart(&switch).map_err(|refusal| anyhow::anyhow!(refusal.message))?;
    let rearmed = rearmed
        + crate::services::collect::rearm_after_restart(&switch).map_err(|refusal| anyhow::anyhow!(refusal.message))?;
    if rearmed > 0 {
        tracing::info!(rearmed, "deadline timers re-armed for payments and collects awaiting an answer");
    }
    health_reporter.set_serving::<PaymentServiceServer<Payments>>().await;
    health_reporter.set_serving::<DirectoryServiceServer<Directory>>().await;
    health_reporter.set_serving::<OperatorServiceServer<Operator>>().await;
    health_reporter.set_serving::<EventServiceServer<Events>>().await;
    tokio::spawn(crate::records::serve_health(switch.failed.subscribe(), health_reporter.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let payments = PaymentServiceServer::new(Payments::new(Arc::clone(&switch)))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let directory = DirectoryServiceServer::new(Directory::new(Arc::clone(&switch)))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let operator = OperatorServiceServer::new(Operator { switch: Arc::clone(&switch) });
    let events = EventServiceServer::new(Events { switch: Arc::clone(&switch) });

    let served = psp_transport(tls)?
        .layer(crate::metrics::grpc::MeteredLayer::new(Arc::clone(&switch.metrics)))
        .add_service(health)
        .add_service(reflection)
        .add_service(payments)
        .add_service(directory)
        .add_service(operator)
        .add_service(events)
        .serve_with_incoming_shutdown(accepted(psp_listener(grpc)?), async {
            shutdown.await;
            for service in SERVICE_NAMES {
                health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
            }
            // Streams never finish by themselves: tell them to end, then wait for the rest.
            switch.shutting_down.send_replace(true);
        })
        .await;
    served?;
    Ok(())
}

/// A switch node served in the background of the current tokio runtime until `stop`: how tests
/// and tools run one in-process (the binary serves in the foreground, `main.rs`).
pub struct Background {
    /// The gRPC (mutual TLS) address.
    pub address: SocketAddr,
    /// The operator HTTP address (metrics, dashboard).
    pub operator_address: SocketAddr,
    /// The plain gRPC health address.
    pub health_address: SocketAddr,
    /// The node-to-node address.
    pub peer_address: SocketAddr,
    leading: tokio::sync::watch::Receiver<Option<Arc<Switch>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Background {
    /// Opens the node on `config` (creating the development CA if no PEM files are configured)
    /// and serves it on the configured ports (port 0: an ephemeral port, see the addresses). A
    /// cluster of one (no members configured) is returned once it leads and its switch is open;
    /// a member of a larger cluster at once (its peers may not be up yet: see `leading`).
    pub async fn start(config: Config) -> anyhow::Result<Background> {
        let tls = TlsFiles::resolve(&config)?;
        let listeners = Listeners::bind(&config).await?;
        let addresses = listeners.addresses()?;
        let alone = config.cluster.members.len() <= 1;
        let (opened, leading) = tokio::sync::watch::channel(None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::node::run(
            config,
            listeners,
            tls,
            async {
                let _ = stopped.await;
            },
            opened,
        ));
        let mut background = Background {
            address: addresses.grpc,
            operator_address: addresses.operator_http,
            health_address: addresses.health,
            peer_address: addresses.peer,
            leading,
            stop: Some(stop),
            task: Some(task),
        };
        if alone {
            background.leading_or_failed().await?;
        }
        Ok(background)
    }

    /// The switch this node serves while it leads (`None` while it follows).
    pub fn switch(&self) -> Option<Arc<Switch>> {
        self.leading.borrow().clone()
    }

    /// Waits until this node leads and its switch is open.
    pub async fn leading(&mut self) -> anyhow::Result<Arc<Switch>> {
        self.leading_or_failed().await
    }

    async fn leading_or_failed(&mut self) -> anyhow::Result<Arc<Switch>> {
        let mut leading = self.leading.clone();
        if let Ok(opened) = leading.wait_for(Option::is_some).await {
            if let Some(switch) = opened.clone() {
                return Ok(switch);
            }
        }
        // The node's task dropped the sender: it ended (a corrupt record, a port): say why.
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => anyhow::bail!("the node stopped before it led"),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(error.into()),
            },
            None => anyhow::bail!("the node has stopped"),
        }
    }

    /// Stops gracefully: in-flight requests answered, open streams ended, the ledger committed
    /// and closed, the node's Raft stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// Accepted sockets have Nagle's algorithm off (tokio's own default leaves it on).
    #[tokio::test]
    async fn accepted_connections_have_nodelay() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let mut incoming = accepted(listener);
        let _client = tokio::net::TcpStream::connect(address).await?;
        let server_side = incoming.next().await.ok_or_else(|| anyhow::anyhow!("no connection"))??;
        assert!(server_side.nodelay()?, "TCP_NODELAY is set on the accepted socket");
        let plain = TcpListener::bind("127.0.0.1:0").await?;
        let _other = tokio::net::TcpStream::connect(plain.local_addr()?).await?;
        let (unset, _) = plain.accept().await?;
        assert!(!unset.nodelay()?, "without `accepted` the kernel default (Nagle on) applies");
        Ok(())
    }
}
