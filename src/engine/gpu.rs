//! The GPU device: burn's wgpu runtime on WebGPU in the browser, on Vulkan, Metal or DX12
//! natively (cargo feature `gpu`), with what the engine must know of the adapter.

use burn::tensor::wgpu::wgpu::DeviceType;
use burn::tensor::Device;

/// A started GPU device.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub device: Device,
    /// The adapter's name, with " (fallback adapter)" for a software one.
    pub adapter: String,
    /// A software adapter (SwiftShader, lavapipe): usually slower than the CPU path.
    pub fallback: bool,
    /// The largest buffer a kernel can bind: the budget for one activation tensor, so that
    /// the engine splits larger volumes into slabs instead of failing to allocate.
    pub max_buffer_bytes: usize,
}

/// Starts burn's wgpu runtime on the default adapter. Call once per process (or worker) and
/// keep the result: the runtime cannot be initialised twice.
pub async fn start_gpu() -> Result<Gpu, String> {
    let options = Device::wgpu_options();
    #[cfg(target_arch = "wasm32")]
    let options = options.graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu);
    let (device, setup) = options
        .init_with_setup_async()
        .await
        .map_err(|e| format!("no usable GPU adapter: {e}"))?;
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    let fallback = info.device_type == DeviceType::Cpu;
    // Browsers hide the adapter's name.
    let name = match info.name.as_str() {
        "" if cfg!(target_arch = "wasm32") => "WebGPU adapter",
        "" => "wgpu adapter",
        name => name,
    };
    Ok(Gpu {
        device,
        adapter: format!(
            "{name}{}",
            if fallback { " (fallback adapter)" } else { "" }
        ),
        fallback,
        max_buffer_bytes: limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size) as usize,
    })
}
