//! Who may call what: the admin token creates and moves shops; a shop's API key acts only on that
//! shop. Each operation declares the credential it needs once, as its OpenAPI security
//! requirement. `gate` enforces it in front of admission and before any handler reads a body, so a
//! caller without valid credentials takes no admission place and gets 401 whatever it sends. The
//! extractors `Admin` and `ShopKey` hand the handler what the gate established.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cache::{shop_scope, Family};
use crate::http::error::ApiError;
use crate::money::Currency;
use crate::shops::{secret_matches, Shop, ShopId, ShopRecord};
use crate::state::AppState;

/// The OpenAPI security scheme of the admin token.
pub const ADMIN_SCHEME: &str = "admin_token";
/// The OpenAPI security scheme of a shop's API key.
pub const SHOP_KEY_SCHEME: &str = "shop_key";

/// A credential an operation requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Admin,
    /// The key of the shop named by the path's `{shop}`.
    ShopKey,
}

/// Who the gate found the caller to be, kept in the request's extensions for the extractors.
#[derive(Clone)]
enum Caller {
    Admin,
    Shop(ShopRecord),
}

/// The credential each operation (method and route template) requires, read from the spec.
#[derive(Debug, Default)]
/// Keyed by route template, so a request is looked up by its matched path without allocating.
pub struct Guards(HashMap<String, Vec<(Method, Credential)>>);

impl Guards {
    /// Reads each operation's security requirement. An operation naming an unknown scheme, or
    /// a shop key on a route without `{shop}`, is a programming error caught at start-up.
    pub fn from_spec(spec: &utoipa::openapi::OpenApi) -> anyhow::Result<Guards> {
        let doc = serde_json::to_value(spec)?;
        let mut guards: HashMap<String, Vec<(Method, Credential)>> = HashMap::new();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else { continue };
                let schemes: Vec<&str> = op["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|req| req.as_object())
                    .flat_map(|req| req.keys().map(String::as_str))
                    .collect();
                let credential = match schemes.as_slice() {
                    [] => continue,
                    [ADMIN_SCHEME] => Credential::Admin,
                    [SHOP_KEY_SCHEME] if path.contains("{shop}") => Credential::ShopKey,
                    other => anyhow::bail!("{method} {path}: unsupported security requirement {other:?}"),
                };
                guards.entry(path.clone()).or_default().push((method, credential));
            }
        }
        Ok(Guards(guards))
    }

    fn required(&self, method: &Method, route: &str) -> Option<Credential> {
        // HEAD is served by the GET route.
        let method = if method == Method::HEAD { &Method::GET } else { method };
        self.0.get(route)?.iter().find(|(m, _)| m == method).map(|(_, c)| *c)
    }
}

/// In front of admission (`http::edge`): authenticates what the route's spec requires, and
/// passes the request on with its `Caller`, or answers the refusal.
pub async fn gate(state: &AppState, guards: &Guards, req: Request) -> Result<Request, Response> {
    let required = req.extensions().get::<MatchedPath>().and_then(|p| guards.required(req.method(), p.as_str()));
    let Some(credential) = required else {
        return Ok(req);
    };
    let (mut parts, body) = req.into_parts();
    let caller = match credential {
        Credential::Admin => admin(state, &parts.headers).map(|()| Caller::Admin),
        // Boxed: loading the shop is a large future that only guarded routes need, and an
        // unguarded request's edge would otherwise carry (and copy) its space.
        Credential::ShopKey => {
            Box::pin(async {
                let shop = path_shop(&mut parts, state).await?;
                shop_key(state, &parts.headers, &shop).await.map(Caller::Shop)
            })
            .await
        }
    };
    match caller {
        Ok(caller) => {
            parts.extensions.insert(caller);
            Ok(Request::from_parts(parts, body))
        }
        Err(e) => Err(e.into_response()),
    }
}

/// The admin token, checked by the gate (or here, on a route the spec does not guard).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        if matches!(parts.extensions.get::<Caller>(), Some(Caller::Admin)) {
            return Ok(Admin);
        }
        admin(state, &parts.headers).map(|()| Admin)
    }
}

/// The shop named by the path's `{shop}`, whose key the caller holds.
pub struct ShopKey(pub ShopRecord);

impl ShopKey {
    pub fn id(&self) -> &ShopId {
        &self.0.shop.id
    }
}

impl FromRequestParts<AppState> for ShopKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ShopKey, ApiError> {
        if let Some(Caller::Shop(record)) = parts.extensions.get::<Caller>() {
            return Ok(ShopKey(record.clone()));
        }
        let shop = path_shop(parts, state).await?;
        shop_key(state, &parts.headers, &shop).await.map(ShopKey)
    }
}

async fn path_shop(parts: &mut Parts, state: &AppState) -> Result<ShopId, ApiError> {
    let params =
        RawPathParams::from_request_parts(parts, state).await.map_err(|e| ApiError::Internal(format!("path parameters: {e}")))?;
    let raw = params.iter().find(|(k, _)| *k == "shop").map(|(_, v)| v.to_owned());
    shop_id(&raw.ok_or_else(|| ApiError::Internal("a shop-key route without {shop}".into()))?)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && t.len() <= 256)
}

fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if secret_matches(t, &state.admin_token_hash) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Loads the shop (404 when unknown) and checks the caller holds its key. Another shop's key is
/// refused exactly like no key, so keys never reach across tenants.
async fn shop_key(state: &AppState, headers: &HeaderMap, shop: &ShopId) -> Result<ShopRecord, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guarded_operation_names_one_known_credential() {
        let guards = Guards::from_spec(&crate::api::openapi()).expect("the spec's security requirements are supported");
        assert_eq!(guards.required(&Method::POST, "/shops/{shop}/orders"), Some(Credential::ShopKey));
        assert_eq!(guards.required(&Method::POST, "/shops"), Some(Credential::Admin));
        assert_eq!(guards.required(&Method::GET, "/shops/{shop}/products"), None);
        assert_eq!(guards.required(&Method::HEAD, "/shops/{shop}/orders"), Some(Credential::ShopKey));
    }
}
