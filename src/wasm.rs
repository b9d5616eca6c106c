//! The browser adapter: a thin wasm-bindgen layer over the core, called from the Web Worker.
//! [`Insitu`] is the worker's handle on the core (as burn's web examples own their model): it
//! keeps the opened volume, the loaded models and their copies prepared per device between
//! calls, so a run sends neither the volume nor the weights again. Everything here converts
//! between JS values and core types; the run itself is [`crate::run`], as in the CLI.

use crate::device::{self, DeviceChoice, DeviceRequest, Gpu};
use crate::metrics::{self, EvalOptions, LabelMapping};
use crate::models::{fit, ModelFiles, Registry};
use crate::pipeline::{self, Stage};
use crate::run::{self, DenseModel, DenseRun, Prepared};
use crate::volume::{
    self, dicom, human_bytes, nifti, Format, LabelMap, MemoryNeed, Opened as OpenedFiles, Volume,
};
use js_sys::{Function, Map, Object, Promise, Reflect, Uint8Array};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

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

/// Reads a selection of files (`Map<name, Uint8Array>`) without keeping it (e.g. to check a
/// reference label file): what [`Insitu::open`] resolves, see there.
#[wasm_bindgen]
pub fn inspect_volume(
    files: Map,
    series: Option<String>,
    with_view: bool,
) -> Result<JsValue, JsError> {
    read_selection(&files, series.as_deref(), None, with_view).map(|(summary, _)| summary)
}

/// A series of a listing as the page shows it.
fn series_json(s: &dicom::SeriesInfo) -> serde_json::Value {
    serde_json::json!({
        "uid": s.uid, "description": s.description, "number": s.number,
        "modality": s.modality, "files": s.files.len(), "dims": s.dims,
        "volumes": s.volumes.len(), "problem": s.problem,
    })
}

fn to_js(value: &serde_json::Value) -> Result<JsValue, JsError> {
    js_sys::JSON::parse(&value.to_string()).map_err(|_| JsError::new("summary JSON"))
}

/// The summary of a selection of files, and the volume when they hold one.
fn read_selection(
    files: &Map,
    series: Option<&str>,
    volume: Option<u32>,
    with_view: bool,
) -> Result<(JsValue, Option<(Volume, Format)>), JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let files = file_list(files);
    let opened =
        volume::open_files(&files, series, volume.map(|v| v as usize)).map_err(|e| error(&e))?;
    drop(files);
    let (summary, view, opened) = match opened {
        OpenedFiles::Series(list) => {
            let series: Vec<_> = list.series.iter().map(series_json).collect();
            (
                serde_json::json!({"series": series, "skipped": list.skipped}),
                None,
                None,
            )
        }
        OpenedFiles::Volume(o) => {
            let g = &o.volume.geometry;
            let info = serde_json::json!({
                "dims": g.dims,
                "spacing": g.spacing,
                "orientation": g.orientation_code(),
                "affine": g.affine,
                "format": o.format.name(),
            });
            let view = with_view.then(|| nifti::write_volume(&o.volume, false));
            let summary = serde_json::json!({
                "info": info, "skipped": o.skipped, "volumes": o.volumes, "chosen": o.chosen,
            });
            (summary, view, Some((o.volume, o.format)))
        }
    };
    let out = to_js(&summary)?;
    if let Some(view) = view {
        Reflect::set(
            &out,
            &"view".into(),
            &Uint8Array::from(view.as_slice()).into(),
        )
        .map_err(|_| JsError::new("cannot build the result object"))?;
    }
    Ok((out, opened))
}

/// Reserved in the wasm heap for the code, the models and their prepared copies.
const CODE_AND_MODELS: u64 = 256 << 20;

/// What the page's wasm heap leaves for an input: wasm32's 4 GiB, less a run's activations
/// (the CPU path's [`CPU_MEMORY_BUDGET`]: a WebGPU run that fails is repeated on it) and
/// [`CODE_AND_MODELS`]. The rule: an input fits when [`page_need`] is at most this.
const PAGE_INPUT_LIMIT: u64 =
    volume::WASM32_MEMORY_LIMIT - CPU_MEMORY_BUDGET as u64 - CODE_AND_MODELS;

/// What opening an input holds in the page's wasm heap: the files, the float32 volume and a
/// label map ([`MemoryNeed::total_bytes`]), plus the float32 copy `open(with_view)` writes for
/// the viewer ([`nifti::write_volume`]: 4 bytes a voxel, as the volume).
fn page_need(need: &MemoryNeed) -> u64 {
    need.total_bytes.saturating_add(need.volume_bytes)
}

