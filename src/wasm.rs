//! The browser adapter: a thin wasm-bindgen layer over the core, called from the Web Worker.
//! Everything here converts between JS values and core types; no logic of its own.

use crate::engine::{start_gpu, Gpu, PreparedNetwork};
use crate::metrics::{self, EvalOptions, LabelMapping};
use crate::models::{self, ModelFiles, Registry};
use crate::pipeline::{self, SegmentOptions, Stage};
use crate::volume::{self, nifti, FilesContent, LabelMap};
use js_sys::{Function, Map, Object, Reflect, Uint8Array};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

/// Activation memory the CPU path may hold in wasm's 4 GiB address space (its two
/// activations; the whole 256³ grid of a 5-channel model takes 0.75 GiB).
const CPU_MEMORY_BUDGET: usize = 1 << 30;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The model registry as JSON: `{"models": [...], "samples": [...]}`.
#[wasm_bindgen]
pub fn registry_json() -> String {
    serde_json::to_string(Registry::builtin()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The (name, bytes) pairs of a JS `Map<string, Uint8Array>`, in insertion order.
fn file_list(files: &Map) -> Vec<(String, Vec<u8>)> {
    let mut list = Vec::new();
    files.for_each(&mut |value, key| {
        if let (Some(name), Ok(bytes)) = (key.as_string(), value.dyn_into::<Uint8Array>()) {
            list.push((name, bytes.to_vec()));
        }
    });
    list
}

/// Opens a selection of files (`Map<name, Uint8Array>`): one volume file, a `.mhd`/`.nhdr`
/// header with its data file, or DICOM files (`series` picks one of several series).
/// Resolves `{series: [{uid, description, number, modality, files, dims}], skipped}` when the
/// files hold several series and none was chosen, else `{info: {dims, spacing, orientation,
/// affine, format}, skipped, view?}` where `view` (when `with_view`) is the volume as an
/// uncompressed NIfTI for the viewer. `skipped` lists `[file, why]` of files not used.
#[wasm_bindgen]
pub fn open_volume(
    files: Map,
    series: Option<String>,
    with_view: bool,
) -> Result<JsValue, JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let files = file_list(&files);
    let (summary, view) =
        match volume::read_files(&files, series.as_deref()).map_err(|e| error(&e))? {
            FilesContent::Series(list) => {
                let series: Vec<_> = list
                    .series
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "uid": s.uid, "description": s.description, "number": s.number,
                            "modality": s.modality, "files": s.files.len(), "dims": s.dims,
                        })
                    })
                    .collect();
                (
                    serde_json::json!({"series": series, "skipped": list.skipped}),
                    None,
                )
            }
            FilesContent::Volume {
                volume,
                format,
                skipped,
            } => {
                let g = &volume.geometry;
                let info = serde_json::json!({
                    "dims": g.dims,
                    "spacing": g.spacing,
                    "orientation": g.orientation_code(),
                    "affine": g.affine,
                    "format": format.name(),
                });
                let view = with_view.then(|| nifti::write_volume(&volume, false));
                (serde_json::json!({"info": info, "skipped": skipped}), view)
            }
        };
    let out =
        js_sys::JSON::parse(&summary.to_string()).map_err(|_| JsError::new("summary JSON"))?;
    if let Some(view) = view {
        Reflect::set(
            &out,
            &"view".into(),
            &Uint8Array::from(view.as_slice()).into(),
        )
        .map_err(|_| JsError::new("cannot build the result object"))?;
    }
    Ok(out)
}

/// Metrics of a segmentation against reference labels. `mapping` is a preset key, a mapping
/// JSON, or empty. Resolves `{report: object (see metrics::Report::to_json), csv: string,
/// error_map: Uint8Array (.nii.gz: 1 false positive, 2 false negative)}`.
#[wasm_bindgen]
pub fn evaluate(
    pred: &[u8],
    pred_name: &str,
    reference: &[u8],
    reference_name: &str,
    mapping: &str,
    tolerance_mm: f64,
) -> Result<JsValue, JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let labels = |bytes: &[u8], name: &str| {
        pipeline::read_volume(bytes, name)
            .map_err(|e| error(&e))
            .and_then(|v| LabelMap::from_volume(&v).map_err(|e| error(&format!("{name}: {e}"))))
    };
    let pred = labels(pred, pred_name)?;
    let reference = labels(reference, reference_name)?;
    let mapping = match mapping.trim() {
        "" => None,
        text if text.starts_with('{') => {
            Some(LabelMapping::from_json(text).map_err(|e| error(&e))?)
        }
        key => Some(
            metrics::preset(key)
                .ok_or_else(|| JsError::new(&format!("unknown mapping preset {key}")))?,
        ),
    };
    let options = EvalOptions {
        tolerance_mm,
        labels: None,
    };
    let report = metrics::evaluate(&pred, &reference, mapping.as_ref(), &options)
        .map_err(|e| error(&format!("{pred_name} vs {reference_name}: {e}")))?;
    let errors = metrics::error_map(&pred, &reference, mapping.as_ref()).map_err(|e| error(&e))?;
    let out = Object::new();
    let report_value =
        js_sys::JSON::parse(&report.to_json()).map_err(|_| JsError::new("report JSON"))?;
    Reflect::set(&out, &"report".into(), &report_value)
        .and_then(|_| Reflect::set(&out, &"csv".into(), &report.to_csv().into()))
        .and_then(|_| {
            Reflect::set(
                &out,
                &"error_map".into(),
                &Uint8Array::from(nifti::write_labels(&errors, true).as_slice()).into(),
            )
        })
        .map_err(|_| JsError::new("cannot build the result object"))?;
    Ok(out.into())
}

