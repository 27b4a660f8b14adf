//! Logs, traces, metrics and request ids. Logs are structured (JSON off a terminal), carry the
//! request id and trace id, and never include secrets or bodies. Traces: `trace` gives every
//! request a W3C context, `otlp` exports spans when a collector is configured. Metrics are
//! Prometheus text at `GET /metrics`.

pub mod config;
pub mod context;
pub mod http;
pub mod otlp;
pub mod trace;

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::Config;

/// What `init` set up that must be flushed when the process stops.
pub struct Telemetry {
    spans: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still batched. Call it outside the runtime's own tasks (it blocks).
    pub fn shutdown(self) {
        if let Some(provider) = self.spans {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing spans: {e}");
            }
        }
    }
}

/// Installs the global log subscriber and, with `telemetry.otlp_endpoint`, the span exporter.
/// Called once by the binary inside its runtime, never by tests.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let json = match config.log_format.as_str() {
        "json" => true,
        "pretty" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> =
        if json { fmt.json().flatten_event(true).with_current_span(true).boxed() } else { fmt.boxed() };
    let spans = otlp::provider(&config.telemetry)?;
    let exported = spans.as_ref().map(otlp::layer);
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(exported).try_init();
    if let Some(url) = &config.telemetry.otlp_endpoint {
        tracing::info!(collector = %crate::secrets::mask_url_password(url), "exporting spans over OTLP");
    }
    Ok(Telemetry { spans })
}

/// The process-wide Prometheus recorder; every app in the process (tests start many) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("vitrina_sqlite_group_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("vitrina_order_group_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                // A refusal is decided in microseconds; the shared buckets start at 0.5 ms.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("vitrina_admission_refusal_seconds".into()),
                        &[0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1],
                    )
                })
                // The time a request spends admitted: fine enough to read a p99 ratio from.
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("vitrina_admission_inside_seconds".into()),
                        &[
                            0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01,
                            0.012_5, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1.0,
                        ],
                    )
                })
                .expect("static bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `vitrina_*` name in `text`, without the suffixes Prometheus adds to histograms.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("vitrina_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(base.to_owned());
            rest = &tail[end..];
        }
        names
    }

    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    /// Dashboards and alerts that name a metric nobody records show nothing and never fire.
    #[test]
    fn dashboards_and_alerts_name_only_metrics_the_code_records() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut code = String::new();
        sources(&root.join("src"), &mut code);
        let recorded: BTreeSet<String> = code
            .split("metrics::")
            .skip(1)
            .filter_map(|call| call.split_once("!(\"").map(|(_, rest)| rest.split('"').next().unwrap_or("").to_owned()))
            .filter(|n| n.starts_with("vitrina_"))
            .collect();
        assert!(recorded.contains("vitrina_http_requests_total"), "found {recorded:?}");
        for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/vitrina.json"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let unknown: Vec<String> = metric_names(&text).into_iter().filter(|n| !recorded.contains(n)).collect();
            assert!(unknown.is_empty(), "{file} names metrics nothing records: {unknown:?}");
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/vitrina.json")).unwrap()).unwrap();
        assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
    }
}
