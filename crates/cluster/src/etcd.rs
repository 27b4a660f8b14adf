//! The three-member etcd cluster Patroni keeps its leader keys in: a shard's leader is whoever
//! holds the key, and a majority of etcd decides, so a partitioned old leader cannot stay one.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::layout::{ClusterFile, EtcdMember};
use crate::process;

pub fn start(dir: &Path, cluster: &ClusterFile, member: &EtcdMember) -> anyhow::Result<()> {
    let data = dir.join("etcd").join(&member.name);
    // A member that has data rejoins; only a first start names the initial cluster.
    let state = if data.join("member").exists() { "existing" } else { "new" };
    let initial: Vec<String> =
        cluster.layout.etcd.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
    let client = format!("http://127.0.0.1:{}", member.client_port);
    let peer = format!("http://127.0.0.1:{}", member.peer_port);
    let mut c = Command::new("etcd");
    c.args(["--name", &member.name])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &initial.join(",")])
        .args(["--initial-cluster-state", state, "--initial-cluster-token", &format!("vitrina-{}", cluster.admin_token)])
        // Loopback members: short heartbeats keep leader elections (and Patroni's) quick.
        .args(["--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "warn"]);
    process::spawn(dir, &member.name, c, None)?;
    Ok(())
}

/// Waits until the members agree on a leader and answer reads.
pub async fn wait_healthy(cluster: &ClusterFile, limit: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let t0 = Instant::now();
    loop {
        let mut healthy = 0;
        for m in &cluster.layout.etcd {
            let url = format!("http://127.0.0.1:{}/health", m.client_port);
            if let Ok(r) = http.get(&url).send().await {
                if r.json::<serde_json::Value>().await.is_ok_and(|v| v["health"] == "true") {
                    healthy += 1;
                }
            }
        }
        if healthy * 2 > cluster.layout.etcd.len() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("etcd: only {healthy} of {} members healthy after {limit:?}", cluster.layout.etcd.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
