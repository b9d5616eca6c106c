// The page: picks a volume and a model, runs the segmentation in a worker (www/worker.js),
// shows the result in the viewer, and offers it for download. No framework: a few elements,
// one `state` object, and functions that update both.
import { HEAD_BYTES, OPS, PROMPT_STAGES, STAGES as STAGE_SHARES } from './protocol.js';
import { PromptPanel } from './prompt-panel.js';
import { Viewer, ERROR_COLOURS } from './viewer.js';
import {
  comparisonCsv,
  comparisonHtml,
  comparisonJson,
  comparisonTable,
  evaluationChart,
  evaluationTable,
} from './report.js';
import { Offline } from './offline.js';
import { SessionStore } from './session-store.js';

const $ = (id) => document.getElementById(id);
const el = {
  fileInput: $('file-input'),
  folderInput: $('folder-input'),
  sampleButton: $('sample-button'),
  volumeInfo: $('volume-info'),
  seriesChooser: $('series-chooser'),
  seriesSelect: $('series-select'),
  seriesOpen: $('series-open'),
  volumeChooser: $('volume-chooser'),
  volumeSelect: $('volume-select'),
  volumeOpen: $('volume-open'),
  modelSelect: $('model-select'),
  modelInfo: $('model-info'),
  modelFit: $('model-fit'),
  cropInput: $('crop-input'),
  backendSelect: $('backend-select'),
  runButton: $('run-button'),
  cancelButton: $('cancel-button'),
  downloadButton: $('download-button'),
  downloadLikeInput: $('download-like-input'),
  progress: $('progress'),
  stage: $('stage'),
  runStatus: $('run-status'),
  errorBox: $('error-box'),
  privacyNotice: $('privacy-notice'),
  dropZone: $('drop-zone'),
  canvas: $('viewer-canvas'),
  viewerEmpty: $('viewer-empty'),
  opacityInput: $('opacity-input'),
  legend: $('legend'),
  referenceInput: $('reference-input'),
  referenceInfo: $('reference-info'),
  mappingSelect: $('mapping-select'),
  mappingJson: $('mapping-json'),
  toleranceInput: $('tolerance-input'),
  evaluateButton: $('evaluate-button'),
  errorsToggle: $('errors-toggle'),
  errorLegend: $('error-legend'),
  results: $('results'),
  runs: $('runs'),
  evaluation: $('evaluation'),
  evaluationTitle: $('evaluation-title'),
  evalTable: $('eval-table'),
  evalChart: $('eval-chart'),
  compareTable: $('compare-table'),
  exportCsv: $('export-csv'),
  exportJson: $('export-json'),
  exportHtml: $('export-html'),
  promptPanel: $('prompt-panel'),
  promptModel: $('prompt-model'),
  referenceBoxes: $('reference-boxes'),
  referenceProtocol: $('reference-protocol'),
  promptStatus: $('prompt-status'),
};

const SAMPLE_URL = 'assets/data/t1_crop.nii.gz';

const state = {
  ready: false, // the core (wasm) has started in the worker
  registry: null, // {models: [...]}
  // The volume: its files as chosen ([[name, Uint8Array]]; one file, a header and its data, or
  // DICOM slices), the DICOM series chosen among them, the 3-D volume chosen of a 4-D input
  // (`volume`, from 0, of `volumes`: the core's VolumeChoice list), and what the core read:
  // {name, files, series, volume, volumes, info: {dims, spacing, orientation, affine, format}, skipped}
  input: null,
  // Files holding several DICOM series, waiting for the user to choose: {name, series: [...],
  // open(series) -> the files' reader for loadVolume}
  pendingSeries: null,
  result: null, // the selected run (see `runs`)
  // Runs on the current input, keyed by model id, in the order they were first made:
  // {id, modelId, modelName, labels, backend, adapter, timings_ms, n_classes, parameters, gflops,
  //  peak_tensor_mb, wasm_heap_mb, inputName, fileName, labelInfo,
  //  evaluation: null | {report, csv, errorMap, referenceName, mapping, toleranceMm}}
  runs: new Map(),
  presets: [], // [{key, mapping: {name, pairs}}]
  reference: null, // {name, bytes} of the reference labels for the current input
  evalSettings: { mapping: '', toleranceMm: 2 }, // the settings the evaluations were made with
  running: false, // a volume is loading or a segmentation is running
  segmenting: false, // a segmentation is running (Cancel stops it)
  stage: 'idle', // the last progress stage
  error: null, // the last error message shown, or null
  blocked: [], // [{uri, directive}]: what the security policy blocked, in the page or the worker
  restored: false, // the session kept in this browser was looked for, and brought back if there was one
};

/** Test and debugging hooks; nothing in the UI depends on them. */
window.insitu = {
  state,
  /** Destroys the worker's WebGPU devices, as a lost GPU would (tests the CPU retry). */
  loseGpu: () => core.call(OPS.loseGpu, {}),
  get lastResult() {
    return state.result;
  },
  /** The page's handle on its worker (tests restart it). */
  get core() {
    return core;
  },
  /** Bytes of each file's start sent to list DICOM series (protocol.js HEAD_BYTES; tests lower it). */
  headBytes: HEAD_BYTES,
  /** What listing the last DICOM selection sent: {files, wholeFiles, sentBytes, totalBytes}. */
  listing: null,
  /** Set by tests: keep the viewer's copy of the last volume opened in `lastView`. */
  keepView: false,
  lastView: null,
  /** The box panel (tests draw through voxelToClient). */
  get promptPanel() {
    return promptPanel;
  },
};

// ---- the worker -------------------------------------------------------------------------

/** What a call to the worker rejects with when it was stopped on purpose. */
class Cancelled extends Error {}

/** What a call rejects with when the worker's GPU failed, or the core crashed (a wasm trap,
 *  as wgpu's panics on device errors are): the worker was replaced by a fresh one. */
class WorkerLost extends Error {}

class Core {
  /** @param {(blocked: {uri, directive}) => void} onBlocked  told of what the policy blocked in the worker */
  constructor(onBlocked) {
    this.onBlocked = onBlocked;
    this.pending = new Map();
    this.nextId = 1;
    this.start();
  }

