#!/usr/bin/env node
// Browser side-by-side benchmark: insitu's page (CPU path and WebGPU path, driven as the browser
// tests drive it) against TensorFlow.js, brainchop's own runtime (webgl, wasm and webgpu
// backends), in one headless Chromium, interleaved, on the same crops, same model, same input.
//
//   node scripts/bench-browser.mjs [--model tissue_gw_tfjs|tissue_gw_20ch] [--sizes 64]
//        [--gpu-sizes 32] [--repeat 1] [--gpu-repeat 1] [--impls insitu-cpu,insitu-webgpu,tfjs-wasm,tfjs-webgl,tfjs-webgpu]
//        [--inputs DIR] [--out DIR]
//
// Inputs: S³ crops of the sample t1_crop.nii.gz around the grid's centre. The page gets the crop
// file and does what it always does (conform to 256³, normalize over the whole grid, run on the
// head's box, keep the largest component, back onto the crop's grid). TF.js gets the normalized
// tensor insitu's network sees for that crop, written by insitu's own code
// (`cargo test --features gpu --test tfjs_reference -- --ignored --exact write_bench_inputs`, run by
// this script unless --inputs names a folder that has them), loads the mirror's model.json/bin with
// tf.loadLayersModel, takes the argmax and reads the labels back; its labels then get the same
// clean-up as insitu's (the largest 26-connected component of non-background voxels kept).
//
// Each implementation runs once per size first (first run: model preparation and shader
// compilation included, reported apart), then `--repeat` warm runs, the order rotating each round.
// SwiftShader (the CPU fallback adapter behind WebGPU and WebGL here) is slow, so the GPU paths run
// at --gpu-sizes only, --gpu-repeat warm runs. Times: insitu's "inference" is the page's own
// measurement of the network and argmax (timings_ms.inference); "page" is click to labels (read,
// conform, normalize, network, clean-up, back to the input grid). TF.js: predict + argMax + reading
// the labels back (the input tensor already in the page). Ratios: TF.js ÷ insitu inference (above
// 1: insitu faster). Agreement: share of voxels with the same label.
//
// TF.js gets the crop grown by the network's receptive radius (the zeros of the conformed grid
// around it), as insitu's network reads it, and the labels of the crop are kept: zero padding
// applies at every layer, so a pass over the bare crop differs near its faces. Two more rows show
// what a side-by-side without that care measures (see README): `--impls ...,tfjs-wasm-crop` (the
// same normalized crop, no margin) and `tfjs-wasm-own` (the crop's own voxels, min-max over the
// crop, without insitu's conform; no margin).
//
// The TF.js page (scripts/bench-browser/) is served by this script's own server on another port,
// cross-origin isolated so the wasm backend can use its threads; it is never part of dist/.
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { basename, dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM, DIST, ROOT, idle, missingBuild, readNifti } from '../tests/browser/helpers.mjs';

const IMPLS = ['insitu-cpu', 'insitu-webgpu', 'tfjs-wasm', 'tfjs-webgl', 'tfjs-webgpu', 'tfjs-wasm-crop', 'tfjs-wasm-own'];
const DEFAULT_IMPLS = IMPLS.slice(0, 5);
const GPU_IMPLS = new Set(['insitu-webgpu', 'tfjs-webgl', 'tfjs-webgpu']);
const RUN_TIMEOUT_MS = 30 * 60_000;

