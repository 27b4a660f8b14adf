//! `vitrina cluster`: the fleet on one machine, from installed engines, no containers. A
//! three-member etcd; per shard, PostgreSQL nodes run by Patroni (a leader and streaming
//! replicas, automatic failover); optionally a Redis Cluster of three masters and three
//! replicas; N vitrina instances; HAProxy in front as the single entry URL. What a caller needs
//! is in `DIR/cluster.json`, the instances' configuration in `DIR/vitrina.toml`.

pub mod etcd;
pub mod gateway;
pub mod instances;
pub mod layout;
pub mod monitoring;
pub mod patroni;
pub mod process;
pub mod redis;
pub mod registrar;
mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;

use self::layout::{ClusterFile, EtcdMember, Gateway, Instance, InstanceEntry, Layout, PgNode, RedisNode, ShardEntry};
use self::process::{Ports, RunAs};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Lay out (first time) and start every process, waiting until all serve.
    Up {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        shards: usize,
        /// Streaming replicas per shard (besides its leader).
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// vitrina instances behind the gateway.
        #[arg(long, default_value_t = 2)]
        instances: usize,
        /// A Redis Cluster of three masters and three replicas as the instances' shared cache.
        #[arg(long)]
        redis_cluster: bool,
        /// Patroni's synchronous mode: a commit is acknowledged once a replica has it too.
        #[arg(long)]
        synchronous: bool,
        /// Prometheus, Alertmanager and the postgres, redis and node exporters.
        #[arg(long)]
        monitoring: bool,
        /// Ports are taken from here upwards, skipping taken ones.
        #[arg(long, default_value_t = 55432)]
        base_port: u16,
    },
    /// Each process's state: PostgreSQL roles and lag, instances, Redis roles.
    Status {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// As JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Stop every process of this cluster (instances drain first).
    Down {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// Also remove the data and the cluster's files.
        #[arg(long)]
        purge: bool,
    },
    /// Crash a node (SIGKILL): a PostgreSQL node (its Patroni and its server), an instance, a
    /// Redis node, an etcd member or the gateway.
    Kill {
        node: String,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Start a node again (a PostgreSQL node rejoins as whatever Patroni decides).
    Start {
        node: String,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Restart the instances; with --rolling one at a time, each drained first, so the gateway
    /// answers throughout.
    Restart {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        #[arg(long)]
        rolling: bool,
    },
    /// Keep the gateway's servers in step with the instances' registrations (`cluster up`
    /// runs it as a daemon).
    Registrar {
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Manual switchover through Patroni: NODE becomes its shard's leader.
    Promote {
        node: String,
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Up { dir, shards, replicas, instances, redis_cluster, synchronous, monitoring, base_port } => {
            let shape = Shape { shards, replicas, instances, redis_cluster, synchronous, monitoring, base_port };
            up(&dir, &shape).await
        }
        ClusterCommand::Status { dir, json } => {
            let report = status::collect(&dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        ClusterCommand::Down { dir, purge } => down(&dir, purge),
        ClusterCommand::Kill { node, dir } => kill(&dir, &node),
        ClusterCommand::Start { node, dir } => start(&dir, &node).await,
        ClusterCommand::Restart { dir, rolling } => restart(&dir, rolling).await,
        ClusterCommand::Registrar { dir } => registrar::run(&dir).await,
        ClusterCommand::Promote { node, dir } => {
            let cluster = ClusterFile::load(&dir)?;
            let target = cluster.pg_node(&node).with_context(|| format!("no PostgreSQL node {node}"))?;
            patroni::switchover(&cluster, target).await?;
            patroni::wait_leader(&cluster, target, Duration::from_secs(60)).await?;
            println!("{node} leads {}", target.shard);
            Ok(())
        }
    }
}

pub struct Shape {
    pub shards: usize,
    pub replicas: usize,
    pub instances: usize,
    pub redis_cluster: bool,
    pub synchronous: bool,
    pub monitoring: bool,
    pub base_port: u16,
}

/// Names and ports for every process, chosen once; a later `up` reuses them.
fn lay_out(shape: &Shape) -> anyhow::Result<ClusterFile> {
    if shape.shards == 0 || shape.shards > 9 || shape.replicas > 4 || shape.instances == 0 || shape.instances > 16 {
        bail!("--shards must be 1-9, --replicas 0-4 and --instances 1-16");
    }
    let mut ports = Ports::from(shape.base_port, Vec::new());
    let gateway = Gateway { port: ports.take()? };
    let etcd = (1..=3)
        .map(|i| Ok(EtcdMember { name: format!("etcd{i}"), client_port: ports.take()?, peer_port: ports.take()? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut postgres = Vec::new();
    for s in 1..=shape.shards {
        for n in 1..=shape.replicas + 1 {
            postgres.push(PgNode {
                name: format!("shard{s}-{n}"),
                shard: format!("shard{s}"),
                port: ports.take()?,
                rest_port: ports.take()?,
            });
        }
    }
    let instances = (1..=shape.instances)
        .map(|i| Ok(Instance { name: format!("app{i}"), port: ports.take()? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let redis = if shape.redis_cluster {
        (1..=6)
            .map(|i| Ok(RedisNode { name: format!("redis{i}"), port: ports.take()?, bus_port: ports.take()? }))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let mut shards = BTreeMap::new();
    for n in &postgres {
        shards.entry(n.shard.clone()).or_insert_with(|| ShardEntry { nodes: Vec::new() }).nodes.push(n.name.clone());
    }
    let layout =
        Layout { pg_root: None, etcd, postgres, synchronous: shape.synchronous, instances, gateway, redis, monitoring: None };
    let mut cluster = ClusterFile {
        url: format!("http://127.0.0.1:{}", layout.gateway.port),
        admin_token: random_token()?,
        instances: layout.instances.iter().map(|i| InstanceEntry { name: i.name.clone(), url: instances::url(i) }).collect(),
        postgres: shards,
        redis: layout.redis.iter().map(redis::url).collect(),
        layout,
    };
    if shape.monitoring {
        cluster.layout.monitoring = Some(monitoring::lay_out(&cluster, &mut ports)?);
    }
    Ok(cluster)
}

/// Where servers of clusters in private directories live (the `postgres` user's home).
const PG_HOME: &str = "/var/lib/postgresql/vitrina-cluster";

/// FNV-1a: a stable name for a directory.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The engines a shape needs, each a Debian package's command.
pub fn check_installed(shape: &Shape) -> anyhow::Result<()> {
    patroni::bin_dir()?;
    let mut tools = vec!["patroni", "etcd", "haproxy"];
    if shape.redis_cluster {
        tools.extend(["redis-server", "redis-cli"]);
    }
    if shape.monitoring {
        tools.extend(["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"]);
        tools.extend(["prometheus-postgres-exporter", "prometheus-redis-exporter"]);
    }
    for tool in tools {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        if !found.status.success() {
            bail!("{tool} is not installed (Debian: apt-get install {tool})");
        }
    }
    Ok(())
}

async fn up(dir: &Path, shape: &Shape) -> anyhow::Result<()> {
    check_installed(shape)?;
    let t0 = Instant::now();
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let mut cluster = match ClusterFile::load(&dir) {
        Ok(existing) => existing,
        Err(_) => lay_out(shape)?,
    };
    if shape.monitoring && cluster.layout.monitoring.is_none() {
        let mut ports = Ports::from(shape.base_port, cluster.ports());
        cluster.layout.monitoring = Some(monitoring::lay_out(&cluster, &mut ports)?);
    }
    cluster.save(&dir)?;
    let run_as = RunAs::postgres()?;
    if let Some(user) = run_as {
        if cluster.layout.pg_root.is_none() && !user.reaches(&dir) {
            // A private directory (mktemp -d is 0700): the servers live where their user can
            // reach, named after this directory, and `down --purge` removes them too.
            cluster.layout.pg_root = Some(PathBuf::from(PG_HOME).join(format!("{:016x}", fnv(&dir.to_string_lossy()))));
            cluster.save(&dir)?;
        }
    }
    let pg_dir = cluster.pg_dir(&dir);
    for sub in ["nodes", "patroni"] {
        std::fs::create_dir_all(pg_dir.join(sub))?;
        if let Some(user) = run_as {
            user.own(&pg_dir.join(sub))?;
        }
    }

    for member in &cluster.layout.etcd {
        etcd::start(&dir, &cluster, member)?;
    }
    etcd::wait_healthy(&cluster, Duration::from_secs(30)).await?;
    println!("etcd: {} members", cluster.layout.etcd.len());

    for node in &cluster.layout.postgres {
        patroni::write_config(&dir, &cluster, node)?;
        if let Some(user) = run_as {
            user.own(&pg_dir.join("patroni"))?;
        }
        patroni::start(&dir, &cluster, node, run_as)?;
    }
    patroni::wait_ready(&cluster, Duration::from_secs(120)).await?;
    for shard in cluster.shards() {
        patroni::ensure_database(&cluster, &shard).await?;
        patroni::wait_streaming(&cluster, &shard, Duration::from_secs(60)).await?;
    }
    println!("postgres: {} shards, each a Patroni leader with {} streaming replicas", cluster.postgres.len(), shape.replicas);

    if !cluster.layout.redis.is_empty() {
        for node in &cluster.layout.redis {
            redis::start(&dir, node)?;
        }
        redis::form(&cluster, Duration::from_secs(30)).await?;
        println!("redis: a cluster of 3 masters and 3 replicas");
    }

    instances::write_config(&dir, &cluster)?;
    for instance in &cluster.layout.instances {
        instances::start(&dir, &cluster, instance)?;
        instances::wait_ready(instance, Duration::from_secs(60)).await?;
    }
    gateway::write_config(&dir, &cluster)?;
    gateway::start(&dir)?;
    registrar::start(&dir)?;
    for instance in &cluster.layout.instances {
        gateway::wait_up(&dir, instance, Duration::from_secs(30)).await?;
    }
    println!("instances: {} behind the gateway at {}", cluster.instances.len(), cluster.url);
    if let Some(m) = &cluster.layout.monitoring {
        monitoring::start(&dir, &cluster)?;
        monitoring::wait_ready(&cluster, Duration::from_secs(30)).await?;
        println!("monitoring: Prometheus {}, Alertmanager {}", monitoring::prometheus_url(m), monitoring::alertmanager_url(m));
    }
    println!("cluster up in {:.0?}; see {}", t0.elapsed(), ClusterFile::path(&dir).display());
    Ok(())
}

/// What kind of process a node name is.
enum Node<'a> {
    Etcd(&'a EtcdMember),
    Postgres(&'a PgNode),
    Instance(&'a Instance),
    Redis(&'a RedisNode),
    Gateway,
    Registrar,
    Monitoring,
}

fn find<'a>(cluster: &'a ClusterFile, name: &str) -> anyhow::Result<Node<'a>> {
    let l = &cluster.layout;
    if name == gateway::NAME {
        return Ok(Node::Gateway);
    }
    if name == registrar::NAME {
        return Ok(Node::Registrar);
    }
    l.etcd
        .iter()
        .find(|m| m.name == name)
        .map(Node::Etcd)
        .or_else(|| l.postgres.iter().find(|n| n.name == name).map(Node::Postgres))
        .or_else(|| l.instances.iter().find(|i| i.name == name).map(Node::Instance))
        .or_else(|| l.redis.iter().find(|r| r.name == name).map(Node::Redis))
        .or_else(|| monitoring::names(cluster).iter().any(|n| n == name).then_some(Node::Monitoring))
        .with_context(|| format!("no node {name} in this cluster"))
}

fn kill(dir: &Path, name: &str) -> anyhow::Result<()> {
    let cluster = ClusterFile::load(dir)?;
    match find(&cluster, name)? {
        Node::Postgres(node) => patroni::kill(dir, &cluster, node)?,
        _ => {
            let pid = process::running(dir, name).with_context(|| format!("{name} is not running"))?;
            process::signal(pid, "KILL")?;
        }
    }
    println!("killed {name}");
    Ok(())
}

async fn start(dir: &Path, name: &str) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let cluster = ClusterFile::load(&dir)?;
    match find(&cluster, name)? {
        Node::Etcd(member) => etcd::start(&dir, &cluster, member)?,
        Node::Postgres(node) => patroni::start(&dir, &cluster, node, RunAs::postgres()?)?,
        Node::Instance(instance) => {
            instances::start(&dir, &cluster, instance)?;
            instances::wait_ready(instance, Duration::from_secs(60)).await?;
        }
        Node::Redis(node) => redis::start(&dir, node)?,
        Node::Gateway => gateway::start(&dir)?,
        Node::Registrar => registrar::start(&dir)?,
        // Starts whichever of them is not running.
        Node::Monitoring => monitoring::start(&dir, &cluster)?,
    }
    println!("started {name}");
    Ok(())
}

async fn restart(dir: &Path, rolling: bool) -> anyhow::Result<()> {
    let dir = dir.canonicalize()?;
    let cluster = ClusterFile::load(&dir)?;
    let t0 = Instant::now();
    if !rolling {
        for instance in &cluster.layout.instances {
            instances::stop(&dir, instance)?;
        }
        for instance in &cluster.layout.instances {
            instances::start(&dir, &cluster, instance)?;
            instances::wait_ready(instance, Duration::from_secs(60)).await?;
        }
        println!("restarted {} instances in {:.1?}", cluster.layout.instances.len(), t0.elapsed());
        return Ok(());
    }
    for instance in &cluster.layout.instances {
        // Out of rotation first: the gateway sends it nothing new while it finishes what it holds.
        gateway::drain(&dir, instance, Duration::from_secs(instances::GRACE_SECS)).await?;
        instances::stop(&dir, instance)?;
        instances::start(&dir, &cluster, instance)?;
        instances::wait_ready(instance, Duration::from_secs(60)).await?;
        gateway::enable(&dir, instance, Duration::from_secs(30)).await?;
        println!("restarted {}", instance.name);
    }
    println!("rolling restart of {} instances in {:.1?}", cluster.layout.instances.len(), t0.elapsed());
    Ok(())
}

fn down(dir: &Path, purge: bool) -> anyhow::Result<()> {
    let cluster = ClusterFile::load(dir)?;
    // Front to back: the gateway and the instances before what they use.
    let mut stopping = Vec::new();
    let mut stop = |name: &str, sig: &str| -> anyhow::Result<()> {
        if let Some(pid) = process::running(dir, name) {
            process::signal(pid, sig)?;
            stopping.push((name.to_owned(), pid));
        }
        Ok(())
    };
    for name in monitoring::names(&cluster) {
        stop(&name, "TERM")?;
    }
    stop(registrar::NAME, "TERM")?;
    stop(gateway::NAME, "TERM")?;
    for i in &cluster.layout.instances {
        stop(&i.name, "TERM")?;
    }
    for r in &cluster.layout.redis {
        stop(&r.name, "TERM")?;
    }
    for n in &cluster.layout.postgres {
        stop(&n.name, "TERM")?;
    }
    for (name, pid) in std::mem::take(&mut stopping) {
        process::wait_gone(pid, &name, Duration::from_secs(60))?;
    }
    // Patroni is gone; a server it left behind (its Patroni was killed) stops too.
    for n in &cluster.layout.postgres {
        if let Some(pid) = patroni::postmaster(dir, &cluster, n) {
            process::signal(pid, "INT")?;
            process::wait_gone(pid, &n.name, Duration::from_secs(60))?;
        }
    }
    for m in &cluster.layout.etcd {
        if let Some(pid) = process::running(dir, &m.name) {
            process::signal(pid, "TERM")?;
            process::wait_gone(pid, &m.name, Duration::from_secs(30))?;
        }
    }
    println!("cluster down");
    if purge {
        if let Some(root) = &cluster.layout.pg_root {
            std::fs::remove_dir_all(root).ok();
        }
        for sub in ["nodes", "patroni", "etcd", "redis", "instances", "monitoring", "run", "logs"] {
            std::fs::remove_dir_all(dir.join(sub)).ok();
        }
        for file in ["cluster.json", "vitrina.toml", "haproxy.cfg"] {
            std::fs::remove_file(dir.join(file)).ok();
        }
        println!("removed the cluster's data");
    }
    Ok(())
}
