//! One node of the switch, running: the replicated ledger under it (`cluster::node`: its Raft
//! log, its ledger, the peer port), the ports that live as long as the node (operator HTTP,
//! plain health), and what the PSP port serves in each role.
//!
//! Only the leader serves the switch. When a node takes the lead it first applies everything
//! committed before its term (a read-index round), then opens the switch's state from its
//! ledger exactly as a restart does (participants, directory, outboxes, deadline and expiry
//! timers re-armed) and serves it until it loses the lead; the switch's in-memory state is
//! therefore never carried across terms, and a follower's is never stale because it has none.
//! A follower answers every call on its PSP port UNAVAILABLE with NOT_LEADER and the leader's
//! PSP address (`switch-leader`), or NO_LEADER while there is none. A cluster of one is the
//! same path: its node leads as soon as it starts.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use openraft::ServerState;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::Config;
use crate::core::Switch;
use crate::leadership::Leadership;
use crate::server::{accepted, psp_listener, psp_transport, Listeners, TlsFiles, SERVICE_NAMES};
use crate::tls::DevelopmentCa;

/// Host names the development CA's node certificates carry.
const DEVELOPMENT_NODE_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// Runs a node until `shutdown` resolves: the switch while it leads (published in `opened`,
/// `None` while it follows), refusals naming the leader while it follows. Then stops serving,
/// lets the ledger finish what it holds and stops Raft; the data stays on disk.
pub async fn run(
    config: Config,
    listeners: Listeners,
    tls: TlsFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
    opened: watch::Sender<Option<Arc<Switch>>>,
) -> anyhow::Result<()> {
    let addresses = listeners.addresses()?;
    let Listeners { grpc, operator_http, health: health_listener, peer } = listeners;
    let id = config.cluster.node_id;
    let node = cluster::node::Node::start(node_options(&config, &tls)?, peer).await.context("starting the node")?;
    let members: BTreeMap<u64, cluster::SwitchNode> = if config.cluster.members.is_empty() {
        let this =
            cluster::SwitchNode { peer_address: addresses.peer.to_string(), psp_address: addresses.grpc.to_string() };
        BTreeMap::from([(id, this)])
    } else {
        let member = |member: &crate::config::Member| cluster::SwitchNode {
            peer_address: member.peer_address.clone(),
            psp_address: member.psp_address.clone(),
        };
        config.cluster.members.iter().map(|entry| (entry.id, member(entry))).collect()
    };
    // A node that has never started forms the cluster from the configured members (every member
    // may: openraft elects one leader among identical initial memberships). One that has
    // started, or was added to a running cluster, keeps what its log says.
    // A node not among them joins a running cluster: it waits, forming nothing, until the
    // leader adds it (`switch cluster add`).
    if !node.raft.is_initialized().await.context("reading the node's state")? {
        if members.contains_key(&id) {
            match node.raft.initialize(members).await {
                Ok(()) => tracing::info!(node = id, "cluster formed from the configured members"),
                Err(error) => tracing::info!(node = id, %error, "not forming the cluster (another member did)"),
            }
        } else {
            tracing::info!(
                node = id,
                "not a configured member: waiting for the leader to add this node (switch cluster add)"
            );
        }
    }
    tokio::spawn(tell_membership(node.raft.clone(), id));
    let leadership = Leadership::start(node.raft.clone(), id);

    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let stopped = |mut stopping: watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };

    // The ports that outlive roles. Health: the node as a whole ("") serves while it runs; the
    // PSP services serve on the leader only, so an orchestrator's readiness check on a service
    // name routes PSPs to the leader.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in SERVICE_NAMES {
        health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
    }
    let (side_stop, side_stopped) = watch::channel(false);
    let health_port = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health.clone())
            .serve_with_incoming_shutdown(accepted(health_listener), stopped(side_stopped.clone())),
    );
    let operator_port = tokio::spawn(crate::dashboard::serve(
        opened.subscribe(),
        leadership.clone(),
        operator_http,
        stopped(side_stopped),
    ));

    let roles =
        serve_roles(&config, &node, &leadership, &grpc, &tls, (&health_reporter, &health), &stopping, &opened).await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let _ = side_stop.send(true);
    let (health_served, operator_served) = (health_port.await?, operator_port.await?);
    // Every request has been answered; the ledger commits what it still holds, then Raft stops.
    node.stop().await;
    tracing::info!(node = id, "node stopped");
    roles?;
    health_served?;
    operator_served?;
    Ok(())
}

/// Logs when this node becomes a member (added by the leader) and when it stops being one
/// (removed: it then takes no part, and should be stopped), until Raft stops.
async fn tell_membership(raft: cluster::service::SwitchRaft, id: u64) {
    use openraft::async_runtime::watch::WatchReceiver;
    let mut metrics = raft.metrics();
    let member_now = |metrics: &openraft::RaftMetrics<cluster::TypeConfig>| {
        metrics.membership_config.membership().get_node(&id).is_some()
    };
    let mut member = member_now(&metrics.borrow_watched());
    while metrics.changed().await.is_ok() {
        let now = member_now(&metrics.borrow_watched());
        match (member, now) {
            (false, true) => tracing::info!(node = id, "this node is a member of the cluster"),
            (true, false) => tracing::warn!(
                node = id,
                "this node was removed from the cluster: it takes no part any more; stop it (its id is never reused)"
            ),
            _ => {}
        }
        member = now;
    }
}

