//! A small HTTPS client for the tests and the benchmark: rustls with an optional client
//! certificate, HTTP/1.1 or HTTP/2 over one kept-alive connection.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pki;
pub mod serving;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Client {
    sender: Sender,
    authority: String,
}

pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    h2: bool,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

impl Client {
    /// Connects and completes the TLS handshake; errors are returned as text (a refused client
    /// certificate may surface here or on the first request, as TLS 1.3 allows).
    pub async fn connect(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        h2: bool,
    ) -> Result<Client, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).ok();
        let connector = tokio_rustls::TlsConnector::from(tls);
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let io = TokioIo::new(stream);
        let sender = if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Client {
            sender,
            authority: format!("localhost:{}", addr.port()),
        })
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub fn build(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> http::Request<Full<Bytes>> {
        let is_h2 = matches!(self.sender, Sender::H2(_));
        let uri = if is_h2 {
            format!("https://{}{}", self.authority, path)
        } else {
            path.to_string()
        };
        let mut b = http::Request::builder().method(method).uri(uri);
        if !is_h2 {
            b = b.header(http::header::HOST, &self.authority);
        }
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        b.body(Full::new(body.into())).unwrap()
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        let req = self.build("GET", path, Bytes::new(), None);
        self.send(req).await
    }

    pub async fn post_json(&mut self, path: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
        let req = self.build("POST", path, body, Some("application/json"));
        self.send(req).await
    }
}
