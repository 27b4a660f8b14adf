use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http::auth::ShopKey;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::ApiQuery;
use crate::pagination;
use crate::state::AppState;
use crate::store::{EventPage, StoreError};

pub const MAX_EVENTS: usize = 1000;
/// Longer than any `<transaction id>.<row position>` either store writes.
const MAX_POSITION_LEN: usize = 64;

/// A position the feed did not issue is the caller's mistake: 400, not 422.
fn position_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid { code, detail } => ApiError::BadRequest { code, detail },
        other => other.into(),
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events)).routes(routes!(stream_events))
}

/// How often an idle stream looks for new events.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// A `next` this feed returned; omit to start from the beginning.
    #[param(min_length = 1, max_length = 64)]
    after: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A shop's events in commit order (CloudEvents 1.0), for consumers that poll: keep calling with
/// `after` = the previous `next`. An event committed late is never skipped.
#[utoipa::path(get, path = "/shops/{shop}/events", tag = "events",
    params(("shop" = String, Path), EventParams),
    security(("shop_key" = [])),
    responses((status = 200, body = EventPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn list_events(
    State(state): State<AppState>,
    key: ShopKey,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Json<EventPage>> {
    let shop = key.id().clone();
    let limit = pagination::limit(q.limit, 100, MAX_EVENTS)
        .ok_or_else(|| ApiError::bad_request("invalid_limit", format!("limit must be 1-{MAX_EVENTS}")))?;
    if q.after.as_ref().is_some_and(|a| a.len() > MAX_POSITION_LEN) {
        return Err(ApiError::bad_request("invalid_position", "after is not a position of this feed"));
    }
    let page = state.store().events_after(&shop, q.after.as_deref(), limit).await.map_err(position_error)?;
    Ok(Json(page))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// An unknown parameter is refused, not ignored: `?customer_id=x` must not list everyone's orders.
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Start after this position (a reconnecting client sends `Last-Event-ID` instead).
    #[param(min_length = 1, max_length = 64)]
    after: Option<String>,
}

/// The same feed as Server-Sent Events: each event's `event:` is its type, `data:` the
/// CloudEvent; the last event of each batch carries the position as `id:`, so a client that
/// reconnects with `Last-Event-ID` continues from there (at least once: dedupe by event id).
#[utoipa::path(get, path = "/shops/{shop}/events/stream", tag = "events",
    params(("shop" = String, Path), StreamParams),
    security(("shop_key" = [])),
    responses((status = 200, content_type = "text/event-stream", description = "CloudEvents as SSE"),
        (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn stream_events(
    State(state): State<AppState>,
    key: ShopKey,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let shop = key.id().clone();
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let after = resume.or(q.after);
    // Too long to be a position: refused, not dropped (which would replay the feed from its start).
    if after.as_ref().is_some_and(|a| a.len() > MAX_POSITION_LEN) {
        return Err(ApiError::bad_request("invalid_position", "after is not a position of this feed"));
    }
    // Validate the position once, up front, so a bad one is a 400 rather than a silent stream.
    state.store().events_after(&shop, after.as_deref(), 1).await.map_err(position_error)?;
    let stream = event_stream(state, shop, after);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event_stream(
    state: AppState,
    shop: crate::shops::ShopId,
    after: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (state, shop, after, std::collections::VecDeque::<Event>::new()),
        |(state, shop, mut after, mut queue)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((Ok(ev), (state, shop, after, queue)));
                }
                // A draining instance ends its streams, so shutdown is not held up by them.
                if !state.is_ready() {
                    return None;
                }
                match state.store().events_after(&shop, after.as_deref(), 100).await {
                    Ok(page) if !page.events.is_empty() => {
                        let n = page.events.len();
                        for (i, e) in page.events.into_iter().enumerate() {
                            let kind = e["type"].as_str().unwrap_or("event").to_owned();
                            let mut ev = Event::default().event(kind).data(e.to_string());
                            if i + 1 == n {
                                if let Some(next) = &page.next {
                                    ev = ev.id(next.clone());
                                }
                            }
                            queue.push_back(ev);
                        }
                        after = page.next;
                    }
                    Ok(_) => tokio::time::sleep(STREAM_POLL).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream read failed; retrying");
                        tokio::time::sleep(STREAM_POLL * 4).await;
                    }
                }
            }
        },
    )
}
