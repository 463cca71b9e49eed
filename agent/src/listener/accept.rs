//! The accept loop every HTTPS listener of the agent shares: accept → TLS handshake under a
//! deadline (client certificate verified by rustls) → HTTP/1.1 or HTTP/2 (ALPN) with
//! keep-alive → the listener's handler. Connections are bounded; a refused handshake is
//! audited. On shutdown the listener closes, connections are told to finish their in-flight
//! requests, and after the grace period whatever is left is dropped.

use crate::audit::{AuditEvent, AuditLog};
use crate::config::ServerConfig;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one TLS listener serves. The accept loop, connection cap, handshake deadline, HTTP
/// settings and graceful drain are shared by every listener ([`serve_tls`]); a listener
/// supplies how a verified connection is named, how a refused handshake is audited, and how a
/// request is answered.
pub trait TlsApp: Send + Sync + 'static {
    /// What the handler knows about a connection, read once from its verified handshake.
    type Peer: Send + Sync + 'static;
    fn peer(&self, tls: &rustls::ServerConnection, addr: SocketAddr) -> Self::Peer;
    /// A connection refused at the TLS layer (no certificate, an unknown CA, a timeout).
    fn refused(&self, addr: SocketAddr, reason: &str);
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: &Self::Peer,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Per-listener limits beyond the shared `[server]` ones.
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

/// Accept → TLS handshake under a deadline → HTTP/1.1 or HTTP/2 with keep-alive → `app`, until
/// `shutdown` completes; then in-flight requests get the grace period to finish.
pub async fn serve_tls<A: TlsApp>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<A>,
    config: &ServerConfig,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(config.request_timeout())
        .max_buf_size(config.max_header_bytes.max(8192));
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(config.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(64));
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = config.handshake_timeout();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return app.refused(addr, &e.to_string()),
                Err(_) => return app.refused(addr, "TLS handshake timed out"),
            };
            let peer = Arc::new(app.peer(tls.get_ref().1, addr));
            let service = service_fn(move |req| {
                let app = app.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(app.handle(req, &peer).await) }
            });
            let conn = http
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        connections = graceful.count(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(config.shutdown_grace(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "grace period over; closing the remaining connections"
        );
    }
}

/// A connection refused at the TLS layer (no certificate, an unknown CA, a protocol error),
/// audited under `kind` (the listener: `connection` for inference, `admin` for fleet push).
pub fn audit_tls_refused(audit: &AuditLog, kind: &'static str, addr: SocketAddr, reason: &str) {
    tracing::info!(peer = %addr, listener = kind, reason, "TLS handshake refused");
    audit.record(&AuditEvent {
        kind,
        request_id: None,
        identity: None,
        tenant: None,
        peer: Some(addr.to_string()),
        method: None,
        route: None,
        model: None,
        version: None,
        outcome: "tls_refused",
        status: None,
        reason: Some(reason),
        rule: None,
        latency_us: None,
    });
}
