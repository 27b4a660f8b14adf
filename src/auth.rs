//! Who may write: the admin token creates shops; a shop's API key writes only that shop.

use axum::http::{header, HeaderMap};

use crate::app::AppState;
use crate::error::ApiError;
use crate::shops::{secret_matches, ShopId, ShopRecord};

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

pub async fn load_shop(state: &AppState, shop: &ShopId) -> Result<ShopRecord, ApiError> {
    state.store().get_shop(shop).await?.ok_or_else(|| ApiError::NotFound(format!("shop {shop}")))
}

/// A shop id from the path; one that could never exist is simply not found.
pub fn shop_id(raw: &str) -> Result<ShopId, ApiError> {
    ShopId::parse(raw).map_err(|_| ApiError::NotFound(format!("shop {raw}")))
}
