//! A PostgreSQL shard: a pooled primary (tokio-postgres + deadpool, prepared statements
//! cached per connection). Every business write is one transaction; concurrency control is
//! PostgreSQL's own (row locks, conditional updates, advisory locks), so any number of vitrina
//! instances can share the shard.

mod catalog;
mod collections;
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

use super::dump::ShopDump;
use super::{
    micros, Catalog, CollectionCount, Collections, EventPage, Events, Gathered, Inventory, Moves, NodeReport, Orders, Shard,
    ShardReport, Shops, StoreError, StoreReport, StoreResult, Upserted, Webhooks,
};
use crate::catalog::{Product, ProductInput, ProductQuery};
use crate::collections::UserDoc;
use crate::config::PostgresConfig;
use crate::ingest::FeedOp;
use crate::inventory::Stock;
use crate::orders::idempotency::IdempotencyRecord;
use crate::orders::{Action, Order, OrderQuery, PlaceOrder, PlaceOutcome};
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};
use crate::store::outbox::{DeadLetter, Delivery, Outbox, Webhook};
use crate::store::transactions;
use crate::store::transactions::webhooks::WebhookRows;

pub struct PgStore {
    name: String,
    /// host:port list of the primary URL, for reports (never the password).
    address: String,
    pool: Pool,
    replicas: replicas::Replicas,
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
    pub async fn connect(name: &str, url: &str, replica_urls: &[String], cfg: &PostgresConfig) -> anyhow::Result<PgStore> {
        let (pool, address) = build_pool(name, url, cfg)?;
        let replicas = replicas::Replicas::new(name, replica_urls, cfg)?;
        let store = PgStore { name: name.to_owned(), address, pool, replicas };
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
/// and on the primary otherwise or when the replica's answer fails.
macro_rules! replica_first {
    ($store:expr, $key:expr, |$c:ident| $read:expr) => {
        async {
            if let Some(replica) = $store.replicas.pick($key).await {
                let $c = &replica;
                match $read.await {
                    Ok(v) => return Ok(v),
                    Err(e) => tracing::debug!(shard = %$store.name, error = %e, "replica read failed; asking the primary"),
                }
            }
            let primary = $store.client().await?;
            let $c = &*primary;
            $read.await
        }
        .await
    };
}

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

#[async_trait]
impl Shops for PgStore {
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        let _mark = self.replicas.writing(shop.id.as_str());
        // The shop and its event commit together.
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let created = transactions::shops::create(&Tx(&tx), &shop).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        shops::get(&*self.client().await?, id).await
    }

    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        shops::live_ids(&*self.client().await?).await
    }
}

#[async_trait]
impl Catalog for PgStore {
    async fn upsert_product(&self, shop: &ShopId, input: ProductInput, now: DateTime<Utc>) -> StoreResult<(Product, Upserted)> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let out = transactions::catalog::upsert_product(&Tx(&tx), shop, &input, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn get_product(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Product>> {
        replica_first!(self, shop.as_str(), |c| catalog::get_product(c, shop, sku))
    }

    async fn list_products(&self, shop: &ShopId, query: ProductQuery) -> StoreResult<Vec<Product>> {
        replica_first!(self, shop.as_str(), |c| catalog::list_products(c, shop, &query))
    }

    async fn delete_product(&self, shop: &ShopId, sku: &str) -> StoreResult<()> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        transactions::catalog::delete_product(&Tx(&tx), shop, sku).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Inventory for PgStore {
    async fn set_stock(&self, shop: &ShopId, sku: &str, on_hand: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stock = transactions::catalog::set_stock(&Tx(&tx), shop, sku, on_hand, now).await?;
        tx.commit().await?;
        Ok(stock)
    }

    async fn adjust_stock(&self, shop: &ShopId, sku: &str, delta: i64, now: DateTime<Utc>) -> StoreResult<Stock> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stock = transactions::catalog::adjust_stock(&Tx(&tx), shop, sku, delta, now).await?;
        tx.commit().await?;
        Ok(stock)
    }

    async fn get_stock(&self, shop: &ShopId, sku: &str) -> StoreResult<Option<Stock>> {
        catalog::get_stock(&*self.client().await?, shop, sku).await
    }

    async fn apply_feed(&self, shop: &ShopId, ops: Vec<FeedOp>, now: DateTime<Utc>) -> StoreResult<Vec<StoreResult<()>>> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let results = transactions::catalog::apply_feed(&Tx(&tx), shop, ops, now).await?;
        tx.commit().await?;
        Ok(results)
    }
}

#[async_trait]
impl Orders for PgStore {
    async fn place_order(&self, shop: &ShopId, order: PlaceOrder) -> StoreResult<PlaceOutcome> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let outcome = transactions::orders::place(&Tx(&tx), shop, &order).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn idempotency_record(&self, shop: &ShopId, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        orders::idempotency_record(&*self.client().await?, shop, key).await
    }

