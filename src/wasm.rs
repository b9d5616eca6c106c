//! The browser adapter: a thin wasm-bindgen layer over the core, called from the Web Worker.
//! [`Insitu`] is the worker's handle on the core (as burn's web examples own their model): it
//! keeps the opened volume, the loaded models and their copies prepared per device between
//! calls, so a run sends neither the volume nor the weights again. Everything here converts
//! between JS values and core types; the run itself is [`crate::run`], as in the CLI.

use crate::device::{self, DeviceChoice, DeviceRequest, Gpu};
use crate::litemedsam::pipeline::{
    self as sam, BoxProtocol, CtWindow, Modality, Prompt, PromptCache, PromptOptions,
};
use crate::litemedsam::preprocess::{propagation_order, volume_to_u8, Intensity};
use crate::litemedsam::LiteMedSam;
use crate::metrics::{self, EvalOptions, LabelMapping};
use crate::models::{fit, ModelFiles, Registry};
use crate::pipeline::{self, Stage};
use crate::run::{self, DenseModel, DenseRun, Model, Prepared};
use crate::volume::{
    self, dicom, human_bytes, nifti, Format, LabelMap, MemoryNeed, Opened as OpenedFiles, Volume,
};
use js_sys::{Function, Map, Object, Promise, Reflect, Uint16Array, Uint8Array};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
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
    /// Counts the volumes opened: a prompt run's cache is kept only for the volume it ran on.
    volume_serial: u64,
    models: HashMap<String, Rc<Model>>,
    /// Dense models by model id and backend ("cpu", "webgpu").
    prepared: HashMap<(String, &'static str), Rc<Prepared>>,
    /// Promptable models by model id and backend, each with its cache for the kept volume.
    promptable: HashMap<(String, &'static str), Rc<PromptableOnDevice>>,
    /// The labels of the last prompt run, for [`Insitu::slice_image`].
    prompt_labels: Option<Rc<LabelMap>>,
    /// The kept volume as uint8 for the slice view, and the setting it was made with.
    view_u8: Option<(Intensity, Arc<[u8]>)>,
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
            let mut kept = self.state.borrow_mut();
            kept.volume = Some(Rc::new(Opened {
                volume,
                format,
                name,
            }));
            kept.volume_serial += 1;
            kept.prompt_labels = None;
            kept.view_u8 = None;
            for on_device in kept.promptable.values() {
                on_device.cache.borrow_mut().take();
            }
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

    /// Checks model `id`'s files (`Map<name, Uint8Array>`) against the registry and loads it
    /// (a dense model for [`segment`](Self::segment), a promptable one for
    /// [`prompt`](Self::prompt)).
    pub fn add_model(&self, id: &str, files: Map) -> Result<(), JsError> {
        let files: ModelFiles = file_list(&files).into_iter().collect();
        let model = Model::load(id, files).map_err(|e| JsError::new(&e.to_string()))?;
        let mut kept = self.state.borrow_mut();
        kept.prepared.retain(|(model_id, _), _| model_id != id);
        kept.promptable.retain(|(model_id, _), _| model_id != id);
        kept.models.insert(id.to_string(), Rc::new(model));
        Ok(())
    }

    /// How a promptable model would read the kept volume's intensities unless told:
    /// `{modality: "CT"|"MR", why}` (CT when the minimum is below -500).
    pub fn guess_modality(&self) -> Result<JsValue, JsError> {
        let kept = self.state.borrow();
        let opened = kept
            .volume
            .as_ref()
            .ok_or_else(|| JsError::new("no volume is open: open one first"))?;
        let (modality, why) = sam::guess_modality(&opened.volume);
        to_js(&serde_json::json!({"modality": modality.name(), "why": why}))
    }

    /// Slice `k` of the kept volume as a promptable model sees it before resizing (the
    /// intensities of `modality` "CT"|"MR", or the guess when empty, with the CT window
    /// `level`/`width`): `{width, height, image: Uint8Array (rows j, columns i), labels:
    /// Uint16Array | null (the last prompt run's labels on this slice)}`.
    pub fn slice_image(
        &self,
        k: u32,
        modality: Option<String>,
        level: f64,
        width: f64,
    ) -> Result<JsValue, JsError> {
        let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
        let mut kept = self.state.borrow_mut();
        let opened = kept
            .volume
            .clone()
            .ok_or_else(|| JsError::new("no volume is open: open one first"))?;
        let [ni, nj, nk] = opened.volume.geometry.dims;
        let k = k as usize;
        if k >= nk {
            return Err(JsError::new(&format!(
                "slice {k} is out of range (the volume has slices 0..={})",
                nk.saturating_sub(1)
            )));
        }
        let options = prompt_options(modality.as_deref(), level, width).map_err(|e| error(&e))?;
        let (intensity, _, _) = options.intensity(&opened.volume);
        let volume_u8 = match &kept.view_u8 {
            Some((had, v)) if *had == intensity => v.clone(),
            _ => {
                let v: Arc<[u8]> = volume_to_u8(&opened.volume.data, intensity).into();
                kept.view_u8 = Some((intensity, v.clone()));
                v
            }
        };
        let n = ni * nj;
        let out = Object::new();
        let set = |key: &str, value: JsValue| {
            Reflect::set(&out, &key.into(), &value)
                .map(|_| ())
                .map_err(|_| JsError::new("cannot build the result object"))
        };
        set("width", (ni as u32).into())?;
        set("height", (nj as u32).into())?;
        set(
            "image",
            Uint8Array::from(&volume_u8[k * n..(k + 1) * n]).into(),
        )?;
        let labels = kept
            .prompt_labels
            .as_ref()
            .filter(|l| l.geometry.dims == opened.volume.geometry.dims)
            .map_or(JsValue::NULL, |l| {
                Uint16Array::from(&l.labels[k * n..(k + 1) * n]).into()
            });
        set("labels", labels)?;
        Ok(out.into())
    }

    /// Runs box prompts on the kept volume with loaded promptable model `model_id`.
    /// `request`: `{backend: "auto"|"webgpu"|"cpu", modality: "CT"|"MR"|null (guessed), window:
    /// [level, width] (CT), prompts: [{box: [i0, j0, i1, j1], k, label} | {box3d: [i0, j0, k0,
    /// i1, j1, k1], label}]}` (inclusive voxel indices, as `insitu prompt`); `on_progress(
    /// "slice", done, total)` per decoded slice. Slices encoded and boxes decoded are kept for
    /// the next call on the same volume (on the same device): sending the same prompts with
    /// one box more costs that box. Resolves `{labels: Uint8Array (.nii.gz on the input's
    /// grid), labels_like_input, like_input_extension, backend, adapter, reason, modality,
    /// modality_guess (why, or null when given), stats: {intensity_ms, encoder_ms, decoder_ms,
    /// encoded_slices, decoded_boxes, slices: [{prompt, k, encoder_ms, decoder_ms,
    /// mask_pixels}]}, embedded_slices (the cache's), parameters, gflops (this call's),
    /// wasm_heap_mb}`.
    pub fn prompt(&self, model_id: String, request: JsValue, on_progress: Function) -> Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            prompt_kept(&state, &model_id, request, &on_progress)
                .await
                .map_err(|e| JsError::new(&e).into())
        })
    }

    /// Segments the kept volume with loaded model `model_id`. `options`: `{backend:
    /// "auto"|"webgpu"|"cpu", crop: bool}`; `on_progress(stage, done, total)`. Resolves
    /// `{labels: Uint8Array (.nii.gz on the input's grid), labels_like_input: Uint8Array (the
    /// same labels in the input's format), like_input_extension, backend, adapter, reason
    /// (why auto chose the device, or null), fallback (why the run moved to the CPU, or null),
    /// timings_ms, n_classes, parameters, gflops, peak_tensor_mb, wasm_heap_mb}`.
    pub fn segment(&self, model_id: String, options: JsValue, on_progress: Function) -> Promise {
        // (dense models; promptable ones run through `prompt`)
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
        let model = loaded(&kept, model_id)?;
        (opened, model)
    };
    let Model::Dense(model) = &*model else {
        return Err(format!(
            "{model_id} is promptable: it segments what a box points at (prompt)"
        ));
    };
    let choice: DeviceChoice =
        device::choose(request, CPU_MEMORY_BUDGET, worker_gpu(state)).await?;
    let key = (model_id.to_string(), choice.backend());
    let cached = state.borrow().prepared.get(&key).cloned();
    let prepared = match cached {
        // The device's words (auto's reason) belong to this call, the weights to the cache.
        Some(p) => p,
        None => {
            let p = Rc::new(Prepared::new(model, choice.clone()));
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
        model,
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
    run_result(&run, &opened, model, choice.reason.as_deref())
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

fn loaded(kept: &Kept, model_id: &str) -> Result<Rc<Model>, String> {
    kept.models
        .get(model_id)
        .cloned()
        .ok_or_else(|| format!("model {model_id} is not loaded: send its files first (add_model)"))
}

/// A promptable model built on one device, and its cache for the kept volume (taken out
/// while a run uses it).
struct PromptableOnDevice {
    model: LiteMedSam,
    device: DeviceChoice,
    cache: RefCell<Option<PromptCache>>,
}

/// What [`Insitu::prompt`] takes.
#[derive(Deserialize)]
struct PromptRequest {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    modality: Option<String>,
    #[serde(default)]
    window: Option<[f64; 2]>,
    prompts: Vec<PromptJson>,
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum PromptJson {
    Box2d {
        #[serde(rename = "box")]
        ij: [usize; 4],
        k: usize,
        label: u16,
    },
    Box3d {
        box3d: [usize; 6],
        label: u16,
    },
}

impl PromptJson {
    fn prompt(&self) -> Prompt {
        match *self {
            PromptJson::Box2d { ij, k, label } => Prompt::Box2d { ij, k, label },
            PromptJson::Box3d { box3d, label } => Prompt::Box3d { ijk: box3d, label },
        }
    }
}

/// `modality` "CT"|"MR" (any case), or None / "" for the guess; the CT window.
fn prompt_options(modality: Option<&str>, level: f64, width: f64) -> Result<PromptOptions, String> {
    let modality = match modality.map(str::trim) {
        None | Some("") => None,
        Some(m) if m.eq_ignore_ascii_case("ct") => Some(Modality::Ct),
        Some(m) if m.eq_ignore_ascii_case("mr") => Some(Modality::Mr),
        Some(m) => return Err(format!("unknown modality {m:?}: CT or MR")),
    };
    Ok(PromptOptions {
        modality,
        ct_window: CtWindow { level, width },
    })
}

/// The prompts `protocol` ("per-slice" or "3d") makes from reference labels (`bytes`, a
/// label file called `name`, on the kept volume's grid): `[{box, k, label} | {box3d,
/// label}]` with each label's own value, for [`Insitu::prompt`].
#[wasm_bindgen]
pub fn reference_prompts(bytes: &[u8], name: &str, protocol: &str) -> Result<JsValue, JsError> {
    let error = |e: &dyn std::fmt::Display| JsError::new(&e.to_string());
    let protocol = match protocol {
        "per-slice" => BoxProtocol::PerSlice,
        "3d" => BoxProtocol::Box3d,
        other => {
            return Err(JsError::new(&format!(
                "unknown box protocol {other:?}: per-slice or 3d"
            )))
        }
    };
    let volume = pipeline::read_volume(bytes, name).map_err(|e| error(&e))?;
    let reference = LabelMap::from_volume(&volume).map_err(|e| error(&format!("{name}: {e}")))?;
    let prompts: Vec<serde_json::Value> = sam::boxes_from_reference(&reference, protocol)
        .into_iter()
        .map(|p| match p {
            Prompt::Box2d { ij, k, label } => {
                serde_json::json!({"box": ij, "k": k, "label": label})
            }
            Prompt::Box3d { ijk, label } => serde_json::json!({"box3d": ijk, "label": label}),
        })
        .collect();
    to_js(&serde_json::json!({"prompts": prompts, "protocol": protocol.name()}))
}

async fn prompt_kept(
    state: &Rc<RefCell<Kept>>,
    model_id: &str,
    request: JsValue,
    on_progress: &Function,
) -> Result<JsValue, String> {
    let request: PromptRequest =
        serde_wasm_bindgen::from_value(request).map_err(|e| format!("prompt request: {e}"))?;
    let prompts: Vec<Prompt> = request.prompts.iter().map(PromptJson::prompt).collect();
    let [level, width] = request
        .window
        .unwrap_or([sam::DEFAULT_CT_WINDOW.level, sam::DEFAULT_CT_WINDOW.width]);
    let options = prompt_options(request.modality.as_deref(), level, width)?;
    let device_request = DeviceRequest::parse(request.backend.as_deref().unwrap_or("auto"))?;
    let (opened, model, serial) = {
        let kept = state.borrow();
        let opened = kept
            .volume
            .clone()
            .ok_or("no volume is open: open one first")?;
        (opened, loaded(&kept, model_id)?, kept.volume_serial)
    };
    let Model::Promptable(model) = &*model else {
        return Err(format!(
            "{model_id} is a dense model: it labels every voxel (segment)"
        ));
    };
    sam::check_prompts(opened.volume.geometry.dims, &prompts)
        .map_err(|e| format!("{}: {e}", opened.name))?;
    let choice = device::choose(device_request, CPU_MEMORY_BUDGET, worker_gpu(state)).await?;
    let key = (model_id.to_string(), choice.backend());
    let cached = state.borrow().promptable.get(&key).cloned();
    let on_device = match cached {
        Some(m) => m,
        None => {
            let built = Rc::new(PromptableOnDevice {
                model: model.on_device(&choice).map_err(|e| e.to_string())?,
                device: choice.clone(),
                cache: RefCell::new(None),
            });
            state.borrow_mut().promptable.insert(key, built.clone());
            built
        }
    };
    let mut cache = on_device.cache.borrow_mut().take().unwrap_or_default();
    let total: usize = prompts
        .iter()
        .map(|p| match *p {
            Prompt::Box2d { .. } => 1,
            Prompt::Box3d { ijk, .. } => propagation_order(ijk[2], ijk[5]).len(),
        })
        .sum();
    let mut done = 0u32;
    let mut progress = |_: sam::Progress| {
        done += 1;
        let _ = on_progress.call3(
            &JsValue::NULL,
            &PROMPT_STAGE.into(),
            &done.into(),
            &(total as u32).into(),
        );
    };
    let result = sam::segment(
        &on_device.model,
        &opened.volume,
        &prompts,
        &options,
        &mut cache,
        &js_sys::Date::now,
        &mut progress,
    )
    .await
    .map_err(|e| format!("{}: {e}", opened.name))?;
    let embedded_slices = cache.embedded_slices();
    let labels = Rc::new(result.labels.clone());
    {
        let mut kept = state.borrow_mut();
        // kept only while the volume it was made from is
        if kept.volume_serial == serial {
            *on_device.cache.borrow_mut() = Some(cache);
            kept.prompt_labels = Some(labels);
        }
    }
    prompt_result(
        &result,
        &opened,
        &on_device.device,
        choice.reason.as_deref(),
        model,
        embedded_slices,
    )
    .map_err(|_| "cannot build the result object".to_string())
}

/// The progress stage of a prompt run (www/protocol.js `PROMPT_STAGES`): one per decoded slice.
const PROMPT_STAGE: &str = "slice";

/// The JS object [`Insitu::prompt`] resolves.
fn prompt_result(
    result: &sam::PromptSegmentation,
    opened: &Opened,
    device: &DeviceChoice,
    reason: Option<&str>,
    model: &run::PromptModel,
    embedded_slices: usize,
) -> Result<JsValue, JsValue> {
    let stats = &result.stats;
    let slices: Vec<serde_json::Value> = stats
        .slices
        .iter()
        .map(|s| {
            serde_json::json!({
                "prompt": s.prompt, "k": s.k, "encoder_ms": s.encoder_ms,
                "decoder_ms": s.decoder_ms, "mask_pixels": s.mask_pixels,
            })
        })
        .collect();
    let summary = serde_json::json!({
        "backend": device.backend(),
        "adapter": device.adapter,
        "reason": reason,
        "modality": result.modality.name(),
        "modality_guess": result.modality_guess,
        "stats": {
            "intensity_ms": stats.intensity_ms, "encoder_ms": stats.encoder_ms,
            "decoder_ms": stats.decoder_ms, "encoded_slices": stats.encoded_slices,
            "decoded_boxes": stats.decoded_boxes, "slices": slices,
        },
        "embedded_slices": embedded_slices,
        "parameters": model.entry.parameters,
        "gflops": sam::call_gflops(stats),
        "wasm_heap_mb": wasm_heap_bytes() as f64 / 1048576.0,
        "like_input_extension": opened.format.label_extension(),
    });
    let out = to_js(&summary).map_err(JsValue::from)?;
    let bytes = |b: Vec<u8>| JsValue::from(Uint8Array::from(b.as_slice()));
    Reflect::set(
        &out,
        &"labels".into(),
        &bytes(nifti::write_labels(&result.labels, true)),
    )?;
    Reflect::set(
        &out,
        &"labels_like_input".into(),
        &bytes(volume::write_labels_like(opened.format, &result.labels)),
    )?;
    Ok(out)
}
