//! The worker process end to end: `Worker` (agent side) driving the real `warden-runtime`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use warden_runtime::engine::EngineOptions;
use warden_runtime::onnx::OrtEngine;
use warden_runtime_client::protocol::{
    DEFAULT_MAX_FRAME_BYTES, ErrorClass, Message, PROTOCOL_VERSION,
};
use warden_runtime_client::tensor::{DataType, ModelSignature, Tensor};
use warden_runtime_client::worker::{RestartPolicy, Worker, WorkerError, WorkerOptions};

fn options() -> WorkerOptions {
    let mut o = WorkerOptions::new(
        PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
        ort_library(),
        model_path(),
        model_digest(),
    );
    o.concurrency = 2;
    o.startup_timeout = Duration::from_secs(30);
    o
}

fn engine() -> OrtEngine {
    OrtEngine::load(&ort_library(), &model_bytes(), EngineOptions::default()).unwrap()
}

/// A bigger batch with distinct rows, built from the sample rows.
fn batch(rows: usize, salt: f32) -> Tensor {
    let (_, data) = sample_rows();
    let mut values = Vec::with_capacity(rows * 30);
    for r in 0..rows {
        let base = &data[(r % 2) * 30..(r % 2) * 30 + 30];
        values.extend(base.iter().map(|v| v * (1.0 + salt * r as f32 / 100.0)));
    }
    f32_tensor("input", vec![rows, 30], &values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_model_like_the_engine() {
    let worker = Worker::start(options()).await.unwrap();
    assert!(worker.is_alive());
    assert!(worker.pid().is_some());
    let engine = engine();
    assert_eq!(worker.signature(), engine.signature());

    let (shape, data) = sample_rows();
    let (labels, probs) = python_reference(&shape, &data);
    let out = worker.infer(vec![sample_input()], vec![]).await.unwrap();
    assert_eq!(out, engine.run(&[sample_input()], &[]).unwrap());
    assert_eq!(as_i64(&out[0]), labels);
    assert_close(&as_f32(&out[1]), &probs);

    let out = worker
        .infer(vec![sample_input()], vec!["probabilities".into()])
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].name, "probabilities");

    // Engine refusals come back as InvalidInput, and the worker keeps serving.
    let bad = f32_tensor("input", vec![1, 29], &[0.0; 29]);
    match worker.infer(vec![bad], vec![]).await {
        Err(WorkerError::InvalidInput { message }) => {
            assert!(message.contains("shape [1, 29]"), "{message}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let wrong = Tensor::new(
        "input",
        DataType::Int32,
        vec![1, 30],
        Bytes::from(vec![0u8; 120]),
    )
    .unwrap();
    assert!(matches!(
        worker.infer(vec![wrong], vec![]).await,
        Err(WorkerError::InvalidInput { .. })
    ));
    // Too large for a frame: refused on our side, before the socket.
    let mut small = options();
    small.max_frame_bytes = 1024;
    let small = Worker::start(small).await.unwrap();
    assert!(matches!(
        small.infer(vec![batch(64, 1.0)], vec![]).await,
        Err(WorkerError::Protocol { .. })
    ));
    assert!(small.infer(vec![sample_input()], vec![]).await.is_ok());
    small.shutdown().await;

    assert!(worker.infer(vec![sample_input()], vec![]).await.is_ok());
    worker.shutdown().await;
}

/// A worker that polls for its next request (`poll_window`) reads and answers exactly like one
/// that sleeps: back-to-back requests, requests after a pause longer than the window, and
/// concurrent ones. A window above the limit refuses the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_worker_answers_like_a_sleeping_one() {
    let mut o = options();
    o.poll_window = Duration::from_micros(200);
    let worker = Worker::start(o).await.unwrap();
    let engine = engine();
    for i in 0..40usize {
        let input = batch(1 + i % 3, i as f32);
        let expected = engine.run(std::slice::from_ref(&input), &[]).unwrap();
        assert_eq!(worker.infer(vec![input], vec![]).await.unwrap(), expected);
        if i % 10 == 9 {
            // Longer than the window: the reader has gone back to sleeping.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let tasks: Vec<_> = (0..16usize)
        .map(|i| {
            let worker = worker.clone();
            let input = batch(2, 100.0 + i as f32);
            let expected = engine.run(std::slice::from_ref(&input), &[]).unwrap();
            tokio::spawn(async move {
                assert_eq!(worker.infer(vec![input], vec![]).await.unwrap(), expected);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    worker.shutdown().await;

    let mut o = options();
    o.poll_window = warden_runtime_client::worker::MAX_POLL_WINDOW + Duration::from_micros(1);
    assert!(Worker::start(o).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_are_all_correct() {
    let worker = Worker::start(options()).await.unwrap();
    let engine = engine();
    let mut tasks = Vec::new();
    for i in 0..64usize {
        let worker = worker.clone();
        let input = batch(1 + i % 5, i as f32);
        let expected = engine.run(std::slice::from_ref(&input), &[]).unwrap();
        tasks.push(tokio::spawn(async move {
            let out = worker.infer(vec![input], vec![]).await.unwrap();
            assert_eq!(out, expected, "request {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    worker.shutdown().await;
}

/// Frames far larger than the socket's buffer, many at once, some cancelled half way: the
/// part the socket does not take goes to the writer task, later frames queue behind it, and
/// no frame is torn or reordered (every answer matches its own request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_concurrent_and_cancelled_requests_never_tear_a_frame() {
    let worker = Worker::start(options()).await.unwrap();
    let engine = engine();
    let mut tasks = Vec::new();
    for i in 0..96usize {
        let worker = worker.clone();
        // 0.2 to 1.2 MB per request frame, more than the socket buffer takes at once.
        let input = batch(2_000 + 4_000 * (i % 3), i as f32);
        let expected = engine.run(std::slice::from_ref(&input), &[]).unwrap();
        tasks.push(tokio::spawn(async move {
            // Arrivals spread out, so that many meet a socket the worker is draining.
            tokio::time::sleep(Duration::from_micros(300 * i as u64)).await;
            if i % 4 == 3 {
                // Given up right after sending: the frame must still go out whole.
                let _ = tokio::time::timeout(
                    Duration::from_micros(50),
                    worker.infer(vec![input], vec![]),
                )
                .await;
                return;
            }
            let out = worker.infer(vec![input], vec![]).await.unwrap();
            assert_eq!(out, expected, "request {i}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The connection is intact afterwards.
    let input = batch(3, 0.5);
    let expected = engine.run(std::slice::from_ref(&input), &[]).unwrap();
    assert_eq!(worker.infer(vec![input], vec![]).await.unwrap(), expected);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_on_a_sha256_mismatch() {
    let mut o = options();
    o.model_digest = sha256_digest(&"0".repeat(64));
    match Worker::start(o).await {
        Err(WorkerError::Unavailable { reason }) => {
            assert!(reason.contains("digest mismatch"), "{reason}");
            assert!(reason.contains(&model_sha256()), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A model file that is not there, and a worker binary that is not there.
    let mut o = options();
    o.model_file = PathBuf::from("/nonexistent/model.onnx");
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Unavailable { .. })
    ));
    let mut o = options();
    o.worker_binary = PathBuf::from("/nonexistent/warden-runtime");
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Unavailable { .. })
    ));
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_requests_promptly() {
    let mut o = options();
    o.concurrency = 1;
    // No restart here: this test is about the failure itself (supervision.rs covers restarts).
    o.restart = RestartPolicy::never();
    let worker = Worker::start(o).await.unwrap();
    let pid = worker.pid().unwrap();

    // Keep the worker busy with large batches so requests are in flight when it dies.
    let mut in_flight = Vec::new();
    for i in 0..32 {
        let worker = worker.clone();
        in_flight.push(tokio::spawn(async move {
            worker.infer(vec![batch(20_000, i as f32)], vec![]).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let killed_at = Instant::now();
    kill9(pid);

    let mut unavailable = 0;
    for t in in_flight {
        let r = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("an in-flight request hung after the worker died")
            .unwrap();
        match r {
            Ok(_) => {}
            Err(WorkerError::Unavailable { .. }) => unavailable += 1,
            Err(e) => panic!("expected Unavailable, got {e:?}"),
        }
    }
    assert!(
        unavailable > 0,
        "no request was in flight when the worker was killed"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed_at.elapsed()
    );

    let later = tokio::time::timeout(
        Duration::from_secs(1),
        worker.infer(vec![sample_input()], vec![]),
    )
    .await
    .expect("a later request hung");
    assert!(
        matches!(later, Err(WorkerError::Unavailable { .. })),
        "{later:?}"
    );
    assert!(!worker.is_alive());
    // Shutting down a dead worker returns at once.
    tokio::time::timeout(Duration::from_secs(2), worker.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_clean() {
    let worker = Worker::start(options()).await.unwrap();
    let pid = worker.pid().unwrap();
    // Requests already sent are answered before the worker exits.
    let pending: Vec<_> = (0..8)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer(vec![batch(200, i as f32)], vec![]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    worker.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown needed the kill"
    );
    for p in pending {
        let r = p.await.unwrap();
        assert!(
            r.is_ok() || matches!(r, Err(WorkerError::Unavailable { .. })),
            "{r:?}"
        );
    }
    assert!(!worker.is_alive());
    assert_eq!(worker.pid(), None, "the process was reaped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // The pid may be reused by now; it must not be our zombie.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains(" Z ")
        }
    );
    assert!(matches!(
        worker.infer(vec![sample_input()], vec![]).await,
        Err(WorkerError::Unavailable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_kills_the_worker() {
    let worker = Worker::start(options()).await.unwrap();
    let pid = worker.pid().unwrap();
    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(" Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "worker {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the real worker binary by hand with one end of a socket pair as stdin, as the agent
/// does, so the test can play a misbehaving agent.
fn spawn_raw() -> (std::process::Child, std::os::unix::net::UnixStream) {
    spawn_worker_raw(&model_path(), &model_sha256(), &[])
}

fn next(stream: &mut std::os::unix::net::UnixStream) -> Message {
    next_message(stream)
}

#[test]
fn the_worker_survives_garbage_from_its_peer() {
    let (mut child, mut s) = spawn_raw();
    assert!(matches!(
        next(&mut s),
        Message::Hello {
            version: PROTOCOL_VERSION,
            ..
        }
    ));

    // Well-delimited frames with garbage bodies: each is answered with an error, not a crash.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..200u64 {
        let mut body = vec![2u8]; // InferRequest
        body.extend_from_slice(&(1000 + i).to_le_bytes());
        for _ in 0..(i % 40) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            body.push(rng as u8);
        }
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        s.write_all(&frame).unwrap();
        match next(&mut s) {
            Message::Error { id, .. } => assert_eq!(id, 1000 + i),
            // A few random bodies happen to be valid requests (e.g. zero tensors); the engine
            // then refuses them as invalid input.
            other => panic!("unexpected {other:?}"),
        }
    }
    // Unknown kind.
    let mut frame = 9u32.to_le_bytes().to_vec();
    frame.push(77);
    frame.extend_from_slice(&5u64.to_le_bytes());
    s.write_all(&frame).unwrap();
    assert!(matches!(
        next(&mut s),
        Message::Error {
            class: ErrorClass::Internal,
            ..
        }
    ));

    // A proper request still works afterwards.
    let request = Message::InferRequest {
        id: 42,
        outputs: vec![],
        tensors: vec![sample_input()],
        reply: None,
    };
    s.write_all(&request.encode(DEFAULT_MAX_FRAME_BYTES).unwrap())
        .unwrap();
    match next(&mut s) {
        Message::InferResponse { id: 42, tensors } => assert_eq!(tensors.len(), 2),
        other => panic!("unexpected {other:?}"),
    }

    // A length prefix over the limit cannot be resynchronised: the worker stops, cleanly.
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "worker exit: {status}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn the_worker_exits_when_the_agent_goes_away() {
    let (mut child, mut s) = spawn_raw();
    assert!(matches!(next(&mut s), Message::Hello { .. }));
    // Half a frame, then the agent vanishes.
    s.write_all(&[100, 0, 0, 0, 2, 1]).unwrap();
    drop(s);
    let status = child.wait().unwrap();
    assert!(
        status.code().is_some() && status.code() != Some(101),
        "{status}"
    );

    let (mut child, mut s) = spawn_raw();
    assert!(matches!(next(&mut s), Message::Hello { .. }));
    s.write_all(&Message::Shutdown.encode(DEFAULT_MAX_FRAME_BYTES).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());

    let (mut child, s) = spawn_raw();
    drop(s);
    let status = child.wait().unwrap();
    assert!(
        status.code().is_some() && status.code() != Some(101),
        "{status}"
    );
}

/// A fake worker (a shell script) that sends the agent pre-recorded bytes.
fn fake_worker(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let data = dir.path().join(format!("{name}.bin"));
    std::fs::write(&data, bytes).unwrap();
    let script = dir.path().join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat '{}' >&0\nexec sleep 30\n", data.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_survives_garbage_from_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        signature: ModelSignature {
            inputs: vec![],
            outputs: vec![],
        },
        placement: warden_runtime_client::device::Placement::cpu("CPUExecutionProvider"),
    }
    .encode(DEFAULT_MAX_FRAME_BYTES)
    .unwrap();

    // An oversized first frame.
    let mut o = options();
    o.worker_binary = fake_worker(&dir, "huge", &[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Protocol { .. })
    ));

    // Not a Hello.
    let mut o = options();
    o.worker_binary = fake_worker(&dir, "nohello", &[9, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Protocol { .. })
    ));

    // Wrong protocol version.
    let mut wrong = hello.clone();
    wrong[13] = 99;
    let mut o = options();
    o.worker_binary = fake_worker(&dir, "version", &wrong);
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Protocol { .. })
    ));

    // Silent worker: times out.
    let mut o = options();
    o.worker_binary = fake_worker(&dir, "silent", &[]);
    o.startup_timeout = Duration::from_millis(300);
    assert!(matches!(
        Worker::start(o).await,
        Err(WorkerError::Unavailable { .. })
    ));

    // A good Hello, then garbage: the connection is declared broken, requests fail fast.
    for (name, garbage) in [
        (
            "garbage1",
            vec![
                18u8, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4, 5, 6, 7,
            ],
        ),
        ("garbage2", vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ("garbage3", vec![4, 0, 0, 0, 1, 2, 3, 4]),
    ] {
        let mut bytes = hello.clone();
        bytes.extend_from_slice(&garbage);
        let mut o = options();
        o.worker_binary = fake_worker(&dir, name, &bytes);
        let worker = Worker::start(o).await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            worker.infer(vec![sample_input()], vec![]),
        )
        .await
        .expect("request hung");
        assert!(
            matches!(r, Err(WorkerError::Unavailable { .. })),
            "{name}: {r:?}"
        );
        assert!(!worker.is_alive());
        tokio::time::timeout(
            Duration::from_secs(10),
            worker.shutdown_with_grace(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    }
}
