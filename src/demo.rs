//! Demo data: the seed's `helloDoc` collection (1000 users `{"name": "ly<i>", "age": <i>}`, as
//! pymongo-api's init script made them) and a demo shop with products and stock. Idempotent:
//! what exists is left alone, so running it again changes nothing.

use crate::catalog::{PriceBody, ProductBody};
use crate::clock::Clock;
use crate::collections::UserDoc;
use crate::config::Config;
use crate::money::Currency;
use crate::secrets::write_private;
use crate::shops::{generate_api_key, hash_secret, NewShop, ShopId};
use crate::store::{Store, StoreError, Upserted};

pub const HELLO_COLLECTION: &str = "helloDoc";
pub const HELLO_USERS: i64 = 1000;
pub const DEMO_SHOP: &str = "demo";
pub const DEMO_KEY_FILE: &str = "demo-shop.key";
/// A SKU and a user name the demo data holds (the API document's examples).
pub const DEMO_SKU: &str = "TSHIRT-BLK-M";
pub const HELLO_USER: &str = "ly1";

/// (sku, name, category, price in cents, stock)
const DEMO_PRODUCTS: &[(&str, &str, &str, i64, i64)] = &[
    (DEMO_SKU, "T-shirt, black, M", "apparel", 1999, 120),
    ("TSHIRT-BLK-L", "T-shirt, black, L", "apparel", 1999, 80),
    ("HOODIE-GRY-M", "Hoodie, grey, M", "apparel", 4990, 40),
    ("SOCKS-3PK", "Socks, 3 pairs", "apparel", 899, 300),
    ("CAP-RED", "Baseball cap, red", "apparel", 1450, 60),
    ("MUG-CLASSIC", "Classic mug 350 ml", "kitchen", 1200, 200),
    ("KETTLE-1L", "Electric kettle 1 l", "kitchen", 3499, 25),
    ("PAN-28", "Frying pan 28 cm", "kitchen", 2890, 35),
    ("KNIFE-CHEF", "Chef's knife 20 cm", "kitchen", 5400, 15),
    ("BOARD-OAK", "Oak cutting board", "kitchen", 2250, 50),
    ("EARBUDS-X1", "Wireless earbuds X1", "electronics", 7900, 70),
    ("CHARGER-65W", "USB-C charger 65 W", "electronics", 3900, 90),
    ("CABLE-USBC-2M", "USB-C cable 2 m", "electronics", 1290, 400),
    ("SPEAKER-MINI", "Bluetooth speaker mini", "electronics", 4500, 30),
    ("POWERBANK-10K", "Power bank 10 000 mAh", "electronics", 2990, 10),
    ("NOTEBOOK-A5", "Notebook A5, dotted", "stationery", 690, 500),
    ("PEN-GEL-BLU", "Gel pen, blue", "stationery", 150, 1000),
    ("PLANNER-2027", "Planner 2027", "stationery", 1890, 0),
    ("BACKPACK-20L", "Backpack 20 l", "bags", 6900, 20),
    ("TOTE-CANVAS", "Canvas tote bag", "bags", 1590, 150),
];

pub struct SeedReport {
    pub users_inserted: u64,
    pub products_created: u64,
    pub demo_shop_key: Option<String>,
}

/// Fixed ids for the seed documents: instances seeding an empty store at the same moment insert
/// each document once (the store skips an id it already has).
fn seed_id(i: i64) -> String {
    format!("5eed0000{i:016x}")
}

/// Runs at start when configured: fills only what is missing.
pub async fn seed_if_empty(store: &Store, config: &Config, clock: &Clock) -> anyhow::Result<()> {
    let report = seed(store, config, clock, &|_, _| {}).await?;
    if report.users_inserted > 0 || report.products_created > 0 {
        tracing::info!(users = report.users_inserted, products = report.products_created, "demo data seeded");
    }
    Ok(())
}

/// `progress(done, total)` is called as work proceeds.
pub async fn seed(
    store: &Store,
    config: &Config,
    clock: &Clock,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<SeedReport> {
    let total = HELLO_USERS as u64 + DEMO_PRODUCTS.len() as u64;
    let mut report = SeedReport { users_inserted: 0, products_created: 0, demo_shop_key: None };

    let existing = store.count_users(HELLO_COLLECTION).await?;
    if !existing.unavailable.is_empty() {
        // Counting only the shards that answered would seed duplicates onto them.
        anyhow::bail!("cannot seed while shards {:?} do not answer", existing.unavailable);
    }
    if existing.value == 0 {
        let docs = (0..HELLO_USERS)
            .map(|i| UserDoc { id: seed_id(i), name: format!("ly{i}"), age: i, extra: Default::default() })
            .collect();
        // One transaction: the collection is either fully seeded or not at all.
        store.insert_users(HELLO_COLLECTION, docs).await?;
        report.users_inserted = HELLO_USERS as u64;
    }
    progress(HELLO_USERS as u64, total);

    let shop = ShopId::parse(DEMO_SHOP).map_err(|e| anyhow::anyhow!(e.message))?;
    let usd = Currency::parse("USD").expect("USD is ISO 4217");
    if store.get_shop(&shop).await?.is_none() {
        let key = generate_api_key();
        let created = store
            .create_shop(NewShop {
                id: shop.clone(),
                name: "Demo Shop".into(),
                currency: usd,
                api_key_hash: hash_secret(&key),
                created_at: clock.now(),
            })
            .await;
        match created {
            Ok(_) => {
                let path = config.data_dir.join(DEMO_KEY_FILE);
                write_private(&path, &key)?;
                println!("Demo shop '{DEMO_SHOP}' created; its API key is in {}", path.display());
                report.demo_shop_key = Some(key);
            }
            // Another instance seeding at the same moment created it first.
            Err(StoreError::Conflict { code: "shop_exists", .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (i, (sku, name, category, cents, on_hand)) in DEMO_PRODUCTS.iter().enumerate() {
        let body = ProductBody {
            name: (*name).into(),
            category: (*category).into(),
            price: PriceBody { amount: *cents, currency: "USD".into() },
            attributes: Some(serde_json::json!({ "demo": true })),
        };
        let input = body.validate(sku, usd).map_err(|e| anyhow::anyhow!("demo product {sku}: {e:?}"))?;
        let (_, upserted) =
            store.on_shop(&shop, "upsert_product", |shard| shard.upsert_product(&shop, input.clone(), clock.now())).await?;
        if upserted == Upserted::Created {
            store.on_shop(&shop, "set_stock", |shard| shard.set_stock(&shop, sku, *on_hand, clock.now())).await?;
            report.products_created += 1;
        }
        progress(HELLO_USERS as u64 + i as u64 + 1, total);
    }
    Ok(report)
}