/// What to do with an input too big for the page.
const WHAT_TO_DO: &str = "Crop or downsample it first (insitu convert --crop \
    i0,j0,k0,ni,nj,nk --output smaller.nii.gz INPUT), or segment it with the insitu command-line \
    tool, which has no such limit.";

/// `{fits, need_bytes, limit_bytes, describe, message}` for an input called `name`; `message`
/// (when it does not fit) says what it needs, the limit, and what to do.
fn need_json(name: &str, need: &MemoryNeed) -> serde_json::Value {
    let bytes = page_need(need);
    let fits = bytes <= PAGE_INPUT_LIMIT;
    let message = (!fits).then(|| {
        format!(
            "{name} ({} on disk) is too big to open in this page: it needs about {} of the page's \
             memory ({}, and {} more for the viewer's copy), more than the {} the page can give a \
             volume (a browser's WebAssembly memory is at most {}; {} of it is kept for a run and \
             {} for the code and models). {WHAT_TO_DO}",
            human_bytes(need.file_bytes),
            human_bytes(bytes),
            need.describe(),
            human_bytes(need.volume_bytes),
            human_bytes(PAGE_INPUT_LIMIT),
            human_bytes(volume::WASM32_MEMORY_LIMIT),
            human_bytes(CPU_MEMORY_BUDGET as u64),
            human_bytes(CODE_AND_MODELS),
        )
    });
    serde_json::json!({
        "fits": fits, "need_bytes": bytes, "limit_bytes": PAGE_INPUT_LIMIT,
        "describe": need.describe(), "message": message,
    })
}

/// Whether a file fits the page's memory, from its first bytes (`head`, e.g. the first
/// [`dicom::HEAD_BYTES`]) and its size: `{fits, need_bytes, limit_bytes, describe, message}`,
/// or `null` for a format (or a header) the core cannot size without reading the file.
#[wasm_bindgen]
pub fn memory_need(name: &str, head: &[u8], size: f64) -> Result<JsValue, JsError> {
    match volume::memory_need(Some(name), head, size as u64) {
        Ok(need) => to_js(&need_json(name, &need)),
        // A grid past what insitu reads at all (nifti::MAX_VOXELS, ...).
        Err(e @ volume::VolumeError::TooLarge(_)) => to_js(&serde_json::json!({
            "fits": false, "limit_bytes": PAGE_INPUT_LIMIT,
            "message": format!(
                "{name} ({} on disk) is too big to open in this page ({e}; the page can give a \
                 volume at most {}). {WHAT_TO_DO}",
                human_bytes(size as u64),
                human_bytes(PAGE_INPUT_LIMIT),
            ),
        })),
        Err(_) => Ok(JsValue::NULL),
    }
}

