//! A shop's webhook subscriptions, their delivery log and replays, and the shop's dead letters
//! of the configured sinks. Deliveries themselves are the relay's work (`events::relay`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::auth::ShopKey;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::pagination;
use crate::state::AppState;
use crate::store::outbox::{DeadLetter, Delivery, Webhook};
use crate::validate::FieldError;

/// Subscriptions one shop may hold.
pub const MAX_WEBHOOKS: usize = 32;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(replay_webhook))
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letters))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `https://` (or `http://`) endpoint that receives one POST per event.
    #[schema(max_length = 2048, pattern = "^https?://[^\\s/?#]+([/?#][^\\s]*)?$", example = "https://example.com/hooks")]
    url: String,
    /// Event types to deliver (`vitrina.order.placed`, ...), or `["*"]` for all.
    #[schema(min_items = 1, example = json!(["vitrina.order.placed"]))]
    events: Vec<String>,
    /// Signing key, 16-256 characters; generated when omitted.
    #[schema(min_length = 16, max_length = 256)]
    secret: Option<String>,
}

fn check(body: &NewWebhook) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    match reqwest::Url::parse(&body.url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() && body.url.len() <= 2048 => {}
        _ => errors.push(FieldError::new("url", "must be an http(s) URL of at most 2048 characters")),
    }
    if body.events.is_empty() || body.events.len() > super::envelope::EVENT_TYPES.len() {
        errors.push(FieldError::new("events", "must name 1 or more event types, or \"*\""));
    }
    for e in &body.events {
        if e != "*" && !super::envelope::EVENT_TYPES.contains(&e.as_str()) {
            errors.push(FieldError::new("events", format!("unknown event type {:?}", e.chars().take(64).collect::<String>())));
        }
    }
    if let Some(s) = &body.secret {
        crate::validate::text(&mut errors, "secret", s, 16, 256);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Subscribes an endpoint to the shop's events. Each delivery is signed
/// (`Vitrina-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`), retried with
/// exponential backoff and jitter for up to 24 hours, and kept in the delivery log.
#[utoipa::path(post, path = "/shops/{shop}/webhooks", tag = "events",
    params(("shop" = String, Path)), request_body = NewWebhook, security(("shop_key" = [])),
    responses((status = 201, body = WebhookView, description = "Subscribed; the signing secret is in this answer only"),
        (status = 401, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
async fn create_webhook(
    State(state): State<AppState>,
    key: ShopKey,
    ApiJson(body): ApiJson<NewWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let shop = key.id().clone();
    check(&body)?;
    // Checked at start: a parse error here is a bug, not bad input.
    let allowed = crate::events::targets::Allowed::parse(&state.config.events.webhooks.allowed_ranges)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(why) = crate::events::targets::refusal(&body.url, &allowed).await {
        return Err(ApiError::Validation(vec![crate::validate::FieldError::new("url", why)]));
    }
    let store = state.store();
    if store.read_shop(&shop, "webhooks", |shard| shard.webhooks(&shop)).await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict { code: "too_many_webhooks", detail: format!("a shop may hold {MAX_WEBHOOKS} webhooks") });
    }
    let mut events = body.events;
    events.sort_unstable();
    events.dedup();
    let hook = Webhook {
        id: uuid::Uuid::now_v7().to_string(),
        shop: shop.to_string(),
        url: body.url,
        events,
        secret: body.secret.unwrap_or_else(|| format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()))),
        created_at: crate::store::micros(state.clock.now()),
    };
    let created = store.on_shop(&shop, "create_webhook", |shard| shard.create_webhook(&shop, hook.clone())).await?;
    let secret = Some(created.secret.clone());
    Ok((StatusCode::CREATED, Json(WebhookView { secret, ..WebhookView::from(created) })))
}

/// A subscription as the API shows it: the signing secret only in the answer that created it,
/// never in a list (a leaked list must not let anyone forge deliveries).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    id: String,
    url: String,
    /// Event types delivered (`vitrina.order.placed`, ...); `*` for all.
    events: Vec<String>,
    /// Key of the HMAC-SHA256 signature on every delivery; shown once, at creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        WebhookView { id: w.id, url: w.url, events: w.events, secret: None, created_at: w.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    webhooks: Vec<WebhookView>,
}

/// The shop's subscriptions.
#[utoipa::path(get, path = "/shops/{shop}/webhooks", tag = "events",
    params(("shop" = String, Path)), security(("shop_key" = [])),
    responses((status = 200, body = WebhookList), (status = 401, body = Problem)))]
async fn list_webhooks(State(state): State<AppState>, key: ShopKey) -> ApiResult<Json<WebhookList>> {
    let shop = key.id().clone();
    let hooks = state.store().read_shop(&shop, "webhooks", |shard| shard.webhooks(&shop)).await?;
    Ok(Json(WebhookList { webhooks: hooks.into_iter().map(WebhookView::from).collect() }))
}

