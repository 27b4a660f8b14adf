//! The gateway: HAProxy as the cluster's single entry URL, balancing over the instances it
//! health-checks on `/health/ready`. Its servers start in maintenance: the registrar puts an
//! instance in rotation once it has registered itself, and out when it withdraws (draining) or
//! its lease expires (crashed). The rolling restart also drives HAProxy's runtime API (a Unix
//! socket) to drain an instance before stopping it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::layout::{ClusterFile, Instance};
use crate::process;

pub const NAME: &str = "gateway";
pub const BACKEND: &str = "instances";
/// Health checks every second, two failures to take an instance out, two passes to put it back.
const CHECK: &str = "inter 1s fastinter 500ms downinter 1s fall 2 rise 2";

fn config_path(dir: &Path) -> PathBuf {
    dir.join("haproxy.cfg")
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("run").join("gateway.sock")
}

pub fn url(cluster: &ClusterFile) -> String {
    format!("http://127.0.0.1:{}", cluster.layout.gateway.port)
}

pub fn write_config(dir: &Path, cluster: &ClusterFile) -> anyhow::Result<()> {
    // In maintenance until the registrar sees the instance registered.
    let servers: String =
        cluster.layout.instances.iter().map(|i| format!("    server {} 127.0.0.1:{} check disabled\n", i.name, i.port)).collect();
    let spare = crate::registrar::SPARE;
    let text = format!(
        "# Written by `vitrina cluster up`.
global
    # Each connection takes two descriptors (client and instance) within the process's limit.
    maxconn 4096
    stats socket {socket} mode 600 level admin expose-fd listeners

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    # A request that never reached an instance (refused connection: it died) goes to another.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option forwardfor

frontend entry
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    option httpchk GET /health/ready
    http-check expect status 200
    # With no instance up, say so the way vitrina does: 503 with Retry-After.
    http-error status 503 content-type application/json string '{{\"error\":\"no instance is ready\"}}' hdr Retry-After 1
    default-server {CHECK}
{servers}    server-template spare 1-{spare} 127.0.0.1:9 check disabled
",
        socket = socket_path(dir).display(),
        port = cluster.layout.gateway.port,
    );
    std::fs::write(config_path(dir), text)?;
    let check = Command::new("haproxy").arg("-c").arg("-q").arg("-f").arg(config_path(dir)).output()?;
    if !check.status.success() {
        bail!("haproxy refused its configuration: {}", String::from_utf8_lossy(&check.stderr));
    }
    Ok(())
}

pub fn start(dir: &Path) -> anyhow::Result<()> {
    let mut c = Command::new("haproxy");
    c.arg("-db").arg("-f").arg(config_path(dir));
    process::spawn(dir, NAME, c, None)?;
    Ok(())
}

/// One runtime API command, its answer.
pub fn command(dir: &Path, line: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(socket_path(dir)).context("the gateway's runtime socket")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The gateway's view of each instance: `UP`, `DOWN`, `DRAIN`, `MAINT`, ... and its sessions.
pub fn servers(dir: &Path) -> anyhow::Result<Vec<(String, String, u64)>> {
    let csv = command(dir, "show stat")?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, status, scur) = (
        col("pxname").context("pxname")?,
        col("svname").context("svname")?,
        col("status").context("status")?,
        col("scur").context("scur")?,
    );
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .filter(|f| f.len() > scur && f[px] == BACKEND && f[sv] != "BACKEND" && f[sv] != "FRONTEND")
        .map(|f| (f[sv].to_owned(), f[status].to_owned(), f[scur].parse().unwrap_or(0)))
        .collect())
}

fn server_status(dir: &Path, instance: &Instance) -> Option<(String, u64)> {
    servers(dir).ok()?.into_iter().find(|(name, _, _)| *name == instance.name).map(|(_, s, n)| (s, n))
}

/// Takes the instance out of rotation (requests it holds run to completion) and waits until it
/// holds none, within `limit`.
pub async fn drain(dir: &Path, instance: &Instance, limit: Duration) -> anyhow::Result<()> {
    command(dir, &format!("set server {BACKEND}/{} state drain", instance.name))?;
    let t0 = Instant::now();
    while server_status(dir, instance).is_some_and(|(_, sessions)| sessions > 0) && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Puts the instance back in rotation and waits until its health checks pass.
pub async fn enable(dir: &Path, instance: &Instance, limit: Duration) -> anyhow::Result<()> {
    command(dir, &format!("set server {BACKEND}/{} state ready", instance.name))?;
    wait_up(dir, instance, limit).await
}

pub async fn wait_up(dir: &Path, instance: &Instance, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        match server_status(dir, instance) {
            Some((status, _)) if status == "UP" => return Ok(()),
            seen => {
                if process::running(dir, NAME).is_none() {
                    bail!("the gateway is not running: see {}", process::log_file(dir, NAME).display());
                }
                if t0.elapsed() > limit {
                    bail!("the gateway does not see {} up after {limit:?} ({seen:?})", instance.name);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
