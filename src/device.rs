//! Where a model runs: one policy for the CLI and the page. The user asks for `auto`, `gpu`
//! (WebGPU in the browser) or `cpu`; [`choose`] answers with a [`DeviceChoice`]: the device,
//! what to call it, why auto took it, and the activation memory a run may hold there.

use crate::engine::PreparedNetwork;
use crate::models::Network;
use std::future::Future;

#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
pub use crate::engine::{start_gpu, Gpu};

#[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
pub use no_gpu::{start_gpu, Gpu};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The fastest path this machine has (see [`choose`]).
    Auto,
    Gpu,
    Cpu,
}

impl DeviceRequest {
    /// `auto`, `gpu` (or `webgpu`, the page's word for it) or `cpu`.
    pub fn parse(text: &str) -> Result<DeviceRequest, String> {
        match text {
            "auto" => Ok(DeviceRequest::Auto),
            "gpu" | "webgpu" => Ok(DeviceRequest::Gpu),
            "cpu" => Ok(DeviceRequest::Cpu),
            other => Err(format!(
                "unknown device {other:?}: use auto, gpu (webgpu in the browser) or cpu"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Placement {
    Cpu,
    Gpu(Gpu),
}

/// A device a run goes to.
#[derive(Clone, Debug)]
pub struct DeviceChoice {
    pub placement: Placement,
    /// What ran it, in words: the GPU adapter, or the CPU kernels.
    pub adapter: String,
    /// Why `auto` took this device; None when the user asked for it.
    pub reason: Option<String>,
    /// The most activation memory one pass may hold there (a GPU's largest buffer, the
    /// CPU's budget); larger volumes run in slabs.
    pub memory_budget: usize,
}

/// Our CPU kernels, as the adapter's name says it.
const CPU_KERNELS: &str = if cfg!(target_arch = "wasm32") {
    "wasm simd128"
} else {
    "native SIMD"
};

/// Measured in headless Chromium on a 2-core machine: an 11-channel model on a 64³ crop took
/// 190 s on SwiftShader's WebGPU and 6.3 s on the page's CPU path.
const SOFTWARE_ADAPTER_RULE: &str =
    "a software adapter runs these models many times slower than insitu's CPU kernels";

impl DeviceChoice {
    pub fn cpu(memory_budget: usize, reason: Option<String>) -> DeviceChoice {
        DeviceChoice {
            placement: Placement::Cpu,
            adapter: CPU_KERNELS.to_string(),
            reason,
            memory_budget,
        }
    }

    fn gpu(gpu: Gpu, reason: Option<String>) -> DeviceChoice {
        DeviceChoice {
            memory_budget: gpu.max_buffer_bytes,
            adapter: gpu.adapter.clone(),
            placement: Placement::Gpu(gpu),
            reason,
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self.placement, Placement::Gpu(_))
    }

    /// `cpu`, or `webgpu` in the browser and `gpu` natively.
    pub fn backend(&self) -> &'static str {
        match self.placement {
            Placement::Cpu => "cpu",
            Placement::Gpu(_) if cfg!(target_arch = "wasm32") => "webgpu",
            Placement::Gpu(_) => "gpu",
        }
    }

    /// "cpu (native SIMD)", "gpu (NVIDIA ...)": for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.backend(), self.adapter)
    }

    /// `network` prepared for this device (its weights uploaded to a GPU).
    pub fn prepare(&self, network: &Network) -> PreparedNetwork {
        match &self.placement {
            Placement::Cpu => PreparedNetwork::cpu(network),
            #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
            Placement::Gpu(gpu) => PreparedNetwork::gpu(network, &gpu.device),
            #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
            Placement::Gpu(gpu) => match gpu.never {},
        }
    }

    /// burn's device for models built on burn's tensors (LiteMedSAM).
    pub fn burn_device(&self) -> burn::tensor::Device {
        match &self.placement {
            Placement::Cpu => burn::tensor::Device::flex(),
            #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
            Placement::Gpu(gpu) => gpu.device.clone(),
            #[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
            Placement::Gpu(gpu) => match gpu.never {},
        }
    }
}

/// The policy. `gpu` starts the GPU (or hands back one started earlier: burn's runtime starts
/// once per process or worker); it is awaited only when the request can use it.
/// - `cpu`: the CPU, with `cpu_budget`.
/// - `gpu`: the GPU whatever it is, or the error saying why there is none.
/// - `auto`: a hardware GPU; else the CPU, saying why (no GPU, or only a software adapter,
///   which loses to the CPU kernels).
pub async fn choose(
    request: DeviceRequest,
    cpu_budget: usize,
    gpu: impl Future<Output = Result<Gpu, String>>,
) -> Result<DeviceChoice, String> {
    match request {
        DeviceRequest::Cpu => Ok(DeviceChoice::cpu(cpu_budget, None)),
        DeviceRequest::Gpu => Ok(DeviceChoice::gpu(gpu.await?, None)),
        DeviceRequest::Auto => Ok(match gpu.await {
            Ok(gpu) if !gpu.fallback => {
                let why = format!("auto: {} is a hardware GPU", gpu.adapter);
                DeviceChoice::gpu(gpu, Some(why))
            }
            Ok(gpu) => DeviceChoice::cpu(
                cpu_budget,
                Some(format!(
                    "auto: the CPU, because the only GPU is {} ({SOFTWARE_ADAPTER_RULE})",
                    gpu.adapter
                )),
            ),
            Err(e) => DeviceChoice::cpu(cpu_budget, Some(format!("auto: the CPU ({e})"))),
        }),
    }
}

#[cfg(not(any(feature = "gpu", target_arch = "wasm32")))]
mod no_gpu {
    /// Stands for a GPU in builds without one: it cannot be made.
    #[derive(Clone, Debug)]
    pub struct Gpu {
        pub(super) never: std::convert::Infallible,
        pub adapter: String,
        pub fallback: bool,
        pub max_buffer_bytes: usize,
    }

    pub async fn start_gpu() -> Result<Gpu, String> {
        Err("this build has no GPU support (rebuild with `--features gpu`)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gpu() -> impl Future<Output = Result<Gpu, String>> {
        std::future::ready(Err("no adapter".to_string()))
    }

    #[test]
    fn requests_parse_and_unknown_ones_say_what_to_use() {
        assert_eq!(DeviceRequest::parse("webgpu"), Ok(DeviceRequest::Gpu));
        assert_eq!(DeviceRequest::parse("cpu"), Ok(DeviceRequest::Cpu));
        let error = DeviceRequest::parse("tpu").unwrap_err();
        assert!(error.contains("auto, gpu"), "{error}");
    }

    #[test]
    fn auto_without_a_gpu_takes_the_cpu_and_says_why() {
        let choice = pollster::block_on(choose(DeviceRequest::Auto, 123, no_gpu())).unwrap();
        assert!(!choice.is_gpu());
        assert_eq!(choice.memory_budget, 123);
        assert!(choice.reason.unwrap().contains("no adapter"));
    }

    #[test]
    fn asking_for_the_gpu_without_one_is_an_error() {
        let error = pollster::block_on(choose(DeviceRequest::Gpu, 1, no_gpu())).unwrap_err();
        assert_eq!(error, "no adapter");
    }

    #[test]
    fn the_cpu_never_starts_the_gpu() {
        let gpu = async {
            if true {
                panic!("the GPU was started for a CPU run");
            }
            no_gpu().await
        };
        let choice = pollster::block_on(choose(DeviceRequest::Cpu, 5, gpu)).unwrap();
        assert_eq!(choice.backend(), "cpu");
        assert_eq!(choice.reason, None);
    }
}
