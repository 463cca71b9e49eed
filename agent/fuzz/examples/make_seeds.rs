//! Writes the seed corpora of this crate's fuzz targets into `corpus/<target>/`:
//! `cargo run --example make_seeds` from `agent/fuzz` (scripts/fuzz.sh never runs it; the seeds
//! are committed). Each seed is a real request or archive, in the target's input format (a
//! mode byte first: see each target's header).
//! Seeds named `regression_*` are not made here: they are minimised crash inputs found by the
//! targets, kept so that every run checks the fix.

use std::fs;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    assert!(
        bytes.len() < 64 * 1024,
        "{target}/{name}: {} bytes",
        bytes.len()
    );
    fs::write(dir.join(name), bytes).unwrap();
}

/// An `oip_codec` input: JSON only (mode 0).
fn json_only(mode: u8, body: &[u8]) -> Vec<u8> {
    assert_eq!(mode & 1, 0);
    let mut v = vec![mode];
    v.extend_from_slice(body);
    v
}

/// An `oip_codec` input with the Inference-Header-Content-Length header.
fn with_binary(mode: u8, header: &str, binary: &[u8]) -> Vec<u8> {
    let mut v = vec![mode | 1];
    v.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(binary);
    v
}

fn oip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The demo's own request (agent/demo-model/sample-request.json).
    let sample = fs::read(root.join("demo-model/sample-request.json")).unwrap();
    write("oip_codec", "demo_sample_request", &json_only(0, &sample));
    write(
        "oip_codec",
        "demo_sample_request_binary_out",
        &json_only(2, &sample),
    );

    // The same two rows as binary FP32 data, asking for binary outputs (the binary tensor
    // extension, as codec.rs's test and gateway clients send it).
    let v: serde_json::Value = serde_json::from_slice(&sample).unwrap();
    let floats: Vec<u8> = v["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes())
        .collect();
    let header = format!(
        r#"{{"id":"req-1","inputs":[{{"name":"input","shape":[2,30],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"label","parameters":{{"binary_data":true}}}},{{"name":"probabilities"}}],"parameters":{{"binary_data_output":true}}}}"#,
        floats.len()
    );
    write(
        "oip_codec",
        "demo_binary_request",
        &with_binary(0, &header, &floats),
    );

    // Every datatype, nested data, an id and outputs (JSON).
    let every = r#"{"id":"all","inputs":[
{"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]},
{"name":"u8","shape":[2],"datatype":"UINT8","data":[0,255]},
{"name":"u16","shape":[2],"datatype":"UINT16","data":[0,65535]},
{"name":"u32","shape":[1],"datatype":"UINT32","data":[4294967295]},
{"name":"u64","shape":[1],"datatype":"UINT64","data":[18446744073709551615]},
{"name":"i8","shape":[2],"datatype":"INT8","data":[-128,127]},
{"name":"i16","shape":[1],"datatype":"INT16","data":[-32768]},
{"name":"i32","shape":[2,2],"datatype":"INT32","data":[[1,-2],[3,-4]]},
{"name":"i64","shape":[1],"datatype":"INT64","data":[-9223372036854775808]},
{"name":"f16","shape":[3],"datatype":"FP16","data":[0.5,-65504,6e-8]},
{"name":"f32","shape":[1,2,2],"datatype":"FP32","data":[[[1,2.5],[-3,4e2]]]},
{"name":"f64","shape":[2],"datatype":"FP64","data":[1e308,-5e-324]},
{"name":"empty","shape":[0,3],"datatype":"FP32","data":[]}],
"outputs":[{"name":"label"},{"name":"probabilities","parameters":{"binary_data":false}}]}"#;
    write(
        "oip_codec",
        "every_datatype",
        &json_only(4, every.as_bytes()),
    );

    // JSON and binary inputs mixed.
    let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"y","shape":[1],"datatype":"FP64","data":[0.25]},{"name":"z","shape":[3],"datatype":"UINT8","parameters":{"binary_data_size":3}}]}"#;
    let mut bin = Vec::new();
    bin.extend_from_slice(&7i32.to_le_bytes());
    bin.extend_from_slice(&(-9i32).to_le_bytes());
    bin.extend_from_slice(&[1, 2, 3]);
    write(
        "oip_codec",
        "mixed_binary_json",
        &with_binary(6, header, &bin),
    );
}

/// A tar holding one entry under a raw name (as agent/tests/admin.rs makes its refused ones).
fn tar_with_raw(name: &[u8], kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(if link.is_some() { 0 } else { 4 });
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    let mut t = tar::Builder::new(Vec::new());
    let data: &[u8] = if link.is_some() { b"" } else { b"evil" };
    t.append(&h, data).unwrap();
    t.into_inner().unwrap()
}

fn file(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    t.append_data(&mut h, path, data).unwrap();
}

fn dir(t: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_cksum();
    t.append_data(&mut h, path, &b""[..]).unwrap();
}

fn tars() {
    // Mode: 0xFE = bundle layout, 64 entries, 2^19 bytes; 0xFF = policy layout, same limits.
    let with_mode = |mode: u8, tar: Vec<u8>| {
        let mut v = vec![mode];
        v.extend(tar);
        v
    };
    // A bundle as agent/tests/fleet's tar_of makes one (a small stand-in model file).
    let mut t = tar::Builder::new(Vec::new());
    dir(&mut t, "model");
    file(&mut t, "model/model.onnx", b"\x08\x07\x12\x04demo:\x00");
    dir(&mut t, "attestations");
    file(
        &mut t,
        "attestations/0.json",
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
    );
    file(
        &mut t,
        "model.sig",
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
    );
    file(
        &mut t,
        "release.json",
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
    );
    write(
        "tar_unpack",
        "bundle",
        &with_mode(0xFE, t.into_inner().unwrap()),
    );

    // A policy set (PUT /admin/v1/policies).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rego = fs::read(root.join("policies/serving/routes.rego")).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    dir(&mut t, "policies");
    dir(&mut t, "policies/serving");
    file(
        &mut t,
        "policies/serving/routes.rego",
        &rego[..rego.len().min(4096)],
    );
    file(&mut t, "statement.json", b"{}");
    write(
        "tar_unpack",
        "policy_set",
        &with_mode(0xFF, t.into_inner().unwrap()),
    );

    // A long name (GNU long-name extension) under model/.
    let mut t = tar::Builder::new(Vec::new());
    let long = format!("model/{}/weights.bin", "d".repeat(120));
    file(&mut t, &long, b"0123456789");
    write(
        "tar_unpack",
        "long_name",
        &with_mode(0xFE, t.into_inner().unwrap()),
    );

    // The refused entries of agent/tests/admin.rs.
    for (name, entry, kind, link) in [
        ("escape", &b"../escape"[..], tar::EntryType::Regular, None),
        ("absolute", b"/model/abs", tar::EntryType::Regular, None),
        (
            "symlink",
            b"model/link",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
        ),
        (
            "hardlink",
            b"model/hard",
            tar::EntryType::Link,
            Some("model.sig"),
        ),
        ("chardev", b"model/dev", tar::EntryType::Char, None),
    ] {
        write(
            "tar_unpack",
            name,
            &with_mode(0xFE, tar_with_raw(entry, kind, link)),
        );
    }
}

fn main() {
    oip();
    tars();
}
