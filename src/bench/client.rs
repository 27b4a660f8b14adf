//! The bench's HTTP client: hyper over kept-alive HTTP/1.1 connections, with a timeout on every
//! request, reading only what the report needs from each answer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The problem's `code`, for error answers.
    pub code: Option<String>,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl Http {
    pub fn new(base: &str, connections: usize, timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections.max(1)).build(connector);
        Http { client, base: base.trim_end_matches('/').to_owned(), timeout }
    }

    /// One request; `Err` when no answer came (refused, reset, timed out).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Answer, String> {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let code = (status >= 400)
                .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok()?.get("code")?.as_str().map(str::to_owned))
                .flatten();
            Ok(Answer { status, code, retry_after, body })
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}
