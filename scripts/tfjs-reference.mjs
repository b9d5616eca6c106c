#!/usr/bin/env node
// Forward-pass reference for insitu's TF.js-format models: TensorFlow.js itself (npm
// @tensorflow/tfjs 4.22.0 with its wasm backend, in node) runs the mirror's layers model on
// exactly the normalized 256³ tensor insitu feeds its network, takes the argmax, and writes the
// labels as a uint8 NIfTI on the conformed grid. tests/tfjs_reference.rs compares insitu's labels
// with these files (committed as fixtures in tests/fixtures/tfjs/, with the command that made them).
//
//   node scripts/tfjs-reference.mjs --model tissue_gw_tfjs|tissue_gw_20ch|subcortical
//        [--input CONFORMED.nii.gz] [--out LABELS.nii.gz] [--backend wasm|cpu] [--slab N]
//
// Input: a conformed uint8 256³ volume; default the mirror's
// data/reference/t1_crop_conformed_by_niimath.nii.gz, which is voxel for voxel what insitu's
// conform makes of t1_crop.nii.gz (tests/preprocess.rs checks that).
//
// The model is loaded with tf.loadLayersModel, as brainchop's web app does, through an IOHandler
// that reads model.json and its weight shards from the mirror (node's tfjs has no file:// loader
// without tfjs-node, whose install downloads a native TensorFlow).
//
// Normalization: the registry's `input.normalization` of the model, computed in float32 exactly
// as insitu's `pipeline::normalize` does (the same operations, each rounded to f32 with
// Math.fround; quantiles by numpy's 'linear' method from the 256-bin histogram). The script prints
// the sha256 of that tensor (f32 little-endian, i fastest); the Rust test checks insitu's own
// normalized tensor has the same sha256, so both ran on the same input bit for bit.
//
// Axis order as brainchop's web app: the slices are stacked as a [k][j][i] tensor and transposed
// (all axes reversed, its `enableTranspose`), so the model sees [1, i, j, k, 1].
//
// Slabs: the network runs on slabs along the model's first axis (i), each grown by the network's
// receptive radius (the sum of the dilations of its 3x3x3 layers) on both sides where the volume
// goes on, and only the slab's own part of the output is kept. "same" zero padding at a slab's cut
// reaches at most that radius inward, so the kept voxels are computed from exactly the values a
// whole-volume pass would use (wasm32 memory is 4 GiB, too small for a whole 256³ 20-channel pass).
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function parseArgs(argv) {
  const args = { backend: 'wasm', slab: 0 };
  for (let i = 0; i < argv.length; i++) {
    const [key, inline] = argv[i].split('=', 2);
    const value = () => inline ?? argv[++i];
    switch (key) {
      case '--model': args.model = value(); break;
      case '--input': args.input = value(); break;
      case '--out': args.out = value(); break;
      case '--backend': args.backend = value(); break;
      case '--slab': args.slab = Number(value()); break;
      case '-h': case '--help':
        console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 10).join('\n'));
        process.exit(0);
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!args.model) throw new Error('--model is required');
  return args;
}

export function mirrorDir() {
  const dir = process.env.INSITU_MIRROR ?? join(ROOT, '..', 'shared');
  return resolve(dir);
}

/** The registry entry of a TF.js-format model: its folder in the mirror and its normalization. */
export function registryModel(id) {
  const registry = JSON.parse(readFileSync(join(ROOT, 'src/models/registry.json'), 'utf8'));
  const entry = registry.models.find((m) => m.id === id);
  if (!entry) throw new Error(`${id} is not in src/models/registry.json`);
  if (entry.format !== 'tfjs-layers') throw new Error(`${id} is ${entry.format}, not a TF.js layers model`);
  const json = entry.files.find((f) => f.name === 'model.json');
  return { entry, folder: join(mirrorDir(), 'models', dirname(json.path)), normalization: entry.input.normalization };
}

/**
 * A tf.io.IOHandler over a model folder (model.json + shards; a one-shard model may call its
 * shard model.bin). The input layer's fixed [null, 256, 256, 256, 1] becomes
 * [null, null, null, null, 1], so the same layers run on a slab or a crop (tfjs-layers checks
 * the input against that shape; the convolutions themselves take any size); weights and layers
 * are untouched.
 */
