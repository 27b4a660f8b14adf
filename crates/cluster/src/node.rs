//! One PostgreSQL server of a local cluster, driven through the installed binaries
//! (initdb, pg_ctl, pg_basebackup). As root the servers run as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The database and role every node serves.
pub const DATABASE: &str = "vitrina";
pub const ROLE: &str = "vitrina";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `shard1-1` is shard 1's first primary; `shard1-2`, `shard1-3` its replicas.
    pub name: String,
    pub shard: String,
    pub port: u16,
    pub data: PathBuf,
}

/// Where the PostgreSQL binaries are and whom they run as.
pub struct Binaries {
    bin: PathBuf,
    run_as: Option<String>,
}

impl Binaries {
    /// Finds the newest installed server (`VITRINA_PG_BIN` overrides).
    pub fn locate() -> anyhow::Result<Binaries> {
        let bin = match std::env::var_os("VITRINA_PG_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                    .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
                    .collect();
                found.sort();
                match found.pop() {
                    Some((_, p)) => p,
                    None => bail!("no PostgreSQL server binaries found (install the postgresql package or set VITRINA_PG_BIN)"),
                }
            }
        };
        let root =
            Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
        Ok(Binaries { bin, run_as: root.then(|| "postgres".to_owned()) })
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(tool).args(args).output().with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!("{tool} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Hands a directory to the server's user (as root); the server refuses group/world access.
    pub fn own(&self, dir: &Path) -> anyhow::Result<()> {
        if let Some(user) = &self.run_as {
            let st = Command::new("chown").args(["-R", &format!("{user}:{user}")]).arg(dir).status()?;
            if !st.success() {
                bail!("chown {} failed", dir.display());
            }
            let probe = Command::new("runuser").args(["-u", user, "--", "test", "-w"]).arg(dir).status()?;
            if !probe.success() {
                bail!("{} is not reachable by the {user} user: choose a --dir outside private directories", dir.display());
            }
        }
        Ok(())
    }

    pub fn init_primary(&self, node: &Node) -> anyhow::Result<()> {
        let data = node.data.to_string_lossy();
        self.run("initdb", &["-D", &data, "-U", ROLE, "--auth=trust", "-E", "UTF8", "--locale=C"])?;
        write_conf(node, true)?;
        std::fs::write(
            node.data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        Ok(())
    }

    /// A streaming replica cloned from `primary`, with `standby.signal` and `primary_conninfo`.
    pub fn init_replica(&self, node: &Node, primary: &Node) -> anyhow::Result<()> {
        let data = node.data.to_string_lossy();
        let port = primary.port.to_string();
        self.run(
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &port, "-U", ROLE, "-D", &data, "-R", "-X", "stream", "-c", "fast"],
        )?;
        write_conf(node, false)
    }

    pub fn start(&self, node: &Node) -> anyhow::Result<()> {
        let data = node.data.to_string_lossy();
        let log = node.data.join("server.log");
        self.run("pg_ctl", &["-D", &data, "-l", &log.to_string_lossy(), "-w", "-t", "60", "start"])
    }

    pub fn promote(&self, node: &Node) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &node.data.to_string_lossy(), "-w", "-t", "60", "promote"])
    }
}

/// Settings appended last, so they win over what initdb or the base backup wrote.
fn write_conf(node: &Node, primary: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(node.data.join("postgresql.conf"))?;
    writeln!(f, "\n# vitrina cluster: node {}", node.name)?;
    writeln!(f, "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''", node.port)?;
    if primary {
        writeln!(f, "wal_level = replica\nmax_wal_senders = 16\nmax_replication_slots = 16\nwal_keep_size = '256MB'")?;
        writeln!(f, "hot_standby = on\nhot_standby_feedback = on\nshared_buffers = '64MB'\nmax_connections = 200")?;
    }
    Ok(())
}

/// The postmaster's pid from `postmaster.pid`, when the server is running.
pub fn pid(node: &Node) -> Option<u32> {
    let text = std::fs::read_to_string(node.data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| !s.contains(") Z "))
}

/// Sends a signal by pid: `INT` is a fast shutdown, `KILL` a crash.
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

pub fn url(ports: &[u16], target_primary: bool) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let query = if target_primary { "?target_session_attrs=read-write" } else { "" };
    format!("postgres://{ROLE}@{}/{DATABASE}{query}", hosts.join(","))
}
