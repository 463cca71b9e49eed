//! The config as files are written: every rule named by its field, the reference config valid.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

const GOOD: &str = r#"
schema_version = 1
[server]
listen = "127.0.0.1:8443"
[tls]
certificate = "pki/server.pem"
private_key = "pki/server.key"
client_ca = "pki/ca.pem"
[trust]
model_signer_keys = ["signer.pub"]
[[model]]
name = "demo"
version = "1"
directory = "models/demo"
file = "model.onnx"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/etc/warden/warden.toml"),
        Path::new("/etc/warden"),
    )
}

#[test]
fn good_config_loads_with_defaults_and_anchored_paths() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.server.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(c.tls.certificate, Path::new("/etc/warden/pki/server.pem"));
    assert_eq!(
        c.models[0].signature_path(),
        Path::new("/etc/warden/models/demo/model.sig")
    );
    assert!(!c.tls.insecure_allow_anonymous_clients);
}

#[test]
fn unknown_field_is_named() {
    let text = GOOD.replace("[server]", "[server]\nlisten_adress = \"x\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("listen_adress"), "{err}");
}

#[test]
fn admin_listener_requires_a_client_ca_and_anchors_it() {
    let text = format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("admin.client_ca"), "{err}");
    let text =
        format!("{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"pki/fleet-ca.pem\"\n");
    let c = parse(&text).unwrap();
    let admin = c.admin.unwrap();
    assert_eq!(
        admin.client_ca.as_deref(),
        Some(Path::new("/etc/warden/pki/fleet-ca.pem"))
    );
    assert_eq!(admin.max_entries, 10_000);
    let text = format!(
        "{GOOD}\n[admin]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"x\"\nmax_entries = 0\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("admin.max_entries"), "{err}");
}

#[test]
fn mtls_is_required_unless_opted_out_by_name() {
    let text = GOOD.replace("client_ca = \"pki/ca.pem\"\n", "");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("tls.client_ca"), "{err}");
    let text = GOOD.replace(
        "client_ca = \"pki/ca.pem\"\n",
        "insecure_allow_anonymous_clients = true\n",
    );
    assert!(parse(&text).is_ok());
}

