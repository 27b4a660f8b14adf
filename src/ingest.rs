//! Catalog feeds: a shop pushes NDJSON, one product upsert or stock set per line. The body is
//! read as a stream and applied in batched transactions; a bad line is reported and skipped,
//! never aborting the good ones, and re-sending a feed changes nothing.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;
use crate::auth::ShopKey;
use crate::catalog::{ProductBody, ProductInput};
use crate::error::{ApiError, ApiResult, Problem};
use crate::inventory::{valid_on_hand, MAX_QUANTITY};
use crate::money::Currency;
use crate::shops::ShopId;
use crate::store::StoreError;
use crate::validate;

/// One validated feed line.
#[derive(Debug, Clone)]
pub enum FeedOp {
    Product(ProductInput),
    Stock { sku: String, on_hand: i64 },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedLine {
    /// 1-based line number in the body.
    pub line: u64,
    pub error: String,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FeedReport {
    pub accepted: u64,
    pub rejected: Vec<RejectedLine>,
}

/// At most this many rejections are listed; the count of the rest is still exact.
const MAX_LISTED_REJECTIONS: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_feed)).layer(DefaultBodyLimit::disable())
}

/// Parses one NDJSON line into an operation for the shop.
pub fn parse_line(line: &[u8], currency: Currency) -> Result<FeedOp, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(mut obj) = value else { return Err("a line must be a JSON object".into()) };
    let kind = obj.remove("type");
    let sku = match obj.remove("sku") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("sku must be a string".into()),
        None => return Err("sku is required".into()),
    };
    validate::sku(&sku).map_err(|e| e.message)?;
    match kind.as_ref().and_then(Value::as_str) {
        Some("product") => {
            let body: ProductBody = serde_json::from_value(Value::Object(obj)).map_err(|e| format!("invalid product: {e}"))?;
            let input = body
                .validate(&sku, currency)
                .map_err(|errs| errs.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))?;
            Ok(FeedOp::Product(input))
        }
        Some("stock") => {
            let on_hand = match (obj.remove("on_hand"), obj.is_empty()) {
                (Some(Value::Number(n)), true) => n.as_i64().filter(|n| valid_on_hand(*n)),
                (Some(_), true) => None,
                (_, false) => return Err(format!("unknown fields in stock line: {:?}", obj.keys().collect::<Vec<_>>())),
                (None, _) => return Err("on_hand is required".into()),
            };
            let on_hand = on_hand.ok_or_else(|| format!("on_hand must be an integer from 0 to {MAX_QUANTITY}"))?;
            Ok(FeedOp::Stock { sku, on_hand })
        }
        Some(other) => Err(format!("unknown type {other:?}; expected \"product\" or \"stock\"")),
        None => Err("type is required (\"product\" or \"stock\")".into()),
    }
}

struct Batch {
    ops: Vec<FeedOp>,
    lines: Vec<u64>,
}

impl FeedReport {
    fn reject(&mut self, line: u64, error: String) {
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(RejectedLine { line, error });
        }
    }
}

async fn flush(state: &AppState, shop: &ShopId, batch: &mut Batch, report: &mut FeedReport) -> ApiResult<()> {
    if batch.ops.is_empty() {
        return Ok(());
    }
    let ops = std::mem::take(&mut batch.ops);
    let lines = std::mem::take(&mut batch.lines);
    let stocked: Vec<String> =
        ops.iter().filter_map(|op| if let FeedOp::Stock { sku, .. } = op { Some(sku.clone()) } else { None }).collect();
    let results = state.store().apply_feed(shop, ops, state.clock.now()).await?;
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
async fn post_feed(
    State(state): State<AppState>,
    key: ShopKey,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<FeedReport>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn parses_products_and_stock() {
        let p = parse_line(
            br#"{"type":"product","sku":"A-1","name":"Apple","category":"fruit","price":{"amount":120,"currency":"USD"}}"#,
            usd(),
        );
        assert!(matches!(p, Ok(FeedOp::Product(ref i)) if i.sku == "A-1" && i.price.amount == 120));
        let s = parse_line(br#"{"type":"stock","sku":"A-1","on_hand":7}"#, usd());
        assert!(matches!(s, Ok(FeedOp::Stock { ref sku, on_hand: 7 }) if sku == "A-1"));
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        for (line, needle) in [
            (&b"{not json"[..], "malformed"),
            (br#"[1,2]"#, "object"),
            (br#"{"type":"stock","on_hand":1}"#, "sku"),
            (br#"{"type":"stock","sku":"A","on_hand":-1}"#, "on_hand"),
            (br#"{"type":"stock","sku":"A","on_hand":1,"x":2}"#, "unknown fields"),
            (br#"{"type":"thing","sku":"A"}"#, "unknown type"),
            (br#"{"sku":"A"}"#, "type is required"),
            (br#"{"type":"product","sku":"A","name":"x","category":"c","price":{"amount":1,"currency":"EUR"}}"#, "currency"),
            (
                br#"{"type":"product","sku":"A","name":"x","category":"c","price":{"amount":1,"currency":"USD"},"colour":"red"}"#,
                "unknown field",
            ),
        ] {
            let err = parse_line(line, usd()).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