function parseArgs(argv) {
  const args = {
    model: 'tissue_gw_tfjs',
    sizes: [64],
    gpuSizes: [32],
    repeat: 1,
    gpuRepeat: 1,
    impls: DEFAULT_IMPLS,
    inputs: null,
    out: join(ROOT, 'target/bench-browser'),
  };
  const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
  const sizes = (v) => list(v).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 8 || n > 256) throw new Error(`size ${s}: expected 8..256`);
    return n;
  });
  for (let i = 0; i < argv.length; i++) {
    const [key, inline] = argv[i].split('=', 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${key} needs a value`);
      return v;
    };
    switch (key) {
      case '--model': args.model = value(); break;
      case '--sizes': args.sizes = sizes(value()); break;
      case '--gpu-sizes': args.gpuSizes = sizes(value()); break;
      case '--repeat': args.repeat = Number(value()); break;
      case '--gpu-repeat': args.gpuRepeat = Number(value()); break;
      case '--impls': args.impls = list(value()); break;
      case '--inputs': args.inputs = resolve(value()); break;
      case '--out': args.out = resolve(value()); break;
      case '-h': case '--help':
        console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 9).join('\n').replace(/^\/\/ ?/gm, ''));
        process.exit(0);
      default: throw new Error(`unknown argument ${argv[i]} (--help)`);
    }
  }
  for (const impl of args.impls) if (!IMPLS.includes(impl)) throw new Error(`--impls: unknown ${impl} (known: ${IMPLS.join(', ')})`);
  for (const n of [args.repeat, args.gpuRepeat]) if (!Number.isInteger(n) || n < 0) throw new Error('--repeat/--gpu-repeat: expected an integer >= 0');
  return args;
}

const log = (msg) => console.error(`== ${msg}`);
const median = (xs) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const load = () => loadavg().map((x) => x.toFixed(2)).join(' ');

// ---- inputs -----------------------------------------------------------------------------

function mirrorDir() {
  return resolve(process.env.INSITU_MIRROR ?? join(ROOT, '..', 'shared'));
}

function modelEntry(id) {
  const registry = JSON.parse(readFileSync(join(ROOT, 'src/models/registry.json'), 'utf8'));
  const entry = registry.models.find((m) => m.id === id);
  if (!entry || entry.format !== 'tfjs-layers') throw new Error(`--model ${id}: not a TF.js layers model of the registry`);
  return { entry, folder: dirname(entry.files.find((f) => f.name === 'model.json').path) };
}

function ensureInputs(args, sizes) {
  const dir = args.inputs ?? join(args.out, 'inputs');
  const missing = sizes.filter((s) => !existsSync(join(dir, `t1_${s}_${args.model}.json`)) || !existsSync(join(dir, `t1_${s}.nii.gz`)));
  if (missing.length) {
    if (args.inputs) throw new Error(`--inputs ${dir}: no inputs for sizes ${missing.join(',')}`);
    log(`writing the inputs (sizes ${sizes.join(',')}) with insitu's own conform + normalization: cargo test --test tfjs_reference write_bench_inputs`);
    const r = spawnSync('cargo', ['test', '--features', 'gpu', '--test', 'tfjs_reference', '--', '--ignored', '--exact', 'write_bench_inputs', '--nocapture'], {
      cwd: ROOT,
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, INSITU_BENCH_DIR: dir, INSITU_BENCH_SIZES: sizes.join(','), INSITU_BENCH_MODEL: args.model },
    });
    if (r.status !== 0) throw new Error('writing the bench inputs failed (see above)');
  }
  const info = {};
  for (const s of sizes) {
    info[s] = JSON.parse(readFileSync(join(dir, `t1_${s}_${args.model}.json`), 'utf8'));
    // The crop's own voxels, min-max over the crop (no conform): for tfjs-wasm-own.
    const crop = readNifti(readFileSync(join(dir, info[s].volume)), info[s].volume);
    if (crop.datatype !== 16 || !crop.little) throw new Error(`${info[s].volume}: expected little-endian float32`);
    const v = new Float32Array(crop.voxels.buffer.slice(crop.voxels.byteOffset, crop.voxels.byteOffset + crop.voxels.length));
    let lo = Infinity, hi = -Infinity;
    for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
    const own = v.map((x) => (x - lo) / (hi > lo ? hi - lo : 1));
    writeFileSync(join(dir, `t1_${s}_own.f32`), Buffer.from(own.buffer));
  }
  return { dir, info };
}

// ---- servers ----------------------------------------------------------------------------

async function startProductServer() {
  const server = spawn(process.execPath, [join(ROOT, 'scripts/serve.mjs'), '0', DIST], { stdio: ['ignore', 'pipe', 'inherit'] });
  const origin = await new Promise((ok, fail) => {
    let out = '';
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /http:\/\/127\.0\.0\.1:\d+/.exec(out);
      if (m) ok(m[0]);
    });
    server.on('exit', (code) => fail(new Error(`scripts/serve.mjs exited (${code})`)));
  });
  return { server, origin };
}

