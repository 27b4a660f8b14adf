//! The HTTP/1 connection loop: hyper with the bounds `axum::serve` has no settings for. A
//! request head must arrive within the header-read timeout, counted from when the connection
//! starts waiting for it (so a slow head, a silent new connection and an idle keep-alive are all
//! closed), and one client address holds at most a set number of connections.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds on each connection.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// Open connections per client address; 0 for no bound.
    pub per_client: usize,
    /// Clients the bound does not apply to.
    pub unbounded: Vec<ipnet::IpNet>,
}

/// Open connections per client address.
#[derive(Default)]
struct Clients(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in `Clients`, given back when it closes.
struct Held {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Clients {
    fn hold(self: &Arc<Self>, ip: IpAddr, bound: usize) -> Option<Held> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if bound > 0 && *n >= bound {
            return None;
        }
        *n += 1;
        Some(Held { clients: self.clone(), ip })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets each
/// connection finish the request it is on. Dropping the returned future closes every connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let clients = Arc::new(Clients::default());
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let bound = if limits.unbounded.iter().any(|n| n.contains(&peer.ip())) { 0 } else { limits.per_client };
        let Some(held) = clients.hold(peer.ip(), bound) else {
            metrics::counter!("vitrina_connections_refused_total", "reason" => "per_client").increment(1);
            drop(stream);
            continue;
        };
        connections.spawn(connection(stream, peer, router.clone(), limits.header_read_timeout, held, closing_rx.clone()));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    header_read_timeout: Duration,
    _held: Held,
    mut closing: watch::Receiver<bool>,
) {
    let service = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let closed = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = closed => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and resets are the client's doing; they are counted, not logged as errors.
        let reason = if e.is_timeout() { "header_timeout" } else { "io" };
        metrics::counter!("vitrina_connections_closed_total", "reason" => reason).increment(1);
        tracing::debug!(error = %e, %peer, "connection ended");
    }
}
