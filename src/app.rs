//! The process lifecycle: `Application::build` opens the store, makes the state and binds the
//! listener first (port 0 works, so tests start the real thing in-process); `run_until_stopped`
//! starts the background tasks, serves, and on a signal drains, finishes what is in flight and
//! closes the store. SIGHUP re-reads the storage configuration.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::shops::hash_secret;
use crate::state::AppState;
use crate::{demo, events, inventory, orders, secrets};

/// Where a running instance re-reads its configuration from on SIGHUP.
pub type ConfigSource = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    reload: Option<ConfigSource>,
}

impl Application {
    /// Opens the store, migrates, seeds demo data when empty, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_clock(config, Clock::system()).await
    }

    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let admin_token = secrets::admin_token(config.admin_token.as_deref(), &config.data_dir)?;
        let store = crate::store::Store::open(&config).await?;
        if config.seed_on_start {
            demo::seed_if_empty(store.as_ref(), &config, &clock).await?;
        }
        let state = AppState::new(config.clone(), store, clock, hash_secret(&admin_token))?;
        let listener = TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let router = crate::api::router(&config, state.clone())?;
        Ok(Application { listener, router, state, reload: None })
    }

    /// Re-read the configuration from `source` on SIGHUP and apply a changed storage topology.
    pub fn reload_on_sighup(mut self, source: ConfigSource) -> Application {
        self.reload = Some(source);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves: readiness turns false, new connections stop after the
    /// drain delay, in-flight requests finish (bounded by the grace period), queued writes commit.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, router, state, reload } = self;
        let reloader = reload.map(|source| tokio::spawn(reload_on_hangup(state.clone(), source)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper =
            tokio::spawn(sweeper(&state).run(Duration::from_millis(state.config.orders.sweep_interval_ms), stop_rx.clone()));
        let cache = tokio::spawn(crate::cache::invalidation::run(state.cache.clone(), state.bus.subscribe(), stop_rx.clone()));
        let sold_out = tokio::spawn(inventory::sold_out::run(state.sold_out.clone(), state.bus.subscribe(), stop_rx.clone()));
        let events = tokio::spawn(run_events(state.clone(), stop_rx.clone()));
        state.set_ready(true);
        tracing::info!(addr = %listener.local_addr()?, "vitrina is ready");
        let registration = crate::discovery::Registration::new(&state.config.discovery)?;
        let registered = registration.clone().map(|r| tokio::spawn(r.keep(stop_rx)));

        let drain = Duration::from_secs(state.config.shutdown_drain_secs);
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let (closing_tx, mut closing_rx) = watch::channel(false);
        let signal_state = state.clone();
        let graceful = async move {
            shutdown.await;
            signal_state.set_ready(false);
            tracing::info!("shutdown requested: draining");
            // Out of the registry first: the gateway stops routing here before checks notice.
            if let Some(r) = &registration {
                r.withdraw().await;
            }
            tokio::time::sleep(drain).await;
            let _ = closing_tx.send(true);
        };
        let limits = crate::server::ConnectionLimits {
            header_read_timeout: Duration::from_secs(state.config.limits.header_read_timeout_secs.max(1)),
            per_client: state.config.limits.connections_per_client,
            unbounded: state.config.limits.unbounded_clients.clone(),
        };
        let server = tokio::spawn(crate::server::serve(listener, router, limits, graceful));
        // Bound the wait for in-flight requests once the listener has closed.
        let served = async {
            let _ = closing_rx.wait_for(|c| *c).await;
            tokio::time::sleep(grace).await;
        };
        let mut server = server;
        tokio::select! {
            r = &mut server => { r??; }
            _ = served => {
                tracing::warn!("grace period over; abandoning requests still in flight");
                server.abort();
            }
        }
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        let _ = events.await;
        let _ = cache.await;
        let _ = sold_out.await;
        if let Some(r) = registered {
            let _ = r.await;
        }
        if let Some(r) = reloader {
            r.abort();
        }
        let store = state.store();
        tokio::task::spawn_blocking(move || store.close()).await?;
        tracing::info!("vitrina stopped");
        Ok(())
    }
}

/// The expiry sweep over this instance's parts.
pub fn sweeper(state: &AppState) -> orders::sweeper::Sweeper {
    orders::sweeper::Sweeper { store: state.store_slot(), clock: state.clock.clone(), sold_out: state.sold_out.clone() }
}

/// The bus tails, the relay (when on) and its status, attached to the store in force and
/// restarted on the new one when the store is swapped.
async fn run_events(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut generation = state.store_changes();
    loop {
        // Whatever this instance cached came from the store it had before.
        state.cache.bump_local(crate::cache::redis::EVERYTHING, None);
        state.sold_out.clear_all();
        let outboxes = state.store().outboxes();
        let (inner_tx, inner_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let poll = Duration::from_millis(state.config.events.poll_ms);
        for outbox in &outboxes {
            tasks.spawn(state.bus.clone().tail(outbox.clone(), poll, inner_rx.clone()));
        }
        let status = state.relay_status.clone();
        tasks.spawn(events::relay::watch_status(outboxes.clone(), state.config.events.clone(), status, inner_rx.clone()));
        if let Some(relay) = state.relay() {
            tasks.spawn(relay.clone().run(outboxes, inner_rx));
        }
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = generation.changed() => false,
        };
        let _ = inner_tx.send(true);
        while tasks.join_next().await.is_some() {}
        if stopping {
            return;
        }
    }
}

#[cfg(unix)]
async fn reload_on_hangup(state: AppState, source: ConfigSource) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: re-reading the configuration");
        let result = match source() {
            Ok(config) => state.reload_store(&config).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {}
            Ok(false) => tracing::info!("storage configuration unchanged"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the current store"),
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_state: AppState, _source: ConfigSource) {}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