export function folderHandler(folder) {
  return {
    async load() {
      const model = JSON.parse(readFileSync(join(folder, 'model.json'), 'utf8'));
      const config = model.modelTopology.model_config?.config ?? model.modelTopology.config;
      for (const layer of config.layers) {
        if (layer.class_name === 'InputLayer') layer.config.batch_input_shape = [null, null, null, null, 1];
      }
      const groups = model.weightsManifest;
      const single = groups.length === 1 && groups[0].paths.length === 1;
      const buffers = [];
      const weightSpecs = [];
      for (const group of groups) {
        for (const path of group.paths) {
          const candidates = [path, path.split('/').pop(), ...(single ? ['model.bin'] : [])];
          const found = candidates.map((name) => join(folder, name)).find((p) => {
            try { readFileSync(p, { flag: 'r' }).length; return true; } catch { return false; }
          });
          if (!found) throw new Error(`${folder}: weight shard ${path} not found`);
          buffers.push(readFileSync(found));
        }
        weightSpecs.push(...group.weights);
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: model.modelTopology,
        weightSpecs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
      };
    },
  };
}

/** Sum of dilation * (kernel - 1) / 2 over the Conv3D layers: how far zero padding can reach in. */
export function receptiveRadius(model) {
  let radius = 0;
  for (const layer of model.layers) {
    if (layer.getClassName() !== 'Conv3D') continue;
    const { kernelSize, dilationRate } = layer;
    radius += Math.max(...kernelSize.map((k, a) => ((k - 1) / 2) * (dilationRate[a] ?? dilationRate[0])));
  }
  return radius;
}

export function readNifti(path) {
  let buf = readFileSync(path);
  if (buf[0] === 0x1f && buf[1] === 0x8b) buf = gunzipSync(buf);
  if (buf.readInt32LE(0) !== 348) throw new Error(`${path}: not a little-endian NIfTI-1 file`);
  const dims = [1, 2, 3].map((i) => buf.readInt16LE(40 + 2 * i));
  const datatype = buf.readInt16LE(70);
  const voxOffset = buf.readFloatLE(108);
  const slope = buf.readFloatLE(112);
  const inter = buf.readFloatLE(116);
  if (datatype !== 2) throw new Error(`${path}: datatype ${datatype}, expected uint8 (a conformed volume)`);
  if (slope !== 0 && !(slope === 1 && inter === 0)) throw new Error(`${path}: scaled data (slope ${slope})`);
  const n = dims[0] * dims[1] * dims[2];
  return { header: buf.subarray(0, voxOffset), dims, voxels: buf.subarray(voxOffset, voxOffset + n) };
}

const f = Math.fround;

/** numpy's float32 `_lerp(a, b, t)` with a weak (Python float) t, as src/preprocess/normalize.rs. */
function lerp(a, b, t) {
  const diff = f(b - a);
  return t >= 0.5 ? f(b - f(diff * f(1 - t))) : f(a + f(diff * f(t)));
}

/** np.quantile(data, q) ('linear') of a uint8 volume from its histogram, in float32. */
function quantile(hist, n, q) {
  const last = n - 1;
  const virtualIndex = last * q;
  const kth = (k) => {
    let seen = 0;
    for (let v = 0; v < 256; v++) {
      seen += hist[v];
      if (seen > k) return v;
    }
    return 255;
  };
  if (virtualIndex >= last) return kth(last);
  const previous = Math.floor(virtualIndex);
  return lerp(kth(previous), kth(previous + 1), virtualIndex - previous);
}

/** insitu's pipeline::normalize of a conformed uint8 volume, bit for bit, as a Float32Array. */
export function normalize(voxels, normalization) {
  const out = new Float32Array(voxels.length);
  if (normalization === 'min-max') {
    let lo = 255, hi = 0;
    for (const v of voxels) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const range = hi > lo ? hi - lo : 1;
    for (let i = 0; i < voxels.length; i++) out[i] = f(voxels[i] - lo) / range; // f32 division = f64 division rounded
    return out;
  }
  if (normalization === 'quantile-2-98') {
    const hist = new Float64Array(256);
    for (const v of voxels) hist[v]++;
    const qlow = quantile(hist, voxels.length, 0.02);
    const qhigh = quantile(hist, voxels.length, 0.98);
    const denominator = f(f(qhigh - qlow) + f(1e-3));
    for (let i = 0; i < voxels.length; i++) {
      const x = f(f(voxels[i] - qlow) / denominator);
      out[i] = Math.min(Math.max(x, 0), 1);
    }
    return out;
  }
  throw new Error(`normalization ${normalization} is not one insitu's TF.js models use`);
}

