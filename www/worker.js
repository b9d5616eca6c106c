// The inference worker: loads the Rust core (wasm), fetches and checks model files, runs
// segmentation, and reports progress. The page talks to it with messages
//   {id, op: 'open' | 'segment' | 'evaluate', ...}  ->  {id, ok: true, value} | {id, ok: false, error}
// plus {id, progress: {stage, done, total}} while a segmentation runs. On start it posts
//   {ready: true, registry, presets} or {ready: false, error}.
// When the security policy blocks something the worker tried to load it posts
//   {blocked: {uri, directive}}   (the page shows it; see main.js `showBlocked`).
import init, { registry_json, open_volume, segment, evaluate, mapping_presets_json } from '../pkg/insitu.js';

const wasmUrl = new URL('../pkg/insitu_bg.wasm', import.meta.url);

let registry = null;
let presets = [];
/** modelId -> Promise<Map<fileName, Uint8Array>> of files whose sha256 matched the registry. */
const modelFiles = new Map();

const ready = (async () => {
  await init(wasmUrl);
  registry = JSON.parse(registry_json());
  presets = JSON.parse(mapping_presets_json());
  return registry;
})();

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

function loadModel(model, base, progress) {
  let files = modelFiles.get(model.id);
  if (!files) {
    files = fetchModel(model, base, progress);
    modelFiles.set(model.id, files);
    files.catch(() => modelFiles.delete(model.id)); // try again next time
  }
  return files;
}

/** [[name, bytes]] -> the Map<name, Uint8Array> the core takes. */
function fileMap(files) {
  return new Map(files.map(([name, bytes]) => [name, new Uint8Array(bytes)]));
}

const ops = {
  /**
   * Reads a selection of files: resolves {series, skipped} when they hold several DICOM series
   * and `series` (a SeriesInstanceUID) is null, else {info, skipped, view?: Uint8Array (.nii)}.
   */
  async open({ files, series, view }) {
    await ready;
    return plain(open_volume(fileMap(files), series ?? undefined, Boolean(view)));
  },

  async segment({ files, series, inputName, modelId, options, base }, progress) {
    await ready;
    const model = registry.models.find((m) => m.id === modelId);
    if (!model) throw new Error(`Unknown model ${modelId}.`);
    const modelFiles = await loadModel(model, base, progress);
    const r = await segment(fileMap(files), series ?? undefined, inputName, modelId, modelFiles, options, progress);
    // Copy the fields out: the result may be a wasm-bindgen object the page cannot receive.
    return {
      labels: new Uint8Array(r.labels),
      labelsLikeInput: new Uint8Array(r.labels_like_input),
      likeInputExtension: r.like_input_extension,
      backend: r.backend,
      adapter: r.adapter,
      timings_ms: plain(r.timings_ms),
      n_classes: r.n_classes,
      parameters: r.parameters,
      gflops: r.gflops,
      peak_tensor_mb: r.peak_tensor_mb,
      wasm_heap_mb: r.wasm_heap_mb,
    };
  },

  /** Metrics of a segmentation against reference labels; `mapping`: "", a preset key or mapping JSON. */
  async evaluate({ pred, predName, reference, referenceName, mapping, toleranceMm }) {
    await ready;
    const r = evaluate(new Uint8Array(pred), predName, new Uint8Array(reference), referenceName, mapping, toleranceMm);
    return { report: plain(r.report), csv: r.csv, errorMap: new Uint8Array(r.error_map) };
  },
};

onmessage = async ({ data }) => {
  const { id, op, ...args } = data;
  const progress = (stage, done, total) => postMessage({ id, progress: { stage, done, total } });
  try {
    if (!ops[op]) throw new Error(`Unknown operation ${op}.`);
    const value = await ops[op](args, progress);
    const transfer = Object.values(value ?? {})
      .filter((v) => v instanceof Uint8Array)
      .map((v) => v.buffer);
    postMessage({ id, ok: true, value }, transfer);
  } catch (err) {
    postMessage({ id, ok: false, error: message(err) });
  }
};