/// The built-in label mappings as JSON: `[{"key", "mapping": {...}}]`.
#[wasm_bindgen]
pub fn mapping_presets_json() -> String {
    let presets: Vec<serde_json::Value> = metrics::presets()
        .into_iter()
        .map(|(key, m)| serde_json::json!({"key": key, "mapping": serde_json::from_str::<serde_json::Value>(&m.to_json()).unwrap_or_default()}))
        .collect();
    serde_json::Value::Array(presets).to_string()
}

thread_local! {
    /// The GPU, started once per worker (burn's runtime cannot be re-initialised).
    static GPU: RefCell<Option<Gpu>> = const { RefCell::new(None) };
}

async fn gpu() -> Result<Gpu, String> {
    if let Some(gpu) = GPU.with(|g| g.borrow().clone()) {
        return Ok(gpu);
    }
    let gpu = start_gpu()
        .await
        .map_err(|e| format!("WebGPU is not available: {e}"))?;
    GPU.with(|g| *g.borrow_mut() = Some(gpu.clone()));
    Ok(gpu)
}

/// The wasm linear memory's size: its high-water mark, since it never shrinks.
fn wasm_heap_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// Segments the volume in `input` (files as for [`open_volume`], `series` as chosen there;
/// `input_name` names it in errors) with model `model_id` whose files are given by name.
/// `options`: `{backend: "auto"|"webgpu"|"cpu", crop: bool}`. `on_progress(stage, done, total)`.
/// Resolves `{labels: Uint8Array (.nii.gz on the input's grid), labels_like_input: Uint8Array
/// (the same labels in the input's format), like_input_extension, backend, adapter, timings_ms,
/// n_classes, parameters, gflops, peak_tensor_mb, wasm_heap_mb}`.
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)] // one flat call from the worker
pub async fn segment(
    input: Map,
    series: Option<String>,
    input_name: String,
    model_id: String,
    model_files: Map,
    options: JsValue,
    on_progress: Function,
) -> Result<JsValue, JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let report = |stage: &str, done: usize, total: usize| {
        let _ = on_progress.call3(
            &JsValue::NULL,
            &stage.into(),
            &(done as u32).into(),
            &(total as u32).into(),
        );
    };
    let backend = Reflect::get(&options, &"backend".into())
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_else(|| "auto".into());
    let crop = Reflect::get(&options, &"crop".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(true);

    report("read", 0, 1);
    let (volume, format) = match volume::read_files(&file_list(&input), series.as_deref())
        .map_err(|e| error(&format!("{input_name}: {e}")))?
    {
        FilesContent::Volume { volume, format, .. } => (volume, format),
        FilesContent::Series(_) => {
            return Err(JsError::new(&format!(
                "{input_name}: holds several DICOM series; choose one first"
            )))
        }
    };
    let entry = Registry::builtin().get(&model_id).map_err(|e| error(&e))?;
    let model_files: ModelFiles = file_list(&model_files).into_iter().collect();
    for (name, bytes) in &model_files {
        entry.verify(name, bytes).map_err(|e| error(&e))?;
    }
    let network =
        models::load_network(&model_files).map_err(|e| error(&format!("model {model_id}: {e}")))?;

    let cpu = |adapter: String| {
        (
            PreparedNetwork::cpu(&network),
            "cpu",
            adapter,
            CPU_MEMORY_BUDGET,
        )
    };
    let (prepared, backend_name, adapter, budget) = match backend.as_str() {
        "cpu" => cpu("wasm simd128".to_string()),
        wanted => match gpu().await {
            // A software (fallback) adapter is slower than our CPU path; auto skips it.
            Ok(gpu) if wanted == "webgpu" || !gpu.fallback => (
                PreparedNetwork::gpu(&network, &gpu.device),
                "webgpu",
                gpu.adapter.clone(),
                gpu.max_buffer_bytes,
            ),
            Ok(gpu) => cpu(format!("wasm simd128 (skipped {})", gpu.adapter)),
            Err(e) if wanted == "webgpu" => return Err(JsError::new(&e)),
            Err(e) => cpu(format!("wasm simd128 ({e})")),
        },
    };
    let seg_options = SegmentOptions {
        crop_to_foreground: crop,
        max_tensor_bytes: Some(budget),
    };
    let now = js_sys::Date::now;
    let mut progress = |stage: Stage| match stage {
        Stage::Layer { done, total } => report("layer", done, total),
        other => report(other.name(), 0, 1),
    };
    let result = pipeline::segment(
        &volume,
        &input_name,
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
    let like_input = volume::write_labels_like(format, &result.native);
    let timings = serde_wasm_bindgen::to_value(&result.timings).map_err(|e| error(&e))?;
    set("labels", Uint8Array::from(labels.as_slice()).into())
        .and_then(|_| {
            set(
                "labels_like_input",
                Uint8Array::from(like_input.as_slice()).into(),
            )
        })
        .and_then(|_| set("like_input_extension", format.label_extension().into()))
        .and_then(|_| set("backend", backend_name.into()))
        .and_then(|_| set("adapter", adapter.into()))
        .and_then(|_| set("timings_ms", timings))
        .and_then(|_| set("n_classes", (network.n_classes() as u32).into()))
        .and_then(|_| set("parameters", (network.parameter_count() as f64).into()))
        .and_then(|_| set("gflops", (result.flops as f64 / 1e9).into()))
        .and_then(|_| {
            set(
                "peak_tensor_mb",
                (result.peak_tensor_bytes as f64 / 1048576.0).into(),
            )
        })
        .and_then(|_| {
            set(
                "wasm_heap_mb",
                (wasm_heap_bytes() as f64 / 1048576.0).into(),
            )
        })
        .map_err(|_| JsError::new("cannot build the result object"))?;
    Ok(out.into())
}
