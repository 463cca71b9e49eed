//! Accelerator discovery: which NVIDIA GPUs this machine has, through the CUDA driver API
//! (`cudarc`, loaded at run time, so nothing CUDA is needed to build or to run on a machine
//! without a GPU). On such a machine discovery says why there is no GPU instead of failing.

use serde::Serialize;

/// What the machine offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// The CUDA driver's version, e.g. `12.8`; `None` without a driver.
    pub driver_version: Option<String>,
    pub gpus: Vec<Gpu>,
    /// Why there is no GPU (no driver library, driver init failed, no device).
    pub none_because: Option<String>,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    /// e.g. `9.0`.
    pub compute_capability: String,
    pub total_memory_bytes: u64,
    pub free_memory_bytes: u64,
}

/// Looks for GPUs. Never panics: cudarc's loader panics without `libcuda`, so its presence is
/// checked first. Creating a context per device costs some time and memory: call this at
/// start-up or on demand (`warden status`), not per request.
pub fn discover() -> Inventory {
    let none = |why: String, driver_version| Inventory {
        driver_version,
        gpus: Vec::new(),
        none_because: Some(why),
    };
    if !crate::sys::cuda_driver_present() {
        return none(
            "no CUDA driver library (libcuda.so) on this machine".into(),
            None,
        );
    }
    let driver_version =
        crate::sys::cuda_driver_version().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    if let Err(e) = cudarc::driver::result::init() {
        return none(
            format!("the CUDA driver did not initialise: {e}"),
            driver_version,
        );
    }
    let count = match cudarc::driver::result::device::get_count() {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(e) => return none(format!("cannot count CUDA devices: {e}"), driver_version),
    };
    if count == 0 {
        return none("the CUDA driver sees no device".into(), driver_version);
    }
    let mut gpus = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for ordinal in 0..count {
        match describe(ordinal) {
            Ok(gpu) => gpus.push(gpu),
            Err(e) => failures.push(format!("device {ordinal}: {e}")),
        }
    }
    let none_because = (gpus.is_empty()).then(|| failures.join("; "));
    Inventory {
        driver_version,
        gpus,
        none_because,
    }
}

fn describe(ordinal: usize) -> Result<Gpu, cudarc::driver::DriverError> {
    let ctx = cudarc::driver::CudaContext::new(ordinal)?;
    let (major, minor) = ctx.compute_capability()?;
    let (free, total) = ctx.mem_get_info()?;
    Ok(Gpu {
        ordinal,
        name: ctx.name()?,
        compute_capability: format!("{major}.{minor}"),
        total_memory_bytes: total as u64,
        free_memory_bytes: free as u64,
    })
}
