//! `cluster status`: every process as its own authority sees it — Patroni (from etcd) for
//! PostgreSQL roles and lag, each instance's readiness answer, each Redis node's `ROLE`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::layout::ClusterFile;
use crate::{instances, patroni, process, redis};

pub struct PgState {
    pub role: &'static str,
    pub lag_bytes: Option<u64>,
    /// Patroni's synchronous standby (only it may be promoted in synchronous mode).
    pub sync_standby: bool,
}

pub struct Report {
    pub postgres: BTreeMap<String, BTreeMap<String, PgState>>,
    pub instances: BTreeMap<String, &'static str>,
    pub redis: BTreeMap<String, &'static str>,
    pub etcd: BTreeMap<String, bool>,
    pub gateway: bool,
    pub monitoring: BTreeMap<String, bool>,
    /// The instances registered in the registry now (`None`: etcd did not answer).
    pub registered: Option<Vec<String>>,
}

pub async fn collect(dir: &Path) -> anyhow::Result<Report> {
    let cluster = ClusterFile::load(dir)?;
    let mut postgres = BTreeMap::new();
    for shard in cluster.shards() {
        let members = patroni::members(&cluster, &shard).await.unwrap_or_default();
        let mut nodes = BTreeMap::new();
        for node in cluster.shard_nodes(&shard) {
            let seen = members.iter().find(|m| m.name == node.name);
            // A member Patroni still lists but whose server is gone is down, not a replica.
            let up = process::running(dir, &node.name).is_some() && patroni::postmaster(dir, &cluster, node).is_some();
            let state = match seen {
                Some(m) if up && patroni::is_leader(m) => PgState { role: "leader", lag_bytes: Some(0), sync_standby: false },
                Some(m) if up && patroni::is_streaming_replica(m) => {
                    PgState { role: "replica", lag_bytes: m.lag.as_u64(), sync_standby: m.role == "sync_standby" }
                }
                _ => PgState { role: "down", lag_bytes: None, sync_standby: false },
            };
            nodes.insert(node.name.clone(), state);
        }
        postgres.insert(shard, nodes);
    }
    let mut instances_state = BTreeMap::new();
    for i in &cluster.layout.instances {
        instances_state.insert(i.name.clone(), instances::state(i).await);
    }
    let redis = cluster.layout.redis.iter().map(|r| (r.name.clone(), redis::role(r))).collect();
    let etcd = cluster.layout.etcd.iter().map(|m| (m.name.clone(), process::running(dir, &m.name).is_some())).collect();
    let gateway = process::running(dir, crate::gateway::NAME).is_some();
    let monitoring = crate::monitoring::names(&cluster)
        .into_iter()
        .map(|n| {
            let up = process::running(dir, &n).is_some();
            (n, up)
        })
        .collect();
    let http = crate::registrar::client()?;
    let registered = crate::registrar::registered(&http, &cluster).await.ok().map(|r| r.into_keys().collect());
    Ok(Report { postgres, instances: instances_state, redis, etcd, gateway, monitoring, registered })
}

impl Report {
    pub fn to_json(&self) -> Value {
        let postgres: BTreeMap<&String, BTreeMap<&String, Value>> = self
            .postgres
            .iter()
            .map(|(shard, nodes)| {
                let nodes = nodes
                    .iter()
                    .map(|(n, s)| (n, json!({"role": s.role, "lag_bytes": s.lag_bytes, "sync_standby": s.sync_standby})))
                    .collect();
                (shard, nodes)
            })
            .collect();
        json!({
            "postgres": postgres,
            "instances": self.instances,
            "redis": self.redis,
            "etcd": self.etcd.iter().map(|(n, up)| (n, if *up { "up" } else { "down" })).collect::<BTreeMap<_, _>>(),
            "gateway": if self.gateway { "up" } else { "down" },
            "registered": self.registered,
            "monitoring": self.monitoring.iter().map(|(n, up)| (n, if *up { "up" } else { "down" })).collect::<BTreeMap<_, _>>(),
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!("{:<12} {:<10} {:<10}\n", "NODE", "STATE", "LAG_BYTES");
        for nodes in self.postgres.values() {
            for (name, s) in nodes {
                let lag = s.lag_bytes.map_or("-".into(), |l| l.to_string());
                out.push_str(&format!("{name:<12} {:<10} {lag:<10}\n", s.role));
            }
        }
        for (name, state) in &self.instances {
            out.push_str(&format!("{name:<12} {state:<10}\n"));
        }
        for (name, role) in &self.redis {
            out.push_str(&format!("{name:<12} {role:<10}\n"));
        }
        for (name, up) in &self.etcd {
            out.push_str(&format!("{name:<12} {:<10}\n", if *up { "up" } else { "down" }));
        }
        out.push_str(&format!("{:<12} {:<10}\n", crate::gateway::NAME, if self.gateway { "up" } else { "down" }));
        for (name, up) in &self.monitoring {
            out.push_str(&format!("{name:<12} {:<10}\n", if *up { "up" } else { "down" }));
        }
        out
    }
}