    async fn get_order(&self, shop: &ShopId, id: &str) -> StoreResult<Option<Order>> {
        orders::load(&*self.client().await?, shop, id).await
    }

    async fn list_orders(&self, shop: &ShopId, query: OrderQuery) -> StoreResult<Vec<Order>> {
        orders::list(&*self.client().await?, shop, &query).await
    }

    async fn transition_order(&self, shop: &ShopId, id: &str, action: Action, now: DateTime<Utc>) -> StoreResult<Order> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let order = transactions::orders::transition(&Tx(&tx), shop, id, action, now).await?;
        tx.commit().await?;
        Ok(order)
    }

    async fn expired_orders(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<(ShopId, String)>> {
        orders::expired(&*self.client().await?, now, limit).await
    }
}

#[async_trait]
impl Events for PgStore {
    async fn events_after(&self, shop: &ShopId, after: Option<&str>, limit: usize) -> StoreResult<EventPage> {
        outbox::events_after(&*self.client().await?, shop, after, limit).await
    }

    async fn imported_position(&self, shop: &ShopId, origin: &str, position: &str) -> StoreResult<Option<String>> {
        outbox::imported_position(&*self.client().await?, shop, origin, position).await
    }
}

#[async_trait]
impl Webhooks for PgStore {
    async fn create_webhook(&self, shop: &ShopId, hook: Webhook) -> StoreResult<Webhook> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let hook = transactions::webhooks::create(&Tx(&tx), shop, hook).await?;
        tx.commit().await?;
        Ok(hook)
    }

    async fn webhooks(&self, shop: &ShopId) -> StoreResult<Vec<Webhook>> {
        webhooks::list(&*self.client().await?, shop.as_str()).await
    }

    async fn delete_webhook(&self, shop: &ShopId, id: &str) -> StoreResult<()> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        transactions::webhooks::delete(&Tx(&tx), shop, id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn webhook_deliveries(
        &self,
        shop: &ShopId,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        webhooks::deliveries(&*self.client().await?, shop.as_str(), id, status, limit).await
    }

    async fn replay_webhook(&self, shop: &ShopId, id: &str, deliver_by: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<u64> {
        let _mark = self.replicas.writing(shop.as_str());
        transactions::webhooks::replay(&Tx(&*self.client().await?), shop, id, deliver_by, now).await
    }

    async fn dead_letters(&self, shop: &ShopId, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        webhooks::dead_letters(&*self.client().await?, shop.as_str(), limit).await
    }

    async fn replay_dead_letters(&self, shop: &ShopId, sink: Option<&str>) -> StoreResult<u64> {
        let _mark = self.replicas.writing(shop.as_str());
        Tx(&*self.client().await?).mark_for_replay(shop, sink).await
    }
}

#[async_trait]
impl Moves for PgStore {
    async fn directory(&self) -> StoreResult<Vec<(ShopId, String)>> {
        moves::directory(&*self.client().await?).await
    }

    async fn set_pin(&self, shop: &ShopId, shard: Option<&str>, now: DateTime<Utc>) -> StoreResult<()> {
        moves::set_pin(&*self.client().await?, shop, shard, micros(now)).await
    }

    async fn mark_shop(&self, shop: &ShopId, moved_to: Option<&str>) -> StoreResult<()> {
        let _mark = self.replicas.writing(shop.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        transactions::moves::mark(&Tx(&tx), shop, moved_to).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn export_shop(&self, shop: &ShopId) -> StoreResult<ShopDump> {
        let mut dump = transactions::moves::export(&Tx(&*self.client().await?), shop).await?;
        dump.origin = self.name.clone();
        Ok(dump)
    }

    async fn import_shop(&self, dump: ShopDump) -> StoreResult<()> {
        let _mark = self.replicas.writing(dump.shop.shop.id.as_str());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        transactions::moves::import(&Tx(&tx), &dump).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Collections for PgStore {
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        let _mark = self.replicas.writing(&seed_key(collection));
        let _any = self.replicas.writing(ANY_SEED_WRITE);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        transactions::collections::insert(&Tx(&tx), collection, &docs).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        replica_first!(self, &seed_key(collection), |c| collections::find(c, collection, name))
    }

    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        replica_first!(self, &seed_key(collection), |c| collections::list(c, collection, limit)).map(Gathered::complete)
    }

    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        replica_first!(self, &seed_key(collection), |c| collections::count(c, collection)).map(Gathered::complete)
    }

    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let rows: Vec<(String, u64)> = replica_first!(self, ANY_SEED_WRITE, |c| collections::counts(c))?;
        Ok(Gathered::complete(
            rows.into_iter().map(|(collection, count)| CollectionCount { collection, shard: self.name.clone(), count }).collect(),
        ))
    }
}
