//! Slow and oversized clients are cut off by the listener's limits, and a well-behaved client
//! keeps being served while they try.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_agent::{demo, serve};

struct Server {
    addr: std::net::SocketAddr,
    files: demo::DemoFiles,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// The demo server with short limits: 1 s to finish a handshake, 1 s for a request.
async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (files, mut config) = support::serving::demo_world(dir.path());
    config.server.handshake_timeout_ms = 1000;
    config.server.request_timeout_ms = 1000;
    config.server.max_header_bytes = 8 * 1024;
    let prepared = serve::prepare(&config).await.unwrap();
    let addr = prepared.local_addr;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(prepared.run(async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        files,
        stop,
        task,
        _dir: dir,
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn raw_tls(server: &Server) -> Tls {
    let cfg = support::tls_config(
        &server.files.ca,
        Some((&server.files.client_cert, &server.files.client_key)),
        false,
    );
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the stream; returns what it sent and how long that took.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Err(_) => panic!("the server kept a slow connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A well-behaved client looping inferences until told to stop; returns how many succeeded
/// and every status that was not 200.
fn good_client(
    server: &Server,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<u16>)> {
    let tls = support::tls_config(
        &server.files.ca,
        Some((&server.files.client_cert, &server.files.client_key)),
        false,
    );
    let addr = server.addr;
    let body = std::fs::read(&server.files.request).unwrap();
    tokio::spawn(async move {
        let mut c = support::Client::connect(addr, tls, false).await.unwrap();
        let (mut ok, mut bad) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let r = c
                .post_json("/v2/models/demo/infer", body.clone())
                .await
                .unwrap();
            if r.status == 200 {
                ok += 1;
            } else {
                bad.push(r.status.as_u16());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, bad)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_are_cut_off_while_others_are_served() {
    let server = start().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = good_client(&server, stop.clone());
    let limit = Duration::from_secs(10);

    // 1. A TCP connection that never starts the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // 2. A request head trickled one byte every 200 ms (slowloris).
    let mut trickle = raw_tls(&server).await;
    // 3. A body trickled after a complete head.
    let mut slow_body = raw_tls(&server).await;
    slow_body
        .write_all(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    // 4. A request head larger than the limit.
    let mut big_head = raw_tls(&server).await;
    let mut head = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..400 {
        head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(64)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    // 5. A body far over the limit, announced honestly.
    let mut big_body = raw_tls(&server).await;
    big_body
        .write_all(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
        .await
        .unwrap();

    let trickler = tokio::spawn(async move {
        let head = b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        let started = Instant::now();
        let mut sent = 0usize;
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if trickle.write_all(&[byte]).await.is_err() || trickle.flush().await.is_err() {
                return (started.elapsed(), trickle);
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(10) {
                return (started.elapsed(), trickle);
            }
        }
    });
    let slow_body_task = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow_body.write_all(b" ").await.is_err() {
                break;
            }
        }
        let (got, _) = until_closed(&mut slow_body, Duration::from_secs(10)).await;
        got
    });
    let _ = big_head.write_all(&head).await;

    let (_, t_silent) = until_closed(&mut silent, limit).await;
    assert!(
        t_silent < Duration::from_secs(5),
        "silent TCP connection held {t_silent:?}"
    );

    let (got, _) = until_closed(&mut big_head, limit).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400"),
        "oversized head: {text}"
    );

    let (got, t_big) = until_closed(&mut big_body, limit).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "oversized body: {text}");
    assert!(t_big < Duration::from_secs(5));

    let got = slow_body_task.await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 504") || text.starts_with("HTTP/1.1 400"),
        "slow body: {text}"
    );

    let (held, mut trickle) = trickler.await.unwrap();
    assert!(
        held < Duration::from_secs(6),
        "a slowloris head was read for {held:?}"
    );
    let (got, _) = until_closed(&mut trickle, limit).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, bad) = good.await.unwrap();
    assert!(bad.is_empty(), "the well-behaved client got {bad:?}");
    assert!(
        ok >= 20,
        "the well-behaved client was served only {ok} times"
    );

    let _ = server.stop.send(());
    server.task.await.unwrap();
}
