//! The HTTPS listener: accept → TLS handshake (client certificate verified by rustls) →
//! HTTP/1.1 or HTTP/2 (ALPN) with keep-alive → the API. Connections are bounded; a refused
//! handshake is audited. On shutdown the listener closes, connections are told to finish their
//! in-flight requests, and after the grace period whatever is left is dropped.

use crate::api::{Api, Peer};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::ServerConfig;
use crate::gateway::identity::CertNames;
use crate::tls::ClientIdentity;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub struct Server {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub api: Arc<Api>,
    pub audit: Arc<AuditLog>,
    pub config: ServerConfig,
}

impl Server {
    /// Serves until `shutdown` completes, then drains in-flight requests for up to the grace
    /// period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let acceptor = TlsAcceptor::from(self.tls);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.request_timeout())
            .max_buf_size(self.config.max_header_bytes.max(8192));
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .max_header_list_size(self.config.max_header_bytes as u32)
            .max_pending_accept_reset_streams(Some(32))
            .max_local_error_reset_streams(Some(64));
        let http = Arc::new(http);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
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
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let api = self.api.clone();
            let audit = self.audit.clone();
            let http = http.clone();
            let handshake_timeout = self.config.handshake_timeout();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        refused(&audit, addr, &e.to_string());
                        return;
                    }
                    Err(_) => {
                        refused(&audit, addr, "TLS handshake timed out");
                        return;
                    }
                };
                let identity =
                    ClientIdentity::from_peer_certificates(tls.get_ref().1.peer_certificates());
                let peer = Arc::new(Peer {
                    identity: identity.as_audit_string(),
                    cert: CertNames::from_peer_certificates(tls.get_ref().1.peer_certificates()),
                    addr,
                });
                let service = service_fn(move |req| {
                    let api = api.clone();
                    let peer = peer.clone();
                    async move { api.handle(req, &peer).await }
                });
                let conn = http
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        tracing::info!(
            connections = graceful.count(),
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(self.config.shutdown_grace(), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}

/// A connection refused at the TLS layer (no certificate, an unknown CA, a protocol error).
fn refused(audit: &AuditLog, addr: std::net::SocketAddr, reason: &str) {
    tracing::info!(peer = %addr, reason, "TLS handshake refused");
    audit.record(&AuditEvent {
        kind: "connection",
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
