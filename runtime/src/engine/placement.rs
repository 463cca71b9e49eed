//! Where a model ends up: the GPU it asked for, or the CPU through a fallback the request
//! allows, which is said loudly (an operator who asked for a GPU must learn it is not used).

use warden_runtime_client::device::{Device, DeviceRequest, Placement};

use super::error::EngineError;

/// candle's provider name in a [`Placement`].
const CANDLE_CPU: &str = "candle-cpu";
const CANDLE_CUDA: &str = "candle-cuda";

/// Where candle runs a model: a CUDA device when asked for one and this build has candle's
/// CUDA backend (`candle-cuda`), else the CPU where the request allows it. TensorRT is an ONNX
/// Runtime provider: for candle it is the CUDA device of the same number. The placement names
/// no enforced budget: candle has no allocator limit to hand it to, so the budget is the
/// agent's accounting only.
pub(crate) fn candle_device(
    request: &DeviceRequest,
) -> Result<(candle_core::Device, Placement), EngineError> {
    let Some(ordinal) = request.device.gpu() else {
        return Ok((candle_core::Device::Cpu, Placement::cpu(CANDLE_CPU)));
    };
    let reason = match candle_core::Device::new_cuda(ordinal as usize) {
        Ok(device) => {
            return Ok((
                device,
                Placement {
                    device: Device::Cuda(ordinal),
                    provider: CANDLE_CUDA.to_string(),
                    memory_budget_bytes: None,
                    fallback_reason: None,
                },
            ));
        }
        Err(e) if !cfg!(feature = "candle-cuda") => {
            format!("this warden-runtime was built without candle's CUDA backend ({e})")
        }
        Err(e) => format!("candle cannot use cuda:{ordinal}: {e}"),
    };
    request.fall_back(reason.clone())?;
    Ok((
        candle_core::Device::Cpu,
        fell_back_to_cpu(request, CANDLE_CPU, reason),
    ))
}

/// The placement of a model that asked for `requested` and runs on the CPU because of
/// `reason` (said loudly: an operator who asked for a GPU must learn that it is not used).
pub(crate) fn fell_back_to_cpu(
    requested: &DeviceRequest,
    provider: &str,
    reason: String,
) -> Placement {
    tracing::warn!(
        requested = %requested.device,
        %reason,
        "GPU not usable; running on the CPU because the model's configuration allows a CPU fallback"
    );
    Placement {
        fallback_reason: Some(reason),
        ..Placement::cpu(provider)
    }
}
