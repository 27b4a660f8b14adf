//! Assembles the application: state, routes (declared with their OpenAPI spec), middleware,
//! background tasks, and a server that shuts down gracefully. `Application::build` binds first
//! (port 0 works), so tests start the real thing in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::clock::Clock;
use crate::config::Config;
use crate::orders::idempotency::InFlight;
use crate::shops::hash_secret;
use crate::store::Store;
use crate::{auth, catalog, collections, events, health, ingest, inventory, orders, secrets, seed, shops, telemetry};

/// Shared by every request handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// Swapped whole when the storage configuration is reloaded (SIGHUP); read it per request.
    store: RwLock<Arc<dyn Store>>,
    pub cache: Arc<crate::cache::Cache>,
    pub in_flight: InFlight,
    /// SKUs known to have nothing available, refused without a store transaction.
    pub sold_out: Arc<inventory::sold_out::SoldOut>,
    pub admission: Arc<crate::admission::Admission>,
    pub clock: Clock,
    pub admin_token_hash: [u8; 32],
    pub metrics: PrometheusHandle,
    pub started: Instant,
    ready: AtomicBool,
    store_config: Mutex<StoreSettings>,
    /// Bumped when the store is swapped, so background tasks reattach to the new one.
    store_generation: watch::Sender<u64>,
    /// Every committed event of every shard, for this instance's own subscribers.
    pub bus: events::bus::Bus,
    pub relay_status: Arc<events::relay::RelayStatus>,
    /// This instance's relay, when `events.relay` is on.
    relay: Option<Arc<events::relay::Relay>>,
}

/// The part of the configuration that a reload may change: where the data lives.
#[derive(Clone, PartialEq)]
struct StoreSettings(String);

impl StoreSettings {
    fn of(config: &Config) -> StoreSettings {
        let shown = (&config.store, &config.postgres, &config.sqlite.shards, &config.data_dir, &config.routing.vnodes);
        StoreSettings(format!("{shown:?}"))
    }
}

/// Where a running instance re-reads its configuration from on SIGHUP.
pub type ConfigSource = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The store in force now. A request keeps the one it started with until it finishes.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-opens the store if `config` describes another storage topology (a new primary URL,
    /// other shards), swaps it in, and closes the old one once the requests using it are done.
    /// On failure the current store stays. Returns whether a swap happened.
    pub async fn reload_store(&self, config: &Config) -> anyhow::Result<bool> {
        let current = self.store_config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if current == StoreSettings::of(config) {
            return Ok(false);
        }
        let fresh = crate::store::open(config).await?;
        let old = std::mem::replace(&mut *self.store.write().unwrap_or_else(|p| p.into_inner()), fresh);
        *self.store_config.lock().unwrap_or_else(|p| p.into_inner()) = StoreSettings::of(config);
        self.store_generation.send_modify(|g| *g += 1);
        tracing::info!("storage configuration reloaded");
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        tokio::spawn(async move {
            let t0 = Instant::now();
            while Arc::strong_count(&old) > 1 && t0.elapsed() < grace {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = tokio::task::spawn_blocking(move || old.close()).await;
        });
        Ok(true)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vitrina", description = "A shop backend that survives sale day: catalog, stock and orders per shop, plus the seed (pymongo-api) routes."),
    modifiers(&Credentials),
    tags(
        (name = "seed", description = "The original pymongo-api contract, unchanged"),
        (name = "shops"), (name = "catalog"), (name = "inventory"), (name = "orders"), (name = "events"), (name = "ingest"), (name = "operations"))
)]
struct ApiDoc;

/// The credentials operations name in their `security`: `auth::gate` enforces these names.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what.to_owned())).build())
        };
        components.add_security_scheme(
            auth::ADMIN_SCHEME,
            bearer("The operator's admin token (`admin_token` in the configuration): creates and moves shops."),
        );
        components.add_security_scheme(
            auth::SHOP_KEY_SCHEME,
            bearer("A shop's API key, shown once when the shop is created: acts on that shop only."),
        );
    }
}

