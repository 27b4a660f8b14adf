//! What a scenario needs before the load starts, made through the API (a shop of its own with
//! a catalog and stock, pushed as one feed; the seed collection's names), and the flash sale's
//! audit afterwards, read back from the shop's stock.

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::Method;

use super::client::Http;
use super::report::Sale;
use super::scenario::{Scenario, World};
use super::BenchArgs;

const CATEGORIES: usize = 10;

fn admin_token(args: &BenchArgs) -> anyhow::Result<String> {
    if let Some(t) = &args.admin_token {
        return Ok(t.clone());
    }
    std::fs::read_to_string("data/admin_token")
        .map(|t| t.trim().to_owned())
        .context("this scenario creates a shop: pass --admin-token (or VITRINA_ADMIN_TOKEN), or run where ./data/admin_token is")
}

async fn expect(
    http: &Http,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let a = http.send(method.clone(), path, bearer, &[], body.map(Bytes::from)).await.map_err(anyhow::Error::msg)?;
    if !(200..300).contains(&a.status) {
        bail!("{method} {path}: {} {}", a.status, String::from_utf8_lossy(&a.body));
    }
    Ok(serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null))
}

pub async fn prepare(http: &Http, args: &BenchArgs) -> anyhow::Result<World> {
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis());
    let mut world = World { collection: args.collection.clone(), run_id: run_id.clone(), ..World::default() };
    if matches!(args.scenario, Scenario::Seed | Scenario::Mixed) {
        let list = expect(http, Method::GET, &format!("/{}/users", args.collection), None, None).await?;
        world.users = list["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str().map(str::to_owned))
            .take(200)
            .collect();
    }
    if matches!(args.scenario, Scenario::Seed | Scenario::Probe) {
        return Ok(world);
    }
    let token = admin_token(args)?;
    world.shop = format!("bench-{run_id}");
    let shop = serde_json::json!({"id": world.shop, "name": "Bench", "currency": "USD"});
    let created = expect(http, Method::POST, "/shops", Some(&token), Some(shop.to_string())).await?;
    world.key = created["api_key"].as_str().context("no api_key in the created shop")?.to_owned();

    let browse = matches!(args.scenario, Scenario::Browse | Scenario::Mixed);
    world.skus = if browse { (0..args.products.max(1)).map(|k| format!("P{k:05}")).collect() } else { vec!["P00000".into()] };
    world.categories = (0..CATEGORIES).map(|c| format!("cat{c}")).collect();
    world.sale_skus =
        if args.scenario.buys() { (0..args.skus.max(1)).map(|k| format!("SALE{k:03}")).collect() } else { Vec::new() };
    let mut feed = String::new();
    for (k, sku) in world.skus.iter().enumerate() {
        let line = serde_json::json!({"type": "product", "sku": sku, "name": format!("Product {k}"),
            "category": world.categories[k % CATEGORIES], "price": {"amount": 500 + k as i64, "currency": "USD"}});
        feed += &format!("{line}\n{}\n", serde_json::json!({"type": "stock", "sku": sku, "on_hand": 1_000_000}));
    }
    for sku in &world.sale_skus {
        let line = serde_json::json!({"type": "product", "sku": sku, "name": "On sale", "category": "sale",
            "price": {"amount": 999, "currency": "USD"}});
        feed += &format!("{line}\n{}\n", serde_json::json!({"type": "stock", "sku": sku, "on_hand": args.stock}));
    }
    let a = http
        .send(
            Method::POST,
            &format!("/shops/{}/feed", world.shop),
            Some(&world.key),
            &[("content-type", "application/x-ndjson")],
            Some(Bytes::from(feed)),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let report: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    if a.status != 200 || report["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
        bail!("loading the bench catalog: {} {}", a.status, String::from_utf8_lossy(&a.body));
    }
    Ok(world)
}

/// Orders accepted and units gone against the stock there was; oversell must be 0.
pub async fn audit(http: &Http, world: &World, stock: i64, accepted: u64) -> anyhow::Result<Sale> {
    let mut sold = 0;
    for sku in &world.sale_skus {
        let s = expect(http, Method::GET, &format!("/shops/{}/stock/{sku}", world.shop), None, None).await?;
        let (on_hand, reserved) = (s["on_hand"].as_i64().unwrap_or(0), s["reserved"].as_i64().unwrap_or(0));
        sold += reserved + (stock - on_hand);
    }
    let initial = stock * world.sale_skus.len() as i64;
    let oversell = (accepted as i64).max(sold) - initial;
    Ok(Sale { stock_initial: initial, orders_accepted: accepted, stock_sold: sold, oversell: oversell.max(0), ..Sale::default() })
}
