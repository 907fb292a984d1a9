//! Logging setup, the controller's Prometheus metrics, and its `/metrics`,
//! `/healthz` and `/readyz` endpoints. Nothing here touches a store or the API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::api::Store;

/// Logs to stderr, filtered by `RUST_LOG` (default `default_filter`). Credentials never
/// reach a log line: they travel as [`crate::Secret`], whose formatting hides the value.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: String,
}

impl StoreLabel {
    pub fn of(store: Store) -> Self {
        Self {
            store: store.name().to_owned(),
        }
    }
}

/// The controller's metrics, per store.
pub struct Metrics {
    registry: Registry,
    /// Items migrated (keys, points, nodes, configs).
    pub items: Family<StoreLabel, Counter>,
    /// Batches completed.
    pub batches: Family<StoreLabel, Counter>,
    /// Batches retried after a transient error.
    pub retries: Family<StoreLabel, Counter>,
    /// Phases that failed.
    pub failures: Family<StoreLabel, Counter>,
    /// Seconds from a phase's start to its success.
    pub phase_seconds: Family<StoreLabel, Histogram>,
    /// 1 while this replica holds the Lease and runs migrations, 0 while it stands by.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tenant_migrator");
        let items = Family::<StoreLabel, Counter>::default();
        let batches = Family::<StoreLabel, Counter>::default();
        let retries = Family::<StoreLabel, Counter>::default();
        let failures = Family::<StoreLabel, Counter>::default();
        let phase_seconds =
            Family::<StoreLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 14)));
        let leader = Gauge::default();
        registry.register("items", "Items migrated", items.clone());
        registry.register("batches", "Batches completed", batches.clone());
        registry.register("retries", "Batches retried after a transient error", retries.clone());
        registry.register("phase_failures", "Phases that failed", failures.clone());
        registry.register(
            "phase_duration_seconds",
            "Duration of successful phases",
            phase_seconds.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and runs migrations",
            leader.clone(),
        );
        Self {
            registry,
            items,
            batches,
            retries,
            failures,
            phase_seconds,
            leader,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics(State(e): State<Endpoints>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        e.metrics.encode(),
    )
}

async fn ready(State(e): State<Endpoints>) -> StatusCode {
    if e.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (`ready` is set).
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    ready_flag: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .with_state(Endpoints {
            metrics,
            ready: ready_flag,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
