// TensorFlow.js side of scripts/bench-browser.mjs: loads a brainchop TF.js layers model with
// tf.loadLayersModel (the mirror's model.json + weights, over http, as brainchop's web app does),
// runs it on the normalized tensor insitu's network sees (fetched raw float32, i fastest), takes
// the argmax and reads the labels back. One page per backend (webgl, wasm, webgpu), so each has
// its own tf instance and device. Exposed as window.tfjsBench for the driver.
/* global tf */
(() => {
  let model = null;
  let modelUrl = null;

  /** tf.io.http's handler, with the input layer's fixed 256³ shape relaxed to any size. */
  function handler(url) {
    const http = tf.io.http(url);
    return {
      async load() {
        const artifacts = await http.load();
        const topology = artifacts.modelTopology;
        const config = topology.model_config?.config ?? topology.config;
        for (const layer of config.layers) {
          if (layer.class_name === 'InputLayer') layer.config.batch_input_shape = [null, null, null, null, 1];
        }
        return artifacts;
      },
    };
  }

  async function init({ backend, threads }) {
    if (backend === 'wasm') {
      tf.wasm.setWasmPaths('/tfjs/');
      if (threads) tf.wasm.setThreadsCount(threads);
    }
    const ok = await tf.setBackend(backend);
    if (!ok) throw new Error(`tf.setBackend('${backend}') failed`);
    await tf.ready();
    const info = { backend: tf.getBackend(), tfjs: tf.version.tfjs };
    if (backend === 'wasm') {
      info.threads = tf.wasm.getThreadsCount?.() ?? null;
      info.simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
      info.multithread = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    }
    if (backend === 'webgl') {
      const gl = tf.backend().gpgpu?.gl;
      const ext = gl?.getExtension('WEBGL_debug_renderer_info');
      info.renderer = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl?.getParameter(gl.RENDERER);
      info.maxTexture = tf.env().getNumber('WEBGL_MAX_TEXTURE_SIZE');
    }
    if (backend === 'webgpu') {
      const adapter = tf.backend().adapterInfo;
      info.adapter = adapter ? [adapter.vendor, adapter.architecture, adapter.description].filter(Boolean).join(' ') : null;
    }
    return info;
  }

  async function load(url) {
    if (model && modelUrl === url) return 0;
    if (model) model.dispose();
    const t = performance.now();
    model = await tf.loadLayersModel(handler(url));
    modelUrl = url;
    return performance.now() - t;
  }

  /**
   * One forward pass on the raw float32 tensor at `inputUrl` (dims [ni, nj, nk], i fastest);
   * the labels of the `outDims` box at `outStart` of it (default: all of it).
   */
  async function run({ url, inputUrl, dims, outStart = [0, 0, 0], outDims = dims }) {
    const loadMs = await load(url);
    const [ni, nj, nk] = dims;
    const data = new Float32Array(await (await fetch(inputUrl)).arrayBuffer());
    if (data.length !== ni * nj * nk) throw new Error(`${inputUrl}: ${data.length} values for ${dims}`);
    const t0 = performance.now();
    // [k][j][i] -> transpose -> [1, i, j, k, 1], brainchop's enableTranspose
    const labels = tf.tidy(() => {
      const input = tf.tensor3d(data, [nk, nj, ni]).transpose().reshape([1, ni, nj, nk, 1]);
      const out = model.predict(input).squeeze([0]).slice([...outStart, 0], [...outDims, -1]);
      // back to [k][j][i] before the argmax: TF.js 4.22's webgpu transpose miscompiles int32
      return out.transpose([2, 1, 0, 3]).argMax(-1);
    });
    const values = await labels.data(); // [k][j][i]: i fastest, as the NIfTI
    labels.dispose();
    const ms = performance.now() - t0;
    const bytes = new Uint8Array(values.length);
    for (let i = 0; i < values.length; i++) bytes[i] = values[i];
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return { ms, loadMs, labels: btoa(binary), numTensors: tf.memory().numTensors };
  }

  window.tfjsBench = { init, run };
})();