  /** Starts a worker; `ready` resolves with the registry once its core runs. */
  start() {
    this.worker = new Worker(new URL(/* webpackChunkName: "worker" */ './worker.js', import.meta.url), {
      type: 'module',
    });
    this.ready = new Promise((resolve, reject) => {
      this.started = { resolve, reject };
    });
    this.opened = null; // the input whose volume this worker holds (see `ensureOpen`)
    // A message or error still on its way from a worker that was ended is ignored.
    const worker = this.worker;
    worker.onmessage = ({ data }) => worker === this.worker && this.receive(data);
    worker.onerror = (event) => {
      event.preventDefault();
      if (worker === this.worker) this.fail(`The inference worker failed: ${event.message || 'it could not be started'}`);
    };
  }

  receive(data) {
    if ('blocked' in data) return this.onBlocked(data.blocked);
    if ('gpuFailed' in data) return this.restart(new WorkerLost(data.gpuFailed));
    if ('ready' in data) {
      if (data.ready) this.started.resolve({ ...data.registry, presets: data.presets ?? [] });
      else this.fail(`The segmentation core could not start: ${data.error}`);
      return;
    }
    const call = this.pending.get(data.id);
    if (!call) return;
    if (data.progress) return call.onProgress(data.progress);
    this.pending.delete(data.id);
    if (data.ok) call.resolve(data.value);
    else if (data.trap) {
      call.reject(new WorkerLost(`the segmentation core crashed (${data.error})`));
      this.restart(new WorkerLost('the segmentation core crashed'));
    } else call.reject(new Error(data.error));
  }

  fail(message) {
    this.started.reject(new Error(message));
    for (const call of this.pending.values()) call.reject(new Error(message));
    this.pending.clear();
  }

  /**
   * Stops whatever the worker is doing at once: ends it, rejects its calls with `reason`, and
   * starts a fresh one. The worker keeps nothing the page cannot send again (the volume, sent
   * again by `ensureOpen`; model files, fetched again). Returns the new worker's `ready`.
   */
  restart(reason = new Cancelled('Cancelled.')) {
    this.worker.terminate();
    for (const call of this.pending.values()) call.reject(reason);
    this.pending.clear();
    this.start();
    return this.ready;
  }

  /** Makes `input` the volume the worker holds, sending it when the worker has another or none. */
  async ensureOpen(input) {
    if (this.opened === input) return;
    const { name, files, series, volume } = input;
    await this.call(OPS.open, { name, files, series, volume, view: false });
    this.opened = input;
  }

  call(op, args, onProgress = () => {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      this.worker.postMessage({ id, op, ...args });
    });
  }
}

// ---- formatting -------------------------------------------------------------------------

function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