/// Serves the PSP port in whichever role the node has, until `stopping`.
#[allow(clippy::too_many_arguments)]
async fn serve_roles(
    config: &Config,
    node: &cluster::node::Node,
    leadership: &Leadership,
    grpc: &std::net::TcpListener,
    tls: &TlsFiles,
    (health_reporter, health): (
        &tonic_health::server::HealthReporter,
        &tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    stopping: &watch::Receiver<bool>,
    opened: &watch::Sender<Option<Arc<Switch>>>,
) -> anyhow::Result<()> {
    let id = leadership.id();
    let stop = || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    let leads = move |metrics: &openraft::RaftMetrics<cluster::TypeConfig>| {
        metrics.state == ServerState::Leader && metrics.current_leader == Some(id)
    };
    while !*stopping.borrow() {
        if leadership.is_leader() {
            // Apply everything committed before this term, confirmed by a quorum, before the
            // switch reads its state: its state is then the cluster's.
            let caught_up = tokio::select! {
                caught_up = leadership.caught_up() => caught_up,
                () = stop() => break,
            };
            if !caught_up {
                // Lost the lead meanwhile (or no quorum yet): look again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            let ledger = Arc::clone(&node.ledger);
            let (for_open, for_switch) = (config.clone(), leadership.clone());
            let switch = tokio::task::spawn_blocking(move || Switch::open(for_open, ledger, for_switch))
                .await?
                .map_err(|error| anyhow::anyhow!("opening the switch: {error}"))?;
            tracing::info!(node = id, term = leadership.status().term, "leading: serving the switch");
            opened.send_replace(Some(Arc::clone(&switch)));
            let lost = async {
                let _ = node.raft.wait(None).metrics(|metrics| !leads(metrics), "the lead lost").await;
            };
            let served = crate::server::serve_leader(
                Arc::clone(&switch),
                grpc,
                tls,
                health_reporter.clone(),
                health.clone(),
                async {
                    tokio::select! {
                        () = lost => tracing::warn!(node = id, "lost the lead: the switch stops serving here"),
                        () = stop() => {}
                    }
                },
            )
            .await;
            // A switch that failed to serve stays published: its state says why.
            served?;
            opened.send_replace(None);
        } else {
            let became_leader = async {
                let _ = node.raft.wait(None).metrics(|metrics| leads(metrics), "the lead").await;
            };
            serve_follower(leadership, grpc, tls, async {
                tokio::select! {
                    () = became_leader => {}
                    () = stop() => {}
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// The PSP port of a node that does not lead: every call is answered UNAVAILABLE, NOT_LEADER
/// with the leader's PSP address in `switch-leader` (or NO_LEADER), read at the moment of the
/// call. Nothing is decoded, nothing recorded.
async fn serve_follower(
    leadership: &Leadership,
    grpc: &std::net::TcpListener,
    tls: &TlsFiles,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let refuse = Refuse { leadership: leadership.clone() };
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(refuse));
    psp_transport(tls)?.add_routes(routes).serve_with_incoming_shutdown(accepted(psp_listener(grpc)?), until).await?;
    Ok(())
}

/// Answers any request with the follower's refusal (a gRPC trailers-only response).
#[derive(Clone)]
struct Refuse {
    leadership: Leadership,
}

impl<B> tower_service::Service<http::Request<B>> for Refuse {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::from(self.leadership.refusal()).into_http()))
    }
}

/// The node's options from the switch's configuration: its directory under `data_dir`, the
/// ledger's settings, Raft's, and mutual TLS on the peer port with the node's certificate.
fn node_options(config: &Config, tls: &TlsFiles) -> anyhow::Result<cluster::node::NodeOptions> {
    let cluster = &config.cluster;
    let raft = cluster::node::raft_config(cluster.snapshot_every_entries).context("Raft's configuration")?;
    let mut options = cluster::node::NodeOptions::new(cluster.node_id, &config.data_dir.join("node"), raft);
    options.ledger = config.ledger_config();
    options.peer_source_address = cluster.peer_source_address;
    let (certificate, key) = match (&cluster.node_certificate, &cluster.node_key) {
        (Some(certificate), Some(key)) => (certificate.clone(), key.clone()),
        _ => {
            let development = DevelopmentCa::new(config.data_dir.join("certs"));
            development.ensure()?;
            let pair = development.node(cluster.node_id);
            if !pair.certificate.exists() || !pair.key.exists() {
                development.issue_node(cluster.node_id, &DEVELOPMENT_NODE_HOSTS)?;
            }
            (pair.certificate, pair.key)
        }
    };
    let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let identity = Identity::from_pem(read(&certificate)?, read(&key)?);
    let ca = Certificate::from_pem(read(&tls.ca_certificate)?);
    let server = ServerTlsConfig::new().identity(identity.clone()).client_ca_root(ca.clone());
    let client =
        ClientTlsConfig::new().domain_name(cluster.peer_server_name.clone()).ca_certificate(ca).identity(identity);
    options.tls = Some((server, client));
    Ok(options)
}
