// The page <-> worker protocol, defined once: www/main.js and www/worker.js import it.
//
// Page -> worker: {id, op, ...args}, op one of OPS (its arguments and answer beside it).
// Worker -> page:
//   {id, ok: true, value} | {id, ok: false, error, trap}   the answer to call `id` (`trap`: the
//                                                          core crashed; the worker must restart)
//   {id, progress: {stage, done, total}}                   while call `id` runs; stage in STAGES
//   {ready: true, registry, presets} | {ready: false, error}   once, when the core has started
//   {blocked: {uri, directive}}                            the security policy blocked a load
//   {gpuFailed: reason}                                    the WebGPU device was lost or raised an
//                                                          error: this worker's GPU is unusable

/** Bytes of a file's start that hold its header (insitu::volume::dicom::HEAD_BYTES). */
export const HEAD_BYTES = 64 << 10;

export const OPS = Object.freeze({
  /** {name, files: [[path, bytes]], series, volume, view} -> the core's summary (with `volumes`,
   *  the 3-D volumes of the input, and `chosen`, the one opened: `volume`, default 0); the worker
   *  keeps the volume for `segment` (a worker started afresh keeps nothing: open it again). */
  open: 'open',
  /** {name, head: bytes (the file's first HEAD_BYTES), size} -> null (the core cannot tell
   *  without the whole file) | {fits, need_bytes, limit_bytes, describe, message}: whether the
   *  file fits the worker's wasm heap (src/wasm.rs, `page_need`), asked before reading it. */
  memoryNeed: 'memory-need',
  /** {name, heads: [[path, bytes, size]]} -> {series: [{..., file_names, need}], skipped,
   *  need_more}: the DICOM series of files from their first bytes; send `need_more` whole. */
  listSeries: 'list-series',
  /** As `open`, keeping nothing (checks a file, e.g. reference labels). */
  inspect: 'inspect',
  /** {modelId, options: {backend, crop}, base} -> the run (labels, backend, adapter, reason,
   *  fallback, timings_ms, ...); model files are fetched from `base` the first time. */
  segment: 'segment',
  /** {modelId} -> [warning]: where the held volume does not fit the model's card (may go on). */
  fit: 'fit',
  /** {pred, predName, reference, referenceName, mapping, toleranceMm} -> {report, csv, errorMap} */
  evaluate: 'evaluate',
  /** {modelId, request: {backend, modality, window, prompts: [{box, k, label} | {box3d, label}]},
   *  base} -> the prompt run (labels, backend, modality, stats: {encoder_ms, decoder_ms,
   *  encoded_slices, decoded_boxes, slices}, ...; src/wasm.rs `Insitu::prompt`). The worker keeps
   *  embeddings and masks for the next call on the same volume. */
  prompt: 'prompt',
  /** {k, modality, level, width} -> {width, height, image (uint8, rows j), labels (uint16 | null):
   *  the last prompt run's labels on slice k} */
  sliceImage: 'slice-image',
  /** {} -> {modality: 'CT'|'MR', why}: how a promptable model reads the held volume unless told */
  guessModality: 'guess-modality',
  /** {reference: bytes, referenceName, protocol: 'per-slice'|'3d'} -> {prompts, protocol}: each
   *  reference label's bounding box(es), labelled with its value (the challenge's protocol) */
  referencePrompts: 'reference-prompts',
  /** Test hook: destroys the worker's WebGPU devices, as a lost GPU would. -> {destroyed} */
  loseGpu: 'lose-gpu',
});

/** Progress stages of a segmentation, in order, with their share of the progress bar. The
 *  worker emits download and verify; the core the rest (src/pipeline.rs, `Stage::name`). */
export const STAGES = Object.freeze([
  ['download', 0.1],
  ['verify', 0.02],
  ['conform', 0.04],
  ['normalize', 0.04],
  ['layer', 0.72],
  ['postprocess', 0.04],
  ['native', 0.04],
]);

/** Progress stages of a prompt run: the worker's download and verify, then the core's one
 *  stage per decoded slice (src/wasm.rs `PROMPT_STAGE`). */
export const PROMPT_STAGES = Object.freeze([
  ['download', 0.1],
  ['verify', 0.02],
  ['slice', 0.88],
]);