function formatBytes(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(0)} kB`;
  return `${n} B`;
}

function formatSeconds(ms) {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

const BACKEND_NAMES = { webgpu: 'WebGPU', cpu: 'CPU' };

const STAGE_TEXT = {
  download: (d, t) => `Downloading model (${formatBytes(d)} of ${formatBytes(t)})`,
  verify: () => 'Checking model files',
  conform: () => 'Conforming to 256³ 1 mm',
  normalize: () => 'Normalizing intensities',
  layer: (d, t) => `Layer ${d} of ${t}`,
  postprocess: () => 'Cleaning up labels',
  native: () => 'Back to native space',
  slice: (d, t) => `Slice ${d} of ${t}`,
};

/** Stage -> [text, progress at its start, progress at its end], in the protocol's order. */
function stageTable(shares) {
  const table = {};
  shares.reduce((at, [name, share]) => {
    table[name] = [STAGE_TEXT[name], at, at + share];
    return at + share;
  }, 0);
  return table;
}
const STAGES = stageTable(STAGE_SHARES);
const PROMPT_STAGE_TABLE = stageTable(PROMPT_STAGES);

/** A file name's base for derived files: no extension, nothing a file system may refuse. */
function stem(fileName) {
  const base = fileName.replace(/\.(nii\.gz|nii|mgz|mgh|nrrd|nhdr|mha|mhd|dcm|gz)$/i, '');
  return base.replace(/[^\w.-]+/g, '_') || 'volume';
}

// ---- UI updates -------------------------------------------------------------------------

function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  state.error = message;
  el.errorBox.textContent = message;
  el.errorBox.hidden = false;
  console.error('insitu:', message);
}

/** What the security policy blocked: "a request to <origin>", or the kind of thing ("inline", "eval"). */
function blockedWhat({ uri, directive }) {
  try {
    const { origin } = new URL(uri);
    if (origin !== 'null') return `a request to ${origin}`;
  } catch {
    // not a URL: "inline", "eval", "data", "blob", ...
  }
  return `${uri || 'a resource'} (${directive})`;
}

/** Lists what the security policy blocked (the page's or the worker's) in a notice that stays. */
function showBlocked(blocked) {
  state.blocked.push(blocked);
  const what = [...new Set(state.blocked.map(blockedWhat))];
  el.privacyNotice.textContent = `Blocked ${what.join(', ')}: insitu never sends data off this device.`;
  el.privacyNotice.hidden = false;
  console.warn('insitu: the security policy blocked', blocked);
}

function clearError() {
  state.error = null;
  el.errorBox.hidden = true;
  el.errorBox.textContent = '';
}

/** ["12.3 k parameters", "48 kB download"], leaving out what the registry does not say. */
function modelSize(model) {
  const facts = [];
  if (typeof model.parameters === 'number') facts.push(`${formatCount(model.parameters)} parameters`);
  const bytes = (model.files ?? []).reduce((sum, f) => sum + (f.bytes || 0), 0);
  if (bytes > 0) facts.push(`${formatBytes(bytes)} download`);
  return facts;
}

function selectedModel() {
  return state.registry?.models.find((m) => m.id === el.modelSelect.value) ?? null;
}

function updateControls() {
  const busy = state.running;
  el.fileInput.disabled = busy;
  el.folderInput.disabled = busy;
  el.sampleButton.disabled = busy;
  el.seriesSelect.disabled = busy;
  el.seriesOpen.disabled = busy || !state.pendingSeries;
  el.volumeSelect.disabled = busy;
  el.volumeOpen.disabled = busy || !state.input;
  el.modelSelect.disabled = busy || !state.registry;
  el.runButton.disabled = busy || !state.ready || !state.input || !selectedModel();
  el.cancelButton.disabled = !state.segmenting;
  el.downloadButton.disabled = busy || !state.result;
  el.downloadLikeInput.disabled = busy || !state.result;
  el.dropZone.classList.toggle('busy', busy);
  el.referenceInput.disabled = busy || !state.ready || !state.input;
  el.mappingSelect.disabled = busy;
  el.mappingJson.disabled = busy;
  el.toleranceInput.disabled = busy;
  el.evaluateButton.disabled = busy || !state.reference || state.runs.size === 0;
  el.referenceBoxes.disabled = busy || !state.reference || !isPromptable(selectedModel());
  el.runButton.hidden = isPromptable(selectedModel());
  el.errorsToggle.disabled = !state.result?.evaluation;
  for (const button of el.runs.querySelectorAll('button')) button.disabled = busy;
  for (const button of [el.exportCsv, el.exportJson, el.exportHtml]) button.disabled = busy || state.runs.size === 0;
}

function showStage(stage, done, total, table = STAGES) {
  state.stage = stage;
  const [text, start, end] = table[stage] ?? [() => stage, el.progress.value, el.progress.value];
  const fraction = total > 0 ? Math.min(done / total, 1) : 0;
  el.progress.value = start + (end - start) * fraction;
  el.stage.textContent = `${text(done, total)}…`;
}

function showModelInfo() {
  const model = selectedModel();
  if (!model) {
    el.modelInfo.textContent = '';
    return;
  }
  const facts = [model.task, ...modelSize(model)].filter(Boolean).join(' · ');
  el.modelInfo.textContent = model.description ? `${facts}. ${model.description}` : facts;
}

/** Warns when the volume does not fit the chosen model's card (a CT for a brain-MRI model, a
 *  field of view larger than a head, a single slice); the user may still run it. */
async function showFit() {
  const model = selectedModel();
  const input = state.input;
  let warnings = [];
  if (model && input) {
    try {
      await core.ensureOpen(input);
      warnings = await core.call(OPS.fit, { modelId: model.id });
    } catch {
      // A worker restarted meanwhile: the next change asks again; nothing to warn about yet.
    }
  }
  if (model !== selectedModel() || input !== state.input) return; // changed meanwhile
  el.modelFit.textContent = warnings.map((w) => `⚠ ${w}`).join('\n');
  el.modelFit.hidden = warnings.length === 0;
}

function showLegend(labels) {
  el.legend.replaceChildren(
    ...labels
      .filter((l) => l.value !== 0)
      .map((l) => {
        const item = document.createElement('li');
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = `rgb(${l.rgb.join(',')})`;
        item.append(swatch, l.name);
        item.title = `label ${l.value}`;
        return item;
      }),
  );
}

function showModels(registry) {
  const models = registry.models;
  el.modelSelect.replaceChildren(
    ...models.map((m) => {
      const option = document.createElement('option');
      option.value = m.id;
      const facts = [m.task, ...modelSize(m)].filter(Boolean);
      option.textContent = `${m.name} — ${facts.join(', ')}`;
      return option;
    }),
  );
  el.modelSelect.value = (models.find((m) => m.default) ?? models[0])?.id ?? '';
  showModelInfo();
  if (!state.result) showLegend(selectedModel()?.labels ?? []);
  return models;
}

function showVolumeInfo() {
  const input = state.input;
  if (!input) {
    el.volumeInfo.textContent = 'No volume loaded.';
    return;
  }
  const { dims = [], spacing = [], format, orientation } = input.info ?? {};
  const parts = [input.name];
  if (format) parts.push(input.series ? `${format} series` : format);
  if (dims.length) parts.push(`${dims.join(' × ')} voxels`);
  if (spacing.length) parts.push(`${spacing.slice(0, 3).map((s) => Number(s).toFixed(2)).join(' × ')} mm`);
  if (orientation !== undefined) parts.push(String(Array.isArray(orientation) ? orientation.join('') : orientation));
  const volumes = input.volumes ?? [];
  const shown = volumes.find((v) => v.index === input.volume);
  if (volumes.length > 1 && shown) parts.push(`volume ${shown.index} of ${volumes.length}, from 0 (${shown.description})`);
  if (input.skipped?.length) parts.push(`${input.skipped.length} file(s) not used`);
  el.volumeInfo.textContent = parts.join(' · ');
  el.volumeInfo.title = (input.skipped ?? []).map(([name, why]) => `${name}: ${why}`).join('\n');
}

/** Offers the series found among the files; the current volume stays until one is opened. */
function showSeriesChooser() {
  const pending = state.pendingSeries;
  el.seriesChooser.hidden = !pending;
  if (!pending) return;
  el.seriesSelect.replaceChildren(
    ...pending.series.map((s) => {
      const text = [
        s.number !== null && s.number !== undefined ? `#${s.number}` : null,
        s.modality,
        s.description || '(no description)',
        `${s.dims.join(' × ')}`,
        `${s.files} file${s.files === 1 ? '' : 's'}`,
      ]
        .filter(Boolean)
        .join(' · ');
      const option = new Option(text, s.uid);
      option.title = `SeriesInstanceUID ${s.uid}`;
      return option;
    }),
  );
}

/** Offers the 3-D volumes of a 4-D input (fMRI, DWI, multi-echo); the chosen one is shown. */
function showVolumeChooser() {
  const volumes = state.input?.volumes ?? [];
  el.volumeChooser.hidden = volumes.length < 2;
  el.volumeSelect.replaceChildren(...volumes.map((v) => new Option(`${v.index} · ${v.description}`, String(v.index))));
  if (volumes.length > 1) el.volumeSelect.value = String(state.input.volume);
}

/** The chosen volume of the input again, as another of its volumes. */
function openChosenVolume() {
  const input = state.input;
  const volume = Number(el.volumeSelect.value);
  if (!input || !Number.isInteger(volume)) return;
  return loadVolume(input.name, async () => ({ files: input.files, series: input.series, skipped: input.skipped }), volume);
}

/** The base of a run's file names: the input's, and its volume when it holds several. */
function inputStem(input) {
  return stem(input.name) + ((input.volumes?.length ?? 0) > 1 ? `_vol${input.volume}` : '');
}

