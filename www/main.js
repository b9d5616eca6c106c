// The page: picks a volume and a model, runs the segmentation in a worker (www/worker.js),
// shows the result in the viewer, and offers it for download. No framework: a few elements,
// one `state` object, and functions that update both.
import { Viewer } from './viewer.js';

const $ = (id) => document.getElementById(id);
const el = {
  fileInput: $('file-input'),
  sampleButton: $('sample-button'),
  volumeInfo: $('volume-info'),
  modelSelect: $('model-select'),
  modelInfo: $('model-info'),
  cropInput: $('crop-input'),
  backendSelect: $('backend-select'),
  runButton: $('run-button'),
  downloadButton: $('download-button'),
  progress: $('progress'),
  stage: $('stage'),
  runStatus: $('run-status'),
  errorBox: $('error-box'),
  dropZone: $('drop-zone'),
  canvas: $('viewer-canvas'),
  viewerEmpty: $('viewer-empty'),
  opacityInput: $('opacity-input'),
  legend: $('legend'),
};

const SAMPLE_URL = 'assets/data/t1_crop.nii.gz';

const state = {
  ready: false, // the core (wasm) has started in the worker
  registry: null, // {models: [...]}
  input: null, // {name, bytes: Uint8Array, info: {dims, spacing, datatype, orientation}}
  result: null, // {labels, backend, adapter, timings_ms, n_classes, modelId, inputName, fileName}
  running: false, // a volume is loading or a segmentation is running
  stage: 'idle', // the last progress stage
  error: null, // the last error message shown, or null
};

/** Test and debugging hooks; nothing in the UI depends on them. */
window.insitu = {
  state,
  get lastResult() {
    return state.result;
  },
};

// ---- the worker -------------------------------------------------------------------------

class Core {
  constructor() {
    this.worker = new Worker(new URL(/* webpackChunkName: "worker" */ './worker.js', import.meta.url), {
      type: 'module',
    });
    this.pending = new Map();
    this.nextId = 1;
    this.ready = new Promise((resolve, reject) => {
      this.started = { resolve, reject };
    });
    this.worker.onmessage = ({ data }) => this.receive(data);
    this.worker.onerror = (event) => {
      event.preventDefault();
      this.fail(`The inference worker failed: ${event.message || 'it could not be started'}`);
    };
  }

  receive(data) {
    if ('ready' in data) {
      if (data.ready) this.started.resolve(data.registry);
      else this.fail(`The segmentation core could not start: ${data.error}`);
      return;
    }
    const call = this.pending.get(data.id);
    if (!call) return;
    if (data.progress) return call.onProgress(data.progress);
    this.pending.delete(data.id);
    if (data.ok) call.resolve(data.value);
    else call.reject(new Error(data.error));
  }

