use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Product, ProductBody, ProductPage, ProductQuery};
use crate::cache::{http, shop_scope, Family, Loaded};
use crate::http::auth::{self, ShopKey};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::pagination;
use crate::state::AppState;
use crate::store::Upserted;
use crate::validate;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_product, get_product, delete_product)).routes(routes!(list_products))
}

/// Create or replace a product. Re-sending the same content changes nothing (same version).
#[utoipa::path(put, path = "/shops/{shop}/products/{sku}", tag = "catalog", request_body = ProductBody,
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("shop_key" = [])),
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 200, description = "Updated or unchanged", body = Product),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn put_product(
    State(state): State<AppState>,
    Path((_shop, sku)): Path<(String, String)>,
    key: ShopKey,
    ApiJson(body): ApiJson<ProductBody>,
) -> ApiResult<Response> {
    let shop = key.id().clone();
    let record = key.0;
    let input = body.validate(&sku, record.shop.currency)?;
    let (product, upserted) = state
        .store()
        .on_shop(&shop, "upsert_product", |shard| shard.upsert_product(&shop, input.clone(), state.clock.now()))
        .await?;
    state.cache.invalidate(&shop_scope(shop.as_str())).await;
    let status = if upserted == Upserted::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_etag(status, &product))
}

/// A product, cached; `ETag` / `If-None-Match` → 304, `Cache-Control` with the time it stays
/// cached, `X-Cache: HIT-L1 | HIT-L2 | MISS`.
#[utoipa::path(get, path = "/shops/{shop}/products/{sku}", tag = "catalog",
    params(("shop" = String, Path), ("sku" = String, Path)),
    responses((status = 200, body = Product), (status = 304, description = "Not modified"), (status = 404, body = Problem),
        (status = 503, body = Problem)))]
async fn get_product(
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let shop = auth::shop_id(&shop)?;
    if validate::sku(&sku).is_err() {
        return Err(ApiError::NotFound(format!("product {sku}")));
    }
    let store = state.store();
    let (s, k) = (shop.clone(), sku.clone());
    let found = state
        .cache
        .get_or_load(Family::Product, &shop_scope(shop.as_str()), &sku, async move {
            let product = store.read_shop(&s, "get_product", |shard| shard.get_product(&s, &k)).await?;
            Ok(product.map(|p| Bytes::from(serde_json::to_vec(&p).unwrap_or_default())).into())
        })
        .await?;
    match found {
        Some(c) => Ok(http::respond(&c, &headers)),
        None => {
            auth::load_shop(&state, &shop).await?;
            Err(ApiError::NotFound(format!("product {sku}")))
        }
    }
}

fn with_etag(status: StatusCode, product: &Product) -> Response {
    let mut resp = (status, Json(product)).into_response();
    if let Ok(v) = HeaderValue::from_str(&product.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Delete a product and its stock row. Refused while open orders hold a reservation on it.
#[utoipa::path(delete, path = "/shops/{shop}/products/{sku}", tag = "catalog",
    params(("shop" = String, Path), ("sku" = String, Path)),
    security(("shop_key" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_product(
    State(state): State<AppState>,
    Path((_shop, sku)): Path<(String, String)>,
    key: ShopKey,
) -> ApiResult<StatusCode> {
    let shop = key.id().clone();
    if validate::sku(&sku).is_err() {
        return Err(ApiError::NotFound(format!("product {sku}")));
    }
    state.store().on_shop(&shop, "delete_product", |shard| shard.delete_product(&shop, &sku)).await?;
    state.cache.invalidate(&shop_scope(shop.as_str())).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only products of this category.
    category: Option<String>,
    /// Page size, 1 to the configured maximum (100 by default).
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 512)]
    cursor: Option<String>,
}

/// A page of a shop's products ordered by SKU (keyset pagination, stable under inserts); cached
/// like a product, with the same headers.
#[utoipa::path(get, path = "/shops/{shop}/products", tag = "catalog",
    params(("shop" = String, Path), ListParams),
    responses((status = 200, body = ProductPage), (status = 304, description = "Not modified"), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)))]
async fn list_products(
    State(state): State<AppState>,
    Path(shop): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Response> {
    let shop = auth::shop_id(&shop)?;
    let (limit, after) = pagination::from_query::<String>(q.limit, q.cursor.as_deref(), &state.config.limits)?;
    if q.category.as_ref().is_some_and(|c| c.chars().count() > 100) {
        return Err(ApiError::bad_request("invalid_category", "category must be at most 100 characters"));
    }
    // Category and cursor are free text: the key is a digest of the page's parameters.
    let params = serde_json::to_vec(&(&q.category, &after, limit)).unwrap_or_default();
    let key = hex::encode(&Sha256::digest(&params)[..16]);
    let (store, s) = (state.store(), shop.clone());
    let page = state
        .cache
        .get_or_load(Family::Page, &shop_scope(shop.as_str()), &key, async move {
            let query = ProductQuery { category: q.category, after, limit };
            let rows = store.read_shop(&s, "list_products", |shard| shard.list_products(&s, query.clone())).await?;
            // Only an empty page can belong to a shop that does not exist: a page is then
            // cached whole, with no shop lookup per request.
            if rows.is_empty() && store.get_shop(&s).await?.is_none() {
                return Ok(Loaded::Absent);
            }
            let (items, next_cursor) = pagination::split(rows, limit, |p| p.sku.clone());
            let body = serde_json::to_vec(&ProductPage { items, next_cursor }).unwrap_or_default();
            Ok(Loaded::Keep(Bytes::from(body)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("shop {shop}")))?;
    Ok(http::respond(&page, &headers))
}
