//! A shard's PostgreSQL nodes, each run by Patroni: Patroni initialises, clones, starts,
//! promotes and rewinds the server, and holds the shard's leader key in etcd. The cluster tool
//! only writes each node's configuration, starts and stops Patroni, and asks its REST API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::json;

use crate::layout::{ClusterFile, PgNode};
use crate::process::{self, RunAs};

/// The database and role every node serves.
pub const DATABASE: &str = "vitrina";
pub const ROLE: &str = "vitrina";

/// Failover timing: a dead leader's key expires after `TTL` seconds and a replica takes it.
/// Patroni needs `loop_wait + 2 × retry_timeout <= ttl`.
const TTL: u32 = 10;
const LOOP_WAIT: u32 = 2;
const RETRY_TIMEOUT: u32 = 3;

/// The newest installed PostgreSQL server's binaries (`VITRINA_PG_BIN` overrides).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VITRINA_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => Ok(p),
        None => bail!("no PostgreSQL server binaries found (install the postgresql package or set VITRINA_PG_BIN)"),
    }
}

fn data_dir(cluster: &ClusterFile, dir: &Path, node: &PgNode) -> PathBuf {
    cluster.pg_dir(dir).join("nodes").join(&node.name)
}

fn config_file(cluster: &ClusterFile, dir: &Path, node: &PgNode) -> PathBuf {
    cluster.pg_dir(dir).join("patroni").join(format!("{}.yml", node.name))
}

/// Writes the node's Patroni configuration (JSON, which Patroni's YAML reader takes as is).
pub fn write_config(dir: &Path, cluster: &ClusterFile, node: &PgNode) -> anyhow::Result<()> {
    let hba = ["local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"];
    let config = json!({
        "scope": format!("vitrina-{}", node.shard),
        "namespace": "/vitrina/",
        "name": node.name,
        "restapi": {
            "listen": format!("127.0.0.1:{}", node.rest_port),
            "connect_address": format!("127.0.0.1:{}", node.rest_port),
        },
        "etcd3": { "hosts": cluster.etcd_endpoints() },
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                // A replica further behind than this never becomes leader automatically.
                "maximum_lag_on_failover": 16 * 1024 * 1024,
                "synchronous_mode": cluster.layout.synchronous,
                "postgresql": {
                    "use_pg_rewind": true,
                    "use_slots": true,
                    "parameters": {
                        "wal_level": "replica",
                        "wal_log_hints": "on",
                        "hot_standby": "on",
                        "hot_standby_feedback": "on",
                        "max_wal_senders": 16,
                        "max_replication_slots": 16,
                        "wal_keep_size": "256MB",
                        "max_connections": 200,
                        "shared_buffers": "64MB",
                    },
                },
            },
            "initdb": [{ "encoding": "UTF8" }, { "locale": "C" }, "data-checksums"],
        },
        "postgresql": {
            "listen": format!("127.0.0.1:{}", node.port),
            "connect_address": format!("127.0.0.1:{}", node.port),
            "data_dir": data_dir(cluster, dir, node),
            "bin_dir": bin_dir()?,
            "pgpass": cluster.pg_dir(dir).join("patroni").join(format!("{}.pgpass", node.name)),
            "authentication": {
                "superuser": { "username": ROLE },
                "replication": { "username": ROLE },
                "rewind": { "username": ROLE },
            },
            "parameters": { "unix_socket_directories": "" },
            // A new replica's base backup starts at once instead of waiting for a spread checkpoint.
            "basebackup": [{ "checkpoint": "fast" }],
            "pg_hba": hba,
        },
    });
    std::fs::create_dir_all(cluster.pg_dir(dir).join("patroni"))?;
    std::fs::write(config_file(cluster, dir, node), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

pub fn start(dir: &Path, cluster: &ClusterFile, node: &PgNode, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let mut c = Command::new("patroni");
    c.arg(config_file(cluster, dir, node));
    if run_as.is_some() {
        c.env("HOME", "/var/lib/postgresql");
    }
    process::spawn(dir, &node.name, c, run_as)?;
    Ok(())
}

/// The postmaster's pid, when the node's server runs.
pub fn postmaster(dir: &Path, cluster: &ClusterFile, node: &PgNode) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir(cluster, dir, node).join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    process::alive(pid).then_some(pid)
}

/// A crash of the whole node: Patroni and its server die at once, as when the host fails.
pub fn kill(dir: &Path, cluster: &ClusterFile, node: &PgNode) -> anyhow::Result<()> {
    let patroni = process::running(dir, &node.name);
    let server = postmaster(dir, cluster, node);
    if patroni.is_none() && server.is_none() {
        bail!("{} is not running", node.name);
    }
    // The server's backends too: orphaned by their postmaster they would go on committing
    // for a moment, which no crashed host does.
    let backends = server.map(process::children).unwrap_or_default();
    for pid in patroni.into_iter().chain(server) {
        process::signal(pid, "KILL")?;
    }
    // A backend may have exited by itself since it was listed.
    for pid in backends {
        process::signal_if_alive(pid, "KILL");
    }
    Ok(())
}