function showRunStatus(result) {
  const t = result.timings_ms ?? {};
  const steps = ['conform', 'inference', 'native']
    .filter((k) => typeof t[k] === 'number')
    .map((k) => `${k} ${formatSeconds(t[k])}`);
  el.runStatus.dataset.backend = result.backend;
  el.runStatus.textContent = [
    `Ran on ${BACKEND_NAMES[result.backend] ?? result.backend}`,
    result.adapter && `adapter: ${result.adapter}`,
    result.fallback && `⚠ ${result.fallback}`,
    result.reason,
    typeof t.total === 'number' && `${formatSeconds(t.total)} in all` + (steps.length ? ` (${steps.join(', ')})` : ''),
    `${result.n_classes} classes`,
  ]
    .filter(Boolean)
    .join(' · ');
}

// ---- actions ----------------------------------------------------------------------------

const core = new Core(showBlocked);
const viewer = new Viewer(el.canvas);
// What this browser keeps (www/session-store.js, www/offline.js): the session, saved after each
// change and restored on load, and the app and models for offline use.
const store = new SessionStore((status) => offline.sessionStatus(status));
const offline = new Offline({ store, onKeepingOn: () => store.save(state) });

/**
 * Reads files with the core, then makes them the input. `readFiles` resolves `{files, series,
 * skipped}` (the files, the DICOM series to open, files already left out) or `{pending}`: DICOM
 * series to choose from (pendingSeries); it throws, before reading, for files too big. `volume`
 * picks one of a 4-D input's volumes (default the first). A bad selection leaves everything as
 * it was.
 */
async function loadVolume(name, readFiles, volume = null) {
  if (state.running) return;
  clearError();
  state.running = true;
  updateControls();
  el.stage.textContent = `Opening ${name}…`;
  try {
    await core.ready;
    const read = await readFiles();
    let pending = read.pending;
    const { files, series = null, skipped = [] } = read;
    const opened = pending ? null : await core.call(OPS.open, { name, files, series, volume, view: viewer.running });
    if (opened?.series) pending = { name, series: opened.series, open: (s) => async () => ({ files, series: s.uid }) };
    if (pending) {
      state.pendingSeries = pending;
      showSeriesChooser();
      el.stage.textContent = `${name} holds ${pending.series.length} series: choose one.`;
      return;
    }
    state.pendingSeries = null;
    showSeriesChooser();
    // Keep only the files the volume is made of: a fresh worker is sent them again.
    const unused = new Set(opened.skipped.map(([path]) => path));
    const used = files.filter(([path]) => !unused.has(path));
    state.input = {
      name,
      files: used,
      series,
      volume: opened.chosen,
      volumes: opened.volumes,
      info: opened.info,
      skipped: [...skipped, ...opened.skipped],
    };
    core.opened = state.input;
    state.result = null;
    state.runs = new Map(); // runs and the reference belong to one case
    state.reference = null;
    el.referenceInfo.textContent = 'No reference loaded.';
    showRuns();
    el.runStatus.textContent = '';
    delete el.runStatus.dataset.backend;
    el.progress.value = 0;
    el.stage.textContent = 'Ready to run.';
    showVolumeInfo();
    showVolumeChooser();
    showFit();
    showPromptPanel();
    showLegend(selectedModel()?.labels ?? []);
    window.insitu.lastView = window.insitu.keepView ? opened.view : null;
    if (viewer.running && opened.view) {
      try {
        await viewer.showVolume(opened.view, `${stem(name)}.nii`);
        el.viewerEmpty.hidden = true;
      } catch (err) {
        showError(`The viewer could not display ${name} (${err.message ?? err}); it can still be segmented.`);
      }
    }
  } catch (err) {
    showError(err);
    el.stage.textContent = state.input ? `Kept ${state.input.name}.` : 'Idle.';
  } finally {
    state.running = false;
    updateControls();
    store.save(state);
  }
}

/** What to call a selection: the file, the folder, or the first file and a count. */
function selectionName(files, folder) {
  if (folder) return folder;
  if (files.length === 1) return files[0].file.name;
  // A detached header names the volume better than its data file.
  const header = files.find(({ file }) => /\.(mhd|nhdr)$/i.test(file.name));
  return header ? header.file.name : `${files[0].file.name} and ${files.length - 1} more`;
}

/** [[path, bytes]] of [{path, file}], read whole. */
function readWhole(files) {
  return Promise.all(files.map(async ({ path, file }) => [path, await readBytes(path, file)]));
}

async function readBytes(path, file, end = file.size) {
  try {
    return new Uint8Array(await file.slice(0, end).arrayBuffer());
  } catch (err) {
    throw new Error(`${path} could not be read (${err.message ?? err}).`);
  }
}

/** Refuses, before reading it whole, a file too big for the worker's memory (see
 *  OPS.memoryNeed); a format whose size the core cannot tell from its head is read as before. */
async function checkFits({ path, file }) {
  const head = await readBytes(path, file, HEAD_BYTES);
  const need = await core.call(OPS.memoryNeed, { name: path, head, size: file.size });
  if (need && !need.fits) throw new Error(need.message);
}

/**
 * Lists the DICOM series of files from their heads (window.insitu.headBytes each; the files
 * whose header goes on past them, whole), so that listing reads no pixel data.
 */
async function listFromHeads(name, files) {
  const whole = new Set();
  let sentBytes = 0;
  for (;;) {
    const heads = await Promise.all(
      files.map(async ({ path, file }) => {
        const bytes = await readBytes(path, file, whole.has(path) ? file.size : window.insitu.headBytes);
        sentBytes += bytes.byteLength;
        return [path, bytes, file.size];
      }),
    );
    const listing = await core.call(OPS.listSeries, { name, heads });
    const more = listing.need_more.filter((path) => !whole.has(path));
    if (!more.length) {
      const totalBytes = files.reduce((sum, { file }) => sum + file.size, 0);
      window.insitu.listing = { files: files.length, wholeFiles: whole.size, sentBytes, totalBytes };
      return listing;
    }
    for (const path of more) whole.add(path);
  }
}

/** Reads the files of one listed series whole, after checking that it fits (the others are
 *  reported as not used). */
async function readSeries(files, listing, series) {
  if (!series.need.fits) throw new Error(series.need.message);
  const names = new Set(series.file_names);
  const skipped = [...listing.skipped];
  for (const other of listing.series.filter((s) => s !== series)) {
    const why = `DICOM series "${other.description}" (not the one opened)`;
    skipped.push(...other.file_names.map((path) => [path, why]));
  }
  return { files: await readWhole(files.filter(({ path }) => names.has(path))), series: series.uid, skipped };
}

