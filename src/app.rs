//! The shared state every handler sees, the assembled router, and the `serve` lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::{Secret, Settings};
use crate::error::AppError;
use crate::letta::LettaClient;
use crate::matrix::MatrixClient;
use crate::namespace::Namespace;
use crate::relay::Relay;
use crate::store::Store;
use crate::sync::{Reconciler, SharedSyncState};
use crate::{appservice, ops, registration, server, telemetry};

/// How long processed transaction ids (homeservers retry only their latest one) and finished inbox
/// events (a group room's context reaches back to the agent's last turn) are kept.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub hs_token: Arc<Secret>,
    pub namespace: Arc<Namespace>,
    pub matrix: MatrixClient,
    pub metrics: PrometheusHandle,
    /// Woken whenever the inbox gains rows, so the relay need not poll hard.
    pub inbox_signal: Arc<Notify>,
    /// Woken when an operator asks for a history import.
    pub history_signal: Arc<Notify>,
    /// Woken when an operator asks for a sync pass now.
    pub sync_signal: Arc<Notify>,
    pub letta: LettaClient,
    pub sync_state: SharedSyncState,
}

impl AppState {
    pub fn new(settings: Settings, store: Store, registration: &ruma::api::appservice::Registration) -> Self {
        let matrix = MatrixClient::new(&settings.homeserver_url, Secret::new(registration.as_token.clone()));
        let letta = LettaClient::from_settings(&settings);
        Self {
            namespace: Arc::new(Namespace::new(&settings)),
            settings: Arc::new(settings),
            store,
            hs_token: Arc::new(Secret::new(registration.hs_token.clone())),
            matrix,
            metrics: telemetry::metrics_handle(),
            inbox_signal: Arc::new(Notify::new()),
            history_signal: Arc::new(Notify::new()),
            sync_signal: Arc::new(Notify::new()),
            letta,
            sync_state: SharedSyncState::default(),
        }
    }
}

/// The appservice routes, plus the ops routes unless they have their own listener.
pub fn router(state: AppState, with_ops: bool) -> Router {
    let mut router = appservice::router(state.clone());
    if with_ops {
        router = router.merge(ops::router());
    }
    router
        .fallback(|| async { AppError::Unrecognized })
        // The transaction handler enforces the configured limit itself, to answer in Matrix JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(telemetry::record_http_metrics))
        .with_state(state)
}

/// A started service: listening, with its background tasks running.
pub struct Running {
    pub address: SocketAddr,
    pub ops_address: Option<SocketAddr>,
    state: AppState,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    shutdown: ShutdownSignal,
    relay_owner: String,
}

impl Running {
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets in-flight requests finish, then closes the database pool.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        // Workers stop between idempotent steps; whatever they were doing the next start redoes.
        for worker in &self.workers {
            worker.abort();
        }
        for server in self.servers {
            server.await.context("server task panicked")?.context("server failed")?;
        }
        // Rooms this process was answering are free at once for the next start or another replica.
        if let Err(error) = self.state.store.release_leases(&self.relay_owner).await {
            tracing::warn!(%error, "cannot release relay leases; they expire on their own");
        }
        self.state.store.close().await;
        Ok(())
    }
}

