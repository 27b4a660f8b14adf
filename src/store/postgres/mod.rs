//! A PostgreSQL shard: a pooled primary (tokio-postgres + deadpool, prepared statements
//! cached per connection). Every business write is one transaction; concurrency control is
//! PostgreSQL's own (row locks, conditional updates, advisory locks), so any number of vitrina
//! instances can share the shard.

mod catalog;
mod collections;
mod groups;
mod held;
mod moves;
mod orders;
mod outbox;
mod partitions;
mod relay;
mod replicas;
mod schema;
mod shops;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{NodeReport, Shard, ShardReport, StoreError, StoreReport, StoreResult};
use crate::config::PostgresConfig;
use crate::shops::ShopId;
use crate::store::outbox::Outbox;

pub struct PgStore {
    name: String,
    /// host:port list of the primary URL, for reports (never the password).
    address: String,
    pool: Pool,
    replicas: replicas::Replicas,
    placements: groups::Groups,
}

/// A pool for one URL; a URL may name several hosts (`target_session_attrs=read-write` then
/// finds whichever is primary now, which is how a promotion is followed without a restart).
fn build_pool(shard: &str, url: &str, cfg: &PostgresConfig) -> anyhow::Result<(Pool, String)> {
    let mut pg: tokio_postgres::Config = url.parse().map_err(|e| anyhow::anyhow!("shard {shard}: bad PostgreSQL URL: {e}"))?;
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    pg.connect_timeout(timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("vitrina");
    }
    if cfg.statement_timeout_ms > 0 {
        let ours = format!("-c statement_timeout={}", cfg.statement_timeout_ms);
        let options = match pg.get_options() {
            Some(theirs) => format!("{theirs} {ours}"),
            None => ours,
        };
        pg.options(options);
    }
    if cfg.tcp_user_timeout_ms > 0 {
        pg.tcp_user_timeout(Duration::from_millis(cfg.tcp_user_timeout_ms));
        pg.keepalives_idle(Duration::from_millis(cfg.tcp_user_timeout_ms));
    }
    let address = describe_address(&pg);
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(cfg.acquire_timeout_ms)))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()?;
    Ok((pool, address))
}

impl PgStore {
    /// Connects to the shard's primary, applies pending migrations, and starts watching the
    /// replicas' lag.
    /// `max_group`: at most how many placements one transaction decides together.
    pub async fn connect(
        name: &str,
        url: &str,
        replica_urls: &[String],
        cfg: &PostgresConfig,
        max_group: usize,
    ) -> anyhow::Result<PgStore> {
        let (pool, address) = build_pool(name, url, cfg)?;
        let replicas = replicas::Replicas::new(name, replica_urls, cfg)?;
        let placements = groups::Groups::new(pool.clone(), name, max_group);
        let store = PgStore { name: name.to_owned(), address, pool, replicas, placements };
        let mut client = store.client().await.map_err(|e| anyhow::anyhow!("shard {name}: {e}"))?;
        let applied = schema::migrate(&mut client).await.map_err(|e| anyhow::anyhow!("shard {name}: migrating: {e}"))?;
        if !applied.is_empty() {
            tracing::info!(shard = name, ?applied, "applied schema migrations");
            // Replicas may not have the new schema yet: everything reads from the primary a while.
            store.replicas.wrote_everything();
        }
        Ok(store)
    }

    async fn client(&self) -> StoreResult<held::Held> {
        held::take(&self.pool, &self.name).await
    }
}

/// For reads that may be slightly stale: on a replica within the lag budget when there is one,
/// and on the primary otherwise or when the replica's answer fails (`primary_or_replica`).
macro_rules! replica_first {
    ($store:expr, $key:expr, |$c:ident| $read:expr) => {
        async {
            if !$crate::store::fallback::primary_down() {
                if let Some(replica) = $store.replicas.pick($key).await {
                    let $c = &replica;
                    match $read.await {
                        Ok(v) => return Ok(v),
                        Err(e) => tracing::debug!(shard = %$store.name, error = %e, "replica read failed; asking the primary"),
                    }
                }
            }
            $crate::store::postgres::primary_or_replica!($store, |$c| $read)
        }
        .await
    };
}

