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

export const OPS = Object.freeze({
  /** {name, files: [[path, bytes]], series, view} -> the core's summary; the worker keeps the
   *  volume for `segment` (a worker started afresh keeps nothing: open it again). */
  open: 'open',
  /** As `open`, keeping nothing (checks a file, e.g. reference labels). */
  inspect: 'inspect',
  /** {modelId, options: {backend, crop}, base} -> the run (labels, backend, adapter, reason,
   *  fallback, timings_ms, ...); model files are fetched from `base` the first time. */
  segment: 'segment',
  /** {modelId} -> [warning]: where the held volume does not fit the model's card (may go on). */
  fit: 'fit',
  /** {pred, predName, reference, referenceName, mapping, toleranceMm} -> {report, csv, errorMap} */
  evaluate: 'evaluate',
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
