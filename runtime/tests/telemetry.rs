//! ONNX Runtime's Linux builds (1.31 and later) keep a device identifier and an event cache
//! under `~/.cache/Microsoft` and upload usage events, unless `ORT_DISABLE_TELEMETRY=1` is set
//! when the library starts. Warden's engine refuses to load the library without it, the agent
//! sets it for every worker, and a worker then leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::*;
use warden_runtime_client::protocol::{DEFAULT_MAX_FRAME_BYTES, Message};

const OPT_OUT: &str = warden_runtime_client::worker::TELEMETRY_OPT_OUT;
const STATE: &str = ".cache/Microsoft/DeveloperTools/.onnxruntime/deviceid";

/// ONNX Runtime keeps quiet on a build machine: any of these set (the names are in the
/// library) and it writes and sends nothing, with or without the opt-out. The tests remove
/// them, as an appliance would not have them; otherwise they prove nothing under CI (which
/// sets `CI`). The agent starts workers with a cleared environment anyway.
const BUILD_MACHINE_MARKERS: [&str; 12] = [
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
];

/// Every path under `dir`, relative to it.
fn contents(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The control: the same ONNX Runtime release, in the Python reference tool, writes its
/// telemetry state into `HOME` when the variable is unset, and nothing when it is 1. Run in a
/// network namespace of its own, so that nothing can leave this machine.
#[test]
fn onnx_runtime_keeps_telemetry_state_unless_switched_off() {
    let session = format!(
        "import onnxruntime as ort; ort.InferenceSession({:?}, providers=['CPUExecutionProvider'])",
        model_path().display().to_string()
    );
    for opt_out in [None, Some("1")] {
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new("unshare");
        command
            .args(["--net", "--map-root-user", "--"])
            .arg(python())
            .args(["-c", &session])
            .env("HOME", home.path());
        for marker in BUILD_MACHINE_MARKERS {
            command.env_remove(marker);
        }
        match opt_out {
            Some(v) => command.env(OPT_OUT, v),
            None => command.env_remove(OPT_OUT),
        };
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = contents(home.path());
        match opt_out {
            None => assert!(
                written.iter().any(|p| p == STATE),
                "the control wrote no telemetry state: {written:?}"
            ),
            Some(_) => assert_eq!(written, Vec::<String>::new(), "{OPT_OUT}=1"),
        }
    }
}

/// A worker without the variable refuses to load ONNX Runtime, and says why.
#[test]
fn a_worker_without_the_opt_out_refuses_to_start() {
    for value in [None, Some(OsStr::new("0"))] {
        let (mut child, mut s) =
            spawn_worker_raw_env(&model_path(), &model_sha256(), &[], &[(OPT_OUT, value)]);
        match next_message(&mut s) {
            Message::Error { id: 0, message, .. } => assert!(
                message.contains("refusing to load ONNX Runtime with its telemetry on")
                    && message.contains("set ORT_DISABLE_TELEMETRY=1"),
                "{message}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(child.wait().unwrap().code(), Some(2));
    }
}

/// A worker outside the sandbox (the insecure opt-in; inside, there is no home to write to)
/// serves a request and leaves nothing in its `HOME`.
#[test]
fn a_serving_worker_leaves_no_telemetry_state() {
    let home = tempfile::tempdir().unwrap();
    let mut env = vec![
        (OPT_OUT, Some(OsStr::new("1"))),
        ("HOME", Some(home.path().as_os_str())),
    ];
    env.extend(BUILD_MACHINE_MARKERS.map(|marker| (marker, None)));
    let (mut child, mut s) = spawn_worker_raw_env(
        &model_path(),
        &model_sha256(),
        &["--sandbox", r#"{"insecure_disable_sandbox": true}"#],
        &env,
    );
    assert!(matches!(next_message(&mut s), Message::Hello { .. }));
    let request = Message::InferRequest {
        id: 1,
        outputs: Vec::new(),
        tensors: vec![sample_input()],
        reply: None,
    };
    s.write_all(&request.encode(DEFAULT_MAX_FRAME_BYTES).unwrap())
        .unwrap();
    match next_message(&mut s) {
        Message::InferResponse { id: 1, tensors } => assert!(!tensors.is_empty()),
        other => panic!("expected an answer, got {other:?}"),
    }
    s.write_all(&Message::Shutdown.encode(1024).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(contents(home.path()), Vec::<String>::new());
}
