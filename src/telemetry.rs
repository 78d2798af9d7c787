//! Logs (`tracing`, pretty or JSON) and the Prometheus recorder behind `/metrics`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Logs go to stderr so that commands like `registration` keep stdout for their output.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The process-wide recorder; installed once, however many servers a test process starts.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe_metrics();
            handle
        })
        .clone()
}

fn describe_metrics() {
    metrics::describe_counter!(
        "letta_matrix_transactions_received_total",
        "Transactions pushed by the homeserver"
    );
    metrics::describe_counter!(
        "letta_matrix_transactions_duplicate_total",
        "Transactions re-sent with an id already processed"
    );
    metrics::describe_counter!("letta_matrix_events_received_total", "Events in received transactions");
    metrics::describe_counter!("letta_matrix_events_stored_total", "Events stored in the inbox");
    metrics::describe_counter!(
        "letta_matrix_events_unparsable_total",
        "Events skipped because they were not valid room events"
    );
    metrics::describe_counter!(
        "letta_matrix_homeserver_requests_total",
        "Client-server API calls made to the homeserver"
    );
    metrics::describe_gauge!(
        "letta_matrix_agents_known",
        "Agents in Letta's list at the last sync pass"
    );
    metrics::describe_counter!("letta_matrix_rooms_created_total", "Agent rooms created");
    metrics::describe_counter!("letta_matrix_sync_errors_total", "Failed sync passes and agent steps");
    metrics::describe_histogram!(
        "letta_matrix_sync_pass_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one sync pass"
    );
    metrics::describe_histogram!(
        "letta_matrix_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route"
    );
    metrics::describe_gauge!(
        "letta_matrix_relay_pending_events",
        "Inbox events waiting for the relay (all replicas)"
    );
    metrics::describe_counter!(
        "letta_matrix_relay_turns_total",
        "Agent turns by outcome (answered, failed)"
    );
    metrics::describe_counter!(
        "letta_matrix_relay_recovered_total",
        "Turns of unknown fate whose answer was found in Letta by otid"
    );
    metrics::describe_histogram!(
        "letta_matrix_relay_turn_seconds",
        metrics::Unit::Seconds,
        "Time of a turn, Letta included"
    );
    metrics::describe_histogram!(
        "letta_matrix_relay_pickup_seconds",
        metrics::Unit::Seconds,
        "Transaction received to Letta asked (millisecond clock)"
    );
    metrics::describe_histogram!(
        "letta_matrix_relay_finish_seconds",
        metrics::Unit::Seconds,
        "Letta's last token to the final Matrix send"
    );
    metrics::describe_counter!(
        "letta_matrix_history_imported_total",
        "History messages imported into rooms"
    );
    metrics::describe_histogram!(
        "letta_matrix_history_import_seconds",
        metrics::Unit::Seconds,
        "Time of one agent's history import"
    );
}

/// Histograms are drained on render; without a scrape they would only grow.
pub fn spawn_metrics_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Times every request under its route template, never the raw path, to bound label cardinality.
pub async fn record_http_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "letta_matrix_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
