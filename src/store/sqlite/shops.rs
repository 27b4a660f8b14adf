use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{parse_ts, ts, SqliteStore, Tx};
use crate::money::Currency;
use crate::shops::{NewShop, Shop, ShopId, ShopRecord};
use crate::store::transactions::at_once;
use crate::store::transactions::shops::ShopRows;
use crate::store::{home_check, transactions, Shops, StoreError, StoreResult};

impl ShopRows for Tx<'_> {
    async fn insert_shop(&self, s: &NewShop) -> StoreResult<bool> {
        let inserted = self.0.execute(
            "INSERT INTO shops (id, name, currency, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO NOTHING",
            params![s.id.as_str(), s.name, s.currency.as_str(), &s.api_key_hash[..], ts(s.created_at)],
        )?;
        Ok(inserted == 1)
    }
}

pub fn get(c: &Connection, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
    let row = c
        .prepare_cached("SELECT name, currency, api_key_hash, created_at, moved_to FROM shops WHERE id = ?1")?
        .query_row([id.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .optional()?;
    let Some((name, currency, hash, created_at, moved_to)) = row else { return Ok(None) };
    let currency = Currency::parse(&currency).ok_or_else(|| StoreError::Backend(format!("shop {id} has bad currency")))?;
    let api_key_hash: [u8; 32] =
        hash.try_into().map_err(|_| StoreError::Backend(format!("shop {id} has a malformed key hash")))?;
    Ok(Some(ShopRecord {
        shop: Shop { id: id.clone(), name, currency, created_at: parse_ts(&created_at)? },
        api_key_hash,
        moved_to,
    }))
}

pub fn live_ids(c: &Connection) -> StoreResult<Vec<ShopId>> {
    Ok(c.prepare_cached("SELECT id FROM shops WHERE moved_to IS NULL ORDER BY id")?
        .query_map([], |r| Ok(ShopId::trusted(r.get(0)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Refuses a shop's write on a shard it has left (or is leaving). Runs inside the write's own
/// transaction, and the single writer orders it against the move's mark.
pub fn check_home(c: &Connection, shop: &ShopId) -> StoreResult<()> {
    let moved: Option<Option<String>> =
        c.prepare_cached("SELECT moved_to FROM shops WHERE id = ?1")?.query_row([shop.as_str()], |r| r.get(0)).optional()?;
    home_check(shop, moved.flatten())
}

#[async_trait]
impl Shops for SqliteStore {
    async fn create_shop(&self, shop: NewShop) -> StoreResult<Shop> {
        self.write(move |c| at_once(transactions::shops::create(&Tx(c), &shop))).await
    }

    async fn get_shop(&self, id: &ShopId) -> StoreResult<Option<ShopRecord>> {
        let id = id.clone();
        self.read(move |c| get(c, &id)).await
    }

    async fn shop_ids(&self) -> StoreResult<Vec<ShopId>> {
        self.read(live_ids).await
    }
}