const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm' };

/** The TF.js page's own server: the page, TF.js's dist files, the mirror's model, the inputs. */
function startTfjsServer(modelFolder, inputsDir) {
  const tfDist = (pkg) => join(ROOT, 'node_modules/@tensorflow', pkg, 'dist');
  const routes = {
    '/': join(ROOT, 'scripts/bench-browser/tfjs.html'),
    '/tfjs-bench.js': join(ROOT, 'scripts/bench-browser/tfjs-bench.js'),
    '/tfjs/tf.min.js': join(tfDist('tfjs'), 'tf.min.js'),
    '/tfjs/tf-backend-wasm.min.js': join(tfDist('tfjs-backend-wasm'), 'tf-backend-wasm.min.js'),
    '/tfjs/tf-backend-webgpu.min.js': join(tfDist('tfjs-backend-webgpu'), 'tf-backend-webgpu.min.js'),
  };
  for (const f of ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm']) {
    routes[`/tfjs/${f}`] = join(tfDist('tfjs-backend-wasm'), f);
  }
  for (const path of Object.values(routes)) {
    if (!existsSync(path)) throw new Error(`${path} is missing (npm ci installs the TF.js devDependencies)`);
  }
  const modelDir = join(mirrorDir(), 'models', modelFolder);
  const manifest = JSON.parse(readFileSync(join(modelDir, 'model.json'), 'utf8')).weightsManifest;
  const single = manifest.length === 1 && manifest[0].paths.length === 1 ? manifest[0].paths[0] : null;
  const resolveFile = (pathname) => {
    if (routes[pathname]) return routes[pathname];
    const [, area, name] = /^\/(model|inputs)\/([A-Za-z0-9._-]+)$/.exec(pathname) ?? [];
    if (area === 'model') {
      // brainchop-models renamed model11_gw_ae's one shard to model.bin
      const file = existsSync(join(modelDir, name)) ? join(modelDir, name) : name === single ? join(modelDir, 'model.bin') : null;
      return file;
    }
    if (area === 'inputs') return join(inputsDir, name);
    return null;
  };
  const server = createServer((req, res) => {
    const file = resolveFile(new URL(req.url, 'http://x').pathname);
    const headers = {
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cache-Control': 'no-store',
    };
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, headers);
      res.end('not found');
      return;
    }
    res.writeHead(200, { ...headers, 'Content-Type': MIME[extname(file)] ?? 'application/octet-stream' });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({ server, origin: `http://127.0.0.1:${server.address().port}` })));
}

// ---- pages ------------------------------------------------------------------------------

