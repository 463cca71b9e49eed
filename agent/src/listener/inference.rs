//! The inference listener: the Open Inference Protocol API ([`crate::inference`]) on the
//! shared accept loop ([`super::accept`]).

use crate::audit::AuditLog;
use crate::config::ServerConfig;
use crate::inference::{Api, Peer};
use crate::listener::tls::CertNames;
use crate::models::ModelRegistry;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

use super::accept::{ListenerLimits, TlsApp, audit_tls_refused, serve_tls};

pub struct Server {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub api: Arc<Api<ModelRegistry>>,
    pub audit: Arc<AuditLog>,
    pub config: ServerConfig,
}

impl Server {
    /// Serves until `shutdown` completes, then drains in-flight requests for up to the grace
    /// period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = ListenerLimits {
            max_connections: self.config.max_connections,
            max_concurrent_streams: self.config.max_concurrent_streams,
        };
        let app = Arc::new(Inference {
            api: self.api,
            audit: self.audit,
        });
        serve_tls(
            "inference",
            self.listener,
            self.tls,
            app,
            &self.config,
            limits,
            shutdown,
        )
        .await;
    }
}

/// The inference listener: the Open Inference Protocol API behind the gateway.
struct Inference {
    api: Arc<Api<ModelRegistry>>,
    audit: Arc<AuditLog>,
}

impl TlsApp for Inference {
    type Peer = Peer;

    fn peer(&self, tls: &rustls::ServerConnection, addr: SocketAddr) -> Peer {
        let cert = CertNames::from_peer_certificates(tls.peer_certificates());
        Peer {
            identity: CertNames::audit_name(cert.as_ref()),
            cert,
            addr,
        }
    }

    fn refused(&self, addr: SocketAddr, reason: &str) {
        audit_tls_refused(&self.audit, "connection", addr, reason);
    }

    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Full<Bytes>> {
        self.api.handle(req, peer).await
    }
}
