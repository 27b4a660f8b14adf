//! The bench's HTTP client: hyper over kept-alive HTTP/1.1 connections, with a timeout on every
//! request, reading only what the report needs from each answer. At most `connections`
//! requests are on the wire at once (HTTP/1.1 has one per connection, so that bounds the
//! connections too); a request waits for room, and the wait counts in its latency.

use std::sync::Arc;
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
    on_the_wire: Arc<tokio::sync::Semaphore>,
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
        let on_the_wire = Arc::new(tokio::sync::Semaphore::new(connections.max(1)));
        Http { client, base: base.trim_end_matches('/').to_owned(), timeout, on_the_wire }
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
        let _room = self.on_the_wire.acquire().await.map_err(|e| e.to_string())?;
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

    /// Opens about `n` connections and leaves them idle in the pool, by sending `n` probes at once.
    pub async fn warm(&self, n: usize) -> Result<(), String> {
        let probes = (0..n).map(|_| self.send(Method::GET, "/health/live", None, &[], None));
        for answer in futures::future::join_all(probes).await {
            answer?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// However many requests are due, no more than `connections` are on the wire at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_on_the_wire_stay_within_the_bound() {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let slow = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let (n, m) = (n.clone(), m.clone());
                async move {
                    m.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, slow).await });
        let http = Arc::new(Http::new(&base, 3, Duration::from_secs(5)));
        let sends: Vec<_> = (0..12)
            .map(|_| {
                let http = http.clone();
                tokio::spawn(async move { http.send(Method::GET, "/", None, &[], None).await.map(|a| a.status) })
            })
            .collect();
        for s in sends {
            assert_eq!(s.await.unwrap(), Ok(200));
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }
}