/// Loads the registration, opens and migrates the database, binds the listeners and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let registration = registration::load_for(&settings)?;
    let store = Store::connect(&settings.database_url, settings.raw.database_max_connections)
        .await
        .with_context(|| format!("cannot open the database ({})", redact_url(&settings.database_url)))?;
    store.migrate().await.context("cannot apply database migrations")?;
    let state = AppState::new(settings, store, &registration);
    telemetry::spawn_metrics_upkeep(state.metrics.clone());
    spawn_pruning(state.store.clone());

    let shutdown = ShutdownSignal::new();
    let bind = state.settings.raw.bind;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener.local_addr()?;
    let ops_bind = state.settings.raw.ops_bind;
    // The tools, as MCP and as the HTTP API of our sandbox tools, share an address.
    let mcp = crate::mcp::router(&state).map(|mcp| mcp.merge(crate::tools::http::router(&state).unwrap_or_default()));
    let mcp_bind = state.settings.raw.mcp_bind;
    let mut main_router = router(state.clone(), ops_bind.is_none());
    if let (Some(mcp), None) = (&mcp, mcp_bind) {
        main_router = main_router.merge(mcp.clone());
    }
    let limits = server::Limits::of(&state.settings.raw);
    let mut servers = vec![spawn_server(listener, main_router, limits, shutdown.clone())];
    let mcp_address = match (mcp, mcp_bind) {
        (Some(mcp), Some(mcp_bind)) => {
            let listener = TcpListener::bind(mcp_bind)
                .await
                .with_context(|| format!("cannot listen on {mcp_bind} (mcp_bind)"))?;
            let address = listener.local_addr()?;
            servers.push(spawn_server(listener, mcp, limits, shutdown.clone()));
            Some(address)
        }
        _ => None,
    };
    let ops_address = match ops_bind {
        Some(ops_bind) => {
            let listener = TcpListener::bind(ops_bind)
                .await
                .with_context(|| format!("cannot listen on {ops_bind}"))?;
            let ops_address = listener.local_addr()?;
            let ops = ops::router()
                .layer(axum::middleware::from_fn(telemetry::record_http_metrics))
                .with_state(state.clone());
            servers.push(spawn_server(listener, ops, limits, shutdown.clone()));
            Some(ops_address)
        }
        None => None,
    };
    // Only once we listen: the first pass makes the homeserver push transactions to us.
    let identity = crate::relay::ReplicaIdentity::establish(&state.settings, &state.store).await;
    let relay = Relay::new(&state, identity);
    let relay_owner = relay.owner().to_owned();
    let mut workers = vec![Reconciler::new(&state).spawn(state.sync_signal.clone())];
    workers.extend(relay.spawn(state.inbox_signal.clone()));
    workers.push(crate::history::Importer::new(&state).spawn(state.history_signal.clone()));
    tracing::info!(%address, ?ops_address, ?mcp_address, mcp = state.settings.raw.mcp_secret.is_some(), homeserver = %state.settings.homeserver_url, database = state.store.backend().name(), "letta-matrix is ready");
    match (&state.settings.raw.mcp_secret, &state.settings.tools_url) {
        (Some(_), Some(url)) => {
            tracing::info!(%url, mode = ?state.settings.raw.tools_mode, "agents are given the Matrix tools by sync")
        }
        (Some(_), None) if state.settings.raw.tools_mode != crate::config::ToolsMode::Off => tracing::info!(
            "the tools are served, but agents are not given them: set tools_url to where Letta reaches this service"
        ),
        _ => {}
    }
    Ok(Running {
        address,
        ops_address,
        state,
        servers,
        workers,
        shutdown,
        relay_owner,
    })
}

fn spawn_server(
    listener: TcpListener,
    router: Router,
    limits: server::Limits,
    shutdown: ShutdownSignal,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(server::serve(listener, router, limits, shutdown.wait()))
}

fn spawn_pruning(store: Store) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(3600));
        let retention_ms = RETENTION.as_millis() as i64;
        loop {
            interval.tick().await;
            match store.prune_transactions(retention_ms).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "forgot old transaction ids"),
                Err(error) => tracing::warn!(%error, "cannot prune old transaction ids"),
            }
            match store.prune_finished_inbox(retention_ms).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "forgot old finished inbox events"),
                Err(error) => tracing::warn!(%error, "cannot prune old inbox events"),
            }
        }
    });
}

/// `serve`: run until SIGTERM or SIGINT, then shut down gracefully.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(settings).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM can be handled");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Database URLs may carry a password; logs and errors show everything but it.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A one-shot broadcast: every server waits on the same trigger.
#[derive(Clone)]
struct ShutdownSignal {
    sender: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ShutdownSignal {
    fn new() -> Self {
        Self {
            sender: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn trigger(&self) {
        self.sender.send_replace(true);
    }

    async fn wait(self) {
        let mut receiver = self.sender.subscribe();
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }
}
