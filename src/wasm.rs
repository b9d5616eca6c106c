//! The browser adapter: a thin wasm-bindgen layer over the core, called from the Web Worker.
//! Everything here converts between JS values and core types; no logic of its own.

use crate::engine::PreparedNetwork;
use crate::models::{self, ModelFiles, Registry};
use crate::pipeline::{self, SegmentOptions, Stage};
use crate::volume::nifti;
use burn::tensor::Device;
use js_sys::{Function, Map, Object, Reflect, Uint8Array};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

/// Largest single tensor the CPU path allocates in wasm's 4 GiB address space.
const CPU_TENSOR_BUDGET: usize = 512 << 20;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The model registry as JSON: `{"models": [...], "samples": [...]}`.
#[wasm_bindgen]
pub fn registry_json() -> String {
    serde_json::to_string(Registry::builtin()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Geometry of a volume file, or an error naming the file and the problem.
#[wasm_bindgen]
pub fn inspect_volume(bytes: &[u8], file_name: &str) -> Result<JsValue, JsError> {
    let volume = pipeline::read_volume(bytes, file_name).map_err(|e| JsError::new(&e.to_string()))?;
    let g = &volume.geometry;
    let info = serde_json::json!({
        "dims": g.dims,
        "spacing": g.spacing,
        "orientation": g.orientation_code(),
        "affine": g.affine,
    });
    serde_wasm_bindgen::to_value(&info).map_err(|e| JsError::new(&e.to_string()))
}

/// The GPU device, initialised once per worker (burn's runtime cannot be re-initialised).
struct Gpu {
    device: Device,
    adapter: String,
    fallback: bool,
    max_buffer_bytes: usize,
}

thread_local! {
    static GPU: RefCell<Option<std::rc::Rc<Gpu>>> = const { RefCell::new(None) };
}

async fn gpu() -> Result<std::rc::Rc<Gpu>, String> {
    if let Some(gpu) = GPU.with(|g| g.borrow().clone()) {
        return Ok(gpu);
    }
    let (device, setup) = Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_with_setup_async()
        .await
        .map_err(|e| format!("WebGPU is not available: {e}"))?;
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    let fallback = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
    let gpu = std::rc::Rc::new(Gpu {
        device,
        adapter: format!(
            "{}{}",
            if info.name.is_empty() { "WebGPU adapter" } else { info.name.as_str() },
            if fallback { " (fallback adapter)" } else { "" }
        ),
        fallback,
        max_buffer_bytes: limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) as usize,
    });
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    Ok(gpu)
}

/// Segments `input` with model `model_id` whose files are given by name.
/// `options`: `{backend: "auto"|"webgpu"|"cpu", crop: bool}`. `on_progress(stage, done, total)`.
/// Resolves `{labels: Uint8Array (.nii.gz on the input's grid), backend, adapter, timings_ms, n_classes}`.
#[wasm_bindgen]
pub async fn segment(
    input: Uint8Array,
    file_name: String,
    model_id: String,
    files: Map,
    options: JsValue,
    on_progress: Function,
) -> Result<JsValue, JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let report = |stage: &str, done: usize, total: usize| {
        let _ = on_progress.call3(&JsValue::NULL, &stage.into(), &(done as u32).into(), &(total as u32).into());
    };
    let backend = Reflect::get(&options, &"backend".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_else(|| "auto".into());
    let crop = Reflect::get(&options, &"crop".into()).ok().and_then(|v| v.as_bool()).unwrap_or(true);

    report("read", 0, 1);
    let volume = pipeline::read_volume(&input.to_vec(), &file_name).map_err(|e| error(&e))?;
    let entry = Registry::builtin().get(&model_id).map_err(|e| error(&e))?;
    let mut model_files = ModelFiles::new();
    files.for_each(&mut |value, key| {
        if let (Some(name), Ok(bytes)) = (key.as_string(), value.dyn_into::<Uint8Array>()) {
            model_files.insert(name, bytes.to_vec());
        }
    });
    for (name, bytes) in &model_files {
        entry.verify(name, bytes).map_err(|e| error(&e))?;
    }
    let network = models::load_network(&model_files).map_err(|e| error(&format!("model {model_id}: {e}")))?;

    let (device, backend_name, adapter, budget) = match backend.as_str() {
        "cpu" => (Device::flex(), "cpu", "wasm simd128".to_string(), CPU_TENSOR_BUDGET),
        wanted => match gpu().await {
            // A software (fallback) adapter is slower than our CPU path; auto skips it.
            Ok(gpu) if wanted == "webgpu" || !gpu.fallback => {
                (gpu.device.clone(), "webgpu", gpu.adapter.clone(), gpu.max_buffer_bytes)
            }
            Ok(gpu) => (Device::flex(), "cpu", format!("wasm simd128 (skipped {})", gpu.adapter), CPU_TENSOR_BUDGET),
            Err(e) if wanted == "webgpu" => return Err(JsError::new(&e)),
            Err(e) => (Device::flex(), "cpu", format!("wasm simd128 ({e})"), CPU_TENSOR_BUDGET),
        },
    };
    let prepared = PreparedNetwork::new(&network, &device);
    let seg_options = SegmentOptions { crop_to_foreground: crop, max_tensor_bytes: Some(budget) };
    let now = js_sys::Date::now;
    let mut progress = |stage: Stage| match stage {
        Stage::Layer { done, total } => report("layer", done, total),
        other => report(other.name(), 0, 1),
    };
    let result = pipeline::segment(
        &volume,
        &file_name,
        entry.input.normalization,
        &prepared,
        &seg_options,
        &now,
        &mut progress,
    )
    .await
    .map_err(|e| error(&e))?;

    let out = Object::new();
    let set = |key: &str, value: JsValue| Reflect::set(&out, &key.into(), &value).map(|_| ());
    let labels = nifti::write_labels(&result.native, true);
    let timings = serde_wasm_bindgen::to_value(&result.timings).map_err(|e| error(&e))?;
    set("labels", Uint8Array::from(labels.as_slice()).into())
        .and_then(|_| set("backend", backend_name.into()))
        .and_then(|_| set("adapter", adapter.into()))
        .and_then(|_| set("timings_ms", timings))
        .and_then(|_| set("n_classes", (network.n_classes() as u32).into()))
        .map_err(|_| JsError::new("cannot build the result object"))?;
    Ok(out.into())
}
