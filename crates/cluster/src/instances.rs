//! The vitrina instances: stateless `vitrina serve` processes sharing one configuration
//! (`DIR/vitrina.toml`), each on its own port, each with its own scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::layout::{ClusterFile, Instance};
use crate::patroni;
use crate::process;

/// How long a SIGTERMed instance answers not-ready before it closes its listener: longer than
/// the gateway's health checks take to notice (`fall` × `inter`, see `gateway.rs`).
pub const DRAIN_SECS: u64 = 3;
/// How long it then has to finish the requests it holds.
pub const GRACE_SECS: u64 = 20;

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("vitrina.toml")
}

/// The instances' configuration: every shard's nodes behind one read-write URL (the leader,
/// wherever Patroni put it), every node as a possible read replica, Redis Cluster as the L2.
pub fn write_config(dir: &Path, cluster: &ClusterFile) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "# Written by `vitrina cluster up`.\nstore = \"postgres\"\nseed_on_start = false\n\
         shutdown_drain_secs = {DRAIN_SECS}\nshutdown_grace_secs = {GRACE_SECS}\n"
    );
    let etcd: Vec<String> = cluster.etcd_endpoints().iter().map(|e| format!("\"http://{e}\"")).collect();
    text.push_str(&format!(
        "\n# Each instance registers itself here while ready; the registrar puts it behind the gateway.\n\
         [discovery]\netcd = [{}]\nprefix = \"{}\"\n",
        etcd.join(", "),
        crate::registrar::PREFIX
    ));
    if !cluster.redis.is_empty() {
        let urls: Vec<String> = cluster.redis.iter().map(|u| format!("\"{u}\"")).collect();
        text.push_str(&format!("\n[cache]\nredis_url = [{}]\n", urls.join(", ")));
    }
    for shard in cluster.shards() {
        let nodes = cluster.shard_nodes(&shard);
        let primary = patroni::url(&nodes, patroni::DATABASE, true);
        let replicas: Vec<String> =
            nodes.iter().map(|n| format!("\"{}\"", patroni::url(&[n], patroni::DATABASE, false))).collect();
        text.push_str(&format!(
            "\n[[postgres.shards]]\nname = \"{shard}\"\nprimary = \"{primary}\"\nreplicas = [{}]\n",
            replicas.join(", ")
        ));
    }
    let path = config_path(dir);
    std::fs::write(&path, text)?;
    Ok(path)
}

pub fn url(instance: &Instance) -> String {
    format!("http://127.0.0.1:{}", instance.port)
}

pub fn start(dir: &Path, cluster: &ClusterFile, instance: &Instance) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the vitrina binary")?;
    let mut c = Command::new(exe);
    c.arg("serve")
        .arg("--config")
        .arg(config_path(dir))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", instance.port))
        .arg("--data-dir")
        .arg(dir.join("instances").join(&instance.name))
        .env("VITRINA_ADMIN_TOKEN", &cluster.admin_token)
        .env("VITRINA_LOG_FORMAT", "json")
        .env("VITRINA_DISCOVERY__NAME", &instance.name)
        .env("VITRINA_DISCOVERY__ADVERTISE", url(instance))
        .env_remove("VITRINA_CONFIG");
    process::spawn(dir, &instance.name, c, None)?;
    Ok(())
}

/// `ready`, `draining` or `down`, by the instance's own readiness answer.
pub async fn state(instance: &Instance) -> &'static str {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
    match http.get(format!("{}/health/ready", url(instance))).send().await {
        Ok(r) if r.status().is_success() => "ready",
        Ok(r) => match r.json::<serde_json::Value>().await {
            Ok(v) if v["status"] == "draining" => "draining",
            _ => "down",
        },
        Err(_) => "down",
    }
}

pub async fn wait_ready(instance: &Instance, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while state(instance).await != "ready" {
        if t0.elapsed() > limit {
            bail!("{} is not ready after {limit:?}", instance.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// SIGTERM, then waits for the instance to drain and exit.
pub fn stop(dir: &Path, instance: &Instance) -> anyhow::Result<()> {
    let Some(pid) = process::running(dir, &instance.name) else { return Ok(()) };
    process::signal(pid, "TERM")?;
    process::wait_gone(pid, &instance.name, Duration::from_secs(DRAIN_SECS + GRACE_SECS + 10))
}
