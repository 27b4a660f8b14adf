//! The cluster's daemons: each runs in its own process group (so a signal meant for the tool
//! that started it does not reach it), logs to `DIR/logs/NAME.log` and is found again by the
//! pid file `DIR/run/NAME.pid`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Who a daemon runs as: as root, PostgreSQL and Patroni run as the `postgres` user, since
/// PostgreSQL refuses to run as root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// The `postgres` user when this process is root, else nobody (run as ourselves).
    pub fn postgres() -> anyhow::Result<Option<RunAs>> {
        if id(&["-u"])? != 0 {
            return Ok(None);
        }
        Ok(Some(RunAs { uid: id(&["-u", "postgres"])?, gid: id(&["-g", "postgres"])? }))
    }

    /// Whether this user can reach (traverse into) `dir`.
    pub fn reaches(&self, dir: &Path) -> bool {
        Command::new("setpriv")
            .args([format!("--reuid={}", self.uid), format!("--regid={}", self.gid), "--clear-groups".into()])
            .args(["test", "-x"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Hands a directory tree to this user; the server refuses group/world access and must
    /// be able to reach it.
    pub fn own(&self, dir: &Path) -> anyhow::Result<()> {
        let st = Command::new("chown").arg("-R").arg(format!("{}:{}", self.uid, self.gid)).arg(dir).status()?;
        if !st.success() {
            bail!("chown {} failed", dir.display());
        }
        let probe = Command::new("setpriv")
            .args([format!("--reuid={}", self.uid), format!("--regid={}", self.gid), "--clear-groups".into()])
            .args(["test", "-w"])
            .arg(dir)
            .status()?;
        if !probe.success() {
            bail!("{} is not reachable by the postgres user: choose a --dir outside private directories", dir.display());
        }
        Ok(())
    }
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id").args(args).output().context("running id")?;
    if !out.status.success() {
        bail!("id {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("run").join(format!("{name}.pid"))
}

pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// Starts `command` as the daemon `name` unless it already runs; returns its pid.
pub fn spawn(dir: &Path, name: &str, mut command: Command, run_as: Option<RunAs>) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    if let Some(pid) = running(dir, name) {
        return Ok(pid);
    }
    std::fs::create_dir_all(dir.join("run"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file(dir, name))?;
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    let child = command.spawn().with_context(|| format!("starting {name}"))?;
    let pid = child.id();
    // Not waited for: once this tool exits, init reaps it.
    drop(child);
    std::fs::write(pid_file(dir, name), pid.to_string())?;
    Ok(pid)
}

/// The daemon's pid while it runs.
pub fn running(dir: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(dir, name)).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has not read its status yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // `pid (comm) state ppid ...`: the command may hold spaces, so read after its `)`.
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect()
}

/// `TERM` asks to stop (a drain for vitrina), `INT` is PostgreSQL's fast shutdown, `KILL` a crash.
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Like `signal`, for a process that may be gone already.
pub fn signal_if_alive(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).stderr(Stdio::null()).status();
}

pub fn wait_gone(pid: u32, name: &str, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > limit {
            bail!("{name} (pid {pid}) did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Free loopback ports, handed out in order from a base, skipping taken ones.
pub struct Ports {
    next: u16,
    /// Ports already given to this cluster's processes, running or not.
    taken: Vec<u16>,
}

impl Ports {
    pub fn from(base: u16, taken: Vec<u16>) -> Ports {
        Ports { next: base, taken }
    }

    pub fn take(&mut self) -> anyhow::Result<u16> {
        while self.next < u16::MAX {
            let p = self.next;
            self.next += 1;
            if !self.taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                return Ok(p);
            }
        }
        bail!("no free port left above the base port")
    }
}
