//! Where a model's worker runs: the GPU its configuration asks for, if that GPU exists and
//! holds the model's memory budget beside the others', else the CPU where the configuration
//! allows a fallback (said loudly), else a refusal.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use warden_runtime_client::accel::Inventory;
use warden_runtime_client::device::DeviceRequest;

use super::error::ModelError;
use crate::config::ModelConfig;

/// The machine's GPUs, discovered once, and the memory budgets granted on them.
#[derive(Default)]
pub(super) struct GpuPlacer {
    /// Discovered when the first model asks for a GPU.
    gpus: OnceLock<Inventory>,
    /// GPU memory budgets granted, per GPU ordinal, per model name (the versions of one model
    /// share its budget). Never given back while the agent runs: conservative.
    budgets: Mutex<BTreeMap<u32, BTreeMap<String, u64>>>,
}

impl GpuPlacer {
    /// Decides the device a model's worker is asked for ([`grant_device`]), discovering the
    /// GPUs when the first model asks for one.
    pub(super) fn place(&self, m: &ModelConfig) -> Result<Granted, ModelError> {
        let request = m.device_request();
        if request.device.gpu().is_none() {
            return Ok(Granted {
                request,
                fallback_reason: None,
            });
        }
        let inventory = self
            .gpus
            .get_or_init(warden_runtime_client::accel::discover);
        let mut granted = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        grant_device(inventory, &mut granted, &m.name, request).map_err(|e| ModelError::Device {
            name: m.name.clone(),
            version: m.version.clone(),
            message: e.to_string(),
        })
    }
}

/// Why a model cannot have the device its configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementRefused {
    /// The GPU does not exist and the request allows no CPU fallback.
    #[error(transparent)]
    Unavailable(#[from] warden_runtime_client::device::DeviceUnavailable),
    /// The budget does not fit beside the others granted on that GPU.
    #[error(
        "a GPU memory budget of {budget_mib} MiB does not fit on {device} ({total_mib} MiB in \
         all{}); lower model.accelerator.memory_budget_mib or move a model to another GPU",
        if granted.is_empty() { String::new() } else { format!(", already granted: {}", granted.join(", ")) }
    )]
    BudgetTooLarge {
        budget_mib: u64,
        device: warden_runtime_client::device::Device,
        total_mib: u64,
        granted: Vec<String>,
    },
}

/// What [`grant_device`] gives a model: the request for its worker, and why it is the CPU
/// when the configuration asked for a GPU that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Granted {
    pub(super) request: DeviceRequest,
    pub(super) fallback_reason: Option<String>,
}