/// Patroni stops its server (fast shutdown) and exits, releasing the leader key.
pub fn stop(dir: &Path, node: &PgNode) -> anyhow::Result<Option<u32>> {
    let Some(pid) = process::running(dir, &node.name) else { return Ok(None) };
    process::signal(pid, "TERM")?;
    Ok(Some(pid))
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub state: String,
    /// Bytes behind the leader; Patroni says `"unknown"` when it cannot tell.
    #[serde(default)]
    pub lag: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct ClusterView {
    members: Vec<Member>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client")
}

/// The shard's members as the first Patroni that answers sees them (from etcd).
pub async fn members(cluster: &ClusterFile, shard: &str) -> Option<Vec<Member>> {
    let http = http();
    for node in cluster.shard_nodes(shard) {
        let url = format!("http://127.0.0.1:{}/cluster", node.rest_port);
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(view) = r.json::<ClusterView>().await {
                return Some(view.members);
            }
        }
    }
    None
}

pub fn is_leader(m: &Member) -> bool {
    m.role == "leader" && m.state == "running"
}

pub fn is_streaming_replica(m: &Member) -> bool {
    (m.role == "replica" || m.role == "sync_standby") && (m.state == "streaming" || m.state == "running")
}

/// Waits until each shard has a leader and all its running members follow it.
pub async fn wait_ready(cluster: &ClusterFile, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    for shard in cluster.shards() {
        let want = cluster.shard_nodes(&shard).len();
        loop {
            let members = members(cluster, &shard).await.unwrap_or_default();
            let leaders = members.iter().filter(|m| is_leader(m)).count();
            let replicas = members.iter().filter(|m| is_streaming_replica(m)).count();
            if leaders == 1 && leaders + replicas == want {
                break;
            }
            if t0.elapsed() > limit {
                bail!("{shard}: {leaders} leader(s) and {replicas} streaming replica(s) of {want} nodes after {limit:?}: {members:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

/// A manual switchover through Patroni: the leader hands over to `candidate` and follows it.
pub async fn switchover(cluster: &ClusterFile, candidate: &PgNode) -> anyhow::Result<()> {
    let members = members(cluster, &candidate.shard).await.context("no Patroni of the shard answers")?;
    let leader = members.iter().find(|m| is_leader(m)).context("the shard has no leader to switch over from")?;
    if leader.name == candidate.name {
        bail!("{} already leads {}", candidate.name, candidate.shard);
    }
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?
        .post(format!("http://127.0.0.1:{}/switchover", candidate.rest_port))
        .json(&json!({ "leader": leader.name, "candidate": candidate.name }))
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("switchover refused ({status}): {text}");
    }
    Ok(())
}

/// Waits until `node` leads its shard.
pub async fn wait_leader(cluster: &ClusterFile, node: &PgNode, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let members = members(cluster, &node.shard).await.unwrap_or_default();
        if members.iter().any(|m| m.name == node.name && is_leader(m)) {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("{} does not lead {} after {limit:?}", node.name, node.shard);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the service's database on the shard's leader if it is missing.
pub async fn ensure_database(cluster: &ClusterFile, shard: &str) -> anyhow::Result<()> {
    let client = connect(&url(&cluster.shard_nodes(shard), "postgres", true)).await?;
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE]).await?.is_some();
    if !exists {
        client.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await?;
    }
    Ok(())
}

/// Waits until every replica of the shard streams from the leader and has the service's
/// database (and, in synchronous mode, one of them is the synchronous standby): Patroni calls a
/// replica `running` before it streams, and one that never streamed must not be what a
/// failover promotes.
pub async fn wait_streaming(cluster: &ClusterFile, shard: &str, limit: Duration) -> anyhow::Result<()> {
    let nodes = cluster.shard_nodes(shard);
    let t0 = Instant::now();
    loop {
        match streaming(cluster, &nodes).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if t0.elapsed() > limit => return Err(e),
            Err(_) => {}
        }
        if t0.elapsed() > limit {
            bail!("{shard}: the replicas do not all stream after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn streaming(cluster: &ClusterFile, nodes: &[&PgNode]) -> anyhow::Result<bool> {
    let leader = connect(&url(nodes, DATABASE, true)).await?;
    let row = leader
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'streaming'), count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))
             FROM pg_stat_replication",
            &[],
        )
        .await?;
    let (streaming, sync): (i64, i64) = (row.get(0), row.get(1));
    if streaming < nodes.len() as i64 - 1 || (cluster.layout.synchronous && nodes.len() > 1 && sync == 0) {
        return Ok(false);
    }
    for node in nodes {
        connect(&url(&[node], DATABASE, false)).await?;
    }
    Ok(true)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.connect_timeout(Duration::from_secs(2));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A URL naming every listed node; with `read_write`, a connection lands on whichever of them
/// leads, so clients follow a failover without being told.
pub fn url(nodes: &[&PgNode], database: &str, read_write: bool) -> String {
    let hosts: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let query = if read_write { "?target_session_attrs=read-write" } else { "" };
    format!("postgres://{ROLE}@{}/{database}{query}", hosts.join(","))
}
