//! `POST /shops/{shop}/feed`: the body is read as a stream, never whole, and applied in batched
//! transactions; re-sending a feed changes nothing.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use futures::StreamExt;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{parse_line, FeedOp, FeedReport};
use crate::http::auth::ShopKey;
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::shops::ShopId;
use crate::state::AppState;
use crate::store::StoreError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_feed)).layer(DefaultBodyLimit::disable())
}

struct Batch {
    ops: Vec<FeedOp>,
    lines: Vec<u64>,
}

async fn flush(state: &AppState, shop: &ShopId, batch: &mut Batch, report: &mut FeedReport) -> ApiResult<()> {
    if batch.ops.is_empty() {
        return Ok(());
    }
    let ops = std::mem::take(&mut batch.ops);
    let lines = std::mem::take(&mut batch.lines);
    let stocked: Vec<String> =
        ops.iter().filter_map(|op| if let FeedOp::Stock { sku, .. } = op { Some(sku.clone()) } else { None }).collect();
    let results =
        state.store().on_shop(shop, "apply_feed", |shard| shard.apply_feed(shop, ops.clone(), state.clock.now())).await?;
    state.cache.invalidate(&crate::cache::shop_scope(shop.as_str())).await;
    // A stock line set to 0 is marked again by its event; forgetting first is the safe side.
    stocked.iter().for_each(|sku| state.sold_out.clear(shop.as_str(), sku));
    for (line, r) in lines.into_iter().zip(results) {
        match r {
            Ok(()) => report.accepted += 1,
            Err(StoreError::Backend(m)) => return Err(ApiError::Internal(m)),
            Err(e) => report.reject(line, e.to_string()),
        }
    }
    Ok(())
}

/// Push a catalog feed: NDJSON, one `{"type":"product","sku":...,"name":...,"category":...,"price":{...}}`
/// or `{"type":"stock","sku":...,"on_hand":n}` per line, applied in order in batched transactions.
#[utoipa::path(post, path = "/shops/{shop}/feed", tag = "ingest",
    params(("shop" = String, Path)),
    request_body(content = String, content_type = "application/x-ndjson"),
    security(("shop_key" = [])),
    responses((status = 200, body = FeedReport), (status = 401, body = Problem), (status = 404, body = Problem), (status = 413, body = Problem)))]
async fn post_feed(State(state): State<AppState>, key: ShopKey, headers: HeaderMap, body: Body) -> ApiResult<Json<FeedReport>> {
    let shop = key.id().clone();
    let record = key.0;
    let limits = state.config.limits.clone();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits.feed_body_bytes) {
        return Err(ApiError::too_large(limits.feed_body_bytes));
    }

    let currency = record.shop.currency;
    let mut report = FeedReport::default();
    let mut batch = Batch { ops: Vec::new(), lines: Vec::new() };
    let mut pending: Vec<u8> = Vec::new();
    let mut line_no: u64 = 0;
    let mut oversize = false; // inside a line that exceeded the limit: skip to its end
    let mut total = 0usize;
    let mut stream = body.into_data_stream();

    let handle_line = |line: &[u8], oversize: bool, report: &mut FeedReport, batch: &mut Batch, line_no: u64| {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if oversize {
            report.reject(line_no, format!("line longer than {} bytes", limits.feed_line_bytes));
        } else if !trimmed.iter().all(u8::is_ascii_whitespace) {
            match parse_line(trimmed, currency) {
                Ok(op) => {
                    batch.ops.push(op);
                    batch.lines.push(line_no);
                }
                Err(e) => report.reject(line_no, e),
            }
        }
    };

    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("unreadable_body", e.to_string()))?;
        total += chunk.len();
        if total > limits.feed_body_bytes {
            // Whatever was applied stays applied (each batch committed); the caller learns where it stopped.
            flush(&state, &shop, &mut batch, &mut report).await?;
            return Err(ApiError::too_large(limits.feed_body_bytes));
        }
        let mut rest: &[u8] = &chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            line_no += 1;
            if oversize {
                handle_line(&[], true, &mut report, &mut batch, line_no);
            } else {
                pending.extend_from_slice(&rest[..pos]);
                let too_long = pending.len() > limits.feed_line_bytes;
                handle_line(&pending, too_long, &mut report, &mut batch, line_no);
            }
            pending.clear();
            oversize = false;
            rest = &rest[pos + 1..];
            if batch.ops.len() >= limits.feed_batch {
                flush(&state, &shop, &mut batch, &mut report).await?;
            }
        }
        if !oversize {
            pending.extend_from_slice(rest);
            if pending.len() > limits.feed_line_bytes {
                oversize = true;
                pending.clear();
            }
        }
    }
    if total == 0 {
        // Nothing was sent: most likely a client that lost its body, not a feed of no changes.
        return Err(ApiError::Unprocessable {
            code: "empty_feed",
            detail: "the feed is empty: send one JSON object per line".into(),
        });
    }
    if oversize || !pending.is_empty() {
        line_no += 1;
        handle_line(&pending, oversize, &mut report, &mut batch, line_no);
    }
    flush(&state, &shop, &mut batch, &mut report).await?;
    // Parse refusals are known at once, store refusals at their batch's commit.
    report.rejected.sort_by_key(|r| r.line);
    metrics::counter!("vitrina_feed_lines_total", "result" => "accepted").increment(report.accepted);
    metrics::counter!("vitrina_feed_lines_total", "result" => "rejected").increment(report.rejected.len() as u64);
    Ok(Json(report))
}
