//! Who may write: the admin token creates shops; a shop's API key writes only that shop.

use axum::http::{header, HeaderMap};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::cache::{shop_scope, Family};
use crate::error::ApiError;
use crate::money::Currency;
use crate::shops::{secret_matches, Shop, ShopId, ShopRecord};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && t.len() <= 256)
}

pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if secret_matches(t, &state.admin_token_hash) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Loads the shop named in the path (404 when unknown) and checks the caller holds its key.
/// Another shop's key is refused exactly like no key, so keys never reach across tenants.
pub async fn require_shop_key(state: &AppState, headers: &HeaderMap, shop: &ShopId) -> Result<ShopRecord, ApiError> {
    let record = load_shop(state, shop).await?;
    match bearer(headers) {
        Some(t) if secret_matches(t, &record.api_key_hash) => Ok(record),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The shop record, through the cache (in process only: it holds the key's hash).
pub async fn load_shop(state: &AppState, shop: &ShopId) -> Result<ShopRecord, ApiError> {
    let (store, id) = (state.store(), shop.clone());
    let found = state
        .cache
        .get_or_load(Family::Shop, &shop_scope(shop.as_str()), "record", async move {
            let record = store.get_shop(&id).await?;
            Ok(record.map(|r| Bytes::from(serde_json::to_vec(&CachedShop::from(r)).unwrap_or_default())).into())
        })
        .await?;
    let cached = found.ok_or_else(|| ApiError::NotFound(format!("shop {shop}")))?;
    let record: CachedShop = serde_json::from_slice(&cached.body).map_err(|e| ApiError::Internal(format!("cached shop: {e}")))?;
    record.try_into()
}

/// A shop record as the cache keeps it.
#[derive(Serialize, Deserialize)]
struct CachedShop {
    id: String,
    name: String,
    currency: Currency,
    created_at: DateTime<Utc>,
    key_hash: String,
    moved_to: Option<String>,
}

impl From<ShopRecord> for CachedShop {
    fn from(r: ShopRecord) -> CachedShop {
        CachedShop {
            id: r.shop.id.to_string(),
            name: r.shop.name,
            currency: r.shop.currency,
            created_at: r.shop.created_at,
            key_hash: hex::encode(r.api_key_hash),
            moved_to: r.moved_to,
        }
    }
}

impl TryFrom<CachedShop> for ShopRecord {
    type Error = ApiError;

    fn try_from(c: CachedShop) -> Result<ShopRecord, ApiError> {
        let mut api_key_hash = [0u8; 32];
        hex::decode_to_slice(&c.key_hash, &mut api_key_hash).map_err(|e| ApiError::Internal(format!("cached shop: {e}")))?;
        Ok(ShopRecord {
            shop: Shop { id: ShopId::trusted(c.id), name: c.name, currency: c.currency, created_at: c.created_at },
            api_key_hash,
            moved_to: c.moved_to,
        })
    }
}

/// A shop id from the path; one that could never exist is simply not found.
pub fn shop_id(raw: &str) -> Result<ShopId, ApiError> {
    ShopId::parse(raw).map_err(|_| ApiError::NotFound(format!("shop {raw}")))
}
