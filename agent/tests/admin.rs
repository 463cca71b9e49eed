//! The fleet-push admin listener against a real agent (software key store, admission, workers)
//! and a real mTLS admin client holding a certificate from the fleet CA: a push while a client
//! loops inferences fails no request; bad pushes change nothing; foreign certificates are
//! refused at the handshake; activate and rollback move the default; a pushed revocation list
//! unloads what it revokes and an older one is refused; a model the configuration does not
//! name is accepted only with `admin.accept_new_models`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fleet;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fleet::*;
use support::{Client, tls_config};
use warden_agent::demo::pki::DevCa;
use warden_attest::revocation::{RevocationList, sign_revocation_list};

/// A tar holding one entry under a raw name (bypassing the builder's own path checks).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_under_load_fails_no_request_then_activate_and_rollback_move_the_default() {
    let w = World::new();
    let v2 = w.bundle("2", None);
    let r = Running::start(w).await;
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));

    // Clients loop inferences on the default route at full speed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let served_v2 = Arc::new(AtomicU64::new(0));
    let body = std::fs::read(&r.world.files.request).unwrap();
    let mut loops = Vec::new();
    for _ in 0..3 {
        let mut c = r.client().await;
        let (stop, ok, failed, served_v2, body) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            served_v2.clone(),
            body.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.post_json("/v2/models/demo/infer", body.clone()).await {
                    Ok(reply) if reply.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if reply.json()["model_version"] == "2" {
                            served_v2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "failed: {:?}",
                            other
                                .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                        );
                    }
                }
            }
        }));
    }

    let pushed = r.push("2", tar_of(&v2)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    // Loaded, reachable by version, but not the default until activated.
    assert_eq!(r.infer("/v2/models/demo/versions/2/infer").await.0, 200);
    // The configured value range applies to the pushed version too.
    let mut out_of_range: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&r.world.files.request).unwrap()).unwrap();
    out_of_range["inputs"][0]["data"][0] = serde_json::json!(1e9);
    let refused = r
        .client()
        .await
        .post_json("/v2/models/demo/versions/2/infer", out_of_range.to_string())
        .await
        .unwrap();
    assert_eq!(
        refused.status,
        400,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(active(&r.status().await), "1");
    assert_eq!(served_v2.load(Ordering::Relaxed), 0);
    let before_activate = ok.load(Ordering::Relaxed);

    let a = r
        .post("/admin/v1/models/demo/activate", r#"{"version":"2"}"#)
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["previous"], "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while served_v2.load(Ordering::Relaxed) < 20 {
        assert!(std::time::Instant::now() < deadline, "v2 never served");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    eprintln!(
        "inferences: {} ok ({} before activate, {} by v2)",
        ok.load(Ordering::Relaxed),
        before_activate,
        served_v2.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert!(
        before_activate > 0,
        "the load loop did not run during the push"
    );
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "2".into()));
    assert_eq!(active(&r.status().await), "2");

    // Rollback: back to 1; both still loaded.
    let rb = r.post("/admin/v1/models/demo/rollback", "").await;
    assert_eq!(rb.status, 200, "{}", String::from_utf8_lossy(&rb.body));
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    let s = r.status().await;
    assert_eq!(active(&s), "1");
    assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 2);
    // Activating a version that is not loaded changes nothing.
    let bad = r
        .post("/admin/v1/models/demo/activate", r#"{"version":"9"}"#)
        .await;
    assert_eq!(bad.status, 404);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));

    // Every action is audited with the controller's identity.
    let audit = r.audit();
    for route in [
        "PUT /admin/v1/models/{name}/versions/{version}",
        "POST /admin/v1/models/{name}/activate",
        "POST /admin/v1/models/{name}/rollback",
    ] {
        assert!(
            audit.iter().any(|e| e["kind"] == "admin"
                && e["route"] == route
                && e["identity"] == "spiffe://warden.fleet/controller"
                && e["outcome"] == "ok"),
            "{route} not audited"
        );
    }
    assert!(uploads_empty(&r.state_dir()));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pushes_change_nothing_and_foreign_certificates_are_refused() {
    let w = World::new();
    let tampered = w.bundle("2", None);
    std::fs::write(
        tampered.model.join(&w.config.models[0].file),
        b"not the signed model",
    )
    .unwrap();
    let (rogue, _) = key();
    let wrong_signer = w.bundle("3", Some(&rogue));
    let mut unsigned = w.bundle("4", None);
    unsigned.sig = None;
    let r = Running::start(w).await;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("2", tar_of(&tampered), 422, "admission_refused"),
        ("3", tar_of(&wrong_signer), 422, "admission_refused"),
        ("4", tar_of(&unsigned), 422, "admission_refused"),
        (
            "5",
            tar_with_raw(b"../escape", tar::EntryType::Regular, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"/model/abs", tar::EntryType::Regular, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/link", tar::EntryType::Symlink, Some("/etc/passwd")),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/hard", tar::EntryType::Link, Some("model.sig")),
            400,
            "archive_invalid",
        ),
        (
            "5",
            tar_with_raw(b"model/dev", tar::EntryType::Char, None),
            400,
            "archive_invalid",
        ),
        (
            "5",
            vec![0u8; usize::try_from(MAX_UPLOAD).unwrap() + 1],
            413,
            "too_large",
        ),
    ];
    for (version, tar, status, class) in cases {
        let reply = r.push(version, tar).await;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status.as_u16(), status, "{class}: {text}");
        assert!(
            text.starts_with(&format!("{{\"error\":\"{class}:")),
            "{text}"
        );
        // Nothing changed: v1 alone, default, serving; nothing staged.
        let s = r.status().await;
        assert_eq!(active(&s), "1", "{class}");
        assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 1);
        assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
        assert!(uploads_empty(&r.state_dir()), "{class}: upload left behind");
        assert!(
            !r.state_dir().join("models/demo").join(version).exists(),
            "{class}: staged copy left behind"
        );
        assert!(!r.state_dir().join("escape").exists());
    }
    // The refusal is precise in the audit trail.
    assert!(r.audit().iter().any(|e| e["kind"] == "admin"
        && e["outcome"] == "admission_refused"
        && e["reason"].as_str().unwrap_or("").contains("version 2")));

    // A client certificate not from the fleet CA: refused at the handshake (the inference
    // client's certificate too).
    let foreign_ca = DevCa::new("not the fleet").unwrap();
    let foreign = foreign_ca.issue_client(None, "intruder").unwrap();
    let dir = r.world.files.dir.clone();
    std::fs::write(dir.join("pki/foreign.pem"), foreign.cert_pem).unwrap();
    std::fs::write(dir.join("pki/foreign.key"), foreign.key_pem).unwrap();
    let f = &r.world.files;
    for (cert, key) in [
        (dir.join("pki/foreign.pem"), dir.join("pki/foreign.key")),
        (f.client_cert.clone(), f.client_key.clone()),
    ] {
        let tls = tls_config(&f.ca, Some((&cert, &key)), false);
        let refused = match Client::connect(r.admin_addr, tls, false).await {
            Err(_) => true,
            Ok(mut c) => c.get("/admin/v1/models").await.is_err(),
        };
        assert!(refused, "{} was accepted", cert.display());
    }
    let tls = tls_config(&f.ca, None, false);
    let refused = match Client::connect(r.admin_addr, tls, false).await {
        Err(_) => true,
        Ok(mut c) => c.get("/admin/v1/models").await.is_err(),
    };
    assert!(refused, "a client without a certificate was accepted");
    assert!(
        r.audit()
            .iter()
            .any(|e| e["kind"] == "admin" && e["outcome"] == "tls_refused")
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_revocation_list_unloads_what_it_revokes_and_an_older_one_is_refused() {
    let w = World::new();
    let v2 = w.bundle("2", None);
    let (list1, list2) = (w.revocations(1, &[]), w.revocations(2, &["2"]));
    let (rogue, _) = key();
    let forged = sign_revocation_list(
        &RevocationList {
            serial: 9,
            revoked_digests: vec![],
            revoked_versions: vec![],
        },
        &rogue,
    )
    .unwrap();
    let r = Running::start(w).await;
    let pushed = r.push("2", tar_of(&v2)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    assert_eq!(
        r.post("/admin/v1/models/demo/activate", r#"{"version":"2"}"#)
            .await
            .status,
        200
    );

    let put = |body: Vec<u8>| {
        let r = &r;
        async move {
            let mut c = r.admin().await;
            let req = c.build("PUT", "/admin/v1/revocations", body, None);
            c.send(req).await.unwrap()
        }
    };
    let first = put(list1.clone()).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.json()["unloaded"].as_array().unwrap().len(), 0);

    let second = put(list2.clone()).await;
    assert_eq!(
        second.status,
        200,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.json()["unloaded"][0]["version"], "2");
    assert_eq!(std::fs::read(&r.world.revocations).unwrap(), list2);
    // v2 is gone; the default falls back to v1, which serves.
    assert_ne!(r.infer("/v2/models/demo/versions/2/infer").await.0, 200);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    let s = r.status().await;
    assert_eq!(s["withdrawn"][0]["version"], "2");
    assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 1);

    // An older list is refused and the stored one stays.
    let older = put(list1).await;
    assert_eq!(
        older.status,
        409,
        "{}",
        String::from_utf8_lossy(&older.body)
    );
    assert!(String::from_utf8_lossy(&older.body).contains("revocation_list_replayed"));
    // One not signed by the fleet authority is refused too.
    let bad = put(forged).await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    assert_eq!(std::fs::read(&r.world.revocations).unwrap(), list2);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    assert!(r.audit().iter().any(|e| e["kind"] == "admin"
        && e["route"] == "PUT /admin/v1/revocations"
        && e["outcome"] == "revocation_list_replayed"));
    r.stop().await;
}

/// Pushed versions and the chosen default survive a restart, and each kept bundle is verified
/// and admitted again at start: one tampered on disk while the agent was down is refused,
/// removed and audited, and the agent serves what remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_versions_and_the_default_survive_a_restart_and_are_verified_again() {
    let w = World::new();
    let v2 = w.bundle("2", None);
    let r = Running::start(w).await;
    let pushed = r.push("2", tar_of(&v2)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    assert_eq!(pushed.json()["kept_across_restarts"], true);
    let a = r
        .post("/admin/v1/models/demo/activate", r#"{"version": "2"}"#)
        .await;
    assert_eq!(a.status, 200);

    // Reboot: v2 is loaded again and still the default.
    let r = r.restart().await;
    assert_eq!(active(&r.status().await), "2");
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "2".into()));
    assert_eq!(
        r.infer("/v2/models/demo/versions/1/infer").await,
        (200, "1".into())
    );

    // A rollback is kept too.
    let b = r.post("/admin/v1/models/demo/rollback", "").await;
    assert_eq!(b.status, 200, "{}", String::from_utf8_lossy(&b.body));
    let r = r.restart().await;
    let s = r.status().await;
    assert_eq!(active(&s), "1");
    assert_eq!(s["models"][0]["versions"].as_array().unwrap().len(), 2);

    // v2's kept bundle is tampered with while the agent is down.
    let kept = r.state_dir().join("pushed/demo/2/model");
    let file = std::fs::read_dir(&kept)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_file())
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let r = r.restart().await;
    let s = r.status().await;
    assert_eq!(
        s["models"][0]["versions"].as_array().unwrap().len(),
        1,
        "the tampered version is not loaded: {s}"
    );
    assert_eq!(active(&s), "1");
    assert_eq!(r.infer("/v2/models/demo/versions/2/infer").await.0, 404);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    assert!(
        !r.state_dir().join("pushed/demo/2").exists(),
        "a refused kept version is removed"
    );
    assert!(
        r.audit()
            .iter()
            .any(|e| e["kind"] == "admission" && e["version"] == "2" && e["outcome"] != "admitted"),
        "the refusal at start is audited"
    );
    r.stop().await;
}

