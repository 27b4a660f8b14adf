use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::idempotency::valid_key;
use super::{Action, Order, OrderPage, OrderQuery, OrderStatus, PlaceOrder, PlaceOrderBody, PlaceOutcome};
use crate::http::auth::ShopKey;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::pagination;
use crate::state::AppState;
use crate::store::StoreError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(place_order, list_orders)).routes(routes!(get_order)).routes(routes!(transition))
}

/// Place an order. Stock is reserved by a conditional update per SKU (lines with the same SKU
/// are summed); if any line cannot be served nothing is reserved and the answer is 409 listing
/// the short SKUs. `Idempotency-Key` is required: the same key with the same body replays the
/// stored answer, with another body it is 422, and while the first request is still running 409.
#[utoipa::path(post, path = "/shops/{shop}/orders", tag = "orders", request_body = PlaceOrderBody,
    params(("shop" = String, Path), ("Idempotency-Key" = String, Header, description = "Client-chosen unique key, 1-255 printable ASCII", pattern = "^[!-~]{1,255}$")),
    security(("shop_key" = [])),
    responses(
        (status = 201, body = Order),
        (status = 400, body = Problem, description = "Missing or malformed Idempotency-Key"),
        (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Insufficient stock, or the key is in flight"),
        (status = 422, body = Problem, description = "Invalid body, unknown SKU, or key reused with another body")))]
async fn place_order(
    State(state): State<AppState>,
    key: ShopKey,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> ApiResult<Response> {
    let shop = key.id().clone();
    let record = key.0;
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => return Err(ApiError::bad_request("idempotency_key_required", "the Idempotency-Key header is required")),
        Some(Ok(k)) if valid_key(k) => k.to_owned(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 printable ASCII characters",
            ))
        }
    };
    let lines = body.validate()?;
    let Some(_claim) = state.in_flight.claim(&shop, &key) else {
        return Err(ApiError::Conflict {
            code: "idempotency_key_in_flight",
            detail: "a request with this Idempotency-Key is still being processed".into(),
        });
    };
    if let Some(refused) = refuse_sold_out(&state, &shop, &lines, &key, &body).await? {
        return Ok(refused);
    }
    let now = state.clock.now();
    let hold = chrono::Duration::seconds(state.config.orders.hold_secs.min(i64::MAX as u64 / 1000) as i64);
    let place = PlaceOrder {
        id: uuid::Uuid::now_v7().to_string(),
        customer_id: body.customer_id.clone(),
        currency: record.shop.currency,
        lines,
        idempotency_key: key,
        fingerprint: body.fingerprint(),
        now,
        expires_at: now + hold,
    };
    let outcome = state.store().on_shop(&shop, "place_order", |shard| shard.place_order(&shop, place.clone())).await;
    if let Err(StoreError::InsufficientStock { sold_out, .. }) = &outcome {
        let now = std::time::Instant::now();
        sold_out.iter().for_each(|sku| state.sold_out.mark(shop.as_str(), sku, now));
    }
    count_outcome(&outcome, "insufficient_stock");
    answer(outcome?)
}

/// Refuses from memory an order naming a SKU known to be sold out, without a store transaction.
/// A retry of a placement that went through must still get its stored answer, so the key is
/// looked up first: one primary-key read instead of the write transaction and the wait on the
/// hot stock row.
async fn refuse_sold_out(
    state: &AppState,
    shop: &crate::shops::ShopId,
    lines: &[super::WantedLine],
    key: &str,
    body: &PlaceOrderBody,
) -> ApiResult<Option<Response>> {
    let sold_out = state.sold_out.sold_out(shop, lines.iter().map(|l| l.sku.as_str()), std::time::Instant::now());
    if sold_out.is_empty() {
        return Ok(None);
    }
    let outcome = match state.store().read_shop(shop, "idempotency_record", |shard| shard.idempotency_record(shop, key)).await? {
        Some(record) => Ok(record.outcome(&body.fingerprint())),
        None => Err(StoreError::InsufficientStock { skus: sold_out, sold_out: Vec::new() }),
    };
    count_outcome(&outcome, "sold_out");
    answer(outcome?).map(Some)
}

