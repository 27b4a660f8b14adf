//! Versioned schema migrations, applied in order at start inside one transaction each.

use rusqlite::Connection;

/// Append only: a released migration is never edited, a change is a new entry.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "shops, catalog, stock, orders, idempotency, seed collections",
        r#"
CREATE TABLE shops (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    currency     TEXT NOT NULL,
    api_key_hash BLOB NOT NULL,
    created_at   TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE products (
    shop         TEXT NOT NULL REFERENCES shops(id),
    sku          TEXT NOT NULL,
    name         TEXT NOT NULL,
    category     TEXT NOT NULL,
    price_amount INTEGER NOT NULL CHECK (price_amount >= 0),
    currency     TEXT NOT NULL,
    attributes   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (shop, sku)
) WITHOUT ROWID;
CREATE INDEX products_by_category ON products (shop, category, sku);

CREATE TABLE stock (
    shop       TEXT NOT NULL,
    sku        TEXT NOT NULL,
    on_hand    INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (shop, sku),
    FOREIGN KEY (shop, sku) REFERENCES products (shop, sku)
) WITHOUT ROWID;

CREATE TABLE orders (
    id           TEXT PRIMARY KEY,
    shop         TEXT NOT NULL REFERENCES shops(id),
    customer_id  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('placed','paid','shipped','delivered','cancelled')),
    total_amount INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    expires_at   TEXT
) WITHOUT ROWID;
CREATE INDEX orders_by_shop ON orders (shop, id);
CREATE INDEX orders_by_shop_status ON orders (shop, status, id);
CREATE INDEX orders_awaiting_payment ON orders (expires_at) WHERE status = 'placed';

CREATE TABLE order_lines (
    order_id   TEXT NOT NULL REFERENCES orders(id),
    line_no    INTEGER NOT NULL,
    sku        TEXT NOT NULL,
    name       TEXT NOT NULL,
    qty        INTEGER NOT NULL CHECK (qty > 0),
    unit_price INTEGER NOT NULL,
    line_total INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
) WITHOUT ROWID;

CREATE TABLE order_history (
    order_id TEXT NOT NULL REFERENCES orders(id),
    seq      INTEGER NOT NULL,
    status   TEXT NOT NULL,
    at       TEXT NOT NULL,
    reason   TEXT,
    PRIMARY KEY (order_id, seq)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    shop         TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    status_code  INTEGER NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (shop, key)
) WITHOUT ROWID;

CREATE TABLE seed_docs (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    age        INTEGER NOT NULL,
    extra      TEXT NOT NULL
);
CREATE INDEX seed_docs_by_collection ON seed_docs (collection, seq);
CREATE INDEX seed_docs_by_name ON seed_docs (collection, name, seq);
"#,
    ),
    (
        2,
        "shop moves: where a shop went, and the directory of pinned shops",
        r#"
ALTER TABLE shops ADD COLUMN moved_to TEXT;
CREATE TABLE shop_directory (
    shop      TEXT PRIMARY KEY,
    shard     TEXT NOT NULL,
    pinned_at TEXT NOT NULL
) WITHOUT ROWID;
"#,
    ),
    (
        3,
        "transactional outbox and per-aggregate sequences",
        r#"
CREATE TABLE aggregate_sequences (
    aggregate TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE outbox (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    shop       TEXT,
    aggregate  TEXT NOT NULL,
    type       TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    envelope   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX outbox_by_shop ON outbox (shop, position);
"#,
    ),
    (
        4,
        "relay progress per sink, dead letters, webhook subscriptions and deliveries, the inbox",
        r#"
CREATE TABLE relay_sinks (
    sink          TEXT PRIMARY KEY,
    cursor        TEXT,
    head_attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   TEXT,
    last_error    TEXT,
    delivered     BIGINT NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE dead_letters (
    sink       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    position   TEXT NOT NULL,
    shop       TEXT,
    type       TEXT NOT NULL,
    envelope   TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    error      TEXT NOT NULL,
    dead_at    TEXT NOT NULL,
    replay     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (sink, event_id)
) WITHOUT ROWID;
CREATE INDEX dead_letters_by_shop ON dead_letters (shop, dead_at);
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    shop       TEXT NOT NULL,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhooks_by_shop ON webhooks (shop, created_at);
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    webhook         TEXT NOT NULL,
    shop            TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    aggregate       TEXT NOT NULL,
    type            TEXT NOT NULL,
    envelope        TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    deliver_by      TEXT NOT NULL,
    lease_owner     TEXT,
    lease_until     TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    UNIQUE (webhook, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook, id);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook, aggregate, id) WHERE status = 'pending';
CREATE TABLE inbox (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
ALTER TABLE outbox DROP COLUMN status;
"#,
    ),
    (
        5,
        "events a moved shop brings along",
        r#"
-- Set on rows copied from another shard by a shop move: the feed serves them, the relay does not
-- publish them again (the shard they were written on does).
ALTER TABLE outbox ADD COLUMN origin TEXT;
ALTER TABLE outbox ADD COLUMN origin_position TEXT;
"#,
    ),
    (
        6,
        "a subscription's delivery log by status",
        r#"
CREATE INDEX webhook_deliveries_by_hook_status ON webhook_deliveries (webhook, status, id);
"#,
    ),
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, description, super::ts(chrono::Utc::now())],
        )?;
        tx.commit()?;
        applied.push(*version);
    }
    Ok(applied)
}

pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