/// The device model `name` gets for `request` on a machine with `inventory`, where `granted`
/// holds the GPU memory budgets already given, per GPU, per model. A GPU must exist and hold
/// the model's budget beside the others' (the versions of one model share its budget); a GPU
/// that does not exist falls back to the CPU only where the request allows it. A budget that
/// does not fit is a configuration error and always refuses: a fallback would hide it.
pub(super) fn grant_device(
    inventory: &Inventory,
    granted: &mut BTreeMap<u32, BTreeMap<String, u64>>,
    name: &str,
    request: DeviceRequest,
) -> Result<Granted, PlacementRefused> {
    let Some(ordinal) = request.device.gpu() else {
        return Ok(Granted {
            request,
            fallback_reason: None,
        });
    };
    let Some(gpu) = inventory
        .gpus
        .iter()
        .find(|g| u32::try_from(g.ordinal).ok() == Some(ordinal))
    else {
        let why = match &inventory.none_because {
            Some(why) => format!("no GPU {ordinal} on this machine: {why}"),
            None => format!(
                "no GPU {ordinal} on this machine ({} GPU(s) found)",
                inventory.gpus.len()
            ),
        };
        return match request.fall_back(why.clone()) {
            Ok(request) => Ok(Granted {
                request,
                fallback_reason: Some(why),
            }),
            Err(e) => Err(PlacementRefused::Unavailable(e)),
        };
    };
    let budget = request.memory_budget_bytes.unwrap_or(0);
    let on_gpu = granted.entry(ordinal).or_default();
    let others: Vec<(&String, &u64)> = on_gpu.iter().filter(|(n, _)| *n != name).collect();
    let held: u64 = others.iter().map(|(_, b)| **b).sum();
    if held.saturating_add(budget) > gpu.total_memory_bytes {
        return Err(PlacementRefused::BudgetTooLarge {
            budget_mib: budget >> 20,
            device: request.device,
            total_mib: gpu.total_memory_bytes >> 20,
            granted: others
                .iter()
                .map(|(n, b)| format!("{n} {} MiB", **b >> 20))
                .collect(),
        });
    }
    on_gpu.insert(name.to_string(), budget);
    Ok(Granted {
        request,
        fallback_reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget arithmetic, on an inventory written down here (the real discovery runs in
    /// `runtime/tests/accel.rs` and, with models on a GPU, in `hw-tests/gpu.sh`).
    #[test]
    fn gpu_budgets_must_fit_and_a_missing_gpu_falls_back_only_when_allowed() {
        use warden_runtime_client::accel::{Gpu, Inventory};
        use warden_runtime_client::device::Device;
        let gib = 1u64 << 30;
        let inventory = Inventory {
            driver_version: Some("13.0".into()),
            gpus: vec![Gpu {
                ordinal: 0,
                name: "test".into(),
                compute_capability: "9.0".into(),
                total_memory_bytes: 16 * gib,
                free_memory_bytes: 16 * gib,
            }],
            none_because: None,
        };
        let ask = |device, gib_budget: u64, cpu_fallback| DeviceRequest {
            device,
            memory_budget_bytes: Some(gib_budget * gib),
            cpu_fallback,
        };
        let mut granted = BTreeMap::new();
        assert_eq!(
            grant_device(
                &inventory,
                &mut granted,
                "a",
                ask(Device::Cuda(0), 10, false)
            ),
            Ok(Granted {
                request: ask(Device::Cuda(0), 10, false),
                fallback_reason: None
            })
        );
        // Another model does not fit beside it; the refusal names what holds the GPU.
        let err = grant_device(&inventory, &mut granted, "b", ask(Device::Cuda(0), 8, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("8192 MiB does not fit on cuda:0"), "{err}");
        assert!(err.contains("already granted: a 10240 MiB"), "{err}");
        // A new version of the same model shares its budget.
        assert!(
            grant_device(
                &inventory,
                &mut granted,
                "a",
                ask(Device::Cuda(0), 12, false)
            )
            .is_ok()
        );
        assert!(
            grant_device(
                &inventory,
                &mut granted,
                "b",
                ask(Device::TensorRt(0), 4, false)
            )
            .is_ok()
        );
        // A budget larger than the GPU never fits.
        assert!(
            grant_device(
                &inventory,
                &mut BTreeMap::new(),
                "c",
                ask(Device::Cuda(0), 17, false)
            )
            .is_err()
        );
        // GPU 1 does not exist: refused, or the CPU where allowed.
        let err = grant_device(
            &inventory,
            &mut granted,
            "c",
            ask(Device::Cuda(1), 1, false),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no GPU 1 on this machine (1 GPU(s) found)"),
            "{err}"
        );
        assert!(err.contains("allows no CPU fallback"), "{err}");
        assert_eq!(
            grant_device(&inventory, &mut granted, "c", ask(Device::Cuda(1), 1, true)),
            Ok(Granted {
                request: DeviceRequest::default(),
                fallback_reason: Some("no GPU 1 on this machine (1 GPU(s) found)".into())
            })
        );
        // The CPU needs nothing.
        assert_eq!(
            grant_device(&inventory, &mut granted, "d", DeviceRequest::default()),
            Ok(Granted {
                request: DeviceRequest::default(),
                fallback_reason: None
            })
        );
    }
}
