//! Span export over OTLP (HTTP, protobuf) when `telemetry.otlp_endpoint` is set. Spans are
//! batched on the SDK's own thread; each export is sent by the service's HTTP client on the
//! tokio runtime, with a timeout, so a slow or absent collector costs dropped spans, never
//! slower requests.

use std::time::Duration;

use super::config::TelemetryConfig;
use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::Layer;

/// Sends the exporter's requests with the service's own client, on the tokio runtime the
/// service runs on (the SDK's batch thread has none of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: axum::http::Request<Bytes>) -> Result<axum::http::Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let resp = http.execute(request).await?;
            let mut out = axum::http::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                out = out.header(k.as_str(), v.as_bytes());
            }
            let body = resp.bytes().await?;
            Ok::<_, HttpError>(out.body(body)?)
        });
        sent.await?
    }
}

/// The span pipeline for `cfg`, or `None` when no collector is configured. Call it inside the
/// tokio runtime; shut the provider down (it flushes) when the service stops.
pub fn provider(cfg: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(url) = cfg.traces_url() else { return Ok(None) };
    let timeout = Duration::from_millis(cfg.export_timeout_ms.max(1));
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    let client = Client { http, runtime: tokio::runtime::Handle::try_current()? };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(timeout)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(cfg.service_name.clone()).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio)));
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).with_sampler(sampler).build()))
}

/// The layer that turns vitrina's own spans (not its libraries') into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("vitrina"))
        .with_threads(false)
        .with_filter(Targets::new().with_target("vitrina", LevelFilter::DEBUG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        let cfg = |e: &str| TelemetryConfig { otlp_endpoint: Some(e.into()), ..TelemetryConfig::default() };
        assert_eq!(cfg("http://127.0.0.1:4318").traces_url().unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(cfg("http://c:4318/").traces_url().unwrap(), "http://c:4318/v1/traces");
        assert_eq!(cfg("http://c:4318/v1/traces").traces_url().unwrap(), "http://c:4318/v1/traces");
        assert!(TelemetryConfig::default().traces_url().is_none());
        assert!(cfg("ftp://x").check().is_err());
        assert!(TelemetryConfig { sample_ratio: 1.5, ..TelemetryConfig::default() }.check().is_err());
    }

    /// The real exporter, client and batch thread against a local OTLP/HTTP receiver.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_a_collector_as_otlp_protobuf() {
        use opentelemetry::trace::{Tracer, TracerProvider as _};
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, Bytes)>();
        let collector = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let _ = tx.send(("/v1/traces".into(), kind, body));
                async { "" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, collector).await });

        let cfg = TelemetryConfig { otlp_endpoint: Some(url), service_name: "vitrina-test".into(), ..TelemetryConfig::default() };
        let provider = provider(&cfg).unwrap().expect("a collector is configured");
        provider.tracer("t").in_span("checkout", |_| {});
        // Flushing waits for the batch thread, which waits for this runtime: not on its workers.
        let flushing = provider.clone();
        tokio::task::spawn_blocking(move || flushing.force_flush()).await.unwrap().unwrap();

        let (path, kind, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert_eq!((path.as_str(), kind.as_str()), ("/v1/traces", "application/x-protobuf"));
        let sent = ExportTraceServiceRequest::decode(body).unwrap();
        let spans: Vec<&str> =
            sent.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).map(|s| s.name.as_str()).collect();
        assert_eq!(spans, ["checkout"]);
        let service = sent.resource_spans[0].resource.as_ref().unwrap().attributes.iter().find(|a| a.key == "service.name");
        assert!(format!("{service:?}").contains("vitrina-test"));
        tokio::task::spawn_blocking(move || provider.shutdown()).await.unwrap().unwrap();
    }
}