/// A model the configuration does not name: refused unless `admin.accept_new_models`; then
/// served on its bundle's one model file after the same signature and admission checks, and
/// kept across a restart. A bundle with two model files is refused, not guessed at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_model_is_accepted_only_when_allowed_and_is_kept() {
    let grant = |w: &mut World| {
        w.set_grants(
            r#"{"tenants": {"demo": {"models": {
                "demo": {"versions": ["*"], "routes": ["infer", "metadata", "ready"]},
                "fresh": {"versions": ["*"], "routes": ["infer", "metadata", "ready"]}}}}}"#,
        );
    };
    let mut w = World::new();
    grant(&mut w);
    let fresh = w.bundle_of("fresh", "1", None);
    let r = Running::start(w).await;
    let refused = r.push_to("fresh", "1", tar_of(&fresh)).await;
    assert_eq!(refused.status, 404);
    assert!(String::from_utf8_lossy(&refused.body).contains("unknown_model"));
    assert_eq!(r.infer("/v2/models/fresh/infer").await.0, 404);
    r.stop().await;

    let mut w = World::new();
    grant(&mut w);
    w.config.admin.as_mut().unwrap().accept_new_models = true;
    let fresh = w.bundle_of("fresh", "1", None);
    // Two model files in one bundle: which one to serve is not guessed.
    let two = w.bundle_of("fresh", "2", None);
    std::fs::copy(two.model.join("model.onnx"), two.model.join("other.onnx")).unwrap();
    let two = {
        let _ = std::fs::remove_file(two.sig.as_ref().unwrap());
        let signed = warden_attest::bundle::sign_model(
            &two.model,
            &w.model_signer,
            &warden_attest::bundle::SignOptions {
                model_name: Some("fresh".into()),
                ..Default::default()
            },
        )
        .unwrap();
        signed.write_to(two.sig.as_ref().unwrap()).unwrap();
        two
    };
    let unsigned_name = w.bundle_of("stranger", "1", Some(&fleet::key().0));
    let r = Running::start(w).await;
    let pushed = r.push_to("fresh", "1", tar_of(&fresh)).await;
    assert_eq!(
        pushed.status,
        200,
        "{}",
        String::from_utf8_lossy(&pushed.body)
    );
    assert_eq!(r.infer("/v2/models/fresh/infer").await, (200, "1".into()));
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    let ambiguous = r.push_to("fresh", "2", tar_of(&two)).await;
    assert_eq!(ambiguous.status, 400);
    assert!(String::from_utf8_lossy(&ambiguous.body).contains("exactly one model file"));
    // A new name gets no easier checks: a bundle from an unknown signer is refused.
    let stranger = r.push_to("stranger", "1", tar_of(&unsigned_name)).await;
    assert_eq!(
        stranger.status,
        422,
        "{}",
        String::from_utf8_lossy(&stranger.body)
    );

    let r = r.restart().await;
    assert_eq!(r.infer("/v2/models/fresh/infer").await, (200, "1".into()));
    assert_eq!(r.infer("/v2/models/fresh/versions/2/infer").await.0, 404);
    assert!(
        r.audit().iter().any(|e| e["kind"] == "admission"
            && e["model"] == "fresh"
            && e["outcome"] == "admitted"),
        "the new model's admission is audited"
    );
    r.stop().await;
}