/**
 * Loads files ([{path, file}] from the file chooser, a folder chooser or a drop). Paths keep
 * same-named files of different folders apart (DICOM exports reuse slice names per series).
 * One file is checked against the memory the page has first; several (no .mhd/.nhdr header)
 * are listed as DICOM series from their heads, and only the chosen series is read whole.
 */
function loadFiles(files, folder = null) {
  if (!files.length) return;
  const name = selectionName(files, folder);
  const header = files.some(({ file }) => /\.(mhd|nhdr)$/i.test(file.name));
  if (files.length === 1 || header) {
    return loadVolume(name, async () => {
      if (files.length === 1) await checkFits(files[0]);
      return { files: await readWhole(files) };
    });
  }
  return loadVolume(name, async () => {
    const listing = await listFromHeads(name, files);
    // No DICOM series: the core decides (e.g. one volume file beside a .json sidecar).
    if (!listing.series.length) return { files: await readWhole(files) };
    if (listing.series.length === 1) return readSeries(files, listing, listing.series[0]);
    const open = (series) => () => readSeries(files, listing, series);
    return { pending: { name, series: listing.series, open } };
  });
}

/** [{path, file}] of chosen File objects (a folder chooser gives each its relative path). */
function chosenFiles(fileList) {
  return [...fileList].map((file) => ({ path: file.webkitRelativePath || file.name, file }));
}

function openChosenSeries() {
  const pending = state.pendingSeries;
  const chosen = pending?.series.find((s) => s.uid === el.seriesSelect.value);
  if (!chosen) return;
  // The series' own name says more than the files' ("1.dcm and 5 more").
  const number = chosen.number ?? null;
  const name = [chosen.description || chosen.modality || 'DICOM series', number !== null && `(series ${number})`]
    .filter(Boolean)
    .join(' ');
  return loadVolume(name, pending.open(chosen));
}

function loadSample() {
  return loadVolume('t1_crop.nii.gz', async () => {
    const response = await fetch(SAMPLE_URL);
    if (!response.ok) throw new Error(`The sample volume could not be loaded (HTTP ${response.status} for ${SAMPLE_URL}).`);
    return { files: [['t1_crop.nii.gz', new Uint8Array(await response.arrayBuffer())]] };
  });
}

