//! `[telemetry]` settings.

use serde::{Deserialize, Serialize};

/// `[telemetry]`: where spans go. Logs are set by `log_format` and `log_level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`; spans are sent to `<it>/v1/traces`.
    /// Unset: no spans leave the process (trace ids are still made, returned and logged).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded (0-1); a caller's sampling decision is kept.
    pub sample_ratio: f64,
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, service_name: "vitrina".into(), sample_ratio: 1.0, export_timeout_ms: 5_000 }
    }
}

impl TelemetryConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            anyhow::bail!("telemetry.sample_ratio is a fraction between 0 and 1");
        }
        if let Some(url) = &self.otlp_endpoint {
            let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("telemetry.otlp_endpoint must be an http(s) URL");
            }
        }
        Ok(())
    }

    /// The traces URL of the collector.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") })
    }
}
