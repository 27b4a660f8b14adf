//! `DIR/cluster.json`: what a caller needs to use the cluster (the gateway URL, the admin token,
//! the instances, the PostgreSQL nodes per shard, the Redis nodes), and, under `layout`, the
//! ports and settings this tool chose, so every later command finds the same processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The gateway: the cluster's single entry URL.
    pub url: String,
    pub admin_token: String,
    pub instances: Vec<InstanceEntry>,
    pub postgres: BTreeMap<String, ShardEntry>,
    /// Redis Cluster nodes (empty without `--redis-cluster`).
    pub redis: Vec<String>,
    pub layout: Layout,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub name: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardEntry {
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Where the PostgreSQL nodes' data and Patroni's files live when the `postgres` user cannot
    /// reach the cluster's directory (a private temporary directory, say); else under it.
    #[serde(default)]
    pub pg_root: Option<PathBuf>,
    pub etcd: Vec<EtcdMember>,
    pub postgres: Vec<PgNode>,
    /// Patroni's `synchronous_mode`: a commit waits for one replica, so a failover loses nothing
    /// acknowledged.
    pub synchronous: bool,
    pub instances: Vec<Instance>,
    pub gateway: Gateway,
    pub redis: Vec<RedisNode>,
    pub monitoring: Option<Monitoring>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgNode {
    /// `shard1-1`, `shard1-2`, ...: which node leads is Patroni's decision, not the name's.
    pub name: String,
    pub shard: String,
    pub port: u16,
    /// Patroni's REST API.
    pub rest_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gateway {
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisNode {
    pub name: String,
    pub port: u16,
    pub bus_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Monitoring {
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
    pub alertmanager_cluster_port: u16,
    pub node_exporter_port: u16,
    /// One postgres exporter per shard node, keyed by node name.
    pub postgres_exporter_ports: BTreeMap<String, u16>,
    pub redis_exporter_port: u16,
}

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<ClusterFile> {
        let text = std::fs::read_to_string(Self::path(dir))
            .with_context(|| format!("no cluster in {} (run `vitrina cluster up`)", dir.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", Self::path(dir).display()))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(Self::path(dir), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn shards(&self) -> Vec<String> {
        self.postgres.keys().cloned().collect()
    }

    /// The directory holding `nodes/` and `patroni/`.
    pub fn pg_dir(&self, dir: &Path) -> PathBuf {
        self.layout.pg_root.clone().unwrap_or_else(|| dir.to_path_buf())
    }

    pub fn shard_nodes(&self, shard: &str) -> Vec<&PgNode> {
        self.layout.postgres.iter().filter(|n| n.shard == shard).collect()
    }

    pub fn pg_node(&self, name: &str) -> Option<&PgNode> {
        self.layout.postgres.iter().find(|n| n.name == name)
    }

    /// Every port this cluster's processes were given.
    pub fn ports(&self) -> Vec<u16> {
        let l = &self.layout;
        let mut ports = vec![l.gateway.port];
        ports.extend(l.etcd.iter().flat_map(|m| [m.client_port, m.peer_port]));
        ports.extend(l.postgres.iter().flat_map(|n| [n.port, n.rest_port]));
        ports.extend(l.instances.iter().map(|i| i.port));
        ports.extend(l.redis.iter().flat_map(|r| [r.port, r.bus_port]));
        if let Some(m) = &l.monitoring {
            ports.extend([m.prometheus_port, m.alertmanager_port, m.alertmanager_cluster_port, m.node_exporter_port]);
            ports.extend(m.postgres_exporter_ports.values().copied().chain([m.redis_exporter_port]));
        }
        ports
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.layout.etcd.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }
}
