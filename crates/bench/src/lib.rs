//! `vitrina bench`: a load generator in the same binary. It sets up what its scenario needs
//! through the API, offers load in open loop (a fixed arrival rate, latency counted from each
//! request's due time) or closed loop (connections back to back), shows a progress line, and
//! writes a report: JSON (`--report`, readable by `--compare`), markdown and an SVG plot.
//! A flash sale ends with an audit of orders accepted against stock.

mod client;
pub mod report;
pub mod scenario;
pub mod schedule;
mod setup;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use tokio::time::Instant;

use self::client::Http;
use self::report::{Kind, Recorder, Report, RunInfo};
use self::scenario::{Request, Scenario, World, Zipf};
use self::schedule::Mode;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the vitrina to load, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// How long to offer load, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Open loop: requests per second, sent on schedule whatever the answers take.
    #[arg(long, conflicts_with = "connections")]
    pub rate: Option<f64>,
    /// Closed loop: this many connections, each sending as soon as answered (default 32).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the markdown report here (it is printed either way).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write an SVG plot of throughput and latency per second here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// An earlier JSON report: print the change against it.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Admin token, to create the bench's shop (else `VITRINA_ADMIN_TOKEN` or ./data/admin_token).
    #[arg(long, env = "VITRINA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Products in the browsing catalog.
    #[arg(long, default_value_t = 200)]
    pub products: usize,
    /// SKUs on sale in a flash sale.
    #[arg(long, default_value_t = 5)]
    pub skus: usize,
    /// Units of each SKU on sale.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// The seed API collection the `seed` scenario reads and writes.
    #[arg(long, default_value = "helloDoc")]
    pub collection: String,
    /// Retries of an order refused with 503 or 429, each after its `Retry-After`.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Open loop: most requests on the wire at once (and so connections); a due request waits
    /// for room, and the wait counts in its latency. Buyers waiting out a `Retry-After` hold no
    /// room.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Connections to open before the clock starts, as buyers are already on the site when a
    /// sale opens. Default in open loop: 20 ms of arrivals (at least 16), so the first stall does
    /// not have the bench connecting while it should be sending.
    #[arg(long)]
    pub warm: Option<usize>,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `30s`, `2m`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One attempt at a request: when it started counting, when it ended, how.
struct Attempt {
    start: Option<Instant>,
    /// When this attempt actually began, however late against its due time.
    sent: Instant,
    done: Instant,
    kind: Kind,
}

struct Shared {
    http: Http,
    world: World,
    zipf: Zipf,
    scenario: Scenario,
    retries: u32,
    end: Instant,
    accepted: Mutex<HashSet<String>>,
    retried: AtomicU64,
    /// Buyers whose last answer was a refusal.
    turned_away: AtomicU64,
    /// Of those, the ones asked to come back after the end of the run.
    past_end: AtomicU64,
}

async fn execute(s: &Shared, req: Request) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let (method, path, body, key) = match req {
        Request::Get(path) => (Method::GET, path, None, None),
        Request::CreateUser(doc) => (Method::POST, format!("/{}/users", s.world.collection), Some(doc.to_string()), None),
        Request::Order { sku, key } => {
            let body = serde_json::json!({"customer_id": format!("buyer-{key}"), "lines": [{"sku": sku, "qty": 1}]});
            (Method::POST, format!("/shops/{}/orders", s.world.shop), Some(body.to_string()), Some(key))
        }
    };
    let bearer = key.as_ref().map(|_| s.world.key.as_str());
    for attempt in 0..=s.retries {
        let started = Instant::now();
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("idempotency-key", k.as_str())).collect();
        let answer = s.http.send(method.clone(), &path, bearer, &headers, body.clone().map(Bytes::from)).await;
        let done = Instant::now();
        let (kind, retry_after) = match &answer {
            Ok(a) => (Kind::of_status(a.status, a.code.as_deref()), a.retry_after),
            Err(_) => (Kind::Transport, None),
        };
        attempts.push(Attempt { start: (attempt > 0).then_some(started), sent: started, done, kind });
        if let (Some(k), Ok(a)) = (&key, &answer) {
            if a.status == 201 {
                s.accepted.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone());
            }
        }
        // Only orders are retried: a buyer told to come back does, after the time asked, give or
        // take a quarter second as real clients spread out.
        let wait = Duration::from_secs(retry_after.unwrap_or(1)) + Duration::from_millis(rand::random_range(0..250));
        let refused = key.is_some() && matches!(kind, Kind::Shed | Kind::Quota);
        if !(refused && attempt < s.retries && done + wait < s.end) {
            if refused {
                s.turned_away.fetch_add(1, Ordering::Relaxed);
                if attempt < s.retries {
                    s.past_end.fetch_add(1, Ordering::Relaxed);
                }
            }
            break;
        }
        s.retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
    attempts
}

