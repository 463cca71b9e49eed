//! The shared-memory tensor arena (`warden_runtime_client::shm`) end to end: large tensors through
//! the real sandboxed worker, the worker's checks of the arena it is given, and the agent's side
//! against a hostile or slow peer (a fake worker in Python that speaks the protocol).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use warden_runtime_client::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorClass, Message, read_frame};
use warden_runtime_client::shm::{self, Region};
use warden_runtime_client::tensor::{DataType, Tensor};
use warden_runtime_client::worker::{RestartPolicy, Worker, WorkerError, WorkerOptions};

fn options(model: &Path, sha: &str) -> WorkerOptions {
    let mut o = WorkerOptions::new(
        PathBuf::from(env!("CARGO_BIN_EXE_warden-runtime")),
        ort_library(),
        model.to_path_buf(),
        sha256_digest(sha),
    );
    o.concurrency = 2;
    o.restart = RestartPolicy::never();
    o
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// With a 1 MiB frame limit, a 4 MiB tensor can only have gone through the arena: it comes
/// back intact with one, and is refused without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tensors_travel_through_the_arena() {
    let dir = tmp();
    let (model, sha) = identity_model(dir.path());
    let mut o = options(&model, &sha);
    o.max_frame_bytes = 1 << 20;
    o.shared_memory_bytes = 32 << 20;
    let worker = Worker::start(o.clone()).await.unwrap();
    let big = ramp(1 << 20, 0.5);
    let out = worker.infer(vec![big.clone()], vec![]).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].name.as_str(), &out[0].shape), ("y", &big.shape));
    assert!(out[0].data == big.data, "4 MiB through the arena changed");
    // Small tensors still travel inline, on the same connection.
    let small = ramp(10, 3.0);
    assert_eq!(
        worker.infer(vec![small.clone()], vec![]).await.unwrap()[0].data,
        small.data
    );
    worker.shutdown().await;

    o.shared_memory_bytes = 0;
    let inline = Worker::start(o).await.unwrap();
    let e = inline.infer(vec![big], vec![]).await.unwrap_err();
    assert!(
        matches!(&e, WorkerError::Protocol { message } if message.contains("exceeds the limit")),
        "{e:?}"
    );
    inline.shutdown().await;
}

