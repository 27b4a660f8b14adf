//! The application state every handler, middleware and background task is handed: the store in
//! force, the cache, admission, the event bus and relay, and the settings. Below every handler; it
//! knows nothing of routes or of the process lifecycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::orders::idempotency::InFlight;
use crate::store::{Slot, Store};
use crate::{events, inventory, telemetry};

/// Shared by every request handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// Swapped whole when the storage configuration is reloaded (SIGHUP); read it per request.
    store: Slot,
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

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The state over an opened `store`: every in-memory part made from `config`.
    pub fn new(config: Config, store: Arc<Store>, clock: Clock, admin_token_hash: [u8; 32]) -> anyhow::Result<AppState> {
        let relay_status = Arc::new(events::relay::RelayStatus::default());
        let relay = match config.events.relay {
            true => Some(Arc::new(events::relay::Relay::new(&config.events, &config.breakers, relay_status.clone())?)),
            false => None,
        };
        // First: the recorder must be in place before the parts below take their metric handles.
        let metrics = telemetry::metrics_handle();
        Ok(AppState(Arc::new(Inner {
            store_generation: watch::channel(0).0,
            bus: events::bus::Bus::new(4096),
            relay_status,
            relay,
            cache: Arc::new(crate::cache::Cache::new(&config.cache)?),
            in_flight: InFlight::default(),
            admission: Arc::new(crate::admission::Admission::new(&config.admission)),
            sold_out: Arc::new(inventory::sold_out::SoldOut::new(Duration::from_millis(config.orders.sold_out_ttl_ms))),
            clock,
            admin_token_hash,
            metrics,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            store_config: Mutex::new(StoreSettings::of(&config)),
            store: Slot::new(store),
            config,
        })))
    }

    /// Changes each time the store is swapped, so background tasks reattach to the new one.
    pub fn store_changes(&self) -> watch::Receiver<u64> {
        self.store_generation.subscribe()
    }

    /// This instance's relay, when `events.relay` is on.
    pub fn relay(&self) -> Option<&Arc<events::relay::Relay>> {
        self.relay.as_ref()
    }

    /// The store in force now. A request keeps the one it started with until it finishes.
    pub fn store(&self) -> Arc<Store> {
        self.store.get()
    }

    /// The store in force, for a background task that outlives one store.
    pub fn store_slot(&self) -> Slot {
        self.store.clone()
    }

    pub fn store_slot_ref(&self) -> &Slot {
        &self.store
    }

    /// Re-opens the store if `config` describes another storage topology (a new primary URL,
    /// other shards), swaps it in, and closes the old one once the requests using it are done.
    /// On failure the current store stays. Returns whether a swap happened.
    pub async fn reload_store(&self, config: &Config) -> anyhow::Result<bool> {
        let current = self.store_config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if current == StoreSettings::of(config) {
            return Ok(false);
        }
        let fresh = crate::store::Store::open(config).await?;
        let old = self.store.swap(fresh);
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
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}