/// A policy set pushed by the fleet authority: refused when signed by anyone else, for other
/// files, with a non-.rego file, when it does not compile, or older than the accepted one
/// (each refusal changes nothing); accepted, it is kept and in force, versions released for
/// the old set are unloaded and versions released for the new one load; it survives a
/// restart; tampered with on disk, it stops the agent from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_policy_set_is_verified_kept_and_decides_again() {
    use warden_attest::policyset::files::policy_set_digest;
    use warden_attest::policyset::{PolicySet, sign_policy_set};
    let w = World::new();
    let old_digest = policy_set_digest(&w.policy_dir).unwrap();
    // The new set: the shipped policies with one more line.
    let v2_dir = w.files.dir.join("policies-v2");
    copy_dir(&w.policy_dir, &v2_dir);
    let startup = v2_dir.join("serving/startup.rego");
    let mut text = std::fs::read_to_string(&startup).unwrap();
    text.push_str("\n# policy set 2\n");
    std::fs::write(&startup, text).unwrap();
    // Its route policy closes the liveness route: the push must replace the route policy too.
    let routes = v2_dir.join("serving/routes.rego");
    let mut text = std::fs::read_to_string(&routes).unwrap();
    text.push_str("\ndeny contains \"liveness_closed\" if input.route == \"/v2/health/live\"\n");
    std::fs::write(&routes, text).unwrap();
    let new_digest = policy_set_digest(&v2_dir).unwrap();
    assert_ne!(new_digest, old_digest);
    let statement = |serial: u64, dir: &std::path::Path, signer: &warden_attest::bundle::Signer| {
        sign_policy_set(
            &PolicySet {
                serial,
                policy_set_digest: policy_set_digest(dir).unwrap(),
            },
            signer,
        )
        .unwrap()
    };
    let good = policy_tar(&v2_dir, &statement(2, &v2_dir, &w.fleet));
    let stranger = policy_tar(&v2_dir, &statement(2, &v2_dir, &fleet::key().0));
    let other_files = policy_tar(&w.policy_dir, &statement(2, &v2_dir, &w.fleet));
    let older = policy_tar(&v2_dir, &statement(1, &v2_dir, &w.fleet));
    // A file that is neither a policy nor a data document has no place in a set.
    let with_notes = policy_tar_with(
        &v2_dir,
        &statement(2, &v2_dir, &w.fleet),
        &[("notes.txt", b"not evaluated")],
    );
    // A data document is part of the set: one the statement does not cover is refused.
    let extra_data = policy_tar_with(
        &v2_dir,
        &statement(2, &v2_dir, &w.fleet),
        &[("serving/data.json", b"{\"tenants\": {}}")],
    );
    let broken = {
        let d = w.files.dir.join("policies-broken");
        copy_dir(&v2_dir, &d);
        std::fs::write(
            d.join("serving/startup.rego"),
            "package warden\nthis is not rego\n",
        )
        .unwrap();
        policy_tar(&d, &statement(3, &d, &w.fleet))
    };
    *w.pinned_policy_digest.lock().unwrap() = Some(new_digest.clone());
    let v2 = w.bundle("2", None);

    let r = Running::start(w).await;
    for (tar, status, class) in [
        (stranger, 422, "policy_set_invalid"),
        (other_files, 422, "policy_set_invalid"),
        (with_notes, 400, "archive_invalid"),
        (extra_data, 422, "policy_set_invalid"),
        (broken, 422, "policy_set_invalid"),
    ] {
        let reply = r.put_policies(tar).await;
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status, status, "{body}");
        assert!(body.contains(class), "{body}");
    }
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "1".into()));
    assert_eq!(live_status(&r).await, 200);
    assert!(uploads_empty(&r.state_dir()));
    // Before the new set, a version released for it is refused.
    assert_eq!(r.push("2", tar_of(&v2)).await.status, 422);

    let accepted = r.put_policies(good.clone()).await;
    assert_eq!(
        accepted.status,
        200,
        "{}",
        String::from_utf8_lossy(&accepted.body)
    );
    let a = accepted.json();
    assert_eq!(a["serial"], 2);
    assert_eq!(a["policy_set_digest"], new_digest.as_str());
    assert_eq!(
        a["unloaded"],
        serde_json::json!([{"name": "demo", "version": "1"}])
    );
    assert_ne!(r.infer("/v2/models/demo/versions/1/infer").await.0, 200);
    // One set: the pushed route policy decides requests from now on.
    assert_eq!(live_status(&r).await, 403);
    assert!(
        r.audit()
            .iter()
            .any(|e| e["route"] == "/v2/health/live" && e["rule"] == "liveness_closed"),
        "the pushed route policy's rule decided"
    );
    assert_eq!(r.push("2", tar_of(&v2)).await.status, 200);
    assert_eq!(r.infer("/v2/models/demo/infer").await, (200, "2".into()));
    // The same push again is fine; an older serial, or the same serial for other files, not.
    assert_eq!(r.put_policies(good).await.status, 200);
    let replayed = r.put_policies(older).await;
    assert_eq!(replayed.status, 409);
    assert!(String::from_utf8_lossy(&replayed.body).contains("policy_set_replayed"));
    let v3_dir = r.world.files.dir.join("policies-v3");
    copy_dir(&v2_dir, &v3_dir);
    std::fs::write(v3_dir.join("serving/extra.rego"), "package warden.extra\n").unwrap();
    let same_serial = policy_tar(&v3_dir, &statement(2, &v3_dir, &r.world.fleet));
    assert_eq!(r.put_policies(same_serial).await.status, 409);
    assert!(
        r.audit()
            .iter()
            .any(|e| e["route"] == "PUT /admin/v1/policies" && e["status"] == 200),
        "the push is audited"
    );

    // Restart: the pushed set is still in force (the configured v1 gets a release for it).
    let mut w = r.into_world().await;
    let v1 = w.config.models[0].clone();
    w.config.models[0].release = Some(w.write_release(&v1, &v1.signature_path(), "1"));
    let r = Running::start(w).await;
    assert_eq!(
        r.infer("/v2/models/demo/versions/1/infer").await,
        (200, "1".into())
    );
    assert_eq!(
        r.infer("/v2/models/demo/versions/2/infer").await,
        (200, "2".into())
    );

    // A kept set changed on disk stops the next start, naming the set.
    let w = r.into_world().await;
    let kept = std::fs::read_dir(w.config.state.directory.join("policy-set"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let startup = kept.join("policies/serving/startup.rego");
    let mut text = std::fs::read_to_string(&startup).unwrap();
    text.push_str("# changed\n");
    std::fs::write(&startup, text).unwrap();
    let err = match warden_agent::serve::prepare(&w.config).await {
        Ok(_) => panic!("started on a changed policy set"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("does not verify"), "{err}");
    assert!(err.contains("policy-set/active"), "{err}");
}

/// The status of `GET /v2/health/live` for the demo client.
async fn live_status(r: &Running) -> u16 {
    r.client()
        .await
        .get("/v2/health/live")
        .await
        .unwrap()
        .status
        .as_u16()
}