/// Many concurrent requests of mixed sizes, on an arena too small for all of them at once:
/// some go through the arena, the rest inline, and every answer is its own request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_a_small_arena_without_mixing() {
    let dir = tmp();
    let (model, sha) = identity_model(dir.path());
    let mut o = options(&model, &sha);
    o.shared_memory_bytes = 8 << 20;
    let worker = Worker::start(o).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..48usize {
        let worker = worker.clone();
        // 4 KiB to about 1.5 MiB: below, around and far above the arena's 16 KiB threshold.
        let n = [1 << 10, 4 << 10, 5 << 10, 100 << 10, 400 << 10][i % 5] + i;
        calls.push(tokio::spawn(async move {
            let input = ramp(n, i as f32 * 1000.0);
            let out = worker.infer(vec![input.clone()], vec![]).await.unwrap();
            assert!(
                out[0].data == input.data,
                "request {i} got another's answer"
            );
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    worker.shutdown().await;
}

/// The serving (sandboxed) worker maps the arena once and keeps no descriptor of it; with
/// the arena off it maps none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_maps_its_arena_and_holds_no_descriptor_of_it() {
    let dir = tmp();
    let (model, sha) = identity_model(dir.path());
    let arena_in = |pid: u32| {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mapped = maps
            .lines()
            .filter(|l| l.contains("warden-tensors"))
            .count();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().contains("warden-tensors"))
            .count();
        (mapped, fds)
    };
    for (bytes, expected) in [(16usize << 20, 1usize), (0, 0)] {
        let mut o = options(&model, &sha);
        o.shared_memory_bytes = bytes;
        let worker = Worker::start(o).await.unwrap();
        // The sandbox's outer process and the sandboxed worker, its child.
        let outer = worker.pid().unwrap();
        let inner = *children(outer).first().unwrap();
        for pid in [outer, inner] {
            assert_eq!(
                arena_in(pid),
                (expected, 0),
                "pid {pid}, arena of {bytes} bytes"
            );
        }
        worker.shutdown().await;
    }
}

/// A `warden-runtime` started with `--shared-memory-bytes`, on a socket we drive by hand.
fn spawn_with_arena(model: &Path, sha: &str, bytes: usize) -> (std::process::Child, UnixStream) {
    spawn_worker_raw(model, sha, &["--shared-memory-bytes", &bytes.to_string()])
}

fn next(stream: &mut UnixStream) -> Message {
    next_message(stream)
}

fn refused_start(child: &mut std::process::Child, s: &mut UnixStream, reason: &str) {
    match next(s) {
        Message::Error { id: 0, message, .. } => {
            assert!(
                message.contains(reason),
                "{message:?} does not say {reason:?}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

/// The worker maps only a sealed memfd of the announced size, received alone.
#[test]
fn a_worker_refuses_an_arena_it_cannot_trust() {
    let dir = tmp();
    let (model, sha) = identity_model(dir.path());
    use nix::sys::memfd::{MFdFlags, memfd_create};

    // A byte without a descriptor.
    let (mut child, mut s) = spawn_with_arena(&model, &sha, 1 << 20);
    s.write_all(&[0]).unwrap();
    refused_start(&mut child, &mut s, "expected one byte with one descriptor");

    // A memfd the agent could have resized under the worker (no seals).
    let (mut child, mut s) = spawn_with_arena(&model, &sha, 1 << 20);
    let unsealed = memfd_create(c"unsealed", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&unsealed, 1 << 20).unwrap();
    shm::send_fd(&s, &unsealed).unwrap();
    refused_start(&mut child, &mut s, "not sealed");

    // A sealed arena of another size than announced.
    let (mut child, mut s) = spawn_with_arena(&model, &sha, 2 << 20);
    let _arena = shm::share(&s, 1 << 20).unwrap();
    refused_start(&mut child, &mut s, "expected 2097152");

    // An arena larger than half the sandbox's address space is refused before anything.
    let out = Command::new(env!("CARGO_BIN_EXE_warden-runtime"))
        .args(["--model".as_ref(), model.as_os_str()])
        .arg("--digest")
        .arg(format!("sha256:{sha}"))
        .args(["--onnxruntime".as_ref(), ort_library().as_os_str()])
        .args(["--shared-memory-bytes", &(5usize << 30).to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("address space"));
}

/// A request naming a range outside the arena is refused on its own; the worker carries on.
#[test]
fn a_request_outside_the_arena_is_refused_and_the_worker_carries_on() {
    let dir = tmp();
    let (model, sha) = identity_model(dir.path());
    let (mut child, mut s) = spawn_with_arena(&model, &sha, 4 << 20);
    let arena = shm::share(&s, 4 << 20).unwrap();
    assert!(matches!(next(&mut s), Message::Hello { .. }));

    let big = ramp(64 << 10, 1.0);
    let request = |id: u64, offset: u64, reply: Option<Region>| {
        Message::InferRequest {
            id,
            outputs: vec![],
            tensors: vec![big.clone()],
            reply,
        }
        .encode_placing(DEFAULT_MAX_FRAME_BYTES, &mut |_| Some(offset))
        .unwrap()
    };
    for (id, offset) in [(1, (4 << 20) - 4096), (2, u64::MAX - 8)] {
        s.write_all(&request(id, offset, None)).unwrap();
        match next(&mut s) {
            Message::Error {
                id: got,
                class: ErrorClass::Internal,
                message,
            } => {
                assert_eq!(got, id);
                assert!(message.contains("outside the arena"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // A proper request through the arena: input at 0, reply region after it.
    let mut slot = arena.reserve([big.data.len()].into_iter()).unwrap();
    let frame = Message::InferRequest {
        id: 3,
        outputs: vec![],
        tensors: vec![big.clone()],
        reply: Some(slot.reply_region()),
    }
    .encode_placing(DEFAULT_MAX_FRAME_BYTES, &mut |d| slot.place(d))
    .unwrap();
    s.write_all(&frame).unwrap();
    let body = read_frame(&mut s, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    match Message::decode_resolving(body, &mut |offset, len| Ok(slot.take_output(offset, len)?))
        .unwrap()
    {
        Message::InferResponse { id: 3, tensors } => assert!(tensors[0].data == big.data),
        other => panic!("unexpected {other:?}"),
    }
    s.write_all(&Message::Shutdown.encode(1024).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A fake worker in Python that speaks the protocol (`hostile`: answers with an output placed
/// outside the request's reply region; `hold`: answers its first request only after the
/// second, and tells each request where in the arena the inputs of the requests it holds
/// are). Its mode is the model file's stem.
fn fake_worker(dir: &Path, mode: &str) -> WorkerOptions {
    let script = format!(
        r#"#!{python}
import json, mmap, os, socket, struct, sys
args = sys.argv[1:]
mode = os.path.basename(args[args.index("--model") + 1]).split(".")[0]
size = int(args[args.index("--shared-memory-bytes") + 1])
sock = socket.socket(fileno=0)
_, fds, _, _ = socket.recv_fds(sock, 1, 1)
arena = mmap.mmap(fds[0], size)

def send(kind, rid, payload):
    body = bytes([kind]) + struct.pack("<Q", rid) + payload
    sock.sendall(struct.pack("<I", len(body)) + body)

def exact(n):
    b = b""
    while len(b) < n:
        c = sock.recv(n - len(b))
        if not c:
            sys.exit(0)
        b += c
    return b

def read_request():
    (n,) = struct.unpack("<I", exact(4))
    body = exact(n)
    if body[0] != 2:
        sys.exit(0)
    (rid,) = struct.unpack_from("<Q", body, 1)
    p = 9
    (outputs,) = struct.unpack_from("<H", body, p); p += 2
    for _ in range(outputs):
        (l,) = struct.unpack_from("<H", body, p); p += 2 + l
    p += 16
    (count,) = struct.unpack_from("<H", body, p); p += 2
    offset = 2**64 - 1
    for _ in range(count):
        (l,) = struct.unpack_from("<H", body, p); p += 2 + l
        rank = body[p + 1]; p += 2 + 8 * rank
        (blen,) = struct.unpack_from("<Q", body, p); p += 8
        storage = body[p]; p += 1
        if storage == 1:
            (offset,) = struct.unpack_from("<Q", body, p); p += 8
        else:
            p += blen
    return rid, offset

def tensor(name, dtype, dims, blen, rest):
    b = struct.pack("<H", len(name)) + name + bytes([dtype, len(dims)])
    b += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<Q", blen) + rest
    return b

def offsets(rid, values):
    data = b"".join(struct.pack("<Q", v) for v in values)
    t = tensor(b"offsets", 5, [len(values)], len(data), b"\x00" + data)
    send(3, rid, struct.pack("<H", 1) + t)

spec = {{"name": "x", "datatype": "FP32", "shape": [-1, -1]}}
hello = {{"signature": {{"inputs": [spec], "outputs": [dict(spec, name="y")]}},
         "placement": {{"device": "cpu", "provider": "CPUExecutionProvider",
                        "memory_budget_bytes": None, "fallback_reason": None}}}}
send(1, 0, struct.pack("<H", 3) + json.dumps(hello).encode())
held = None
while True:
    rid, offset = read_request()
    if mode == "hostile":
        # 16 KiB "output" at the request's own input: inside the arena, outside its reply region.
        t = tensor(b"y", 11, [1, 4096], 16384, b"\x01" + struct.pack("<Q", offset))
        send(3, rid, struct.pack("<H", 1) + t)
    elif held is None and rid == 1:
        held = offset
    elif isinstance(held, int):
        offsets(rid, [held, offset])
        offsets(1, [held])
        held = "done"
    else:
        offsets(rid, [offset])
"#,
        python = python().display()
    );
    let worker = dir.join("fake-worker");
    std::fs::write(&worker, script).unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut o = options(&dir.join(format!("{mode}.onnx")), &"0".repeat(64));
    o.worker_binary = worker;
    o.shared_memory_bytes = 16 << 20;
    o
}

fn as_u64(t: &Tensor) -> Vec<u64> {
    assert_eq!(t.dtype, DataType::Uint64);
    t.data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// An output the worker claims is outside its request's reply region is never read: the
/// agent takes the worker as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_outside_the_reply_region_breaks_the_worker() {
    let dir = tmp();
    let worker = Worker::start(fake_worker(dir.path(), "hostile"))
        .await
        .unwrap();
    let e = worker
        .infer(vec![ramp(64 << 10, 7.0)], vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WorkerError::Unavailable { reason }
            if reason.contains("outside the request's reply region")),
        "{e:?}"
    );
    assert!(!worker.is_alive());
}

/// A request given up by its caller keeps its arena range until the worker has answered it:
/// the next request gets another range, and the range is reused once the late answer is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_keeps_its_range_until_answered() {
    let dir = tmp();
    let worker = Worker::start(fake_worker(dir.path(), "hold"))
        .await
        .unwrap();
    let input = || vec![ramp(64 << 10, 1.0)];
    // The fake worker holds request 1: its caller gives up.
    let first = tokio::time::timeout(Duration::from_millis(200), worker.infer(input(), vec![]));
    assert!(
        first.await.is_err(),
        "the fake worker answered request 1 early"
    );
    // Request 2 must not be given request 1's range, which the worker may still be reading.
    let out = worker.infer(input(), vec![]).await.unwrap();
    let [held, second] = as_u64(&out[0])[..] else {
        panic!("{out:?}")
    };
    assert_ne!(held, u64::MAX, "request 1 did not go through the arena");
    assert_ne!(held, second, "a range still in use was handed out again");
    // Once the late answer to request 1 is read, its range is free again (first fit).
    let mut reused = false;
    for _ in 0..100 {
        let out = worker.infer(input(), vec![]).await.unwrap();
        if as_u64(&out[0]) == [held] {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reused, "request 1's range was never released");
    worker.shutdown().await;
}
