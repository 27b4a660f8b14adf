//! `vitrina cluster`: a real local topology from the installed PostgreSQL binaries, no
//! containers. Each shard is a primary with streaming replicas on its own loopback ports; the
//! state lives in `DIR/cluster.json` and a ready vitrina configuration in `DIR/vitrina.toml`.

pub mod node;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use self::node::{Binaries, Node};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create (or restart) the topology and wait until every replica streams.
    Up {
        #[arg(long, default_value_t = 2)]
        shards: usize,
        /// Streaming replicas per shard.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// First port; shard s, node n listens on base + 10·(s−1) + (n−1).
        #[arg(long, default_value_t = 55432)]
        base_port: u16,
    },
    /// Each node's role, port, replication state and replay lag.
    Status {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Stop every node this cluster started (fast shutdown, by pid).
    Down {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// Also remove the data.
        #[arg(long)]
        purge: bool,
    },
    /// Crash a node (SIGKILL), for failure drills.
    Kill {
        node: String,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Promote a replica to primary; the shard's other replicas follow it.
    Promote {
        node: String,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: Vec<Node>,
}

impl ClusterState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<ClusterState> {
        let text = std::fs::read_to_string(Self::path(dir))
            .with_context(|| format!("no cluster in {} (run `vitrina cluster up`)", dir.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(Self::path(dir), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| anyhow::anyhow!("no node {name} in this cluster"))
    }

    fn shards(&self) -> Vec<String> {
        let mut s: Vec<String> = self.nodes.iter().map(|n| n.shard.clone()).collect();
        s.dedup();
        s
    }
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up { shards, replicas, dir, base_port } => up(&dir, shards, replicas, base_port).await,
        ClusterCommand::Status { dir } => {
            print!("{}", status(&dir).await?);
            Ok(())
        }
        ClusterCommand::Down { dir, purge } => down(&dir, purge),
        ClusterCommand::Kill { node, dir } => {
            let state = ClusterState::load(&dir)?;
            let n = state.node(&node)?;
            let pid = node::pid(n).ok_or_else(|| anyhow::anyhow!("{node} is not running"))?;
            node::signal(pid, "KILL")?;
            println!("killed {node} (pid {pid})");
            Ok(())
        }
        ClusterCommand::Promote { node, dir } => promote(&dir, &node).await,
    }
}

async fn up(dir: &Path, shards: usize, replicas: usize, base_port: u16) -> anyhow::Result<()> {
    if shards == 0 || shards > 9 || replicas > 8 {
        bail!("--shards must be 1-9 and --replicas 0-8");
    }
    let bins = Binaries::locate()?;
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let state = match ClusterState::load(&dir) {
        Ok(existing) => existing,
        Err(_) => {
            let mut nodes = Vec::new();
            for s in 1..=shards {
                for n in 1..=replicas + 1 {
                    let port = base_port + 10 * (s as u16 - 1) + (n as u16 - 1);
                    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                        bail!("port {port} is taken: choose another --base-port");
                    }
                    let name = format!("shard{s}-{n}");
                    nodes.push(Node { data: dir.join("nodes").join(&name), name, shard: format!("shard{s}"), port });
                }
            }
            ClusterState { nodes }
        }
    };
    std::fs::create_dir_all(dir.join("nodes"))?;
    bins.own(&dir.join("nodes"))?;
    state.save(&dir)?;

    for shard in state.shards() {
        let members: Vec<&Node> = state.nodes.iter().filter(|n| n.shard == shard).collect();
        let primary = members[0];
        if !primary.data.join("PG_VERSION").exists() {
            println!("initdb {} on port {}", primary.name, primary.port);
            bins.init_primary(primary)?;
        }
        if node::pid(primary).is_none() {
            bins.start(primary)?;
        }
        ensure_database(primary.port).await?;
        for replica in &members[1..] {
            if !replica.data.join("PG_VERSION").exists() {
                println!("pg_basebackup {} from {} on port {}", replica.name, primary.name, replica.port);
                bins.init_replica(replica, primary)?;
            }
            if node::pid(replica).is_none() {
                bins.start(replica)?;
            }
        }
    }
    wait_streaming(&state, Duration::from_secs(60)).await?;
    let config = write_config(&dir, &state)?;
    println!("cluster up: {} shards x {} nodes, replication streaming", state.shards().len(), replicas + 1);
    println!("serve against it with:\n  vitrina serve --config {}", config.display());
    Ok(())
}

async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let url = format!("postgres://{}@127.0.0.1:{port}/{}", node::ROLE, node::DATABASE);
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.connect_timeout(Duration::from_secs(2));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn ensure_database(port: u16) -> anyhow::Result<()> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user(node::ROLE).dbname("postgres").connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&node::DATABASE]).await?.is_some();
    if !exists {
        client.batch_execute(&format!("CREATE DATABASE {}", node::DATABASE)).await?;
    }
    Ok(())
}