/** The files of a drop ([{path, file}]), folders walked recursively; `folder` names a dropped folder. */
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return { files: chosenFiles(dataTransfer.files), folder: null };
  const files = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      files.push({ path: entry.fullPath.replace(/^\//, ''), file });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      // readEntries returns the entries in batches until it returns none.
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  const folder = entries.length === 1 && entries[0].isDirectory ? entries[0].name : null;
  return { files, folder };
}

async function run() {
  const input = state.input;
  const model = selectedModel();
  if (state.running || !input || !model) return;
  clearError();
  state.running = true;
  updateControls();
  el.runStatus.textContent = '';
  delete el.runStatus.dataset.backend;
  el.progress.value = 0;
  el.stage.textContent = 'Starting…';
  const options = { backend: el.backendSelect.value, crop: el.cropInput.checked };
  try {
    state.segmenting = true;
    updateControls();
    let value;
    try {
      value = await segmentIn(input, model, options);
    } catch (err) {
      // A lost or failing GPU (or a crash on it) ends the worker: the run goes again on the CPU.
      if (!(err instanceof WorkerLost) || options.backend === 'cpu') throw err;
      el.stage.textContent = `${err.message}: repeating the run on the CPU…`;
      value = await segmentIn(input, model, { ...options, backend: 'cpu' });
      value.fallback = `${err.message}; the run was repeated on the CPU`;
    } finally {
      state.segmenting = false;
      updateControls();
    }
    const fileName = `${inputStem(input)}_${model.id}.nii.gz`;
    await addRun({
      ...value,
      id: model.id,
      modelId: model.id,
      modelName: model.name,
      kind: 'task-specific',
      prompts: null,
      inputName: input.name,
      fileName,
      labelInfo: model.labels,
      evaluation: null,
    });
    offline.keepModel(model); // for offline use
  } catch (err) {
    await runFailed(err, model);
  } finally {
    state.running = false;
    updateControls();
    store.save(state);
  }
}

/** Adds a finished run (a rerun of the same id replaces it, and moves it last), evaluates it
 *  against the reference when there is one, and selects it. */
async function addRun(newRun) {
  state.runs.delete(newRun.id);
  state.runs.set(newRun.id, newRun);
  el.progress.value = 1;
  el.stage.textContent = 'Done.';
  if (state.reference) {
    el.stage.textContent = 'Evaluating…';
    try {
      newRun.evaluation = await evaluateRun(newRun, state.reference, state.evalSettings);
      el.stage.textContent = 'Done.';
    } catch (err) {
      showError(`The segmentation worked, but its evaluation failed: ${err.message ?? err}`);
    }
  }
  await selectRun(newRun.id);
}

async function runFailed(err, model) {
  if (err instanceof Cancelled) {
    el.progress.value = 0;
    el.stage.textContent = `Cancelled ${model.name}; the volume and earlier runs are kept.`;
  } else {
    showError(await offline.runError(err, model));
    el.stage.textContent = 'Failed.';
  }
}

function isPromptable(model) {
  return model?.card?.kind === 'promptable';
}

const promptPanel = new PromptPanel(
  {
    canvas: $('slice-canvas'),
    slice: $('slice-input'),
    sliceText: $('slice-text'),
    intensity: $('intensity-select'),
    objects: $('prompt-objects'),
    addObject: $('add-object'),
    from: $('propagate-from'),
    to: $('propagate-to'),
    propagate: $('propagate'),
    clear: $('clear-prompts'),
    status: el.promptStatus,
  },
  {
    sliceImage: async (request) => {
      await core.ensureOpen(state.input);
      return core.call(OPS.sliceImage, request);
    },
    onChange: () => runPrompts(),
  },
);

/** Shows the box panel while a promptable model and a volume are chosen (a new volume starts
 *  with one empty object and the model's guess of its modality). */
async function showPromptPanel() {
  const model = selectedModel();
  const input = state.input;
  el.promptPanel.hidden = !(isPromptable(model) && input);
  el.cropInput.closest('label').hidden = isPromptable(model);
  if (el.promptPanel.hidden || promptPanel.input === input) return;
  el.promptModel.textContent = model.name;
  try {
    await core.ensureOpen(input);
    const guess = await core.call(OPS.guessModality, {});
    promptPanel.input = input;
    promptPanel.reset(input.info.dims, guess);
  } catch (err) {
    showError(err);
  }
}

/** "encoder 2 slices 9.10 s (1 cached) · decoder 3 boxes 0.61 s (1 cached)". */
function promptSummary({ stats, backend }) {
  // slices whose embedding was cached, boxes whose mask was
  const cached = (key) => new Set(stats.slices.filter((s) => s[key] === null).map((s) => (key === 'encoder_ms' ? s.k : s))).size;
  return [
    `encoder ${stats.encoded_slices} slice(s) ${formatSeconds(stats.encoder_ms)}` + (cached('encoder_ms') ? ` (${cached('encoder_ms')} cached)` : ''),
    `decoder ${stats.decoded_boxes} box(es) ${formatSeconds(stats.decoder_ms)}` + (cached('decoder_ms') ? ` (${cached('decoder_ms')} cached)` : ''),
    `on ${BACKEND_NAMES[backend] ?? backend}`,
  ].join(' · ');
}

/**
 * Runs the panel's prompts with the promptable model (the worker keeps embeddings and masks, so
 * a new box costs its own decoding only). `protocol` ({key, text}) marks prompts made from the
 * reference: that run is kept beside the drawn one, and compared label for label.
 */
async function runPrompts(protocol = null) {
  const input = state.input;
  const model = selectedModel();
  if (state.running || !input || !isPromptable(model)) return;
  const prompts = promptPanel.prompts();
  if (!prompts.length) {
    el.promptStatus.textContent = 'No boxes yet: drag one on the slice.';
    return;
  }
  clearError();
  state.running = true;
  state.segmenting = true;
  updateControls();
  el.progress.value = 0;
  const request = { backend: el.backendSelect.value, ...promptPanel.intensity(), prompts };
  try {
    await core.ensureOpen(input);
    const value = await core
      .call(OPS.prompt, { modelId: model.id, request, base: document.baseURI }, ({ stage, done, total }) =>
        showStage(stage, done, total, PROMPT_STAGE_TABLE),
      )
      .finally(() => {
        state.segmenting = false;
        updateControls();
      });
    const { stats } = value;
    const id = protocol ? `${model.id}-${protocol.key}` : model.id;
    el.promptStatus.textContent = promptSummary(value);
    await addRun({
      ...value,
      id,
      modelId: model.id,
      modelName: protocol ? `${model.name} (boxes from the reference)` : model.name,
      kind: 'generalist',
      prompts: protocol ? protocol.text : `${prompts.length} drawn prompt(s)`,
      labelsAreReference: Boolean(protocol),
      timings_ms: { total: stats.intensity_ms + stats.encoder_ms + stats.decoder_ms, encoder: stats.encoder_ms, decoder: stats.decoder_ms },
      n_classes: promptPanel.objects.length + 1,
      peak_tensor_mb: null,
      inputName: input.name,
      fileName: `${inputStem(input)}_${id}.nii.gz`,
      labelInfo: promptPanel.labels(),
      evaluation: null,
    });
    offline.keepModel(model);
    await promptPanel.showSlice();
  } catch (err) {
    await runFailed(err, model);
  } finally {
    state.running = false;
    updateControls();
    store.save(state);
  }
}

/** Prompts every reference label with its bounding box(es) (the MedSAM-on-laptop protocol). */
async function referenceBoxes() {
  if (!state.reference || state.running) return;
  const key = el.referenceProtocol.value;
  let made;
  clearError();
  state.running = true; // until the run starts
  updateControls();
  try {
    made = await core.call(OPS.referencePrompts, { reference: state.reference.bytes, referenceName: state.reference.name, protocol: key });
    if (!made.prompts.length) throw new Error(`${state.reference.name} has no labels above 0: there is nothing to draw boxes around.`);
  } catch (err) {
    return showError(err);
  } finally {
    state.running = false;
    updateControls();
  }
  promptPanel.setReferencePrompts(made.prompts);
  await runPrompts({ key, text: made.protocol });
}

/** One segmentation in the worker, the volume sent first when the worker does not hold it. */
async function segmentIn(input, model, options) {
  await core.ensureOpen(input);
  return core.call(OPS.segment, { modelId: model.id, options, base: document.baseURI }, ({ stage, done, total }) =>
    showStage(stage, done, total),
  );
}

/** Stops the running segmentation: its worker is ended at once and a fresh one started. */
function cancel() {
  if (!state.segmenting) return;
  core.restart().catch((err) => showError(err));
}

// ---- runs, evaluation, comparison ----------------------------------------------------------

function runList() {
  return [...state.runs.values()];
}

function showRuns() {
  const runs = runList();
  el.results.hidden = runs.length === 0;
  el.runs.replaceChildren(
    ...runs.map((run) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.testid = `run-${run.id}`;
      button.dataset.run = run.id;
      button.setAttribute('aria-pressed', String(run === state.result));
      const total = run.timings_ms?.total;
      const dice = run.evaluation?.report?.mean?.dice;
      button.textContent = [
        run.modelName,
        BACKEND_NAMES[run.backend] ?? run.backend,
        typeof total === 'number' && formatSeconds(total),
        typeof dice === 'number' && `mean Dice ${dice.toFixed(3)}`,
      ]
        .filter(Boolean)
        .join(' · ');
      button.addEventListener('click', () => selectRun(run.id));
      item.append(button);
      return item;
    }),
  );
  el.compareTable.innerHTML = comparisonTable(runs, state.result?.id);
}

function showEvaluation() {
  const run = state.result;
  const evaluation = run?.evaluation;
  el.evaluation.hidden = !evaluation;
  el.errorLegend.hidden = !evaluation || !el.errorsToggle.checked;
  if (!evaluation) {
    el.evalTable.replaceChildren();
    el.evalChart.replaceChildren();
    return;
  }
  el.evaluationTitle.textContent =
    `Evaluation of ${run.modelName} against ${evaluation.referenceName}` +
    ` (mapping: ${evaluation.mapping ? mappingTitle(evaluation.mapping) : 'none'}, NSD tolerance ${evaluation.toleranceMm} mm)`;
  el.evalTable.dataset.run = run.id;
  el.evalTable.innerHTML = evaluationTable(run);
  el.evalChart.innerHTML = evaluationChart(run);
}

function mappingTitle(mapping) {
  if (!mapping.trim().startsWith('{')) return mapping; // a preset key
  try {
    return JSON.parse(mapping).name || 'custom';
  } catch {
    return 'custom';
  }
}

function showErrorLegend() {
  el.errorLegend.replaceChildren(
    ...ERROR_COLOURS.filter((c) => c.value !== 0).map((c) => {
      const item = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = `rgb(${c.rgb.join(',')})`;
      item.append(swatch, c.name);
      item.title = `error map value ${c.value}`;
      return item;
    }),
  );
}

/** Shows the error map of the selected run when there is one and the toggle is on. */
async function showErrors() {
  const run = state.result;
  el.errorLegend.hidden = !run?.evaluation || !el.errorsToggle.checked;
  try {
    if (run?.evaluation && el.errorsToggle.checked) {
      await viewer.showErrors(run.evaluation.errorMap, `${stem(run.fileName)}_errors.nii.gz`);
    } else {
      viewer.hideErrors();
    }
  } catch (err) {
    showError(`The viewer could not display the error map (${err.message ?? err}).`);
  }
}

/** Makes a run the selected one: its status, legend, segmentation, errors and metrics. */
async function selectRun(id) {
  const run = state.runs.get(id);
  if (!run) return;
  state.result = run;
  store.save(state);
  showRunStatus(run);
  el.downloadLikeInput.hidden = run.likeInputExtension === '.nii.gz';
  el.downloadLikeInput.textContent = `Download ${run.likeInputExtension}`;
  showLegend(run.labelInfo);
  showRuns();
  showEvaluation();
  updateControls();
  try {
    await viewer.showLabels(run.labels, run.fileName, run.labelInfo);
  } catch (err) {
    showError(`The viewer could not display the segmentation (${err.message ?? err}); it can still be downloaded.`);
  }
  await showErrors();
}

/** Evaluates one run in the worker; throws with the core's message. */
async function evaluateRun(run, reference, settings) {
  const value = await core.call(OPS.evaluate, {
    pred: run.labels,
    predName: run.fileName,
    reference: reference.bytes,
    referenceName: reference.name,
    mapping: run.labelsAreReference ? '' : settings.mapping, // labelled with the reference's own values
    toleranceMm: settings.toleranceMm,
  });
  const mapping = run.labelsAreReference ? '' : settings.mapping;
  return { ...value, referenceName: reference.name, mapping, toleranceMm: settings.toleranceMm };
}

/**
 * Evaluates every run against `reference` with `settings`; commits only when all succeed, so a
 * bad reference or mapping leaves the previous reference, settings and results in place.
 */
async function evaluateAll(reference, settings) {
  const results = [];
  for (const run of runList()) results.push([run, await evaluateRun(run, reference, settings)]);
  state.reference = reference;
  state.evalSettings = settings;
  for (const [run, evaluation] of results) run.evaluation = evaluation;
}

/** The mapping and tolerance chosen in the form; throws a clear message when they are invalid. */
function chosenSettings() {
  const toleranceMm = Number(el.toleranceInput.value);
  if (!(el.toleranceInput.value !== '' && Number.isFinite(toleranceMm) && toleranceMm >= 0)) {
    throw new Error(`The NSD tolerance must be a number of millimetres ≥ 0, not "${el.toleranceInput.value}".`);
  }
  let mapping = el.mappingSelect.value;
  if (mapping === 'custom') {
    const text = el.mappingJson.value.trim();
    if (!text) throw new Error('The custom label mapping is empty: enter a mapping JSON or choose a preset.');
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new Error(`The custom label mapping is not valid JSON: ${err.message}`);
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || !Array.isArray(parsed.pairs)) {
      throw new Error(
        'The custom label mapping must be an object like {"name": "...", "pairs": [{"model": 1, "reference": [3, 42], "name": "..."}]}.',
      );
    }
    mapping = text;
  }
  return { mapping, toleranceMm };
}

