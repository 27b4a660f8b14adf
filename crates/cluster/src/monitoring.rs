//! Monitoring as seed 004 describes it: Prometheus scraping the instances, Patroni and the
//! exporters (postgres per node, redis, node), evaluating the alert rules of
//! `deploy/prometheus/alerts.yml`, and Alertmanager routing them with
//! `deploy/alertmanager/alertmanager.yml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::json;

use crate::layout::{ClusterFile, Monitoring};
use crate::process::{self, Ports};

const ALERTS: &str = include_str!("../../../deploy/prometheus/alerts.yml");
const ALERTMANAGER: &str = include_str!("../../../deploy/alertmanager/alertmanager.yml");

pub const PROMETHEUS: &str = "prometheus";
pub const ALERTMANAGER_NAME: &str = "alertmanager";
const NODE_EXPORTER: &str = "node-exporter";
const REDIS_EXPORTER: &str = "redis-exporter";

fn exporter_name(node: &str) -> String {
    format!("postgres-exporter-{node}")
}

pub fn lay_out(cluster: &ClusterFile, ports: &mut Ports) -> anyhow::Result<Monitoring> {
    let mut postgres_exporter_ports = BTreeMap::new();
    for n in &cluster.layout.postgres {
        postgres_exporter_ports.insert(n.name.clone(), ports.take()?);
    }
    Ok(Monitoring {
        prometheus_port: ports.take()?,
        alertmanager_port: ports.take()?,
        alertmanager_cluster_port: ports.take()?,
        node_exporter_port: ports.take()?,
        postgres_exporter_ports,
        redis_exporter_port: ports.take()?,
    })
}

fn dir_of(dir: &Path) -> PathBuf {
    dir.join("monitoring")
}

/// Every process's name, for `down` and the status.
pub fn names(cluster: &ClusterFile) -> Vec<String> {
    let Some(m) = &cluster.layout.monitoring else { return Vec::new() };
    let mut names = vec![PROMETHEUS.to_owned(), ALERTMANAGER_NAME.to_owned(), NODE_EXPORTER.to_owned()];
    names.extend(m.postgres_exporter_ports.keys().map(|n| exporter_name(n)));
    if !cluster.layout.redis.is_empty() {
        names.push(REDIS_EXPORTER.to_owned());
    }
    names
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The scrape configuration for this fleet (JSON, which Prometheus's YAML reader takes).
fn prometheus_config(cluster: &ClusterFile, m: &Monitoring) -> serde_json::Value {
    let l = &cluster.layout;
    let instances: Vec<String> = l.instances.iter().map(|i| local(i.port)).collect();
    let patroni: Vec<String> = l.postgres.iter().map(|n| local(n.rest_port)).collect();
    let exporters: Vec<String> = m.postgres_exporter_ports.values().map(|p| local(*p)).collect();
    let mut jobs = vec![
        json!({"job_name": "vitrina", "static_configs": [{"targets": instances, "labels": {"unit": "local"}}]}),
        json!({"job_name": "patroni", "static_configs": [{"targets": patroni}]}),
        json!({"job_name": "postgres", "static_configs": [{"targets": exporters}]}),
        json!({"job_name": "node", "static_configs": [{"targets": [local(m.node_exporter_port)]}]}),
    ];
    if !l.redis.is_empty() {
        // One exporter, many nodes: each target is a Redis URL the exporter is asked to scrape.
        jobs.push(json!({
            "job_name": "redis",
            "metrics_path": "/scrape",
            "static_configs": [{"targets": cluster.redis}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": local(m.redis_exporter_port)},
            ],
        }));
    }
    json!({
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": ["alerts.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [local(m.alertmanager_port)]}]}]},
        "scrape_configs": jobs,
    })
}

pub fn start(dir: &Path, cluster: &ClusterFile) -> anyhow::Result<()> {
    let Some(m) = &cluster.layout.monitoring else { return Ok(()) };
    let mon = dir_of(dir);
    std::fs::create_dir_all(&mon)?;
    std::fs::write(mon.join("alerts.yml"), ALERTS)?;
    std::fs::write(mon.join("alertmanager.yml"), ALERTMANAGER)?;
    std::fs::write(mon.join("prometheus.yml"), serde_json::to_string_pretty(&prometheus_config(cluster, m))?)?;

    let mut c = Command::new("prometheus");
    c.arg(format!("--config.file={}", mon.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", mon.join("prometheus-data").display()))
        .arg(format!("--web.listen-address={}", local(m.prometheus_port)))
        .arg("--log.level=warn");
    process::spawn(dir, PROMETHEUS, c, None)?;

    let mut c = Command::new("prometheus-alertmanager");
    c.arg(format!("--config.file={}", mon.join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", mon.join("alertmanager-data").display()))
        .arg(format!("--web.listen-address={}", local(m.alertmanager_port)))
        .arg(format!("--cluster.listen-address={}", local(m.alertmanager_cluster_port)))
        .arg("--log.level=warn");
    process::spawn(dir, ALERTMANAGER_NAME, c, None)?;

    let mut c = Command::new("prometheus-node-exporter");
    c.arg(format!("--web.listen-address={}", local(m.node_exporter_port))).arg("--log.level=warn");
    process::spawn(dir, NODE_EXPORTER, c, None)?;

    for node in &cluster.layout.postgres {
        let port = m.postgres_exporter_ports.get(&node.name).context("an exporter port per node")?;
        let mut c = Command::new("prometheus-postgres-exporter");
        c.arg(format!("--web.listen-address={}", local(*port)))
            .arg("--log.level=warn")
            .env("DATA_SOURCE_NAME", format!("postgresql://vitrina@127.0.0.1:{}/postgres?sslmode=disable", node.port));
        process::spawn(dir, &exporter_name(&node.name), c, None)?;
    }
    if !cluster.layout.redis.is_empty() {
        let mut c = Command::new("prometheus-redis-exporter");
        c.arg(format!("-web.listen-address={}", local(m.redis_exporter_port))).args(["-redis.addr", ""]);
        process::spawn(dir, REDIS_EXPORTER, c, None)?;
    }
    Ok(())
}

/// Waits until Prometheus and Alertmanager answer their readiness routes.
pub async fn wait_ready(cluster: &ClusterFile, limit: std::time::Duration) -> anyhow::Result<()> {
    let Some(m) = &cluster.layout.monitoring else { return Ok(()) };
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(1)).build()?;
    let t0 = std::time::Instant::now();
    for url in [prometheus_url(m), alertmanager_url(m)] {
        loop {
            if http.get(format!("{url}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if t0.elapsed() > limit {
                anyhow::bail!("{url} is not ready after {limit:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

pub fn prometheus_url(m: &Monitoring) -> String {
    format!("http://{}", local(m.prometheus_port))
}

pub fn alertmanager_url(m: &Monitoring) -> String {
    format!("http://{}", local(m.alertmanager_port))
}
