// The inference worker: loads the Rust core (wasm) and holds its handle (`Insitu`: the opened
// volume, the loaded models), fetches and checks model files, runs segmentations and reports
// progress. Its messages are defined in www/protocol.js.
import init, {
  Insitu,
  registry_json,
  inspect_volume,
  evaluate,
  mapping_presets_json,
  memory_need,
  list_series_heads,
  reference_prompts,
} from '../pkg/insitu.js';
import { OPS } from './protocol.js';

const wasmUrl = new URL('../pkg/insitu_bg.wasm', import.meta.url);

let registry = null;
let presets = [];
/** The core's handle; created once the wasm runs. */
let core = null;
/** The WebGPU devices the core asked for (see watchGpuDevices). */
const gpuDevices = new Set();

watchGpuDevices();

const ready = (async () => {
  await init({ module_or_path: wasmUrl });
  core = new Insitu();
  registry = JSON.parse(registry_json());
  presets = JSON.parse(mapping_presets_json());
  return registry;
})();

/**
 * Tells the page when a WebGPU device the core uses is lost or raises an error: the core may
 * never hear of it (a lost device's readbacks need not settle), so the page ends this worker
 * and repeats the run on the CPU. Installed before the core starts, which asks through it.
 */
function watchGpuDevices() {
  const Adapter = self.GPUAdapter;
  if (!Adapter) return;
  const requestDevice = Adapter.prototype.requestDevice;
  Adapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    gpuDevices.add(device);
    device.lost.then((info) => {
      const why = [info.reason, info.message].filter(Boolean).join(': ');
      postMessage({ gpuFailed: `the WebGPU device was lost (${why || 'no reason given'})` });
    });
    device.addEventListener('uncapturederror', (event) => {
      postMessage({ gpuFailed: `WebGPU reported an error: ${event.error?.message ?? event.error}` });
    });
    return device;
  };
}

self.addEventListener('securitypolicyviolation', (e) =>
  postMessage({ blocked: { uri: e.blockedURI, directive: e.effectiveDirective } }),
);

ready.then(
  (registry) => postMessage({ ready: true, registry, presets }),
  (err) => postMessage({ ready: false, error: message(err) }),
);

function message(err) {
  if (err instanceof Error) return err.message;
  return typeof err === 'string' ? err : JSON.stringify(err);
}