/// Unsubscribes: nothing more is sent, and the delivery log goes with it.
#[utoipa::path(delete, path = "/shops/{shop}/webhooks/{id}", tag = "events",
    params(("shop" = String, Path), ("id" = String, Path)), security(("shop_key" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn delete_webhook(
    State(state): State<AppState>,
    Path((_shop, id)): Path<(String, String)>,
    key: ShopKey,
) -> ApiResult<StatusCode> {
    let shop = key.id().clone();
    state.store().on_shop(&shop, "delete_webhook", |shard| shard.delete_webhook(&shop, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// `pending`, `delivered` or `dead`.
    #[param(pattern = "^(pending|delivered|dead)$")]
    status: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryLog {
    deliveries: Vec<Delivery>,
}

/// The subscription's delivery log, newest first: attempts, last answer, next try.
#[utoipa::path(get, path = "/shops/{shop}/webhooks/{id}/deliveries", tag = "events",
    params(("shop" = String, Path), ("id" = String, Path), DeliveryParams), security(("shop_key" = [])),
    responses((status = 200, body = DeliveryLog), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn list_deliveries(
    State(state): State<AppState>,
    Path((_shop, id)): Path<(String, String)>,
    key: ShopKey,
    ApiQuery(q): ApiQuery<DeliveryParams>,
) -> ApiResult<Json<DeliveryLog>> {
    let shop = key.id().clone();
    if q.status.as_deref().is_some_and(|s| !["pending", "delivered", "dead"].contains(&s)) {
        return Err(ApiError::bad_request("invalid_status", "status must be pending, delivered or dead"));
    }
    let limit =
        pagination::limit(q.limit, 100, 1000).ok_or_else(|| ApiError::bad_request("invalid_limit", "limit must be 1-1000"))?;
    Ok(Json(DeliveryLog {
        deliveries: state
            .store()
            .on_shop(&shop, "webhook_deliveries", |shard| shard.webhook_deliveries(&shop, &id, q.status.as_deref(), limit))
            .await?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// How many were put back in line.
    replayed: u64,
}

/// Puts the subscription's dead deliveries back in line, with fresh attempts and a new 24-hour
/// window; they go out in their original order.
#[utoipa::path(post, path = "/shops/{shop}/webhooks/{id}/replay", tag = "events",
    params(("shop" = String, Path), ("id" = String, Path)), security(("shop_key" = [])),
    responses((status = 202, body = Replayed), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn replay_webhook(
    State(state): State<AppState>,
    Path((_shop, id)): Path<(String, String)>,
    key: ShopKey,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let shop = key.id().clone();
    let now = state.clock.now();
    let deliver_by = now + chrono::Duration::seconds(state.config.events.webhooks.deliver_for_secs as i64);
    let replayed =
        state.store().on_shop(&shop, "replay_webhook", |shard| shard.replay_webhook(&shop, &id, deliver_by, now)).await?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    dead_letters: Vec<DeadLetter>,
}

/// The shop's dead letters, newest first.
///
/// Events of this shop that a configured sink (NATS, RabbitMQ, Kafka, webhook) gave up on after
/// its attempts.
#[utoipa::path(get, path = "/shops/{shop}/events/dead-letters", tag = "events",
    params(("shop" = String, Path)), security(("shop_key" = [])),
    responses((status = 200, body = DeadLetters), (status = 401, body = Problem)))]
async fn list_dead_letters(State(state): State<AppState>, key: ShopKey) -> ApiResult<Json<DeadLetters>> {
    let shop = key.id().clone();
    Ok(Json(DeadLetters {
        dead_letters: state.store().on_shop(&shop, "dead_letters", |shard| shard.dead_letters(&shop, 1000)).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct ReplayParams {
    /// Only this sink's dead letters; all sinks' when omitted.
    sink: Option<String>,
}

/// Asks the relay to publish the shop's dead letters again; each leaves the list once its sink
/// acknowledges it.
#[utoipa::path(post, path = "/shops/{shop}/events/dead-letters/replay", tag = "events",
    params(("shop" = String, Path), ReplayParams), security(("shop_key" = [])),
    responses((status = 202, body = Replayed), (status = 401, body = Problem)))]
async fn replay_dead_letters(
    State(state): State<AppState>,
    key: ShopKey,
    ApiQuery(q): ApiQuery<ReplayParams>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let shop = key.id().clone();
    let replayed =
        state.store().on_shop(&shop, "replay_dead_letters", |shard| shard.replay_dead_letters(&shop, q.sink.as_deref())).await?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { replayed })))
}