fn count_outcome(outcome: &Result<PlaceOutcome, StoreError>, short: &'static str) {
    let label = match outcome {
        Ok(PlaceOutcome::Created(_)) => "placed",
        Ok(PlaceOutcome::Replayed { .. }) => "replayed",
        Ok(PlaceOutcome::KeyReused) => "key_reused",
        Err(StoreError::InsufficientStock { .. }) => short,
        Err(_) => "error",
    };
    metrics::counter!("vitrina_orders_total", "outcome" => label).increment(1);
}

fn answer(outcome: PlaceOutcome) -> ApiResult<Response> {
    match outcome {
        PlaceOutcome::Created(order) => Ok((StatusCode::CREATED, Json(order)).into_response()),
        PlaceOutcome::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, Json(body)).into_response();
            resp.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
            Ok(resp)
        }
        PlaceOutcome::KeyReused => Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used with a different request body".into(),
        }),
    }
}

/// An order with its lines and status history.
#[utoipa::path(get, path = "/shops/{shop}/orders/{id}", tag = "orders",
    params(("shop" = String, Path), ("id" = String, Path)),
    security(("shop_key" = [])),
    responses((status = 200, body = Order), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn get_order(
    State(state): State<AppState>,
    Path((_shop, id)): Path<(String, String)>,
    key: ShopKey,
) -> ApiResult<Json<Order>> {
    let shop = key.id().clone();
    let order = if uuid::Uuid::parse_str(&id).is_ok() {
        state.store().read_shop(&shop, "get_order", |shard| shard.get_order(&shop, &id)).await?
    } else {
        None
    };
    order.map(Json).ok_or_else(|| ApiError::NotFound(format!("order {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only orders in this status.
    status: Option<String>,
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 512)]
    cursor: Option<String>,
}

/// A shop's orders, newest first.
#[utoipa::path(get, path = "/shops/{shop}/orders", tag = "orders",
    params(("shop" = String, Path), ListParams),
    security(("shop_key" = [])),
    responses((status = 200, body = OrderPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn list_orders(
    State(state): State<AppState>,
    key: ShopKey,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<OrderPage>> {
    let shop = key.id().clone();
    let (limit, before) = pagination::from_query::<String>(q.limit, q.cursor.as_deref(), &state.config.limits)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => {
            Some(OrderStatus::parse(s).ok_or_else(|| ApiError::bad_request("invalid_status", format!("unknown status {s:?}")))?)
        }
    };
    let query = OrderQuery { status, before, limit };
    let rows = state.store().read_shop(&shop, "list_orders", |shard| shard.list_orders(&shop, query.clone())).await?;
    let (items, next_cursor) = pagination::split(rows, limit, |o| o.id.clone());
    Ok(Json(OrderPage { items, next_cursor }))
}

/// Move an order along its lifecycle: `pay` (placed→paid), `ship` (paid→shipped, stock leaves
/// on hand), `deliver` (shipped→delivered), `cancel` (placed|paid→cancelled, stock released).
#[utoipa::path(post, path = "/shops/{shop}/orders/{id}/{action}", tag = "orders",
    params(("shop" = String, Path), ("id" = String, Path), ("action" = String, Path, description = "pay | ship | deliver | cancel")),
    security(("shop_key" = [])),
    responses((status = 200, body = Order), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Not allowed from the current status")))]
async fn transition(
    State(state): State<AppState>,
    Path((_shop, id, action)): Path<(String, String, String)>,
    key: ShopKey,
) -> ApiResult<Json<Order>> {
    let shop = key.id().clone();
    let action = Action::parse(&action).ok_or_else(|| ApiError::NotFound(format!("action {action}")))?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::NotFound(format!("order {id}")));
    }
    let order = state
        .store()
        .on_shop(&shop, "transition_order", |shard| shard.transition_order(&shop, &id, action, state.clock.now()))
        .await?;
    metrics::counter!("vitrina_orders_total", "outcome" => order.status.as_str()).increment(1);
    if action.stock_effect() == super::StockEffect::Release {
        state.sold_out.released(&order);
    }
    Ok(Json(order))
}