/** Runs an evaluation action with the page busy; errors go to the error box. */
async function busy(stage, action) {
  if (state.running) return;
  clearError();
  state.running = true;
  updateControls();
  el.stage.textContent = stage;
  try {
    await action();
    el.stage.textContent = 'Done.';
  } catch (err) {
    showError(err);
    el.stage.textContent = 'Evaluation failed; the previous results are kept.';
  } finally {
    state.running = false;
    updateControls();
  }
  showRuns();
  showEvaluation();
  await showErrors();
  updateControls();
  store.save(state);
}

function loadReference(file) {
  if (!file || !state.input) return;
  return busy(`Reading reference ${file.name}…`, async () => {
    let bytes;
    try {
      bytes = new Uint8Array(await file.arrayBuffer());
    } catch (err) {
      throw new Error(`${file.name} could not be read (${err.message ?? err}).`);
    }
    await core.call(OPS.inspect, { files: [[file.name, bytes]], series: null, view: false });
    const reference = { name: file.name, bytes };
    const settings = chosenSettings();
    if (state.runs.size) await evaluateAll(reference, settings);
    else {
      state.reference = reference;
      state.evalSettings = settings;
    }
    el.referenceInfo.textContent = `Reference: ${file.name}`;
  });
}

function applyEvaluation() {
  if (!state.reference) return;
  return busy('Evaluating…', () => evaluateAll(state.reference, chosenSettings()));
}

function showPresets(presets) {
  state.presets = presets;
  const custom = el.mappingSelect.querySelector('option[value="custom"]');
  for (const preset of presets) {
    const option = new Option(preset.mapping?.name ?? preset.key, preset.key);
    option.title = `preset ${preset.key}`;
    el.mappingSelect.insertBefore(option, custom);
  }
}

function mappingChanged() {
  const value = el.mappingSelect.value;
  el.mappingJson.hidden = value !== 'custom';
  if (value === 'custom' && !el.mappingJson.value.trim()) {
    // Start from the first preset, or an example, for the user to edit.
    const preset = state.presets[0]?.mapping ?? { name: 'custom', pairs: [{ model: 1, reference: [1], name: 'label 1' }] };
    el.mappingJson.value = JSON.stringify(preset, null, 2);
  }
}

