//! Accelerator discovery on whatever machine runs the tests. Without a GPU it must not panic
//! (cudarc's loader would, without the check) and must say why; that is a documented skip of
//! the GPU part, printed, never silent. `hw-tests/gpu.sh` sets `WARDEN_EXPECT_GPU=1` on a GPU
//! machine, where finding none is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use warden_runtime_client::accel;

#[test]
fn discovers_the_gpus_or_says_why_not() {
    let inventory = accel::discover();
    println!("{}", serde_json::to_string_pretty(&inventory).unwrap());
    let expected = std::env::var_os("WARDEN_EXPECT_GPU").is_some_and(|v| v == "1");
    if inventory.gpus.is_empty() {
        let why = inventory
            .none_because
            .as_deref()
            .expect("no GPU and no reason given");
        assert!(!expected, "WARDEN_EXPECT_GPU=1 but no GPU was found: {why}");
        eprintln!("SKIP (no GPU): {why}");
        return;
    }
    assert!(inventory.none_because.is_none());
    assert!(inventory.driver_version.is_some());
    for (i, gpu) in inventory.gpus.iter().enumerate() {
        assert_eq!(gpu.ordinal, i);
        assert!(!gpu.name.is_empty());
        assert!(gpu.total_memory_bytes > 0);
        assert!(gpu.free_memory_bytes <= gpu.total_memory_bytes);
        assert!(gpu.compute_capability.contains('.'));
    }
}

#[test]
fn discovery_is_repeatable() {
    assert_eq!(accel::discover().gpus.len(), accel::discover().gpus.len());
}
