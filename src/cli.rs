//! The `vitrina` command line: `serve` (the default), `seed`, `config`, `relay`, `bench`, `cluster`.
//! Part of the binary, not the lib: the tools behind `bench` and `cluster` are crates of their
//! own that the service does not build.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use vitrina::app::{shutdown_signal, Application};
use vitrina::clock::Clock;
use vitrina::config::{Config, Overrides};
use vitrina::{demo, telemetry};

#[derive(Parser, Debug)]
#[command(name = "vitrina", version, about = "A shop backend built to survive sale day")]
pub struct Cli {
    /// TOML configuration file (lowest layer above the built-in defaults).
    #[arg(long, global = true, env = "VITRINA_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Directory of the embedded store and generated secrets.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (what runs when no subcommand is given).
    Serve,
    /// Fill demo data (idempotent): the helloDoc collection and a demo shop.
    Seed,
    /// Print the effective configuration, secrets masked.
    Config,
    /// Run only the outbox relay: publish every shard's events to the configured sinks and
    /// deliver webhooks. Several may run; one leads per shard, the others stand by.
    Relay,
    /// Offer load to a running vitrina and report throughput, latency percentiles, errors by
    /// kind and, for a flash sale, the oversell audit.
    Bench(Box<vitrina_bench::BenchArgs>),
    /// A local PostgreSQL topology (shards with streaming replicas) for development and drills.
    #[command(subcommand)]
    Cluster(vitrina_cluster::ClusterCommand),
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Needs no vitrina configuration: it writes one.
        Some(Command::Cluster(cmd)) => return runtime()?.block_on(vitrina_cluster::run(cmd)),
        // A client of some vitrina, maybe another machine's: its own flags are all it reads.
        Some(Command::Bench(args)) => return runtime()?.block_on(vitrina_bench::main(*args)),
        _ => {}
    }
    let flags = Overrides { listen: cli.listen.clone(), data_dir: cli.data_dir.clone() };
    // VITRINA_CONFIG is read by clap; keep it out of the environment layer.
    let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k != "VITRINA_CONFIG").collect();
    let config = Config::from_layers(cli.config.as_deref(), &env, &flags)?;
    let file = cli.config.clone();
    let source: vitrina::app::ConfigSource = std::sync::Arc::new(move || {
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k != "VITRINA_CONFIG").collect();
        Config::from_layers(file.as_deref(), &env, &flags)
    });
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Serve => with_telemetry(&config, async {
            let app = Application::build(config.clone()).await?.reload_on_sighup(source);
            app.run_until_stopped(shutdown_signal()).await
        }),
        Command::Seed => with_telemetry(&config, seed_command(config.clone())),
        Command::Relay => with_telemetry(&config, relay_command(config.clone())),
        Command::Cluster(_) | Command::Bench(_) => unreachable!("handled before configuration is loaded"),
    }
}

/// Runs `work` on a fresh runtime with logs and span export set up, and flushes the spans after
/// it ended, while the runtime that sends them is still there.
fn with_telemetry(config: &Config, work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let rt = runtime()?;
    let telemetry = rt.block_on(async { telemetry::init(config) })?;
    let result = rt.block_on(work);
    telemetry.shutdown();
    result
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn relay_command(config: Config) -> anyhow::Result<()> {
    use vitrina::events::relay::{Relay, RelayStatus};
    std::fs::create_dir_all(&config.data_dir)?;
    let store = vitrina::store::Store::open(&config).await?;
    let relay = std::sync::Arc::new(Relay::new(&config.events, &config.breakers, std::sync::Arc::new(RelayStatus::default()))?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.run(store.clone().outboxes(), stop_rx));
    tracing::info!(sinks = ?Relay::sink_names(&config.events), "relay running");
    shutdown_signal().await;
    tracing::info!("relay stopping: finishing the batches in flight");
    let _ = stop_tx.send(true);
    running.await?;
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(())
}

async fn seed_command(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = vitrina::store::Store::open(&config).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} seeding [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = demo::seed(store.as_ref(), &config, &Clock::system(), &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "seeded: {} users, {} products created{}",
        report.users_inserted,
        report.products_created,
        if report.demo_shop_key.is_some() { ", demo shop created" } else { "" }
    );
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(())
}