function saveFile(content, fileName, type) {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function exportComparison(kind) {
  const runs = runList();
  if (!runs.length) return;
  const base = `${stem(state.input?.name ?? 'case')}_comparison`;
  const meta = { caseName: state.input?.name, referenceName: state.reference?.name };
  if (kind === 'csv') saveFile(comparisonCsv(runs), `${base}.csv`, 'text/csv');
  if (kind === 'json') saveFile(comparisonJson(runs, meta), `${base}.json`, 'application/json');
  if (kind === 'html') saveFile(comparisonHtml(runs, meta), `${base}.html`, 'text/html');
}

/** Downloads the selected run's labels: NIfTI, or (`likeInput`) in the input's own format. */
function download(likeInput = false) {
  const result = state.result;
  if (!result) return;
  if (likeInput) saveFile(result.labelsLikeInput, `${stem(result.fileName)}${result.likeInputExtension}`, 'application/octet-stream');
  else saveFile(result.labels, result.fileName, 'application/gzip');
}

/** Shows evaluation settings in the form: a preset (or none) by its key, else the custom JSON. */
function showEvalSettings({ mapping, toleranceMm }) {
  el.toleranceInput.value = String(toleranceMm);
  const preset = [...el.mappingSelect.options].some((o) => o.value === mapping && o.value !== 'custom');
  el.mappingSelect.value = preset ? mapping : 'custom';
  if (!preset) el.mappingJson.value = mapping;
  el.mappingJson.hidden = preset;
}

/** Brings back the session this browser kept (www/session-store.js): volume, runs, evaluations. */
async function restoreSession() {
  try {
    const saved = await store.load();
    if (saved && !state.input && !state.running) await restoreSaved(saved); // not if the user already opened something
  } finally {
    state.restored = true;
  }
}

async function restoreSaved(saved) {
  store.paused = true; // the session is rebuilt in steps: keep the stored one until it is whole
  try {
    await viewerStarted;
    const { name, files, series, skipped, volume } = saved.input;
    await loadVolume(name, async () => ({ files, series, skipped }), volume);
    if (state.input?.name !== saved.input.name) return; // it could not be reopened: the error says why
    state.runs = new Map(saved.runs.map((run) => [run.id, run]));
    state.reference = saved.reference;
    if (saved.meta.evalSettings) state.evalSettings = saved.meta.evalSettings;
    showEvalSettings(state.evalSettings);
    if (state.reference) el.referenceInfo.textContent = `Reference: ${state.reference.name}`;
    showRuns();
    const selected = state.runs.get(saved.meta.selected) ?? runList().at(-1);
    if (selected) await selectRun(selected.id);
    updateControls();
    const evaluated = runList().filter((run) => run.evaluation).length;
    el.stage.textContent =
      `Restored from this browser: ${state.input.name}, ${state.runs.size} run(s)` +
      (evaluated ? `, ${evaluated} evaluation(s).` : '.');
  } finally {
    store.paused = false;
  }
  if (state.input) store.save(state);
}

// ---- wiring -----------------------------------------------------------------------------

el.fileInput.addEventListener('change', () => {
  const files = chosenFiles(el.fileInput.files);
  el.fileInput.value = ''; // choosing the same file again still loads it
  loadFiles(files);
});
el.folderInput.addEventListener('change', () => {
  const files = chosenFiles(el.folderInput.files);
  el.folderInput.value = '';
  loadFiles(files, files[0]?.path.split('/')[0] || null);
});
el.seriesOpen.addEventListener('click', openChosenSeries);
el.volumeOpen.addEventListener('click', openChosenVolume);
el.sampleButton.addEventListener('click', loadSample);
el.runButton.addEventListener('click', run);
el.cancelButton.addEventListener('click', cancel);
el.downloadButton.addEventListener('click', () => download());
el.downloadLikeInput.addEventListener('click', () => download(true));
el.modelSelect.addEventListener('change', () => {
  showModelInfo();
  showFit();
  showPromptPanel();
  if (!state.result) showLegend(selectedModel()?.labels ?? []);
  updateControls();
});
el.referenceInput.addEventListener('change', () => {
  const file = el.referenceInput.files[0];
  el.referenceInput.value = '';
  loadReference(file);
});
el.mappingSelect.addEventListener('change', mappingChanged);
el.evaluateButton.addEventListener('click', applyEvaluation);
el.referenceBoxes.addEventListener('click', referenceBoxes);
el.errorsToggle.addEventListener('change', showErrors);
el.exportCsv.addEventListener('click', () => exportComparison('csv'));
el.exportJson.addEventListener('click', () => exportComparison('json'));
el.exportHtml.addEventListener('click', () => exportComparison('html'));
el.opacityInput.addEventListener('input', () => viewer.setOpacity(Number(el.opacityInput.value)));

document.addEventListener('securitypolicyviolation', (e) =>
  showBlocked({ uri: e.blockedURI, directive: e.effectiveDirective }),
);

// A file dropped anywhere must not make the browser navigate away from the page.
for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
el.dropZone.addEventListener('dragover', (e) => {
  e.preventDefault();
  el.dropZone.classList.add('dragging');
});
el.dropZone.addEventListener('dragleave', () => el.dropZone.classList.remove('dragging'));
el.dropZone.addEventListener('drop', async (e) => {
  e.preventDefault();
  el.dropZone.classList.remove('dragging');
  if (state.running) return;
  try {
    const { files, folder } = await droppedFiles(e.dataTransfer);
    await loadFiles(files, folder);
  } catch (err) {
    showError(`The dropped files could not be read (${err.message ?? err}).`);
  }
});

if (!('gpu' in navigator)) {
  el.backendSelect.querySelector('option[value="webgpu"]').textContent = 'WebGPU (not available in this browser)';
}
viewer.opacity = Number(el.opacityInput.value);
showErrorLegend();
updateControls();
offline.start();

const viewerStarted = viewer.start().catch((err) => {
  el.viewerEmpty.textContent = `The viewer is not available in this browser (${err.message ?? err}). Segmentation and download still work.`;
  console.warn('insitu: viewer unavailable:', err);
});

core.ready.then(
  (registry) => {
    state.registry = registry;
    state.ready = true;
    const models = showModels(registry);
    offline.setModels(models, (registry.samples ?? []).map((s) => ({ path: `assets/data/${s.path}`, sha256: s.sha256 })));
    showPresets(registry.presets);
    updateControls();
    restoreSession();
  },
  (err) => {
    showError(err);
    el.modelSelect.replaceChildren(new Option('No models: the core did not start'));
    updateControls();
  },
);