async fn wait_streaming(state: &ClusterState, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    for shard in state.shards() {
        let members: Vec<&Node> = state.nodes.iter().filter(|n| n.shard == shard).collect();
        let want = members.len() as i64 - 1;
        let primary = current_primary(&members).await.ok_or_else(|| anyhow::anyhow!("{shard} has no primary running"))?;
        loop {
            let client = connect(primary.port).await?;
            let n: i64 =
                client.query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[]).await?.get(0);
            if n >= want {
                break;
            }
            if t0.elapsed() > limit {
                bail!("{shard}: only {n} of {want} replicas streaming after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The running member that is not in recovery.
async fn current_primary<'a>(members: &[&'a Node]) -> Option<&'a Node> {
    for n in members {
        if node::pid(n).is_none() {
            continue;
        }
        if let Ok(c) = connect(n.port).await {
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Some(n);
                }
            }
        }
    }
    None
}

/// The vitrina configuration for this cluster: the primary URL names every node of the shard
/// with `target_session_attrs=read-write`, so after a promotion new connections find the new
/// primary without a restart.
fn write_config(dir: &Path, state: &ClusterState) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "# Written by `vitrina cluster up`.\nstore = \"postgres\"\ndata_dir = \"{}\"\n",
        dir.join("vitrina-data").display()
    );
    for shard in state.shards() {
        let members: Vec<&Node> = state.nodes.iter().filter(|n| n.shard == shard).collect();
        let ports: Vec<u16> = members.iter().map(|n| n.port).collect();
        text.push_str(&format!("\n[[postgres.shards]]\nname = \"{shard}\"\nprimary = \"{}\"\n", node::url(&ports, true)));
        let replicas: Vec<String> = members[1..].iter().map(|n| format!("\"{}\"", node::url(&[n.port], false))).collect();
        text.push_str(&format!("replicas = [{}]\n", replicas.join(", ")));
    }
    let path = dir.join("vitrina.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub async fn status(dir: &Path) -> anyhow::Result<String> {
    let state = ClusterState::load(dir)?;
    let mut out = format!("{:<12} {:<9} {:>6} {:<10} {:<12} {:>10}\n", "NODE", "ROLE", "PORT", "PID", "STATE", "LAG_MS");
    for n in &state.nodes {
        let Some(pid) = node::pid(n) else {
            out.push_str(&format!("{:<12} {:<9} {:>6} {:<10} {:<12} {:>10}\n", n.name, "-", n.port, "-", "down", "-"));
            continue;
        };
        let (role, repl, lag) = match connect(n.port).await {
            Ok(c) => {
                let row = c
                    .query_one(
                        "SELECT pg_is_in_recovery(),
                                (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
                                CASE WHEN pg_is_in_recovery() THEN
                                  CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                                  ELSE (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint END
                                END,
                                (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')",
                        &[],
                    )
                    .await?;
                let recovering: bool = row.get(0);
                if recovering {
                    let receiver: Option<String> = row.get(1);
                    let lag: Option<i64> = row.get(2);
                    ("replica", receiver.unwrap_or_else(|| "not-streaming".into()), lag.map_or("-".into(), |l| l.to_string()))
                } else {
                    let followers: i64 = row.get(3);
                    ("primary", format!("{followers} streaming"), "0".into())
                }
            }
            Err(_) => ("?", "unreachable".into(), "-".into()),
        };
        out.push_str(&format!("{:<12} {:<9} {:>6} {:<10} {:<12} {:>10}\n", n.name, role, n.port, pid, repl, lag));
    }
    Ok(out)
}

fn down(dir: &Path, purge: bool) -> anyhow::Result<()> {
    let state = ClusterState::load(dir)?;
    let mut waiting = Vec::new();
    for n in &state.nodes {
        if let Some(pid) = node::pid(n) {
            node::signal(pid, "INT")?;
            waiting.push((n.name.clone(), pid));
        }
    }
    let t0 = Instant::now();
    for (name, pid) in waiting {
        while node::alive(pid) {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{name} (pid {pid}) did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("stopped {name}");
    }
    if purge {
        std::fs::remove_dir_all(dir.join("nodes")).ok();
        std::fs::remove_file(ClusterState::path(dir)).ok();
        std::fs::remove_file(dir.join("vitrina.toml")).ok();
        println!("removed the cluster's data");
    }
    Ok(())
}

async fn promote(dir: &Path, name: &str) -> anyhow::Result<()> {
    let state = ClusterState::load(dir)?;
    let target = state.node(name)?;
    if node::pid(target).is_none() {
        bail!("{name} is not running");
    }
    Binaries::locate()?.promote(target)?;
    // The shard's other replicas follow the new primary: primary_conninfo reloads without a restart.
    for other in state.nodes.iter().filter(|n| n.shard == target.shard && n.name != target.name) {
        if node::pid(other).is_none() {
            continue;
        }
        if let Ok(c) = connect(other.port).await {
            let recovering: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
            if recovering {
                let conninfo = format!("host=127.0.0.1 port={} user={}", target.port, node::ROLE);
                // ALTER SYSTEM refuses to run in a transaction block: two separate statements.
                c.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'")).await?;
                c.batch_execute("SELECT pg_reload_conf()").await?;
                println!("{} now follows {name}", other.name);
            }
        }
    }
    println!("promoted {name}");
    Ok(())
}