/// Lists the DICOM series among files from their first bytes: `heads` is `[[name,
/// Uint8Array (the first bytes, or all), size]]`. Resolves `{series: [{uid, description,
/// number, modality, files, dims, volumes, problem, file_names, need: {fits, ...}}], skipped,
/// need_more}`; `need_more` names the files whose header goes on past the bytes given (send
/// them whole, with the others' heads again).
#[wasm_bindgen]
pub fn list_series_heads(name: &str, heads: js_sys::Array) -> Result<JsValue, JsError> {
    let heads: Vec<dicom::FileHead> = heads
        .iter()
        .filter_map(|entry| {
            let entry: js_sys::Array = entry.dyn_into().ok()?;
            Some(dicom::FileHead {
                name: entry.get(0).as_string()?,
                bytes: entry.get(1).dyn_into::<Uint8Array>().ok()?.to_vec(),
                size: entry.get(2).as_f64()? as u64,
            })
        })
        .collect();
    let sizes: HashMap<&str, u64> = heads.iter().map(|h| (h.name.as_str(), h.size)).collect();
    let listing = dicom::list_series_heads(&heads).map_err(|e| JsError::new(&e.to_string()))?;
    let series: Vec<_> = listing
        .list
        .series
        .iter()
        .map(|s| {
            let bytes = s
                .files
                .iter()
                .map(|f| sizes.get(f.as_str()).copied().unwrap_or(0))
                .sum();
            let what = if s.description.is_empty() {
                name.to_string()
            } else {
                s.description.clone()
            };
            let mut json = series_json(s);
            json["file_names"] = serde_json::json!(s.files);
            json["need"] = need_json(&what, &volume::memory_need_of_series(s, bytes));
            json
        })
        .collect();
    to_js(&serde_json::json!({
        "series": series, "skipped": listing.list.skipped, "need_more": listing.need_more,
    }))
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

/// Activation memory the CPU path may hold in wasm's 4 GiB address space (its two
/// activations; the whole 256³ grid of a 5-channel model takes 0.75 GiB).
const CPU_MEMORY_BUDGET: usize = 1 << 30;

/// The wasm linear memory's size: its high-water mark, since it never shrinks.
fn wasm_heap_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// The worker's handle on the core.
#[wasm_bindgen]
pub struct Insitu {
    state: Rc<RefCell<Kept>>,
}

/// What the handle keeps between calls.
#[derive(Default)]
struct Kept {
    volume: Option<Rc<Opened>>,
    models: HashMap<String, Rc<DenseModel>>,
    /// By model id and backend ("cpu", "webgpu").
    prepared: HashMap<(String, &'static str), Rc<Prepared>>,
    /// Started once per worker (burn's runtime cannot be re-initialised), error included.
    gpu: Option<Result<Gpu, String>>,
}

struct Opened {
    volume: Volume,
    format: Format,
    name: String,
}

impl Default for Insitu {
    fn default() -> Self {
        Insitu::new()
    }
}

#[wasm_bindgen]
impl Insitu {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Insitu {
        Insitu {
            state: Rc::default(),
        }
    }

    /// Opens a selection of files (`Map<name, Uint8Array>`; `name` names it in messages): one
    /// volume file, a `.mhd`/`.nhdr` header with its data file, or DICOM files (`series` picks
    /// one of several series; `volume`, from 0, one of the 3-D volumes of a 4-D input, default
    /// the first). Resolves `{series: [{uid, description, number, modality, files, dims,
    /// volumes, problem}], skipped}` when the files hold several series and none was chosen,
    /// else keeps the volume for [`segment`](Self::segment) and resolves `{info: {dims,
    /// spacing, orientation, affine, format}, skipped, volumes: [VolumeChoice], chosen, view?}`
    /// (`volumes` lists every 3-D volume of the input, one for a 3-D input; `chosen` is the one
    /// kept) where `view` (when `with_view`) is the volume as an uncompressed NIfTI for the
    /// viewer. `skipped` lists `[file, why]` of files not used. A
    /// selection that fails leaves the kept volume as it was.
    pub fn open(
        &self,
        name: String,
        files: Map,
        series: Option<String>,
        volume: Option<u32>,
        with_view: bool,
    ) -> Result<JsValue, JsError> {
        let (summary, opened) = read_selection(&files, series.as_deref(), volume, with_view)?;
        if let Some((volume, format)) = opened {
            self.state.borrow_mut().volume = Some(Rc::new(Opened {
                volume,
                format,
                name,
            }));
        }
        Ok(summary)
    }

    /// Where the kept volume does not fit what model `id`'s card accepts, in plain words
    /// (empty when it fits, or when no volume is open); the user may run it regardless.
    pub fn fit_warnings(&self, id: &str) -> Result<Vec<String>, JsError> {
        let entry = Registry::builtin()
            .get(id)
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(match &self.state.borrow().volume {
            Some(opened) => fit::warnings(entry, &opened.volume, &opened.name),
            None => Vec::new(),
        })
    }

    /// Whether model `id` is loaded (its files need not be sent again).
    pub fn has_model(&self, id: &str) -> bool {
        self.state.borrow().models.contains_key(id)
    }

    /// Checks model `id`'s files (`Map<name, Uint8Array>`) against the registry and loads it.
    pub fn add_model(&self, id: &str, files: Map) -> Result<(), JsError> {
        let files: ModelFiles = file_list(&files).into_iter().collect();
        let model = DenseModel::load(id, &files).map_err(|e| JsError::new(&e.to_string()))?;
        let mut kept = self.state.borrow_mut();
        kept.prepared.retain(|(model_id, _), _| model_id != id);
        kept.models.insert(id.to_string(), Rc::new(model));
        Ok(())
    }

    /// Segments the kept volume with loaded model `model_id`. `options`: `{backend:
    /// "auto"|"webgpu"|"cpu", crop: bool}`; `on_progress(stage, done, total)`. Resolves
    /// `{labels: Uint8Array (.nii.gz on the input's grid), labels_like_input: Uint8Array (the
    /// same labels in the input's format), like_input_extension, backend, adapter, reason
    /// (why auto chose the device, or null), fallback (why the run moved to the CPU, or null),
    /// timings_ms, n_classes, parameters, gflops, peak_tensor_mb, wasm_heap_mb}`.
    pub fn segment(&self, model_id: String, options: JsValue, on_progress: Function) -> Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            segment_kept(&state, &model_id, &options, &on_progress)
                .await
                .map_err(|e| JsError::new(&e).into())
        })
    }
}

