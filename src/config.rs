//! Configuration, in layers from low to high: built-in defaults, the TOML file (`--config`),
//! `VITRINA_*` environment variables, command-line flags. Nested keys are reached from the
//! environment with a double underscore: `VITRINA_SQLITE__SYNCHRONOUS=normal`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use crate::cache::config::CacheConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: String,
    /// Where the embedded store and generated secrets live.
    pub data_dir: PathBuf,
    /// Token for admin calls (creating shops). Generated into the data dir when unset.
    pub admin_token: Option<String>,
    /// `auto` (pretty on a terminal, JSON otherwise), `json` or `pretty`.
    pub log_format: String,
    /// Which backend holds the data: `sqlite` (embedded, in `data_dir`) or `postgres`.
    pub store: StoreKind,
    pub postgres: PostgresConfig,
    pub routing: RoutingConfig,
    /// Log filter in `RUST_LOG` syntax.
    pub log_level: String,
    /// Fill demo data on first start when the store is empty.
    pub seed_on_start: bool,
    /// The database name the seed API reports as `mongo_db`.
    pub mongo_db: String,
    pub orders: OrdersConfig,
    pub sqlite: SqliteConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub admission: crate::admission::config::AdmissionConfig,
    pub events: crate::events::config::EventsConfig,
    pub telemetry: crate::telemetry::config::TelemetryConfig,
    pub breakers: crate::breaker::BreakersConfig,
    /// Which unit (deployment of seed 001: a region's own vitrina) this instance belongs to.
    pub unit: UnitConfig,
    /// Cross-origin requests from browsers (a storefront on another origin).
    pub cors: CorsConfig,
    /// Self-registration in a service registry (etcd) for the gateway to find this instance.
    pub discovery: crate::discovery::config::DiscoveryConfig,
    /// How long to keep serving in-flight requests after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// How long `/health/ready` reports not-ready before the listener closes, so balancers
    /// stop sending new requests first.
    pub shutdown_drain_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connections per shard primary.
    pub pool_size: usize,
    /// Bound on opening a connection: a dead primary fails requests fast instead of hanging.
    pub connect_timeout_ms: u64,
    /// Bound on waiting for a free pooled connection.
    pub acquire_timeout_ms: u64,
    /// Bound on one statement, enforced by the server (lock waits included); 0 for none.
    pub statement_timeout_ms: u64,
    /// A connection whose sent data goes unacknowledged this long is dead (TCP_USER_TIMEOUT),
    /// so a primary lost to a network partition fails calls instead of hanging them.
    pub tcp_user_timeout_ms: u64,
    /// Replicas serve catalog and seed reads only while their replay lag is within this.
    pub replica_lag_budget_ms: u64,
    pub shards: Vec<ShardConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Virtual nodes per shard on the ring. Every instance must use the same value.
    pub vnodes: usize,
    /// Per-shard bound on a read gathered from every shard; a slower shard is reported, not awaited.
    pub gather_timeout_ms: u64,
    /// How often the directory of moved shops is re-read (a stale one is corrected on the spot).
    pub directory_refresh_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { vnodes: crate::routing::ring::DEFAULT_VNODES, gather_timeout_ms: 2_000, directory_refresh_ms: 1_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    /// Connection URL of the primary, e.g. `postgres://vitrina@127.0.0.1:5432/vitrina`.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            pool_size: 16,
            connect_timeout_ms: 2_000,
            acquire_timeout_ms: 2_000,
            statement_timeout_ms: 10_000,
            tcp_user_timeout_ms: 10_000,
            replica_lag_budget_ms: 1_000,
            shards: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// Unpaid orders are cancelled and their stock released after this hold.
    pub hold_secs: u64,
    /// How often the sweeper looks for expired holds.
    pub sweep_interval_ms: u64,
    /// How long a SKU seen with nothing available is refused from memory before the store is
    /// asked again (a stock event that makes it available ends this sooner). 0 turns it off.
    pub sold_out_ttl_ms: u64,
    /// At most how many placements for one shard are decided and committed together (the ones
    /// that queued while its previous group committed; an idle shard takes an order alone).
    pub max_group: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// Number of shard files in the data dir (1: `vitrina.db`; more: `shard1.db`, `shard2.db`, ...).
    /// Changing it later moves shops between files: not supported without a migration.
    pub shards: usize,
    /// `full` (an acknowledged write survives a power cut) or `normal` (survives a crash of
    /// the process, not of the machine).
    pub synchronous: Synchronous,
    pub readers: usize,
    pub busy_timeout_ms: u64,
    /// Most operations committed by one fsync.
    pub max_batch: usize,
    /// Writes waiting for the writer before callers are made to wait.
    pub queue_len: usize,
    /// WAL pages after which a commit copies the WAL back into the database file (as SQLite's
    /// `wal_autocheckpoint`, 0 for never; timed in `vitrina_sqlite_checkpoint_seconds`). Each
    /// such commit stalls the single writer while it copies and fsyncs; fewer, larger checkpoints
    /// copy a hot page once instead of once per checkpoint.
    pub wal_autocheckpoint_pages: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnitConfig {
    /// Every answer names it in `vitrina-unit`.
    pub id: String,
    pub region: String,
}

impl Default for UnitConfig {
    fn default() -> Self {
        UnitConfig { id: "local".into(), region: "local".into() }
    }
}

impl UnitConfig {
    fn check(&self) -> anyhow::Result<()> {
        let fits =
            |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !fits(&self.id) || !fits(&self.region) {
            bail!("unit.id and unit.region: 1-32 letters, digits, '-' or '_'");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins a browser may call the API from, e.g. `["https://shop.example"]`; `["*"]` allows
    /// any (credentials are bearer tokens, never cookies). Empty: no CORS headers, preflights
    /// are not answered.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig { allowed_origins: Vec::new(), max_age_secs: 600 }
    }
}

impl CorsConfig {
    fn check(&self) -> anyhow::Result<()> {
        for o in &self.allowed_origins {
            let origin = o != "*" && (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
            if o != "*" && !origin {
                bail!("cors.allowed_origins: {o:?} is not an origin (scheme://host[:port], no path) or \"*\"");
            }
        }
        if self.allowed_origins.len() > 1 && self.allowed_origins.iter().any(|o| o == "*") {
            bail!("cors.allowed_origins: \"*\" stands alone");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub json_body_bytes: usize,
    pub feed_body_bytes: usize,
    pub feed_line_bytes: usize,
    /// Feed lines applied per transaction.
    pub feed_batch: usize,
    pub page_default: usize,
    pub page_max: usize,
    pub request_timeout_secs: u64,
    /// How long a JSON body may take to arrive after its request's head; slower is 408.
    pub body_read_timeout_secs: u64,
    /// How long a connection may take to send a request head, counted from when it starts
    /// waiting for one: a slow head, a new connection that stays silent and an idle keep-alive
    /// connection are all closed after this.
    pub header_read_timeout_secs: u64,
    /// Open connections per client address, 0 for no bound. Behind a gateway every request
    /// comes from its few addresses: list them in `unbounded_clients`.
    pub connections_per_client: usize,
    /// Client ranges the bound does not apply to: by default loopback, where a local gateway,
    /// the health checker and `vitrina bench` connect from.
    pub unbounded_clients: Vec<ipnet::IpNet>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            store: StoreKind::Sqlite,
            postgres: PostgresConfig::default(),
            routing: RoutingConfig::default(),
            log_format: "auto".into(),
            log_level: "info".into(),
            seed_on_start: true,
            mongo_db: "somedb".into(),
            orders: OrdersConfig::default(),
            sqlite: SqliteConfig::default(),
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            admission: Default::default(),
            events: Default::default(),
            telemetry: Default::default(),
            breakers: Default::default(),
            discovery: Default::default(),
            unit: Default::default(),
            cors: Default::default(),
            shutdown_grace_secs: 30,
            shutdown_drain_secs: 0,
        }
    }
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig { hold_secs: 15 * 60, sweep_interval_ms: 10_000, sold_out_ttl_ms: 5_000, max_group: 64 }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            shards: 1,
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout_ms: 5_000,
            max_batch: 256,
            queue_len: 4096,
            wal_autocheckpoint_pages: 1000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            json_body_bytes: 1024 * 1024,
            feed_body_bytes: 256 * 1024 * 1024,
            feed_line_bytes: 64 * 1024,
            feed_batch: 500,
            page_default: 20,
            page_max: 100,
            request_timeout_secs: 30,
            body_read_timeout_secs: 10,
            header_read_timeout_secs: 10,
            connections_per_client: 256,
            unbounded_clients: ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect(),
        }
    }
}

/// Overrides taken from command-line flags: the highest layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Builds the effective configuration from every layer.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> anyhow::Result<Config> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_layers(file, &env, flags)
    }

    pub fn from_layers(file: Option<&Path>, env: &[(String, String)], flags: &Overrides) -> anyhow::Result<Config> {
        let mut merged = toml::Table::try_from(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
            merge(&mut merged, table);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("VITRINA_") else { continue };
            if rest.starts_with("TEST_") {
                continue; // test-harness settings, not server configuration
            }
            if is_service_link(rest) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut merged, &path, value).with_context(|| format!("environment variable {key}"))?;
        }
        if let Some(l) = &flags.listen {
            merged.insert("listen".into(), toml::Value::String(l.clone()));
        }
        if let Some(d) = &flags.data_dir {
            merged.insert("data_dir".into(), toml::Value::String(d.display().to_string()));
        }
        let config: Config = toml::Value::Table(merged).try_into().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.limits.page_max == 0 || self.limits.page_default == 0 || self.limits.page_default > self.limits.page_max {
            bail!("limits: need 0 < page_default <= page_max");
        }
        if self.routing.vnodes == 0 || self.sqlite.shards == 0 {
            bail!("routing.vnodes and sqlite.shards must be positive");
        }
        if self.limits.body_read_timeout_secs == 0 || self.limits.header_read_timeout_secs == 0 {
            bail!("limits: body_read_timeout_secs and header_read_timeout_secs must be positive");
        }
        if self.limits.feed_batch == 0 || self.sqlite.max_batch == 0 || self.orders.max_group == 0 {
            bail!("feed_batch, sqlite.max_batch and orders.max_group must be positive");
        }
        if self.store == StoreKind::Postgres {
            if self.postgres.shards.is_empty() {
                bail!("store = \"postgres\" needs a [[postgres.shards]] entry with a primary URL");
            }
            let mut names: Vec<&str> = self.postgres.shards.iter().map(|s| s.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            if names.len() != self.postgres.shards.len() || names.iter().any(|n| n.is_empty()) {
                bail!("postgres shard names must be unique and non-empty");
            }
        }
        self.events.check()?;
        self.cache.check()?;
        self.admission.check()?;
        self.telemetry.check()?;
        self.breakers.check()?;
        self.discovery.check()?;
        self.unit.check()?;
        self.cors.check()?;
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                bail!("admin_token must be at least 16 characters");
            }
        }
        Ok(())
    }

    /// The configuration as TOML with secrets masked, for `vitrina config`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.admin_token.is_some() {
            shown.admin_token = Some("<set>".into());
        }
        shown.events = self.events.redacted();
        shown.cache = self.cache.redacted();
        shown.telemetry.otlp_endpoint = self.telemetry.otlp_endpoint.as_deref().map(crate::secrets::mask_url_password);
        for shard in &mut shown.postgres.shards {
            shard.primary = crate::secrets::mask_url_password(&shard.primary);
            shard.replicas = shard.replicas.iter().map(|r| crate::secrets::mask_url_password(r)).collect();
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

/// Environment values take the type of the setting they replace: text settings (and unset
/// optional ones) stay text, numbers and booleans are parsed as such.
fn env_value(existing: Option<&toml::Value>, raw: &str) -> toml::Value {
    match existing {
        None | Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        Some(_) => {
            if let Ok(i) = raw.parse::<i64>() {
                return toml::Value::Integer(i);
            }
            if let (Some(toml::Value::Float(_)), Ok(f)) = (existing, raw.parse::<f64>()) {
                return toml::Value::Float(f);
            }
            match raw {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(raw.to_owned()),
            }
        }
    }
}

/// Kubernetes gives every pod, for a Service named `vitrina` in its namespace,
/// `VITRINA_SERVICE_HOST`, `VITRINA_SERVICE_PORT[_<name>]`, `VITRINA_PORT=tcp://…` and
/// `VITRINA_PORT_<n>_<proto>[_…]`. They describe the Service, not this process's settings, and
/// none of them is a setting's name, so they are skipped rather than refused.
fn is_service_link(rest: &str) -> bool {
    rest == "PORT"
        || rest.starts_with("PORT_")
        || rest == "SERVICE_HOST"
        || rest == "SERVICE_PORT"
        || rest.starts_with("SERVICE_PORT_")
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> anyhow::Result<()> {
    match path {
        [] => bail!("empty key"),
        [last] => {
            let value = env_value(table.get(last), raw);
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => match table.get_mut(head) {
            Some(toml::Value::Table(t)) => set_path(t, rest, raw),
            _ => bail!("unknown section {head}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_layers(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.sqlite.synchronous, Synchronous::Full);
        assert_eq!(c.orders.hold_secs, 900);
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nmongo_db = \"fromfile\"\n[sqlite]\nreaders = 2\n").unwrap();
        let e = env(&[("VITRINA_LISTEN", "127.0.0.1:2"), ("VITRINA_SQLITE__SYNCHRONOUS", "normal"), ("OTHER", "x")]);
        let flags = Overrides { listen: Some("127.0.0.1:3".into()), data_dir: None };
        let c = Config::from_layers(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3");
        assert_eq!(c.mongo_db, "fromfile");
        assert_eq!(c.sqlite.readers, 2);
        assert_eq!(c.sqlite.synchronous, Synchronous::Normal);
        let c = Config::from_layers(Some(&file), &e, &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
    }

    #[test]
    fn a_fractional_setting_takes_a_fractional_value_from_the_environment() {
        let e = env(&[("VITRINA_ADMISSION__SHOP_RPS", "2.5"), ("VITRINA_ADMISSION__ADAPTIVE__TOLERANCE", "3")]);
        let c = Config::from_layers(None, &e, &Overrides::default()).unwrap();
        assert_eq!((c.admission.shop_rps, c.admission.adaptive.tolerance), (2.5, 3.0));
    }

    #[test]
    fn cors_origins_and_unit_ids_are_checked() {
        let with = |pairs: &[(&str, &str)]| Config::from_layers(None, &env(pairs), &Overrides::default());
        let toml = |text: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::from_layers(Some(&path), &[], &Overrides::default())
        };
        assert!(toml("[cors]\nallowed_origins = [\"https://shop.example:8443\"]").is_ok());
        assert!(toml("[cors]\nallowed_origins = [\"*\"]").is_ok());
        assert!(toml("[cors]\nallowed_origins = [\"https://shop.example/path/\"]").is_err());
        assert!(toml("[cors]\nallowed_origins = [\"shop.example\"]").is_err());
        assert!(toml("[cors]\nallowed_origins = [\"*\", \"https://a.example\"]").is_err());
        assert_eq!(with(&[("VITRINA_UNIT__ID", "eu-west")]).unwrap().unit.id, "eu-west");
        assert!(with(&[("VITRINA_UNIT__ID", "eu west")]).is_err());
        assert!(with(&[("VITRINA_UNIT__ID", "")]).is_err());
    }

    #[test]
    fn a_kubernetes_service_named_vitrina_does_not_stop_start_up() {
        let links = env(&[
            ("VITRINA_PORT", "tcp://10.96.0.12:80"),
            ("VITRINA_PORT_80_TCP", "tcp://10.96.0.12:80"),
            ("VITRINA_PORT_80_TCP_PROTO", "tcp"),
            ("VITRINA_PORT_80_TCP_PORT", "80"),
            ("VITRINA_PORT_80_TCP_ADDR", "10.96.0.12"),
            ("VITRINA_SERVICE_HOST", "10.96.0.12"),
            ("VITRINA_SERVICE_PORT", "80"),
            ("VITRINA_SERVICE_PORT_HTTP", "80"),
            ("VITRINA_LISTEN", "0.0.0.0:9000"),
        ]);
        let c = Config::from_layers(None, &links, &Overrides::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        // A misspelt setting is still refused.
        assert!(Config::from_layers(None, &env(&[("VITRINA_PORTS", "80")]), &Overrides::default()).is_err());
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Config::from_layers(Some(&file), &[], &Overrides::default()).is_err());
        assert!(Config::from_layers(None, &env(&[("VITRINA_SQLITE__SYNCHRONOUS", "sometimes")]), &Overrides::default()).is_err());
        assert!(Config::from_layers(None, &env(&[("VITRINA_NOPE__X", "1")]), &Overrides::default()).is_err());
        assert!(Config::from_layers(None, &env(&[("VITRINA_ADMIN_TOKEN", "short")]), &Overrides::default()).is_err());
    }

    #[test]
    fn numeric_text_stays_text() {
        let c = Config::from_layers(None, &env(&[("VITRINA_ADMIN_TOKEN", "12345678901234567")]), &Overrides::default()).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("12345678901234567"));
    }

    #[test]
    fn redacts_the_admin_token() {
        let c = Config { admin_token: Some("supersecretsupersecret".into()), ..Config::default() };
        let shown = c.redacted_toml();
        assert!(!shown.contains("supersecret"));
        assert!(shown.contains("<set>"));
    }
}