#[test]
fn cross_field_rules() {
    let err = parse(&GOOD.replace("schema_version = 1", "schema_version = 2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema_version"), "{err}");
    let err = parse(&GOOD.replace("model_signer_keys = [\"signer.pub\"]", ""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`trust`"), "{err}");
    let err = parse(&GOOD.replace("file = \"model.onnx\"", "file = \"../x.onnx\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model[0].file"), "{err}");
    let err = parse(&GOOD.replace("name = \"demo\"", "name = \"de mo\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model[0].name"), "{err}");
    let twice = format!(
        "{GOOD}\n[[model]]\nname = \"demo\"\nversion = \"1\"\ndirectory = \"d\"\nfile = \"m.onnx\"\n"
    );
    let err = parse(&twice).unwrap_err().to_string();
    assert!(err.contains("configured twice"), "{err}");
    let err = parse(&format!(
        "{GOOD}[model.inputs.input]\nmin = 2.0\nmax = 1.0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("model[0].inputs.input"), "{err}");
    let err = parse(&GOOD.replace("[server]", "[server]\nmax_body_bytes = 10"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_body_bytes"), "{err}");
}

const KEYSTORE: &str = r#"
schema_version = 1
[server]
listen = "127.0.0.1:8443"
[tls]
certificate = "pki/server.pem"
client_ca = "pki/ca.pem"
[keystore]
backend = "software-development-only"
dir = "keystore"
[policy]
directory = "policies"
[admission]
revocation_list = "revocations.json"
[[model]]
name = "demo"
version = "1"
directory = "models/demo"
file = "model.onnx"
release = "models/demo.release.json"
attestations = ["models/demo.slsa.json"]
"#;

#[test]
fn keystore_mode_loads_with_defaults_and_anchored_paths() {
    let c = parse(KEYSTORE).unwrap();
    assert_eq!(
        c.keystore,
        Some(KeystoreConfig::Development(
            warden_keystore::config::SoftwareConfig {
                dir: PathBuf::from("/etc/warden/keystore")
            }
        ))
    );
    assert_eq!(
        c.policy.as_ref().unwrap().directory,
        Path::new("/etc/warden/policies")
    );
    let a = c.admission.as_ref().unwrap();
    assert_eq!(
        a.allowed_stages,
        vec![warden_attest::release::Stage::Approved]
    );
    assert_eq!(a.refresh_interval_s, 60);
    assert_eq!(
        a.revocation_list.as_deref(),
        Some(Path::new("/etc/warden/revocations.json"))
    );
    assert_eq!(
        c.models[0].release.as_deref(),
        Some(Path::new("/etc/warden/models/demo.release.json"))
    );
    assert_eq!(
        c.models[0].attestations,
        vec![PathBuf::from("/etc/warden/models/demo.slsa.json")]
    );
    assert!(c.tls.private_key.is_none());
    let keyd = KEYSTORE.replace(
        "backend = \"software-development-only\"\ndir = \"keystore\"",
        "keyd_socket = \"/run/warden/keyd.sock\"",
    );
    assert_eq!(
        parse(&keyd).unwrap().keystore,
        Some(KeystoreConfig::Keyd {
            socket: PathBuf::from("/run/warden/keyd.sock")
        })
    );
}

#[test]
fn keystore_rules_name_the_field() {
    let err_of = |text: &str| parse(text).unwrap_err().to_string();
    // Both, or neither, of backend and keyd_socket.
    let both = KEYSTORE.replace("dir = \"keystore\"", "dir = \"k\"\nkeyd_socket = \"/s\"");
    assert!(err_of(&both).contains("not both"), "{}", err_of(&both));
    let neither = KEYSTORE.replace(
        "backend = \"software-development-only\"\ndir = \"keystore\"",
        "",
    );
    assert!(
        err_of(&neither).contains("keystore.backend"),
        "{}",
        err_of(&neither)
    );
    let stray = KEYSTORE.replace(
        "backend = \"software-development-only\"\ndir = \"keystore\"",
        "keyd_socket = \"/s\"\ntcti = \"x\"",
    );
    assert!(
        err_of(&stray).contains("keystore.tcti"),
        "{}",
        err_of(&stray)
    );
    let typo = KEYSTORE.replace("dir = \"keystore\"", "dri = \"keystore\"");
    assert!(err_of(&typo).contains("dri"), "{}", err_of(&typo));
    // A TPM or an HSM only through the key service: no hardware backend in the agent.
    for hardware in [
        "backend = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"",
        "backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"/p\"",
    ] {
        let in_process = KEYSTORE.replace(
            "backend = \"software-development-only\"\ndir = \"keystore\"",
            hardware,
        );
        let e = err_of(&in_process);
        assert!(
            e.contains("only through the key service") && e.contains("keyd_socket"),
            "{e}"
        );
    }
    // [policy] is required with a key store; [admission] is optional (defaults) with one and
    // refused without.
    let no_policy = KEYSTORE.replace("[policy]\ndirectory = \"policies\"\n", "");
    assert!(
        err_of(&no_policy).contains("field `policy`"),
        "{}",
        err_of(&no_policy)
    );
    let defaults =
        parse(&KEYSTORE.replace("[admission]\nrevocation_list = \"revocations.json\"\n", ""))
            .unwrap();
    assert!(defaults.admission.is_none());
    let admission_alone = format!("{GOOD}[admission]\nrevocation_list = \"r.json\"\n");
    assert!(err_of(&admission_alone).contains("field `admission`"));
    // The old places of the policy set are refused, by name.
    let old = KEYSTORE.replace(
        "[admission]\n",
        "[admission]\npolicy_directory = \"policies\"\n",
    );
    assert!(
        err_of(&old).contains("policy_directory"),
        "{}",
        err_of(&old)
    );
    let old_routes = format!("{GOOD}[gateway.authz]\npolicy = \"routes.rego\"\n");
    assert!(
        err_of(&old_routes).contains("unknown field `policy`"),
        "{}",
        err_of(&old_routes)
    );
    // One source of anchors.
    let files_too = KEYSTORE.replace(
        "[admission]",
        "[trust]\nmodel_signer_keys = [\"s.pub\"]\n[admission]",
    );
    assert!(
        err_of(&files_too).contains("trust.model_signer_keys"),
        "{}",
        err_of(&files_too)
    );
    // The key file is optional only with a key store.
    let no_key = GOOD.replace("private_key = \"pki/server.key\"\n", "");
    assert!(
        err_of(&no_key).contains("tls.private_key"),
        "{}",
        err_of(&no_key)
    );
    // Release documents only with admission.
    let release_in_dev = GOOD.replace(
        "file = \"model.onnx\"",
        "file = \"model.onnx\"\nrelease = \"r.json\"",
    );
    assert!(err_of(&release_in_dev).contains("model[0].release"));
    let interval = KEYSTORE.replace(
        "revocation_list = ",
        "refresh_interval_s = 0\nrevocation_list = ",
    );
    assert!(err_of(&interval).contains("admission.refresh_interval_s"));
    let stages = KEYSTORE.replace(
        "revocation_list = ",
        "allowed_stages = []\nrevocation_list = ",
    );
    assert!(err_of(&stages).contains("admission.allowed_stages"));
    let bad_stage = KEYSTORE.replace(
        "revocation_list = ",
        "allowed_stages = [\"Aproved\"]\nrevocation_list = ",
    );
    assert!(
        err_of(&bad_stage).contains("Aproved"),
        "{}",
        err_of(&bad_stage)
    );
}

#[test]
fn the_worker_polling_window_is_off_by_default_and_bounded() {
    assert_eq!(parse(GOOD).unwrap().runtime.worker_poll_us, 0);
    let c = parse(&format!("{GOOD}[runtime]\nworker_poll_us = 100\n")).unwrap();
    assert_eq!(c.runtime.worker_poll_us, 100);
    assert!(parse(&format!("{GOOD}[runtime]\nworker_poll_us = 10000\n")).is_ok());
    let err = parse(&format!("{GOOD}[runtime]\nworker_poll_us = 10001\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("runtime.worker_poll_us"), "{err}");
    assert!(err.contains("at most 10000"), "{err}");
}

#[test]
fn the_tensor_arena_is_on_by_default_and_bounded() {
    assert_eq!(parse(GOOD).unwrap().runtime.shared_memory_mib, 64);
    let off = parse(&format!("{GOOD}[runtime]\nshared_memory_mib = 0\n")).unwrap();
    assert_eq!(off.runtime.shared_memory_mib, 0);
    assert!(parse(&format!("{GOOD}[runtime]\nshared_memory_mib = 1024\n")).is_ok());
    for bad in [
        "[runtime]\nshared_memory_mib = 1025\n",
        "[runtime]\nshared_memory_mib = 512\n[sandbox]\naddress_space_bytes = 1000000000\n",
    ] {
        let err = parse(&format!("{GOOD}{bad}")).unwrap_err().to_string();
        assert!(err.contains("runtime.shared_memory_mib"), "{err}");
    }
}

#[test]
fn restart_and_batching_are_read_and_checked() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.runtime.restart, RestartConfig::default());
    assert!(
        c.models[0].batching.is_none(),
        "batching is off unless asked for"
    );
    let text = format!(
        "{GOOD}[model.batching]\nwindow_us = 500\nmax_rows = 32\n[runtime.restart]\nmax_crashes = 2\nbackoff_initial_ms = 2000\n"
    );
    let c = parse(&text).unwrap();
    let b = c.models[0].batching.as_ref().unwrap().policy();
    assert_eq!((b.window, b.max_rows), (Duration::from_micros(500), 32));
    let r = c.runtime.restart.policy();
    assert_eq!(r.max_crashes, 2);
    assert_eq!(r.backoff_initial, Duration::from_secs(2));
    for (extra, field) in [
        (
            "[model.batching]\nwindow_us = 200000\n",
            "model.demo.batching.window_us",
        ),
        (
            "[model.batching]\nmax_rows = 1\n",
            "model.demo.batching.max_rows",
        ),
        ("[model.batching]\nwindow_ms = 1\n", "window_ms"),
        (
            "[runtime.restart]\nmax_crashes = 0\n",
            "runtime.restart.max_crashes",
        ),
        (
            "[runtime.restart]\nbackoff_initial_ms = 20000\nbackoff_max_ms = 10000\n",
            "runtime.restart.backoff_max_ms",
        ),
    ] {
        let err = parse(&format!("{GOOD}{extra}")).unwrap_err().to_string();
        assert!(err.contains(field), "{extra}: {err}");
    }
}

#[test]
fn accelerator_is_read_and_checked() {
    use warden_runtime_client::device::{Device, DeviceRequest};
    let c = parse(GOOD).unwrap();
    assert_eq!(c.models[0].device_request(), DeviceRequest::default());
    let c = parse(&format!(
        "{GOOD}[model.accelerator]\ndevice = \"cuda:1\"\nmemory_budget_mib = 2048\ncpu_fallback = true\n"
    ))
    .unwrap();
    assert_eq!(
        c.models[0].device_request(),
        DeviceRequest {
            device: Device::Cuda(1),
            memory_budget_bytes: Some(2048 << 20),
            cpu_fallback: true,
        }
    );
    for (extra, wanted) in [
        ("device = \"cuda:0\"\n", "needs a GPU memory budget"),
        (
            "device = \"cuda:0\"\nmemory_budget_mib = 0\n",
            "must be above 0",
        ),
        (
            "device = \"cuda:0\"\nmemory_budget_mib = 2000000\n",
            "memory_budget_mib",
        ),
        (
            "device = \"cpu\"\nmemory_budget_mib = 10\n",
            "GPU device only",
        ),
        ("device = \"cpu\"\ncpu_fallback = true\n", "GPU device only"),
        ("device = \"gpu0\"\n", "cuda:N"),
        (
            "device = \"cuda:0\"\nmemory_budget_mib = 1\nfallback = true\n",
            "fallback",
        ),
    ] {
        let err = parse(&format!("{GOOD}[model.accelerator]\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(wanted), "{extra}: {err}");
    }
}

#[test]
fn reference_config_is_valid() {
    let text = include_str!("../../warden.example.toml");
    parse(text).unwrap();
}