/// The GPU of this worker, started on first use.
async fn worker_gpu(state: &Rc<RefCell<Kept>>) -> Result<Gpu, String> {
    if let Some(gpu) = state.borrow().gpu.clone() {
        return gpu;
    }
    let gpu = device::start_gpu()
        .await
        .map_err(|e| format!("WebGPU is not available: {e}"));
    state.borrow_mut().gpu = Some(gpu.clone());
    gpu
}

async fn segment_kept(
    state: &Rc<RefCell<Kept>>,
    model_id: &str,
    options: &JsValue,
    on_progress: &Function,
) -> Result<JsValue, String> {
    let option = |key: &str| Reflect::get(options, &key.into()).ok();
    let backend = option("backend")
        .and_then(|v| v.as_string())
        .unwrap_or_else(|| "auto".into());
    let crop = option("crop").and_then(|v| v.as_bool()).unwrap_or(true);
    let request = DeviceRequest::parse(&backend)?;

    let (opened, model) = {
        let kept = state.borrow();
        let opened = kept
            .volume
            .clone()
            .ok_or("no volume is open: open one first")?;
        let model = kept.models.get(model_id).cloned().ok_or_else(|| {
            format!("model {model_id} is not loaded: send its files first (add_model)")
        })?;
        (opened, model)
    };
    let choice: DeviceChoice =
        device::choose(request, CPU_MEMORY_BUDGET, worker_gpu(state)).await?;
    let key = (model_id.to_string(), choice.backend());
    let cached = state.borrow().prepared.get(&key).cloned();
    let prepared = match cached {
        // The device's words (auto's reason) belong to this call, the weights to the cache.
        Some(p) => p,
        None => {
            let p = Rc::new(Prepared::new(&model, choice.clone()));
            state.borrow_mut().prepared.insert(key, p.clone());
            p
        }
    };

    let report = |stage: &str, done: usize, total: usize| {
        let _ = on_progress.call3(
            &JsValue::NULL,
            &stage.into(),
            &(done as u32).into(),
            &(total as u32).into(),
        );
    };
    let mut progress = |stage: Stage| match stage {
        Stage::Layer { done, total } => report("layer", done, total),
        other => report(other.name(), 0, 1),
    };
    let run = run::segment(
        &model,
        &prepared,
        CPU_MEMORY_BUDGET,
        &opened.volume,
        &opened.name,
        crop,
        &js_sys::Date::now,
        &mut progress,
    )
    .await
    .map_err(|e| e.to_string())?;
    run_result(&run, &opened, &model, choice.reason.as_deref())
        .map_err(|_| "cannot build the result object".to_string())
}

/// The JS object [`Insitu::segment`] resolves.
fn run_result(
    run: &DenseRun,
    opened: &Opened,
    model: &DenseModel,
    reason: Option<&str>,
) -> Result<JsValue, JsValue> {
    let result = &run.segmentation;
    let out = Object::new();
    let set = |key: &str, value: JsValue| Reflect::set(&out, &key.into(), &value).map(|_| ());
    let bytes = |b: Vec<u8>| JsValue::from(Uint8Array::from(b.as_slice()));
    let mib = |n: usize| JsValue::from(n as f64 / 1048576.0);
    set("labels", bytes(nifti::write_labels(&result.native, true)))?;
    let like_input = volume::write_labels_like(opened.format, &result.native);
    set("labels_like_input", bytes(like_input))?;
    set(
        "like_input_extension",
        opened.format.label_extension().into(),
    )?;
    set("backend", run.device.backend().into())?;
    set("adapter", run.device.adapter.clone().into())?;
    set("reason", reason.map_or(JsValue::NULL, JsValue::from))?;
    set(
        "fallback",
        run.fallback.as_deref().map_or(JsValue::NULL, JsValue::from),
    )?;
    set("timings_ms", serde_wasm_bindgen::to_value(&result.timings)?)?;
    set("n_classes", (model.network.n_classes() as u32).into())?;
    set(
        "parameters",
        (model.network.parameter_count() as f64).into(),
    )?;
    set("gflops", (result.flops as f64 / 1e9).into())?;
    set("peak_tensor_mb", mib(result.peak_tensor_bytes))?;
    set("wasm_heap_mb", mib(wasm_heap_bytes()))?;
    Ok(out.into())
}
