//! Which store the suite runs against. `VITRINA_TEST_BACKEND=postgres` runs the same black-box
//! suite over PostgreSQL (URL in `VITRINA_TEST_PG_URL`): each app gets a fresh database copied
//! from a template migrated once per test process, and dropped afterwards.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::OnceCell;
use vitrina::config::{Config, ShardConfig, StoreKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("VITRINA_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("VITRINA_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// For a test of one store only. Its name says which (`_on_postgresql`, `_on_the_embedded_store`)
/// and each pass leaves the other store's out by name (`--skip`, reported as filtered out, not
/// passed); the PostgreSQL ones are also ignored by a plain `cargo test`. Run on the wrong store
/// by hand, it fails and says why.
pub fn require(store: Backend) {
    assert_eq!(backend(), store, "a test of {store:?} only (VITRINA_TEST_BACKEND selects the store)");
}

fn admin_url() -> String {
    std::env::var("VITRINA_TEST_PG_URL")
        .expect("VITRINA_TEST_BACKEND=postgres needs VITRINA_TEST_PG_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")
}

/// The admin URL with another database name.
pub fn url_for(db: &str) -> String {
    let url = admin_url();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => &base[..],
    };
    format!("{host_part}/{db}{query}")
}

async fn admin(sql: &str) {
    let (client, conn) =
        tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.expect("connect to the test PostgreSQL");
    let task = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

/// Databases of test processes that are gone (killed runs leave them behind).
async fn drop_leftovers() {
    let (client, conn) =
        tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.expect("connect to the test PostgreSQL");
    let task = tokio::spawn(conn);
    let rows = client.query(r"SELECT datname FROM pg_database WHERE datname LIKE 'vt\_%'", &[]).await.unwrap();
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').find_map(|part| part.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
    drop(client);
    let _ = task.await;
}

fn template() -> String {
    format!("vt_tpl_{}", std::process::id())
}

static TEMPLATE: OnceCell<()> = OnceCell::const_new();

/// Migrates a template database once per process; every test database is a cheap copy of it.
async fn ensure_template() {
    TEMPLATE
        .get_or_init(|| async {
            drop_leftovers().await;
            let tpl = template();
            admin(&format!("DROP DATABASE IF EXISTS {tpl} WITH (FORCE)")).await;
            admin(&format!("CREATE DATABASE {tpl}")).await;
            let cfg = Config::default();
            let store =
                vitrina::store::postgres::PgStore::connect("tpl", &url_for(&tpl), &[], &cfg.postgres, cfg.orders.max_group)
                    .await
                    .expect("migrate template");
            vitrina::store::Shard::close(&store);
            drop(store);
        })
        .await;
}

/// A fresh database for one app, named after this process so leftovers are recognisable.
pub async fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    ensure_template().await;
    let db = format!("vt_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    admin(&format!("CREATE DATABASE {db} TEMPLATE {}", template())).await;
    db
}

pub fn use_database(config: &mut Config, db: &str) {
    config.store = StoreKind::Postgres;
    config.postgres.shards = vec![ShardConfig { name: "shard1".into(), primary: url_for(db), replicas: Vec::new() }];
}

/// Drops a test database; runs on its own thread so it can be called from `Drop`.
pub fn drop_database(db: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")));
    })
    .join();
}

/// 64 transactions each inserting one outbox row for shop `acme` and committing out of position
/// order (later rows often first, after a sleep); one in eight rolls back. Each task yields its
/// event id when it committed.
pub fn late_committers(url: &str, kind: &'static str) -> Vec<tokio::task::JoinHandle<Option<String>>> {
    (0..64)
        .map(|i| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let tx = client.transaction().await.unwrap();
                let id = format!("late-{i}");
                tx.execute(
                    "INSERT INTO outbox (id, shop, aggregate, type, sequence, envelope, created_at)
                     VALUES ($1, 'acme', $1, $2, 1, json_build_object('id', $1::text)::text, now())",
                    &[&id, &kind],
                )
                .await
                .unwrap();
                let ms = ((i * 37) % 64) as f64 * 3.0;
                tx.execute("SELECT pg_sleep($1::float8 / 1000.0)", &[&ms]).await.unwrap();
                if i % 8 == 0 {
                    tx.rollback().await.unwrap();
                    None
                } else {
                    tx.commit().await.unwrap();
                    Some(id)
                }
            })
        })
        .collect()
}
