//! The operator HTTP port: Prometheus metrics, the live dashboard, and a plain health check.
//!
//! - `GET /metrics`: the Prometheus exposition (`crate::metrics::exposition`).
//! - `GET /`: the dashboard, one self-contained page (`page.html`: no external resources, since
//!   an operations network is often closed).
//! - `GET /dashboard/stream`: server-sent events, one `snapshot` a second (`snapshot`), rates
//!   computed against the connection's previous snapshot.
//! - `GET /healthz`: 200 `ok` while the ledger takes work, 503 once a storage failure stopped it
//!   or the switch read a record it cannot decode (`crate::records`). A follower answers 200
//!   naming the leader: it is alive and replicating.
//! - `GET /cluster`: this node's place in the cluster as JSON (`leadership::ClusterStatus`), what
//!   `switch cluster status` reads from every node.
//!
//! The port lives as long as the node. On a follower (which serves no switch: `crate::node`)
//! `/metrics` carries the cluster's families only and the dashboard stream says where the leader
//! is.
//!
//! Plain HTTP on purpose: scrapers and browsers on the operations network expect it, and the
//! port carries no control (nothing here changes state). Bind it to a private address.
//! Reading the switch's levels touches RocksDB, so it runs on the blocking pool, and the number
//! of open dashboard streams is bounded.

mod snapshot;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::core::Switch;
use crate::leadership::Leadership;
use crate::metrics::reading::Reading;

const PAGE: &str = include_str!("page.html");
/// Most dashboards open at once; each costs one reading of the switch a second.
const STREAMS_MAX: usize = 64;
/// How often a dashboard gets a snapshot.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Console {
    /// The switch while this node leads.
    switch: tokio::sync::watch::Receiver<Option<Arc<Switch>>>,
    leadership: Leadership,
    streams: Arc<tokio::sync::Semaphore>,
}

impl Console {
    fn switch(&self) -> Option<Arc<Switch>> {
        self.switch.borrow().clone()
    }
}

/// Serves the operator port on `listener` until `shutdown` resolves.
pub async fn serve(
    switch: tokio::sync::watch::Receiver<Option<Arc<Switch>>>,
    leadership: Leadership,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let console = Console { switch, leadership, streams: Arc::new(tokio::sync::Semaphore::new(STREAMS_MAX)) };
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/cluster", get(cluster))
        .route("/dashboard/stream", get(stream))
        .with_state(console);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn cluster(State(console): State<Console>) -> Response {
    let status = console.leadership.status();
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&status).unwrap_or_default()).into_response()
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// Reads the switch's levels off the async threads.
async fn read(switch: &Arc<Switch>) -> Option<Reading> {
    let switch = Arc::clone(switch);
    tokio::task::spawn_blocking(move || Reading::take(&switch)).await.ok()
}

async fn metrics(State(console): State<Console>) -> Response {
    let mut body =
        crate::metrics::exposition::render_cluster(&console.leadership.status(), console.leadership.leader_changes());
    if let Some(switch) = console.switch() {
        let Some(reading) = read(&switch).await else {
            return (StatusCode::SERVICE_UNAVAILABLE, "reading the switch failed\n").into_response();
        };
        body.push_str(&crate::metrics::exposition::render(&switch.metrics, &reading));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn health(State(console): State<Console>) -> Response {
    let Some(switch) = console.switch() else {
        let (leader, _) = console.leadership.leader();
        let leader = leader.map_or_else(|| "none yet".to_string(), |leader| format!("node {leader}"));
        return (StatusCode::OK, format!("ok: following (leader: {leader})\n")).into_response();
    };
    if switch.ledger.failed() {
        (StatusCode::SERVICE_UNAVAILABLE, "ledger failed\n").into_response()
    } else if *switch.failed.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "switch failed: a stored record does not decode\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn stream(State(console): State<Console>) -> Response {
    let Ok(permit) = Arc::clone(&console.streams).try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many dashboards open\n").into_response();
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(2);
    let Some(switch) = console.switch() else {
        // A follower has no switch to show: one event naming the leader, and the stream ends.
        let json = serde_json::json!({ "cluster": console.leadership.status() });
        let _ = sender.try_send(Ok(Event::default().event("follower").data(json.to_string())));
        drop(permit);
        return Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).into_response();
    };
    let mut shutting_down = switch.shutting_down.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        let mut previous: Option<snapshot::Sample> = None;
        let mut ticks = tokio::time::interval(SNAPSHOT_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutting_down.wait_for(|stopping| *stopping) => break,
            }
            let Some(reading) = read(&switch).await else { break };
            let sample = snapshot::Sample::take(&switch.metrics, reading);
            let json = snapshot::json(&switch, &sample, previous.as_ref());
            let event = Event::default().event("snapshot").data(json.to_string());
            if sender.send(Ok(event)).await.is_err() {
                break; // the browser went away
            }
            previous = Some(sample);
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).keep_alive(KeepAlive::default()).into_response()
}
