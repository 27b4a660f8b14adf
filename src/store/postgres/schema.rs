//! Versioned schema for a PostgreSQL shard, applied at start under an advisory lock so several
//! instances starting at once migrate exactly once.

use deadpool_postgres::Client;

use crate::store::{StoreError, StoreResult};

/// Any fixed number: the advisory lock key that serializes migrations across instances.
const MIGRATION_LOCK: i64 = 0x0076_6974_7269_6e61;

/// Append only, like the SQLite list; same tables, PostgreSQL types. Keys that are paged over
/// sort bytewise (`COLLATE "C"`), as SQLite does, so cursors mean the same on both.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "shops, catalog, stock, orders, idempotency, seed collections",
        r#"
CREATE TABLE shops (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    currency     TEXT NOT NULL,
    api_key_hash BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE products (
    shop         TEXT NOT NULL REFERENCES shops (id),
    sku          TEXT COLLATE "C" NOT NULL,
    name         TEXT NOT NULL,
    category     TEXT NOT NULL,
    price_amount BIGINT NOT NULL CHECK (price_amount >= 0),
    currency     TEXT NOT NULL,
    attributes   JSONB NOT NULL,
    version      BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (shop, sku)
);
CREATE INDEX products_by_category ON products (shop, category, sku);

CREATE TABLE stock (
    shop       TEXT NOT NULL,
    sku        TEXT COLLATE "C" NOT NULL,
    on_hand    BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved   BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (shop, sku),
    FOREIGN KEY (shop, sku) REFERENCES products (shop, sku),
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

CREATE TABLE orders (
    id           TEXT COLLATE "C" PRIMARY KEY,
    shop         TEXT NOT NULL REFERENCES shops (id),
    customer_id  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('placed','paid','shipped','delivered','cancelled')),
    total_amount BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ
);
CREATE INDEX orders_by_shop ON orders (shop, id);
CREATE INDEX orders_by_shop_status ON orders (shop, status, id);
CREATE INDEX orders_awaiting_payment ON orders (expires_at) WHERE status = 'placed';

CREATE TABLE order_lines (
    order_id   TEXT NOT NULL REFERENCES orders (id),
    line_no    INT NOT NULL,
    sku        TEXT COLLATE "C" NOT NULL,
    name       TEXT NOT NULL,
    qty        BIGINT NOT NULL CHECK (qty > 0),
    unit_price BIGINT NOT NULL,
    line_total BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_history (
    order_id TEXT NOT NULL REFERENCES orders (id),
    seq      INT NOT NULL,
    status   TEXT NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    reason   TEXT,
    PRIMARY KEY (order_id, seq)
);

CREATE TABLE idempotency_keys (
    shop         TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    status_code  INT NOT NULL,
    response     TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (shop, key)
);

CREATE TABLE seed_docs (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    age        BIGINT NOT NULL,
    extra      JSONB NOT NULL
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
    pinned_at TIMESTAMPTZ NOT NULL
);
"#,
    ),
    (
        3,
        "transactional outbox and per-aggregate sequences",
        r#"
CREATE TABLE aggregate_sequences (
    aggregate TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL
);
CREATE TABLE outbox (
    position   BIGSERIAL PRIMARY KEY,
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id         TEXT NOT NULL UNIQUE,
    shop       TEXT,
    aggregate  TEXT NOT NULL,
    type       TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    envelope   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX outbox_by_shop ON outbox (shop, txid, position);
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
    lease_until   TIMESTAMPTZ,
    last_error    TEXT,
    delivered     BIGINT NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE TABLE dead_letters (
    sink       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    position   TEXT NOT NULL,
    shop       TEXT,
    type       TEXT NOT NULL,
    envelope   TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    error      TEXT NOT NULL,
    dead_at    TIMESTAMPTZ NOT NULL,
    replay     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (sink, event_id)
);
CREATE INDEX dead_letters_by_shop ON dead_letters (shop, dead_at);
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    shop       TEXT NOT NULL,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhooks_by_shop ON webhooks (shop, created_at);
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    webhook         TEXT NOT NULL,
    shop            TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    aggregate       TEXT NOT NULL,
    type            TEXT NOT NULL,
    envelope        TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    deliver_by      TIMESTAMPTZ NOT NULL,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (webhook, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook, id);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook, aggregate, id) WHERE status = 'pending';
CREATE TABLE inbox (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
-- The outbox becomes partitioned by day so retention drops whole partitions. Days already holding
-- events, and the next few, get their partition now; a default partition catches anything else.
ALTER TABLE outbox RENAME TO outbox_unpartitioned;
ALTER INDEX outbox_pkey RENAME TO outbox_unpartitioned_pkey;
ALTER SEQUENCE outbox_position_seq OWNED BY NONE;
CREATE TABLE outbox (
    position   BIGINT NOT NULL DEFAULT nextval('outbox_position_seq'),
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id         TEXT NOT NULL,
    shop       TEXT,
    aggregate  TEXT NOT NULL,
    type       TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    envelope   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (created_at, position)
) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_default PARTITION OF outbox DEFAULT;
DO $$
DECLARE d date;
BEGIN
    FOR d IN SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM outbox_unpartitioned
             UNION SELECT (now() AT TIME ZONE 'UTC')::date + i FROM generate_series(0, 2) AS i
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF outbox FOR VALUES FROM (%L) TO (%L)',
            'outbox_' || to_char(d, 'YYYYMMDD'), d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;
INSERT INTO outbox (position, txid, id, shop, aggregate, type, sequence, envelope, created_at)
    SELECT position, txid, id, shop, aggregate, type, sequence, envelope, created_at FROM outbox_unpartitioned;
DROP TABLE outbox_unpartitioned;
ALTER SEQUENCE outbox_position_seq OWNED BY outbox.position;
CREATE INDEX outbox_in_feed_order ON outbox (txid, position);
CREATE INDEX outbox_by_shop_in_feed_order ON outbox (shop, txid, position);
"#,
    ),
    (
        5,
        "events a moved shop brings along",
        r#"
-- Set on rows copied from another shard by a shop move: the feed serves them, the relay does not
-- publish them again (the shard they were written on does).
ALTER TABLE outbox ADD COLUMN origin TEXT, ADD COLUMN origin_position TEXT;
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

pub async fn migrate(client: &mut Client) -> StoreResult<Vec<i32>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT PRIMARY KEY, description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
    let mut applied = Vec::new();
    for (version, description, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, description) VALUES ($1, $2)", &[version, description]).await?;
        applied.push(*version);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(applied)
}
