use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{primary_or_replica, PgStore, Tx};
use crate::money::Currency;
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};
use crate::store::transactions::shops::ShopRows;
use crate::store::{home_check, micros, transactions, Shops, StoreError, StoreResult};

impl<C: GenericClient + Sync> ShopRows for Tx<'_, C> {
    async fn insert_shop(&self, s: &NewShop) -> StoreResult<bool> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        let n = c
            .execute(&stmt, &[&s.id.as_str(), &s.name, &s.currency.as_str(), &&s.api_key_hash[..], &micros(s.created_at)])
            .await?;
        Ok(n == 1)
    }
}

pub async fn get(c: &impl GenericClient, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
    let stmt = c.prepare_cached("SELECT name, currency, api_key_hash, created_at, moved_to FROM shops WHERE id = $1").await?;
    let Some(row) = c.query_opt(&stmt, &[&id.as_str()]).await? else { return Ok(None) };
    let currency: String = row.get(1);
    let currency = Currency::parse(&currency).ok_or_else(|| StoreError::Backend(format!("shop {id} has bad currency")))?;
    let hash: Vec<u8> = row.get(2);
    let api_key_hash: [u8; 32] =
        hash.try_into().map_err(|_| StoreError::Backend(format!("shop {id} has a malformed key hash")))?;
    Ok(Some(ShopRecord {
        shop: Shop { id: id.clone(), name: row.get(0), currency, created_at: row.get(3) },
        api_key_hash,
        moved_to: row.get(4),
    }))
}

pub async fn live_ids(c: &impl GenericClient) -> StoreResult<Vec<ShopId>> {
    let stmt = c.prepare_cached("SELECT id FROM shops WHERE moved_to IS NULL ORDER BY id").await?;
    Ok(c.query(&stmt, &[]).await?.iter().map(|r| ShopId::trusted(r.get(0))).collect())
}

/// Refuses a shop's write on a shard it has left (or is leaving). Writers hold the shop's fence
/// lock shared until they commit; a move takes it exclusively to set its mark, so it waits for
/// writes already running, and writes that start later wait for the mark and then see it.
/// An advisory lock rather than `FOR SHARE` on the shop row: a hot shop's concurrent orders
/// would otherwise pile up as a multixact on that one row.
pub async fn check_home(c: &impl GenericClient, shop: &ShopId) -> StoreResult<()> {
    let fence = c.prepare_cached("SELECT pg_advisory_xact_lock_shared(hashtextextended('fence/' || $1::text, 0))").await?;
    // A statement of its own: its snapshot must be taken after the lock was granted. Sent right
    // behind the lock, not after its answer: the server runs it only once the lock is held.
    let home = c.prepare_cached("SELECT moved_to FROM shops WHERE id = $1").await?;
    let (_, row) = futures::future::try_join(c.execute(&fence, &[&shop.as_str()]), c.query_opt(&home, &[&shop.as_str()])).await?;
    home_check(shop, row.and_then(|r| r.get(0)))
}

#[async_trait]
impl Shops for PgStore {
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        self.replicas
            .after_write(shop.id.as_str(), async {
                // The shop and its event commit together.
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                let created = transactions::shops::create(&Tx(&tx), &shop).await?;
                tx.commit().await?;
                Ok(created)
            })
            .await
    }

    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        primary_or_replica!(self, |c| get(c, id))
    }

    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        live_ids(&*self.client().await?).await
    }
}