/** Maps (as serde-wasm-bindgen may return for maps) to plain objects, recursively. */
function plain(value) {
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, plain(v)]));
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object' && !ArrayBuffer.isView(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Reads a response body, reporting the bytes received so far. */
async function readBody(response, onBytes) {
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.byteLength;
    onBytes(received);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

/**
 * Fetches a model's files from this site (assets/models/<path>; never the upstream URL) and
 * checks each against the registry's sha256.
 */
async function fetchModel(model, base, progress) {
  const total = model.files.reduce((sum, f) => sum + (f.bytes || 0), 0);
  const files = new Map();
  let before = 0;
  for (const file of model.files) {
    const url = new URL(`assets/models/${file.path}`, base);
    let response;
    try {
      response = await fetch(url);
    } catch (err) {
      throw new Error(`Could not download ${file.path} for model ${model.id} (${message(err)}).`);
    }
    if (!response.ok) {
      throw new Error(`Could not download ${file.path} for model ${model.id} (HTTP ${response.status}).`);
    }
    const bytes = await readBody(response, (n) => progress('download', before + n, total));
    before += bytes.byteLength;
    progress('verify', files.size, model.files.length);
    const actual = hex(await crypto.subtle.digest('SHA-256', bytes));
    if (actual !== file.sha256.toLowerCase()) {
      throw new Error(
        `${file.path} (model ${model.id}) failed its integrity check and was not used: ` +
          `its sha256 is ${actual}, the registry expects ${file.sha256}.`,
      );
    }
    files.set(file.name, bytes);
  }
  return files;
}

/** Loads model `modelId` into the core unless it holds it, its files fetched from `base`. */
async function ensureModel(modelId, base, progress) {
  await ready;
  const model = registry.models.find((m) => m.id === modelId);
  if (!model) throw new Error(`Unknown model ${modelId}.`);
  if (!core.has_model(modelId)) core.add_model(modelId, await fetchModel(model, base, progress));
}

/** [[name, bytes]] -> the Map<name, Uint8Array> the core takes. */
function fileMap(files) {
  return new Map(files.map(([name, bytes]) => [name, new Uint8Array(bytes)]));
}

const ops = {
  async [OPS.open]({ name, files, series, volume, view }) {
    await ready;
    return plain(core.open(name, fileMap(files), series ?? undefined, volume ?? undefined, Boolean(view)));
  },

  async [OPS.memoryNeed]({ name, head, size }) {
    await ready;
    return plain(memory_need(name, new Uint8Array(head), size));
  },

  async [OPS.listSeries]({ name, heads }) {
    await ready;
    return plain(list_series_heads(name, heads.map(([path, bytes, size]) => [path, new Uint8Array(bytes), size])));
  },

  async [OPS.inspect]({ files, series, view }) {
    await ready;
    return plain(inspect_volume(fileMap(files), series ?? undefined, Boolean(view)));
  },

  async [OPS.segment]({ modelId, options, base }, progress) {
    await ensureModel(modelId, base, progress);
    const r = await core.segment(modelId, options, progress);
    // Copy the fields out: the result may be a wasm-bindgen object the page cannot receive.
    return {
      labels: new Uint8Array(r.labels),
      labelsLikeInput: new Uint8Array(r.labels_like_input),
      likeInputExtension: r.like_input_extension,
      backend: r.backend,
      adapter: r.adapter,
      reason: r.reason,
      fallback: r.fallback,
      timings_ms: plain(r.timings_ms),
      n_classes: r.n_classes,
      parameters: r.parameters,
      gflops: r.gflops,
      peak_tensor_mb: r.peak_tensor_mb,
      wasm_heap_mb: r.wasm_heap_mb,
    };
  },

  async [OPS.prompt]({ modelId, request, base }, progress) {
    await ensureModel(modelId, base, progress);
    const r = await core.prompt(modelId, request, progress);
    return {
      ...plain(r),
      labels: new Uint8Array(r.labels),
      labelsLikeInput: new Uint8Array(r.labels_like_input),
      likeInputExtension: r.like_input_extension,
    };
  },

  async [OPS.sliceImage]({ k, modality, level, width }) {
    await ready;
    const r = core.slice_image(k, modality ?? undefined, level, width);
    return { width: r.width, height: r.height, image: new Uint8Array(r.image), labels: r.labels ? new Uint16Array(r.labels) : null };
  },

  async [OPS.guessModality]() {
    await ready;
    return plain(core.guess_modality());
  },

  async [OPS.referencePrompts]({ reference, referenceName, protocol }) {
    await ready;
    return plain(reference_prompts(new Uint8Array(reference), referenceName, protocol));
  },

  async [OPS.fit]({ modelId }) {
    await ready;
    return core.fit_warnings(modelId);
  },

  async [OPS.evaluate]({ pred, predName, reference, referenceName, mapping, toleranceMm }) {
    await ready;
    const r = evaluate(new Uint8Array(pred), predName, new Uint8Array(reference), referenceName, mapping, toleranceMm);
    return { report: plain(r.report), csv: r.csv, errorMap: new Uint8Array(r.error_map) };
  },

  async [OPS.loseGpu]() {
    for (const device of gpuDevices) device.destroy();
    return { destroyed: gpuDevices.size };
  },
};

onmessage = async ({ data }) => {
  const { id, op, ...args } = data;
  const progress = (stage, done, total) => postMessage({ id, progress: { stage, done, total } });
  try {
    if (!ops[op]) throw new Error(`Unknown operation ${op}.`);
    const value = await ops[op](args, progress);
    const transfer = Object.values(value ?? {})
      .filter((v) => v instanceof Uint8Array || v instanceof Uint16Array)
      .map((v) => v.buffer);
    postMessage({ id, ok: true, value }, transfer);
  } catch (err) {
    // A trap (a panic in the core) leaves the wasm instance unusable.
    postMessage({ id, ok: false, error: message(err), trap: err instanceof WebAssembly.RuntimeError });
  }
};