/// Every route with its spec. Split out so the spec can be produced without a server.
fn routes(config: &Config) -> OpenApiRouter<AppState> {
    let bounded = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(collections::routes::router())
        .merge(shops::routes::router())
        .merge(catalog::routes::router())
        .merge(inventory::routes::router())
        .merge(orders::routes::router())
        .merge(events::routes::router())
        .merge(events::webhooks::router())
        .merge(health::router())
        .merge(telemetry::router())
        .layer(DefaultBodyLimit::max(config.limits.json_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(config.limits.body_read_timeout_secs.max(1)),
            crate::extract::body_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(config.limits.request_timeout_secs.max(1)),
            telemetry::deadline,
        ));
    // Feeds stream large bodies for as long as they take; they bound themselves.
    bounded.merge(ingest::router())
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(&Config::default()).into_openapi()
}

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
        let admin_token = secrets::admin_token(&config)?;
        let store = crate::store::open(&config).await?;
        if config.seed_on_start {
            seed::seed_if_empty(store.as_ref(), &config, &clock).await?;
        }
        let relay_status = Arc::new(events::relay::RelayStatus::default());
        let relay = match config.events.relay {
            true => Some(Arc::new(events::relay::Relay::new(&config.events, &config.breakers, relay_status.clone())?)),
            false => None,
        };
        let state = AppState(Arc::new(Inner {
            store_generation: watch::channel(0).0,
            bus: events::bus::Bus::new(4096),
            relay_status,
            relay,
            cache: Arc::new(crate::cache::Cache::new(&config.cache)?),
            in_flight: InFlight::default(),
            admission: Arc::new(crate::admission::Admission::new(&config.admission)),
            sold_out: Arc::new(inventory::sold_out::SoldOut::new(Duration::from_millis(config.orders.sold_out_ttl_ms))),
            clock,
            admin_token_hash: hash_secret(&admin_token),
            metrics: telemetry::metrics_handle(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            store_config: Mutex::new(StoreSettings::of(&config)),
            store: RwLock::new(store),
            config: config.clone(),
        }));
        let listener = TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let router = Self::router(&config, state.clone())?;
        Ok(Application { listener, router, state, reload: None })
    }

    fn router(config: &Config, state: AppState) -> anyhow::Result<Router> {
        let (router, spec) = routes(config).split_for_parts();
        let guards = Arc::new(auth::Guards::from_spec(&spec)?);
        let request_id = HeaderName::from_static("x-request-id");
        Ok(router
            .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
            .fallback(telemetry::not_found)
            .layer(axum::middleware::from_fn_with_state(state.clone(), crate::admission::middleware))
            // Outside admission: a caller without valid credentials takes no place in its gates.
            .layer(axum::middleware::from_fn_with_state((state.clone(), guards), auth::gate))
            .layer(axum::middleware::from_fn(crate::consistency::track))
            .layer(axum::middleware::from_fn(telemetry::track))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(axum::middleware::from_fn(telemetry::trace::request))
            .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
            .with_state(state))
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
        let sweeper = tokio::spawn(orders::sweeper::run(state.clone(), stop_rx.clone()));
        let cache = tokio::spawn(crate::cache::invalidation::run(state.cache.clone(), state.bus.subscribe(), stop_rx.clone()));
        let sold_out = tokio::spawn(inventory::sold_out::run(state.sold_out.clone(), state.bus.subscribe(), stop_rx.clone()));
        let events = tokio::spawn(run_events(state.clone(), stop_rx));
        state.set_ready(true);
        tracing::info!(addr = %listener.local_addr()?, "vitrina is ready");

        let drain = Duration::from_secs(state.config.shutdown_drain_secs);
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let (closing_tx, mut closing_rx) = watch::channel(false);
        let signal_state = state.clone();
        let graceful = async move {
            shutdown.await;
            signal_state.set_ready(false);
            tracing::info!("shutdown requested: draining");
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
        if let Some(r) = reloader {
            r.abort();
        }
        let store = state.store();
        tokio::task::spawn_blocking(move || store.close()).await?;
        tracing::info!("vitrina stopped");
        Ok(())
    }
}

/// The bus tails, the relay (when on) and its status, attached to the store in force and
/// restarted on the new one when the store is swapped.
async fn run_events(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut generation = state.store_generation.subscribe();
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
        if let Some(relay) = &state.relay {
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