/// For reads of the primary's data: there, unless it cannot be reached (or the shard's breaker
/// says so); then on any replica within the lag budget, the answer marked as possibly stale
/// (`store::fallback`), and unreachable only when no replica can answer either.
macro_rules! primary_or_replica {
    ($store:expr, |$c:ident| $read:expr) => {
        async {
            if !$crate::store::fallback::primary_down() {
                match $store.client().await {
                    Ok(primary) => {
                        let $c = &*primary;
                        match $read.await {
                            Err($crate::store::StoreError::Unreachable(e)) => {
                                tracing::debug!(shard = %$store.name, error = %e, "primary unreachable; reading a replica")
                            }
                            other => return other,
                        }
                    }
                    Err($crate::store::StoreError::Unreachable(e)) => {
                        tracing::debug!(shard = %$store.name, error = %e, "primary unreachable; reading a replica")
                    }
                    Err(e) => return Err(e),
                }
            }
            match $store.replicas.pick_within_budget().await {
                Some(replica) => {
                    $crate::store::fallback::fell_back();
                    let $c = &replica;
                    $read.await
                }
                None => Err($crate::store::StoreError::Unreachable(format!(
                    "shard {}: the primary is unreachable and no replica is within the lag budget",
                    $store.name
                ))),
            }
        }
        .await
    };
}
pub(crate) use primary_or_replica;
pub(crate) use replica_first;

fn describe_address(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    if hosts.is_empty() {
        "localhost:5432".into()
    } else {
        hosts.join(",")
    }
}

/// A list query's parameters: its key, the filters it was given (`store::filters`), its limit.
pub(crate) fn bind<'a>(
    key: &'a (dyn tokio_postgres::types::ToSql + Sync),
    filters: &'a [&'a str],
    limit: &'a i64,
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    let mut params = vec![key];
    params.extend(filters.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)));
    params.push(limit);
    params
}

/// A transaction's rows on a PostgreSQL client or transaction (`store::transactions`).
pub(crate) struct Tx<'c, C>(pub &'c C);

impl<C: deadpool_postgres::GenericClient + Sync> crate::store::transactions::Rows for Tx<'_, C> {
    async fn home(&self, shop: &ShopId) -> StoreResult<()> {
        shops::check_home(self.0, shop).await
    }

    async fn emit(&self, event: crate::events::envelope::NewEvent, now: DateTime<Utc>) -> StoreResult<()> {
        outbox::emit(self.0, event, now).await
    }

    /// In one statement, however many.
    async fn emit_all(&self, events: Vec<crate::events::envelope::NewEvent>, now: DateTime<Utc>) -> StoreResult<()> {
        outbox::emit_all(self.0, events, now).await
    }
}

fn seed_key(collection: &str) -> String {
    format!("collection:{collection}")
}

/// Any seed write; the all-collections count is read from the primary after one.
const ANY_SEED_WRITE: &str = "collection:*";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                StoreError::Unavailable(format!("concurrent update, retry: {e}"))
            }
            Some(c) if *c == SqlState::QUERY_CANCELED => StoreError::Unavailable(format!("the statement took too long: {e}")),
            // The server is going away, or this is no primary (any more): not a query's fault.
            Some(c)
                if *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
                    || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
            {
                StoreError::Unreachable(e.to_string())
            }
            Some(_) => StoreError::Backend(match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), db.code().code()),
                None => e.to_string(),
            }),
            // No SQL state: the connection itself failed.
            None if e.is_closed() || e.as_db_error().is_none() => StoreError::Unreachable(format!("database connection: {e}")),
            None => StoreError::Backend(e.to_string()),
        }
    }
}

#[async_trait]
impl Shard for PgStore {
    fn close(&self) {
        self.replicas.stop();
        self.pool.close();
    }

    async fn report(&self) -> StoreReport {
        // Which host of the primary URL is the primary now (it changes after a promotion).
        let probe = match self.client().await {
            Ok(c) => c
                .query_one("SELECT host(inet_server_addr()) || ':' || inet_server_port(), (SELECT count(*) FROM shops WHERE moved_to IS NULL)", &[])
                .await
                .ok()
                .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, i64>(1) as u64)),
            Err(_) => None,
        };
        let current = probe.as_ref().and_then(|p| p.0.clone());
        let shops = probe.map(|p| p.1);
        let mut nodes = vec![NodeReport {
            name: format!("{}-primary", self.name),
            role: "primary".into(),
            address: current.clone().unwrap_or_else(|| self.address.clone()),
            reachable: current.is_some(),
            replay_lag_ms: None,
        }];
        // A promoted replica is the primary now; it is listed once, as such.
        nodes.extend(self.replicas.report().into_iter().filter(|r| Some(&r.address) != current.as_ref()));
        StoreReport {
            kind: "postgres".into(),
            durability: "synchronous commit on the primary".into(),
            shards: vec![ShardReport { name: self.name.clone(), nodes, shops, breaker: None }],
            ring: Vec::new(),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    fn outbox(self: Arc<Self>) -> Arc<dyn Outbox> {
        self
    }
}