/// Runs a bench and returns its report; `main` prints and writes it.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let mode = match (args.rate, args.connections) {
        (Some(rate), _) if rate > 0.0 && rate.is_finite() => Mode::Open { rate },
        (Some(rate), _) => anyhow::bail!("--rate must be a positive number, not {rate}"),
        (None, c) => Mode::Closed { connections: c.unwrap_or(32).max(1) },
    };
    let connections = match mode {
        Mode::Open { .. } => args.max_in_flight,
        Mode::Closed { connections } => connections,
    };
    let http = Http::new(&args.url, connections, args.timeout);
    let world = setup::prepare(&http, args).await?;
    let warm = match (args.warm, mode) {
        (Some(n), _) => n,
        (None, Mode::Open { rate }) => ((rate * 0.02) as usize).max(16),
        (None, Mode::Closed { connections }) => connections,
    };
    http.warm(warm.min(connections)).await.map_err(|e| anyhow::anyhow!("opening connections to {}: {e}", args.url))?;
    let run_info = RunInfo {
        scenario: args.scenario.name().into(),
        url: args.url.clone(),
        mode: if matches!(mode, Mode::Open { .. }) { "open".into() } else { "closed".into() },
        rate: args.rate,
        connections: match mode {
            Mode::Closed { connections } => Some(connections),
            Mode::Open { .. } => None,
        },
        duration_secs: args.duration.as_secs_f64(),
    };
    let start = Instant::now();
    let cpu_at_start = cpu_seconds();
    let shared = Arc::new(Shared {
        http,
        zipf: Zipf::new(world.skus.len(), 1.1),
        world,
        scenario: args.scenario,
        retries: args.retries,
        end: start + args.duration,
        accepted: Mutex::new(HashSet::new()),
        retried: AtomicU64::new(0),
        turned_away: AtomicU64::new(0),
        past_end: AtomicU64::new(0),
    });
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let progress = (!args.quiet).then(|| tokio::spawn(progress(start, args.duration, done.clone(), errors.clone())));

    let s = shared.clone();
    let (rec, d, e) = (recorder.clone(), done.clone(), errors.clone());
    schedule::run(
        mode,
        args.duration,
        // Buyers at once, counting those waiting to retry; the wire has its own bound.
        args.max_in_flight.saturating_mul(16),
        move |i| {
            let s = s.clone();
            async move {
                let (u, v): (f64, f64) = (rand::random(), rand::random());
                let req = scenario::request(s.scenario, &s.world, &s.zipf, i, u, v);
                execute(&s, req).await
            }
        },
        move |_, timing, attempts: Vec<Attempt>| {
            let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
            for a in attempts {
                let from = a.start.unwrap_or(timing.due);
                r.record(from.saturating_duration_since(start), a.done.saturating_duration_since(from), a.kind);
                let lag = a.start.is_none().then(|| a.sent.saturating_duration_since(timing.due));
                r.record_send(lag, a.done.saturating_duration_since(a.sent), a.kind);
                d.fetch_add(1, Ordering::Relaxed);
                if a.kind.is_error() {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    )
    .await;
    // The load was offered over the whole duration, even when the last answer came before its end.
    let elapsed = start.elapsed().max(args.duration);
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let recorder =
        Arc::try_unwrap(recorder).ok().context("recorder still shared")?.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut report = recorder.finish(run_info, elapsed);
    report.client_cpu_cores = cpu_at_start.zip(cpu_seconds()).map(|(a, b)| (b - a) / elapsed.as_secs_f64());
    if args.scenario.buys() {
        let accepted = shared.accepted.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        let mut sale = setup::audit(&shared.http, &shared.world, args.stock, accepted).await?;
        sale.retries = shared.retried.load(Ordering::Relaxed);
        sale.turned_away = shared.turned_away.load(Ordering::Relaxed);
        sale.asked_past_end = shared.past_end.load(Ordering::Relaxed);
        report.sale = Some(sale);
    }
    Ok(report)
}

/// User and system CPU time of this process so far, from `/proc/self/stat` (in USER_HZ ticks,
/// 100 per second on Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

async fn progress(start: Instant, duration: Duration, done: Arc<AtomicU64>, errors: Arc<AtomicU64>) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (n, e) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
        eprint!(
            "\r{:>5.1}/{:.0} s  {n} answers  {} /s  {e} errors   ",
            start.elapsed().as_secs_f64(),
            duration.as_secs_f64(),
            n - last
        );
        last = n;
    }
}

/// `vitrina bench`: run, print the markdown, write what was asked for.
pub async fn main(args: BenchArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    let markdown = report.to_markdown();
    println!("{markdown}");
    if let Some(path) = &args.compare {
        let old: Report = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a bench report", path.display()))?;
        println!("## Against {}\n\n{}", path.display(), report.compare(&old));
    }
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.to_svg())?;
    }
    if report.sale.as_ref().is_some_and(|s| s.oversell != 0) {
        anyhow::bail!("OVERSELL: more was sold than the stock held");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_cpu_time_is_read_and_grows() {
        let Some(before) = cpu_seconds() else { return };
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_seconds().unwrap();
        assert!(after > before && after - before < 5.0, "{before} -> {after}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err() && parse_duration("3h").is_err() && parse_duration("fast").is_err());
    }
}
