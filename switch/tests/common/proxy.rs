//! The network between a cluster's nodes, as a test controls it: a TCP proxy in front of each
//! node's peer port (the members advertise the proxies' addresses, so all node-to-node traffic
//! goes through them). Each node's connections to its peers leave from an address of its own
//! (`cluster.peer_source_address`, a distinct 127.0.0.x: all of 127.0.0.0/8 is loopback on
//! Linux), so the proxy in front of node B knows which node dialled it, and the link A→B (the
//! connections A opens to B: A's requests and B's answers on them) is set on its own:
//!
//! - `Pass`: bytes flow both ways;
//! - `Cut`: open connections are closed, new ones closed as soon as accepted (a peer that
//!   refuses connections);
//! - `Freeze`: open connections stay open but nothing moves either way, the bytes in flight
//!   held until the link passes again (a network that drops packets: TCP resends them once it
//!   heals, unless an end gave up on the connection first); new ones closed as soon as accepted.
//!
//! Once `set` returns, nothing more is forwarded on a link that does not pass. A connection from
//! an address that is no node's is refused and counted: a node that ignored its source address.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read from one side before they are written to the other.
const BUFFER_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Pass,
    Cut,
    Freeze,
}

/// One proxy per node; `proxies[b]` stands in front of node b.
pub struct PeerProxies {
    proxies: Vec<Proxy>,
}

struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accepting: tokio::task::JoinHandle<()>,
}

/// A proxy's state, shared with its accepting task and its connections.
struct Shared {
    /// Where the node's peer port really is.
    target: SocketAddr,
    /// Node by node, the address its connections leave from.
    sources: Vec<IpAddr>,
    /// Node by node (the dialling one), the link to this proxy's node.
    links: watch::Sender<Vec<Link>>,
    connections: Mutex<Vec<Connection>>,
    unknown_sources: AtomicUsize,
}

/// One proxied connection: the node that dialled, the task forwarding its bytes, and the gate
/// each write passes through (taken by `set` to wait out a write in progress).
struct Connection {
    source: usize,
    task: tokio::task::JoinHandle<()>,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl PeerProxies {
    /// A proxy for each of `targets` (the nodes' peer ports), on a free loopback port, every
    /// link passing. `sources[n]`: the address node n's connections leave from.
    pub async fn start(targets: &[SocketAddr], sources: &[IpAddr]) -> PeerProxies {
        assert_eq!(targets.len(), sources.len(), "a source address per node");
        let mut proxies = Vec::new();
        for target in targets {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy");
            let shared = Arc::new(Shared {
                target: *target,
                sources: sources.to_vec(),
                links: watch::Sender::new(vec![Link::Pass; sources.len()]),
                connections: Mutex::new(Vec::new()),
                unknown_sources: AtomicUsize::new(0),
            });
            let address = listener.local_addr().expect("address");
            let accepting = tokio::spawn(accept(listener, Arc::clone(&shared)));
            proxies.push(Proxy { address, shared, accepting });
        }
        PeerProxies { proxies }
    }

    /// Node by node, the address its peers dial (its proxy).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|proxy| proxy.address).collect()
    }

    /// Sets the link from node `from` to node `to` (the connections `from` opens to `to`).
    pub async fn set(&self, from: usize, to: usize, link: Link) {
        let shared = &self.proxies[to].shared;
        shared.links.send_modify(|links| links[from] = link);
        let connections: Vec<Connection> = {
            let mut connections = shared.connections.lock().expect("connections");
            connections.retain(|connection| !connection.task.is_finished());
            let (taken, kept) =
                connections.drain(..).partition(|connection| connection.source == from && link == Link::Cut);
            *connections = kept;
            taken
        };
        // Cut: the forwarding tasks end, and their sockets close with them.
        for connection in connections {
            connection.task.abort();
            let _ = connection.task.await;
        }
        if link == Link::Freeze {
            // A write that began before the freeze ends; every later one waits for the link.
            let gates: Vec<_> = {
                let connections = shared.connections.lock().expect("connections");
                connections
                    .iter()
                    .filter(|connection| connection.source == from)
                    .map(|connection| Arc::clone(&connection.gate))
                    .collect()
            };
            for gate in gates {
                drop(gate.lock().await);
            }
        }
    }

    /// Sets every link between `node` and each other node, both ways: `node` is partitioned
    /// from the others (unless `link` is `Pass`).
    pub async fn isolate(&self, node: usize, link: Link) {
        for other in (0..self.proxies.len()).filter(|other| *other != node) {
            self.set(node, other, link).await;
            self.set(other, node, link).await;
        }
    }

    /// Every link passes again.
    pub async fn heal(&self) {
        for from in 0..self.proxies.len() {
            for to in (0..self.proxies.len()).filter(|to| *to != from) {
                self.set(from, to, Link::Pass).await;
            }
        }
    }

    /// Connections refused because they came from no node's source address.
    pub fn unknown_sources(&self) -> usize {
        self.proxies.iter().map(|proxy| proxy.shared.unknown_sources.load(Ordering::Relaxed)).sum()
    }
}

impl Drop for PeerProxies {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.accepting.abort();
            for connection in proxy.shared.connections.lock().expect("connections").iter() {
                connection.task.abort();
            }
        }
    }
}

/// Accepts connections for one node until aborted: each from a node whose link passes is
/// forwarded to the node's peer port; the others are closed at once.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, from)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let Some(source) = shared.sources.iter().position(|address| *address == from.ip()) else {
            shared.unknown_sources.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if shared.links.borrow()[source] != Link::Pass {
            continue;
        }
        let Ok(outbound) = TcpStream::connect(shared.target).await else { continue };
        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
        // Looked at again under the lock `set` takes after changing a link: either `set` finds
        // this connection, or this finds the link `set` gave.
        let mut connections = shared.connections.lock().expect("connections");
        if shared.links.borrow()[source] != Link::Pass {
            continue;
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let (links, forwarding_gate) = (shared.links.subscribe(), Arc::clone(&gate));
        let task = tokio::spawn(async move {
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            let request = forward(inbound_read, outbound_write, links.clone(), source, Arc::clone(&forwarding_gate));
            let answer = forward(outbound_read, inbound_write, links, source, forwarding_gate);
            tokio::join!(request, answer);
        });
        connections.push(Connection { source, task, gate });
    }
}

/// Copies one direction of a connection while its link passes; holds what it read while the
/// link is frozen; stops when it is cut or either side closes.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut links: watch::Receiver<Vec<Link>>,
    source: usize,
    gate: Arc<tokio::sync::Mutex<()>>,
) {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        loop {
            let gate = gate.lock().await;
            let link = links.borrow_and_update()[source];
            match link {
                Link::Pass => {
                    if to.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                    break;
                }
                Link::Cut => return,
                Link::Freeze => drop(gate),
            }
            if links.changed().await.is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}