function consoleLog(page) {
  const lines = [];
  page.on('console', (m) => lines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[error] ${e.message}`));
  page.on('worker', (w) => w.on('console', (m) => lines.push(`[worker ${m.type()}] ${m.text()}`)));
  return () => `\n--- console (last lines) ---\n${lines.slice(-30).join('\n')}`;
}

async function openInsitu(context, origin, backend, model) {
  const page = await context.newPage();
  const tail = consoleLog(page);
  page.setDefaultTimeout(5 * 60_000);
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.insitu?.state.ready || window.insitu?.state.error);
  const error = await page.evaluate(() => window.insitu.state.error);
  if (error) throw new Error(`the page did not start: ${error}${tail()}`);
  await page.selectOption('[data-testid=model-select]', model);
  await page.selectOption('[data-testid=backend-select]', backend);
  await page.check('[data-testid=crop]');
  return {
    page,
    async setInput(file) {
      await page.setInputFiles('[data-testid=file-input]', file);
      const e = await idle(page);
      if (e) throw new Error(`loading ${file}: ${e}${tail()}`);
    },
    async run() {
      const t0 = performance.now();
      await page.click('[data-testid=run]');
      const e = await idle(page, RUN_TIMEOUT_MS);
      const wall = performance.now() - t0;
      if (e) throw new Error(`insitu (${backend}) failed: ${e}${tail()}`);
      const r = await page.evaluate(() => {
        const run = window.insitu.lastResult;
        let binary = '';
        const bytes = run.labels;
        for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        return { backend: run.backend, adapter: run.adapter, timings: run.timings_ms, labels: btoa(binary) };
      });
      if (r.backend !== backend) throw new Error(`asked for ${backend}, the page ran on ${r.backend} (${r.adapter})`);
      const nifti = readNifti(Buffer.from(r.labels, 'base64'), 'page labels');
      const v = nifti.voxels;
      const values = nifti.bitpix === 8 ? new Uint8Array(v) : Uint8Array.from({ length: v.length / 2 }, (_, i) => v.readUInt16LE(2 * i));
      return { ms: r.timings.inference, pageMs: wall, labels: values, device: r.adapter, timings: r.timings };
    },
  };
}

async function openTfjs(context, origin, backend) {
  const page = await context.newPage();
  const tail = consoleLog(page);
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.tfjsBench);
  const threads = backend === 'wasm' ? cpus().length : 0;
  const info = await page.evaluate((a) => window.tfjsBench.init(a), { backend, threads }).catch((e) => {
    throw new Error(`TF.js ${backend} did not start: ${e.message}${tail()}`);
  });
  const device = [info.renderer, info.adapter, info.threads ? `${info.threads} thread(s)` : null, info.simd ? 'simd' : null]
    .filter(Boolean).join(', ');
  return {
    page,
    info,
    async run(size) {
      const r = await page
        .evaluate((a) => window.tfjsBench.run(a), {
          url: `${origin}/model/model.json`, inputUrl: `${origin}/inputs/${size.input}`, dims: size.dims, outStart: size.outStart, outDims: size.outDims,
        })
        .catch((e) => { throw new Error(`TF.js ${backend} at ${size.dims.join('x')}: ${e.message}${tail()}`); });
      const raw = new Uint8Array(Buffer.from(r.labels, 'base64'));
      return { ms: r.ms, pageMs: r.ms + r.loadMs, labels: keepLargestComponent(raw, size.outDims ?? size.dims), rawLabels: raw, device };
    },
  };
}

/** Zeroes every label outside the largest 26-connected cluster of non-zero voxels (first wins ties). */
function keepLargestComponent(labels, [ni, nj, nk]) {
  const ids = new Int32Array(labels.length);
  const queue = new Int32Array(labels.length);
  let next = 0;
  let best = 0;
  let bestSize = 0;
  for (let start = 0; start < labels.length; start++) {
    if (!labels[start] || ids[start]) continue;
    const id = ++next;
    ids[start] = id;
    let head = 0;
    let tail = 0;
    queue[tail++] = start;
    while (head < tail) {
      const v = queue[head++];
      const i = v % ni;
      const j = Math.floor(v / ni) % nj;
      const k = Math.floor(v / (ni * nj));
      for (let dk = -1; dk <= 1; dk++) {
        const kk = k + dk;
        if (kk < 0 || kk >= nk) continue;
        for (let dj = -1; dj <= 1; dj++) {
          const jj = j + dj;
          if (jj < 0 || jj >= nj) continue;
          for (let di = -1; di <= 1; di++) {
            const ii = i + di;
            if (ii < 0 || ii >= ni) continue;
            const w = (kk * nj + jj) * ni + ii;
            if (labels[w] && !ids[w]) {
              ids[w] = id;
              queue[tail++] = w;
            }
          }
        }
      }
    }
    if (tail > bestSize) {
      bestSize = tail;
      best = id;
    }
  }
  const out = new Uint8Array(labels.length);
  for (let v = 0; v < labels.length; v++) out[v] = ids[v] === best ? labels[v] : 0;
  return out;
}

function agreement(a, b) {
  if (!a || !b || a.length !== b.length) return NaN;
  let same = 0;
  for (let i = 0; i < a.length; i++) same += a[i] === b[i];
  return same / a.length;
}

// ---- main -------------------------------------------------------------------------------

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const missing = missingBuild();
  if (missing.length) throw new Error(`cannot run:\n  - ${missing.join('\n  - ')}`);
  const { entry, folder } = modelEntry(args.model);
  const sizesFor = (impl) => (GPU_IMPLS.has(impl) ? args.gpuSizes : args.sizes);
  const allSizes = [...new Set(args.impls.flatMap(sizesFor))].sort((a, b) => a - b);
  mkdirSync(args.out, { recursive: true });
  const inputs = ensureInputs(args, allSizes);
  const loadStart = load();
  const started = new Date();

  const product = await startProductServer();
  const tfServer = await startTfjsServer(folder, inputs.dir);
  const profile = mkdtempSync(join(tmpdir(), 'insitu-bench-chromium-'));
  // The browser tests' flags, plus WebGL on SwiftShader for TF.js's webgl backend (headless
  // Chromium no longer falls back to it on its own).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 950 },
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-quic', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader'],
  });
  const results = []; // {impl, size, kind: 'first'|'warm', ms, pageMs}
  const labels = {}; // `${impl}@${size}` -> last labels
  const devices = {};
  try {
    const runners = {};
    for (const impl of args.impls) {
      log(`opening ${impl}`);
      const [kind, backend] = impl.split('-'); // tfjs-wasm-own, tfjs-wasm-crop: backend wasm
      runners[impl] = kind === 'insitu'
        ? await openInsitu(context, product.origin, backend, args.model)
        : await openTfjs(context, tfServer.origin, backend);
    }
    for (const size of allSizes) {
      const impls = args.impls.filter((impl) => sizesFor(impl).includes(size));
      const info = inputs.info[size];
      // The crop grown by the receptive radius, as insitu's network reads it; labels of the crop.
      const sizeArg = { dims: info.grown_dims, outStart: info.crop_in_grown, outDims: info.dims, input: `t1_${size}_${args.model}_grown.f32` };
      for (const impl of impls) if (impl.startsWith('insitu')) await runners[impl].setInput(join(inputs.dir, info.volume));
      const rounds = Math.max(...impls.map((impl) => (GPU_IMPLS.has(impl) ? args.gpuRepeat : args.repeat)));
      for (let round = 0; round <= rounds; round++) {
        for (let n = 0; n < impls.length; n++) {
          const impl = impls[(n + round) % impls.length];
          const wanted = GPU_IMPLS.has(impl) ? args.gpuRepeat : args.repeat;
          if (round > wanted) continue;
          const kind = round === 0 ? 'first' : 'warm';
          log(`${size}³ ${impl} ${kind}${round ? ` ${round}/${wanted}` : ''} (load ${load()})`);
          const bare = { dims: info.dims, outStart: [0, 0, 0], outDims: info.dims };
          const arg = impl === 'tfjs-wasm-own' ? { ...bare, input: `t1_${size}_own.f32` }
            : impl === 'tfjs-wasm-crop' ? { ...bare, input: `t1_${size}_${args.model}_crop.f32` } : sizeArg;
          const r = await runners[impl].run(impl.startsWith('insitu') ? undefined : arg);
          devices[impl] = r.device;
          labels[`${impl}@${size}`] = r.labels;
          writeFileSync(join(args.out, `labels_${impl}_${size}.u8`), r.labels);
          if (r.rawLabels) writeFileSync(join(args.out, `labels_${impl}_${size}_raw.u8`), r.rawLabels);
          results.push({ impl, size, kind, ms: r.ms, pageMs: r.pageMs });
          log(`   ${(r.ms / 1000).toFixed(2)} s${impl.startsWith('insitu') ? ` (page ${(r.pageMs / 1000).toFixed(2)} s)` : ''}`);
        }
      }
    }
  } finally {
    await context.close().catch(() => {});
    product.server.kill();
    tfServer.server.close();
    rmSync(profile, { recursive: true, force: true });
  }

  // ---- table ----
  const lines = [];
  const out = (s = '') => lines.push(s);
  out(`browser bench ${started.toISOString().slice(0, 16)}Z: model ${args.model} (${entry.name}; TF.js ${folder}), crops of t1_crop.nii.gz, headless ${chromiumVersion()}`);
  out(`machine: ${cpus().length} CPUs (${cpus()[0]?.model.trim()}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB; load average (1/5/15 min) ${loadStart} at the start, ${load()} at the end`);
  for (const impl of args.impls) out(`  ${impl.padEnd(14)} ${devices[impl] ?? ''}`);
  out('times in seconds; first = first run at that size (model preparation, shader compilation); warm = median of the later runs');
  out(`insitu: inference = the page's network + argmax time, page = click to labels; TF.js: predict + argMax + labels read back`);
  const tfjsImpls = args.impls.filter((i) => ['tfjs-wasm', 'tfjs-webgl', 'tfjs-webgpu'].includes(i));
  const header = ['size', 'impl', 'first', 'warm', 'page warm', 'runs', ...tfjsImpls.map((t) => `${t.slice(5)}/x`), '= insitu-cpu', '= tfjs-wasm'];
  const widths = [5, 14, 8, 8, 10, 5, ...tfjsImpls.map(() => 9), 13, 12];
  out(header.map((h, i) => (i < 2 ? h.padEnd(widths[i]) : h.padStart(widths[i]))).join(' '));
  const summary = [];
  for (const size of allSizes) {
    const warm = (impl) => median(results.filter((r) => r.impl === impl && r.size === size && r.kind === 'warm').map((r) => r.ms));
    for (const impl of args.impls) {
      const mine = results.filter((r) => r.impl === impl && r.size === size);
      if (!mine.length) continue;
      const first = mine.find((r) => r.kind === 'first');
      const w = warm(impl);
      const pageWarm = median(mine.filter((r) => r.kind === 'warm').map((r) => r.pageMs));
      const ratios = tfjsImpls.map((t) => {
        const theirs = warm(t);
        return Number.isFinite(theirs) && Number.isFinite(w) ? theirs / w : NaN;
      });
      // at the GPU-only sizes: against insitu-webgpu and tfjs-webgl instead
      const insituRef = labels[`insitu-cpu@${size}`] ?? labels[`insitu-webgpu@${size}`];
      const tfjsRef = labels[`tfjs-wasm@${size}`] ?? labels[`tfjs-webgl@${size}`];
      const eqCpu = agreement(labels[`${impl}@${size}`], insituRef);
      const eqWasm = agreement(labels[`${impl}@${size}`], tfjsRef);
      const cells = [
        `${size}³`.padEnd(widths[0]),
        impl.padEnd(widths[1]),
        (first.ms / 1000).toFixed(2).padStart(widths[2]),
        (w / 1000).toFixed(2).padStart(widths[3]),
        impl.startsWith('insitu') ? (pageWarm / 1000).toFixed(2).padStart(widths[4]) : '-'.padStart(widths[4]),
        String(mine.length).padStart(widths[5]),
        ...ratios.map((r, i) => (Number.isFinite(r) ? `${r.toFixed(2)}x` : '-').padStart(widths[6 + i])),
        (Number.isFinite(eqCpu) ? `${(100 * eqCpu).toFixed(3)}%` : '-').padStart(widths[widths.length - 2]),
        (Number.isFinite(eqWasm) ? `${(100 * eqWasm).toFixed(3)}%` : '-').padStart(widths[widths.length - 1]),
      ];
      out(cells.join(' '));
      summary.push({ size, impl, first_ms: first.ms, warm_ms: w, page_warm_ms: pageWarm, runs: mine.length, equal_insitu_cpu: eqCpu, equal_tfjs_wasm: eqWasm });
    }
  }
  out('x/x: that TF.js backend\'s warm median / this row\'s warm median (above 1: this row is faster); = X: share of voxels labelled as X labelled them');
  out('(at sizes without insitu-cpu / tfjs-wasm the agreement columns compare with insitu-webgpu / tfjs-webgl)');
  out(`TF.js labels: argmax, then the largest 26-connected non-background component kept (insitu's clean-up without niimath's cavity filling)`);
  const text = lines.join('\n');
  console.log(`\n${text}`);
  writeFileSync(join(args.out, 'table.txt'), `${text}\n`);
  writeFileSync(join(args.out, 'results.json'), JSON.stringify({ args, started, loadStart, loadEnd: load(), devices, results, summary, inputs: inputs.info }, null, 2));
  console.log(`\nresults: ${join(args.out, 'results.json')}`);
}

function chromiumVersion() {
  const r = spawnSync(CHROMIUM, ['--version'], { encoding: 'utf8' });
  return (r.stdout || 'chromium').trim();
}

export { keepLargestComponent, openInsitu, openTfjs, startProductServer, startTfjsServer };

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`bench-browser: ${e.stack ?? e}`);
    process.exit(1);
  });
}
