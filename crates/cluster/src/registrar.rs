//! The registrar: keeps the gateway's servers in step with the registry. Each vitrina instance
//! registers itself in etcd while it is ready (`discovery` in the service); this loop reads the
//! registrations and drives HAProxy's runtime API: a registered instance's server gets its
//! address and is put in rotation, a withdrawn or expired one is put in maintenance. HAProxy's
//! own health checks still take out an instance that stops answering before its lease expires.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};

use crate::gateway;
use crate::layout::ClusterFile;
use crate::process;

pub const NAME: &str = "registrar";
pub const PREFIX: &str = "/vitrina/instances/";
/// Servers the gateway holds for instances not in the layout (started by hand to scale out).
pub const SPARE: usize = 8;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn start(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the vitrina binary")?;
    let mut c = Command::new(exe);
    c.args(["cluster", "registrar", "--dir"]).arg(dir);
    process::spawn(dir, NAME, c, None)?;
    Ok(())
}

/// A client for reading the registry (one per caller: the registrar keeps its own for its life).
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?)
}

/// The registrations now: instance name → URL.
pub async fn registered(http: &reqwest::Client, cluster: &ClusterFile) -> anyhow::Result<BTreeMap<String, String>> {
    let mut end = PREFIX.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let body = json!({ "key": B64.encode(PREFIX), "range_end": B64.encode(end) });
    let mut last = None;
    for endpoint in cluster.etcd_endpoints() {
        match http.post(format!("http://{endpoint}/v3/kv/range")).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await?;
                let mut out = BTreeMap::new();
                for kv in v["kvs"].as_array().into_iter().flatten() {
                    let value = B64.decode(kv["value"].as_str().unwrap_or_default())?;
                    let reg: Value = serde_json::from_slice(&value)?;
                    if let (Some(name), Some(url)) = (reg["name"].as_str(), reg["url"].as_str()) {
                        out.insert(name.to_owned(), url.to_owned());
                    }
                }
                return Ok(out);
            }
            Ok(r) => last = Some(anyhow::anyhow!("etcd {endpoint}: {}", r.status())),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd member")))
}

/// `http://host:port` → (host, port).
fn address(url: &str) -> Option<(String, u16)> {
    let rest = url.split("://").nth(1)?.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// Runs until killed, applying every change of the registry to the gateway.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    let cluster = ClusterFile::load(dir)?;
    let known: Vec<String> = cluster.layout.instances.iter().map(|i| i.name.clone()).collect();
    let mut slots: BTreeMap<String, String> = BTreeMap::new();
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let http = client()?;
    loop {
        match registered(&http, &cluster).await {
            Ok(now) => {
                for (name, slot) in &slots {
                    if applied.contains_key(name) && !now.contains_key(name) {
                        match gateway::command(dir, &format!("set server {}/{slot} state maint", gateway::BACKEND)) {
                            Ok(_) => {
                                applied.remove(name);
                                println!("{name} withdrew: out of rotation");
                            }
                            Err(e) => eprintln!("gateway: {e:#}"),
                        }
                    }
                }
                for (name, url) in &now {
                    if applied.get(name) == Some(url) {
                        continue;
                    }
                    let slot = match slots.get(name) {
                        Some(s) => s.clone(),
                        None if known.contains(name) => name.clone(),
                        None => match (1..=SPARE).map(|i| format!("spare{i}")).find(|s| !slots.values().any(|v| v == s)) {
                            Some(s) => s,
                            None => {
                                eprintln!("{name}: no spare server left in the gateway");
                                continue;
                            }
                        },
                    };
                    slots.insert(name.clone(), slot.clone());
                    let Some((host, port)) = address(url) else {
                        eprintln!("{name}: unusable address {url}");
                        continue;
                    };
                    let server = format!("{}/{slot}", gateway::BACKEND);
                    let result = gateway::command(dir, &format!("set server {server} addr {host} port {port}"))
                        .and_then(|_| gateway::command(dir, &format!("set server {server} state ready")));
                    match result {
                        Ok(_) => {
                            applied.insert(name.clone(), url.clone());
                            println!("{name} registered at {url}: in rotation as {slot}");
                        }
                        Err(e) => eprintln!("gateway: {e:#}"),
                    }
                }
            }
            Err(e) => eprintln!("registry: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
