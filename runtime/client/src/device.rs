//! Where a model runs: the device its configuration asks for ([`DeviceRequest`]) and where the
//! worker's engine actually put it ([`Placement`], reported in `Hello` and by `warden status`).
//!
//! The default is the CPU. A GPU is asked for by name (`cuda:N`, `tensorrt:N`), always with a
//! memory budget, which the engine enforces (ONNX Runtime's CUDA arena limit). When the GPU
//! cannot be used — no such device, an ONNX Runtime library without the CUDA provider, a worker
//! built without candle's CUDA backend — the load is **refused** unless the request allows a
//! CPU fallback; a fallback is reported with its reason, never silent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A device a model can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// NVIDIA GPU `N` through CUDA (ONNX Runtime's CUDA execution provider; candle's CUDA
    /// backend).
    Cuda(u32),
    /// NVIDIA GPU `N` through TensorRT (ONNX Runtime's TensorRT provider, with CUDA for the
    /// nodes TensorRT does not take). ONNX models only.
    TensorRt(u32),
}

impl Device {
    /// The GPU ordinal, for a GPU device.
    pub fn gpu(self) -> Option<u32> {
        match self {
            Device::Cpu => None,
            Device::Cuda(n) | Device::TensorRt(n) => Some(n),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::TensorRt(n) => write!(f, "tensorrt:{n}"),
        }
    }
}

/// Why a device name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0:?}: expected \"cpu\", \"cuda:N\" or \"tensorrt:N\" (N: the GPU's ordinal)")]
pub struct DeviceParseError(pub String);

impl FromStr for Device {
    type Err = DeviceParseError;

    fn from_str(s: &str) -> Result<Device, DeviceParseError> {
        let bad = || DeviceParseError(s.to_string());
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        let (kind, ordinal) = s.split_once(':').ok_or_else(bad)?;
        // Digits only: no sign, no spaces, no "0x".
        if ordinal.is_empty() || ordinal.len() > 4 || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = ordinal.parse().map_err(|_| bad())?;
        match kind {
            "cuda" => Ok(Device::Cuda(n)),
            "tensorrt" => Ok(Device::TensorRt(n)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Device, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a model's configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    pub device: Device,
    /// The most GPU memory the engine may take (ONNX Runtime's CUDA arena limit). Required for
    /// a GPU device, meaningless on the CPU.
    pub memory_budget_bytes: Option<u64>,
    /// Run on the CPU when the GPU cannot be used, instead of refusing to load.
    pub cpu_fallback: bool,
}

impl Default for DeviceRequest {
    fn default() -> Self {
        DeviceRequest {
            device: Device::Cpu,
            memory_budget_bytes: None,
            cpu_fallback: false,
        }
    }
}

impl DeviceRequest {
    /// The request as it should be once the GPU turned out unusable for `reason`: on the CPU
    /// when a fallback is allowed, else the refusal.
    pub fn fall_back(&self, reason: String) -> Result<DeviceRequest, DeviceUnavailable> {
        if self.cpu_fallback {
            Ok(DeviceRequest::default())
        } else {
            Err(DeviceUnavailable {
                device: self.device,
                reason,
            })
        }
    }

    /// Checks the request's own consistency.
    pub fn validate(&self) -> Result<(), InvalidDeviceRequest> {
        match (self.device, self.memory_budget_bytes) {
            (Device::Cpu, Some(_)) => Err(InvalidDeviceRequest::BudgetOnCpu),
            (Device::Cpu, None) if self.cpu_fallback => Err(InvalidDeviceRequest::FallbackOnCpu),
            (Device::Cpu, None) => Ok(()),
            (gpu, None) => Err(InvalidDeviceRequest::NoBudget(gpu)),
            (gpu, Some(0)) => Err(InvalidDeviceRequest::ZeroBudget(gpu)),
            (_, Some(_)) => Ok(()),
        }
    }
}

/// A device request that contradicts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDeviceRequest {
    #[error("a memory budget applies to a GPU device only (device is \"cpu\")")]
    BudgetOnCpu,
    #[error("cpu_fallback applies to a GPU device only (device is \"cpu\")")]
    FallbackOnCpu,
    #[error("device {0} needs a GPU memory budget (memory_budget_mib)")]
    NoBudget(Device),
    #[error("device {0}: the GPU memory budget must be above 0")]
    ZeroBudget(Device),
}

/// The GPU a model asked for cannot be used, and its request allows no CPU fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{device} is not usable ({reason}); the model's configuration allows no CPU fallback")]
pub struct DeviceUnavailable {
    pub device: Device,
    pub reason: String,
}

/// Where a loaded model runs, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The device the engine runs the model on.
    pub device: Device,
    /// The engine's own name for how (`"CPUExecutionProvider"`, `"CUDAExecutionProvider"`,
    /// `"TensorrtExecutionProvider"`, `"candle-cpu"`, `"candle-cuda"`).
    pub provider: String,
    /// The GPU memory budget the engine enforces, for a GPU device.
    pub memory_budget_bytes: Option<u64>,
    /// When the configuration asked for a GPU and the model runs on the CPU instead: why.
    pub fallback_reason: Option<String>,
}

impl Placement {
    /// On the CPU, as asked.
    pub fn cpu(provider: &str) -> Placement {
        Placement {
            device: Device::Cpu,
            provider: provider.to_string(),
            memory_budget_bytes: None,
            fallback_reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_junk_is_refused() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:7", Device::Cuda(7)),
            ("tensorrt:1", Device::TensorRt(1)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string(), text);
        }
        for junk in [
            "",
            "gpu",
            "cuda",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "cuda:0x1",
            "CUDA:0",
            "rocm:0",
            "cuda:99999",
            "cpu:0",
        ] {
            assert!(junk.parse::<Device>().is_err(), "{junk:?} accepted");
        }
    }

    #[test]
    fn requests_are_checked_for_consistency() {
        let gpu = |budget, cpu_fallback| DeviceRequest {
            device: Device::Cuda(0),
            memory_budget_bytes: budget,
            cpu_fallback,
        };
        assert!(DeviceRequest::default().validate().is_ok());
        assert!(gpu(Some(1 << 30), false).validate().is_ok());
        assert!(
            gpu(None, false)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("budget")
        );
        assert!(gpu(Some(0), false).validate().is_err());
        let cpu_with_budget = DeviceRequest {
            memory_budget_bytes: Some(1),
            ..DeviceRequest::default()
        };
        assert!(cpu_with_budget.validate().is_err());
    }

    #[test]
    fn fallback_only_when_allowed() {
        let strict = DeviceRequest {
            device: Device::Cuda(0),
            memory_budget_bytes: Some(1 << 30),
            cpu_fallback: false,
        };
        let err = strict.fall_back("no GPU".into()).unwrap_err();
        assert_eq!(err.device, Device::Cuda(0));
        assert!(err.to_string().contains("no GPU"));
        let lenient = DeviceRequest {
            cpu_fallback: true,
            ..strict
        };
        assert_eq!(
            lenient.fall_back("no GPU".into()),
            Ok(DeviceRequest::default())
        );
    }
}