export function sha256(typed) {
  return createHash('sha256').update(new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength)).digest('hex');
}

/**
 * Labels (uint8, i fastest: the NIfTI's order) of `model` on the normalized volume `data`
 * (dims [ni, nj, nk]), in slabs of `slab` i-planes grown by `radius` (slab 0: one pass).
 */
export async function predictLabels(model, data, dims, radius, slab, onSlab = () => {}) {
  const [ni, nj, nk] = dims;
  const labels = new Uint8Array(ni * nj * nk);
  const step = slab > 0 ? slab : ni;
  // [k][j][i] -> transpose -> [i][j][k], as brainchop's web app (enableTranspose)
  const ijk = tf.tidy(() => tf.tensor3d(data, [nk, nj, ni]).transpose());
  for (let i0 = 0; i0 < ni; i0 += step) {
    const i1 = Math.min(ni, i0 + step);
    const lo = Math.max(0, i0 - radius);
    const hi = Math.min(ni, i1 + radius);
    const t0 = performance.now();
    const part = tf.tidy(() => {
      const input = ijk.slice([lo, 0, 0], [hi - lo, nj, nk]).reshape([1, hi - lo, nj, nk, 1]);
      const out = model.predict(input);
      // argmax over the classes, cut to the slab's own planes, back to [k][j][i]
      return out.argMax(-1).squeeze([0]).slice([i0 - lo, 0, 0], [i1 - i0, nj, nk]).transpose().toInt();
    });
    const values = await part.data(); // [nk][nj][i1 - i0]
    part.dispose();
    const w = i1 - i0;
    for (let k = 0; k < nk; k++) {
      for (let j = 0; j < nj; j++) {
        const src = (k * nj + j) * w;
        const dst = (k * nj + j) * ni + i0;
        for (let x = 0; x < w; x++) labels[dst + x] = values[src + x];
      }
    }
    onSlab({ i0, i1, lo, hi, ms: performance.now() - t0 });
  }
  ijk.dispose();
  return labels;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { folder, normalization } = registryModel(args.model);
  const input = args.input ?? join(mirrorDir(), 'data/reference/t1_crop_conformed_by_niimath.nii.gz');
  const out = args.out ?? `t1_crop_${args.model}_tfjs.nii.gz`;
  await tf.setBackend(args.backend);
  await tf.ready();
  const volume = readNifti(input);
  const data = normalize(volume.voxels, normalization);
  const inputSha = sha256(data);
  console.error(`input ${input}: ${volume.dims.join('x')}, ${normalization}, normalized tensor sha256 ${inputSha}`);
  const model = await tf.loadLayersModel(folderHandler(folder));
  const radius = receptiveRadius(model);
  console.error(`model ${args.model} (${folder}), receptive radius ${radius}, backend ${tf.getBackend()}, tfjs ${tf.version.tfjs}`);
  const start = performance.now();
  const labels = await predictLabels(model, data, volume.dims, radius, args.slab, (s) =>
    console.error(`  planes i ${s.i0}..${s.i1} (computed ${s.lo}..${s.hi}): ${(s.ms / 1000).toFixed(1)} s`));
  const seconds = (performance.now() - start) / 1000;
  const file = gzipSync(Buffer.concat([volume.header, Buffer.from(labels.buffer)]), { level: 9 });
  writeFileSync(out, file);
  const counts = {};
  for (const l of labels) counts[l] = (counts[l] ?? 0) + 1;
  const summary = {
    model: args.model,
    file: out,
    sha256: createHash('sha256').update(file).digest('hex'),
    labels_sha256: sha256(labels),
    input: input.replace(mirrorDir(), '$INSITU_MIRROR'),
    normalization,
    input_sha256: inputSha,
    tfjs: tf.version.tfjs,
    backend: tf.getBackend(),
    slab: args.slab,
    radius,
    seconds: Number(seconds.toFixed(1)),
    label_counts: counts,
  };
  console.log(JSON.stringify(summary));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`tfjs-reference: ${e.stack ?? e}`);
    process.exit(1);
  });
}