  fail(message) {
    this.started.reject(new Error(message));
    for (const call of this.pending.values()) call.reject(new Error(message));
    this.pending.clear();
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

/** Stage -> [text, progress at its start, progress at its end]. */
const STAGES = {
  download: [(d, t) => `Downloading model (${formatBytes(d)} of ${formatBytes(t)})`, 0, 0.1],
  verify: [() => 'Checking model files', 0.1, 0.1],
  read: [() => 'Reading', 0.1, 0.12],
  conform: [() => 'Conforming to 256³ 1 mm', 0.12, 0.16],
  normalize: [() => 'Normalizing intensities', 0.16, 0.2],
  layer: [(d, t) => `Layer ${d} of ${t}`, 0.2, 0.9],
  argmax: [() => 'Choosing labels', 0.9, 0.93],
  postprocess: [() => 'Cleaning up labels', 0.93, 0.96],
  native: [() => 'Back to native space', 0.96, 1],
};

function stem(fileName) {
  return fileName.replace(/\.(nii\.gz|nii|mgz|mgh|gz)$/i, '') || 'volume';
}

// ---- UI updates -------------------------------------------------------------------------

function showError(err) {
  const message = err instanceof Error ? err.message : String(err);
  state.error = message;
  el.errorBox.textContent = message;
  el.errorBox.hidden = false;
  console.error('insitu:', message);
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
  el.sampleButton.disabled = busy;
  el.modelSelect.disabled = busy || !state.registry;
  el.runButton.disabled = busy || !state.ready || !state.input || !selectedModel();
  el.downloadButton.disabled = busy || !state.result;
  el.dropZone.classList.toggle('busy', busy);
}

function showStage(stage, done, total) {
  state.stage = stage;
  const [text, start, end] = STAGES[stage] ?? [() => stage, el.progress.value, el.progress.value];
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
}

function showVolumeInfo() {
  const input = state.input;
  if (!input) {
    el.volumeInfo.textContent = 'No volume loaded.';
    return;
  }
  const { dims = [], spacing = [], datatype, orientation } = input.info ?? {};
  const parts = [input.name];
  if (dims.length) parts.push(`${dims.join(' × ')} voxels`);
  if (spacing.length) parts.push(`${spacing.slice(0, 3).map((s) => Number(s).toFixed(2)).join(' × ')} mm`);
  if (datatype !== undefined) parts.push(String(datatype));
  if (orientation !== undefined) parts.push(String(Array.isArray(orientation) ? orientation.join('') : orientation));
  el.volumeInfo.textContent = parts.join(' · ');
}

function showRunStatus(result) {
  const t = result.timings_ms ?? {};
  const steps = ['read', 'conform', 'inference', 'native']
    .filter((k) => typeof t[k] === 'number')
    .map((k) => `${k} ${formatSeconds(t[k])}`);
  el.runStatus.dataset.backend = result.backend;
  el.runStatus.textContent = [
    `Ran on ${BACKEND_NAMES[result.backend] ?? result.backend}`,
    result.adapter && `adapter: ${result.adapter}`,
    typeof t.total === 'number' && `${formatSeconds(t.total)} in all` + (steps.length ? ` (${steps.join(', ')})` : ''),
    `${result.n_classes} classes`,
  ]
    .filter(Boolean)
    .join(' · ');
}

// ---- actions ----------------------------------------------------------------------------

const core = new Core();
const viewer = new Viewer(el.canvas);

/** Checks a volume with the core, then makes it the input. A bad file leaves everything as it was. */
async function loadVolume(name, readBytes) {
  if (state.running) return;
  clearError();
  state.running = true;
  updateControls();
  el.stage.textContent = `Opening ${name}…`;
  try {
    const bytes = await readBytes();
    await core.ready;
    const info = await core.call('inspect', { bytes, fileName: name });
    state.input = { name, bytes, info };
    state.result = null;
    el.runStatus.textContent = '';
    delete el.runStatus.dataset.backend;
    el.progress.value = 0;
    el.stage.textContent = 'Ready to run.';
    showVolumeInfo();
    showLegend(selectedModel()?.labels ?? []);
    if (viewer.running) {
      try {
        await viewer.showVolume(bytes, name);
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
  }
}

function loadFile(file) {
  if (!file) return;
  return loadVolume(file.name, async () => new Uint8Array(await file.arrayBuffer()));
}

function loadSample() {
  return loadVolume('t1_crop.nii.gz', async () => {
    const response = await fetch(SAMPLE_URL);
    if (!response.ok) throw new Error(`The sample volume could not be loaded (HTTP ${response.status} for ${SAMPLE_URL}).`);
    return new Uint8Array(await response.arrayBuffer());
  });
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
    const value = await core.call(
      'segment',
      { bytes: input.bytes, fileName: input.name, modelId: model.id, options, base: document.baseURI },
      ({ stage, done, total }) => showStage(stage, done, total),
    );
    const fileName = `${stem(input.name)}_${model.id}.nii.gz`;
    state.result = { ...value, modelId: model.id, inputName: input.name, fileName, labelInfo: model.labels };
    el.progress.value = 1;
    el.stage.textContent = 'Done.';
    showRunStatus(state.result);
    showLegend(model.labels);
    try {
      await viewer.showLabels(value.labels, fileName, model.labels);
    } catch (err) {
      showError(`The viewer could not display the segmentation (${err.message ?? err}); it can still be downloaded.`);
    }
  } catch (err) {
    showError(err);
    el.stage.textContent = 'Failed.';
  } finally {
    state.running = false;
    updateControls();
  }
}

function download() {
  const result = state.result;
  if (!result) return;
  const url = URL.createObjectURL(new Blob([result.labels], { type: 'application/gzip' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = result.fileName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- wiring -----------------------------------------------------------------------------

el.fileInput.addEventListener('change', () => {
  const file = el.fileInput.files[0];
  el.fileInput.value = ''; // choosing the same file again still loads it
  loadFile(file);
});
el.sampleButton.addEventListener('click', loadSample);
el.runButton.addEventListener('click', run);
el.downloadButton.addEventListener('click', download);
el.modelSelect.addEventListener('change', () => {
  showModelInfo();
  if (!state.result) showLegend(selectedModel()?.labels ?? []);
  updateControls();
});
el.opacityInput.addEventListener('input', () => viewer.setOpacity(Number(el.opacityInput.value)));

// A file dropped anywhere must not make the browser navigate away from the page.
for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
el.dropZone.addEventListener('dragover', (e) => {
  e.preventDefault();
  el.dropZone.classList.add('dragging');
});
el.dropZone.addEventListener('dragleave', () => el.dropZone.classList.remove('dragging'));
el.dropZone.addEventListener('drop', (e) => {
  e.preventDefault();
  el.dropZone.classList.remove('dragging');
  if (!state.running) loadFile(e.dataTransfer.files[0]);
});

if (!('gpu' in navigator)) {
  el.backendSelect.querySelector('option[value="webgpu"]').textContent = 'WebGPU (not available in this browser)';
}
viewer.opacity = Number(el.opacityInput.value);
updateControls();

viewer.start().catch((err) => {
  el.viewerEmpty.textContent = `The viewer is not available in this browser (${err.message ?? err}). Segmentation and download still work.`;
  console.warn('insitu: viewer unavailable:', err);
});

core.ready.then(
  (registry) => {
    state.registry = registry;
    state.ready = true;
    showModels(registry);
    updateControls();
  },
  (err) => {
    showError(err);
    el.modelSelect.replaceChildren(new Option('No models: the core did not start'));
    updateControls();
  },
);
