//! Redis Cluster: three masters with a replica each, joined by `redis-cli --cluster create`.
//! A master that stops answering for `NODE_TIMEOUT_MS` is replaced by its replica; when it
//! comes back it rejoins as a replica (its `nodes.conf` remembers the cluster).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::layout::{ClusterFile, RedisNode};
use crate::process;

const NODE_TIMEOUT_MS: u32 = 2_000;

pub fn url(node: &RedisNode) -> String {
    format!("redis://127.0.0.1:{}", node.port)
}

pub fn start(dir: &Path, node: &RedisNode) -> anyhow::Result<()> {
    let data = dir.join("redis").join(&node.name);
    std::fs::create_dir_all(&data)?;
    let mut c = Command::new("redis-server");
    c.args(["--bind", "127.0.0.1", "--port", &node.port.to_string(), "--cluster-port", &node.bus_port.to_string()])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .arg("--dir")
        .arg(&data)
        // A cache: nothing kept on disk; a restarted node resyncs from its master.
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
    process::spawn(dir, &node.name, c, None)?;
    Ok(())
}

fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli")?;
    if !out.status.success() {
        bail!("redis-cli {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `master`, `replica` or `down`.
pub fn role(node: &RedisNode) -> &'static str {
    match cli(node.port, &["role"]) {
        Ok(text) if text.starts_with("master") => "master",
        Ok(text) if text.starts_with("slave") => "replica",
        _ => "down",
    }
}

fn cluster_ok(node: &RedisNode) -> bool {
    cli(node.port, &["cluster", "info"]).is_ok_and(|t| t.contains("cluster_state:ok"))
}

/// Joins the nodes into one cluster the first time; later starts find it formed.
pub async fn form(cluster: &ClusterFile, limit: Duration) -> anyhow::Result<()> {
    let nodes = &cluster.layout.redis;
    let t0 = Instant::now();
    while nodes.iter().any(|n| cli(n.port, &["ping"]).is_err()) {
        if t0.elapsed() > limit {
            bail!("redis nodes did not start within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let known = cli(nodes[0].port, &["cluster", "info"])?;
    if known.contains("cluster_known_nodes:1\r") || known.contains("cluster_known_nodes:1\n") {
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cli(nodes[0].port, &args)?;
    }
    while !nodes.iter().all(cluster_ok) || nodes.iter().filter(|n| role(n) == "master").count() * 2 != nodes.len() {
        if t0.elapsed() > limit {
            bail!("the Redis cluster did not settle within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
