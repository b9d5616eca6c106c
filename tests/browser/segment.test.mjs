// End-to-end test of the web page in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core): segments a small volume on WebGPU (SwiftShader here) inside the page's
// worker, downloads the result and compares its voxels byte for byte with the native CLI's.
//
//   node --test tests/browser/
//
// Needs (the test fails, saying so, when any is missing):
//   dist/                 `npm run build` after the wasm core was built into pkg/
//   dist/assets/          `insitu fetch --dest dist/assets` (models + the sample t1_crop.nii.gz)
//   INSITU_TEST_VOLUME    a small volume, e.g. a 64³ crop of t1_crop made with `insitu convert --crop`
//                         (it must contain tissue: the expected labels may not be all background)
//   INSITU_TEST_EXPECTED  `insitu segment --model tissue_fast --crop $INSITU_TEST_VOLUME -o $INSITU_TEST_EXPECTED`
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const DIST = join(ROOT, 'dist');
const CHROMIUM = process.env.INSITU_CHROMIUM ?? '/usr/bin/chromium';
const MODEL = 'tissue_fast';
const SCREENSHOT = '/tmp/insitu-page.png';
// SwiftShader runs WebGPU on the CPU: slow, and slower still on 2 cores.
const RUN_TIMEOUT_MS = 20 * 60_000;
const STEP_TIMEOUT_MS = 2 * 60_000;

const HOW_TO_RUN = `
Prepare and run it like this (from the repository root):
  <build the wasm core into pkg/ (wasm-bindgen --target web)> && npm ci && npm run build
  insitu fetch --dest dist/assets
  insitu convert dist/assets/data/t1_crop.nii.gz --crop 104,104,104,64,64,64 -o /tmp/t1_64.nii.gz
  insitu segment --model ${MODEL} --crop /tmp/t1_64.nii.gz -o /tmp/t1_64_${MODEL}.nii.gz
  INSITU_TEST_VOLUME=/tmp/t1_64.nii.gz INSITU_TEST_EXPECTED=/tmp/t1_64_${MODEL}.nii.gz node --test tests/browser/`;

/** Fails (never skips) when something the test needs is missing. */
function requirements({ volumes = true } = {}) {
  const missing = [];
  const volume = process.env.INSITU_TEST_VOLUME;
  const expected = process.env.INSITU_TEST_EXPECTED;
  if (volumes) {
    if (!volume) missing.push('env INSITU_TEST_VOLUME is not set');
    else if (!existsSync(volume)) missing.push(`INSITU_TEST_VOLUME=${volume} does not exist`);
    if (!expected) missing.push('env INSITU_TEST_EXPECTED is not set');
    else if (!existsSync(expected)) missing.push(`INSITU_TEST_EXPECTED=${expected} does not exist`);
  }
  if (!existsSync(join(DIST, 'index.html'))) missing.push('dist/index.html is missing (npm run build)');
  if (!existsSync(join(DIST, 'insitu_bg.wasm'))) {
    missing.push('dist/insitu_bg.wasm is missing (build the wasm core into pkg/, then npm run build)');
  }
  if (!existsSync(join(DIST, 'assets/models'))) missing.push('dist/assets/models is missing (insitu fetch --dest dist/assets)');
  if (!existsSync(join(DIST, 'assets/data/t1_crop.nii.gz'))) {
    missing.push('dist/assets/data/t1_crop.nii.gz is missing (insitu fetch --dest dist/assets)');
  }
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} is missing (apt-get install chromium)`);
  if (missing.length) {
    throw new Error(`The browser test cannot run:\n  - ${missing.join('\n  - ')}\n${HOW_TO_RUN}`);
  }
  return { volume, expected };
}

// ---- NIfTI-1 ------------------------------------------------------------------------------

/** Header fields and the voxel bytes of a NIfTI-1 file (.nii or .nii.gz). */
function readNifti(bytes, what) {
  let buf = Buffer.from(bytes);
  if (buf[0] === 0x1f && buf[1] === 0x8b) buf = gunzipSync(buf);
  assert.ok(buf.length >= 352, `${what}: only ${buf.length} bytes, too short for a NIfTI-1 file`);
  const little = buf.readInt32LE(0) === 348;
  assert.ok(little || buf.readInt32BE(0) === 348, `${what}: sizeof_hdr is not 348: not NIfTI-1`);
  const i16 = (at) => (little ? buf.readInt16LE(at) : buf.readInt16BE(at));
  const ndim = i16(40);
  const dims = Array.from({ length: ndim }, (_, i) => i16(42 + 2 * i));
  const datatype = i16(70);
  const bitpix = i16(72);
  const voxOffset = little ? buf.readFloatLE(108) : buf.readFloatBE(108);
  const nbytes = (dims.reduce((a, b) => a * b, 1) * bitpix) / 8;
  assert.ok(buf.length >= voxOffset + nbytes, `${what}: ${buf.length} bytes, header promises ${voxOffset + nbytes}`);
  return { dims, datatype, bitpix, little, voxels: buf.subarray(voxOffset, voxOffset + nbytes) };
}

function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  let count = 0;
  let first = -1;
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      count++;
      if (first < 0) first = i;
    }
  }
  return { count, first };
}

// ---- server and browser -----------------------------------------------------------------

let shared = null;

/** Starts scripts/serve.mjs on a free port and Chromium with a fresh profile, once for all tests. */
async function setup() {
  if (shared) return shared;
  const server = spawn(process.execPath, [join(ROOT, 'scripts/serve.mjs'), '0', DIST], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const origin = await new Promise((resolveUrl, reject) => {
    let out = '';
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const match = /http:\/\/127\.0\.0\.1:\d+/.exec(out);
      if (match) resolveUrl(match[0]);
    });
    server.on('exit', (code) => reject(new Error(`scripts/serve.mjs exited (${code}) before listening`)));
  });
  const profile = mkdtempSync(join(tmpdir(), 'insitu-chromium-'));
  // playwright-core refuses --user-data-dir in args: a persistent context takes the fresh
  // profile directory instead. It adds --headless and --no-sandbox itself (headless: true).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1400, height: 950 },
    args: [
      '--no-sandbox',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      '--enable-unsafe-webgpu',
    ],
  });
  // Every request of every page and of their workers (dedicated workers' fetches are
  // reported on the context as well as on their page).
  const requests = [];
  context.on('request', (request) => requests.push(request.url()));
  shared = { server, origin, profile, context, requests };
  return shared;
}

after(async () => {
  if (!shared) return;
  await shared.context.close().catch(() => {});
  shared.server.kill();
  rmSync(shared.profile, { recursive: true, force: true });
});

/** A new page on the app with its console (page and workers) kept for error messages. */
async function openApp() {
  const { context, origin } = await setup();
  const page = await context.newPage();
  const log = [];
  page.on('console', (m) => log.push(`[page ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log.push(`[page error] ${e.message}`));
  page.on('worker', (worker) => {
    worker.on('console', (m) => log.push(`[worker ${m.type()}] ${m.text()}`));
  });
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  await page.goto(`${origin}/`);
  const consoleTail = () => `\n--- console (last lines) ---\n${log.slice(-40).join('\n')}`;
  await page.waitForFunction(() => window.insitu?.state.ready || window.insitu?.state.error);
  const error = await page.evaluate(() => window.insitu.state.error);
  assert.equal(error, null, `the page did not start: ${error}${consoleTail()}`);
  return { page, log: consoleTail };
}

/** Waits until the page is idle again; returns its state's error (null when none). */
async function idle(page, timeout = STEP_TIMEOUT_MS) {
  await page.waitForFunction(() => !window.insitu.state.running, null, { timeout, polling: 250 });
  return page.evaluate(() => window.insitu.state.error);
}

function assertSameOrigin(requests, origin) {
  const outside = requests.filter((url) => {
    if (url.startsWith('data:')) return false; // never leaves the page
    return new URL(url).origin !== origin; // blob: URLs carry their creator's origin
  });
  assert.deepEqual(outside, [], `requests left the page's origin ${origin}`);
}

// ---- tests --------------------------------------------------------------------------------

test('segments a volume on WebGPU in the worker, same voxels as the native CLI', { timeout: RUN_TIMEOUT_MS + 10 * 60_000 }, async () => {
  const { volume, expected } = requirements();
  // The CLI's labels, checked first: an all-background volume would make the comparison empty.
  const want = readNifti(readFileSync(expected), expected);
  const values = new Set(want.voxels);
  assert.ok(
    values.size > 1,
    `${expected} holds only the value ${[...values]}: comparing against it proves nothing; ` +
      `segment a volume where the model finds tissue (e.g. a 64³ crop, see below).${HOW_TO_RUN}`,
  );
  const { page, log } = await openApp();
  const { origin, requests } = shared;

  // Load the test volume through the file input.
  await page.setInputFiles('[data-testid=file-input]', volume);
  assert.equal(await idle(page), null, `loading ${volume} failed${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), basename(volume));

  // tissue_fast, WebGPU, crop on, Run.
  await page.selectOption('[data-testid=model-select]', MODEL);
  await page.selectOption('[data-testid=backend-select]', 'webgpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]'); // Run sets state.running before the click returns
  const error = await idle(page, RUN_TIMEOUT_MS);
  assert.equal(error, null, `segmentation failed: ${error}${log()}`);

  const result = await page.evaluate(() => {
    const r = window.insitu.lastResult;
    return { backend: r.backend, adapter: r.adapter, timings: r.timings_ms, fileName: r.fileName };
  });
  const status = await page.textContent('[data-testid=run-status]');
  console.log(`# ${status}`);
  assert.equal(result.backend, 'webgpu', `ran on ${result.backend}: ${status}`);
  assert.equal(await page.getAttribute('[data-testid=run-status]', 'data-backend'), 'webgpu');
  assert.match(status, /Ran on WebGPU/);
  assert.ok(result.adapter, 'the page names the adapter');

  // Download and compare with the CLI's output.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=download]')]);
  const stem = basename(volume).replace(/\.(nii\.gz|nii)$/i, '');
  assert.equal(download.suggestedFilename(), `${stem}_${MODEL}.nii.gz`);
  const got = readNifti(readFileSync(await download.path()), 'downloaded segmentation');
  const input = readNifti(readFileSync(volume), volume);
  assert.deepEqual(got.dims.slice(1, 4), input.dims.slice(1, 4), "the segmentation is on the input's grid");
  assert.deepEqual(got.dims, want.dims, 'dims differ from the CLI output');
  assert.equal(got.datatype, want.datatype, 'datatype differs from the CLI output');
  if (!got.voxels.equals(want.voxels)) {
    const { count, first } = firstDifference(got.voxels, want.voxels);
    assert.fail(`${count} of ${want.voxels.length} voxel bytes differ from the CLI output (first at byte ${first})`);
  }

  await page.screenshot({ path: SCREENSHOT });
  console.log(`# screenshot: ${SCREENSHOT}`);

  // The model files came from this site, fetched by the worker, and were recorded.
  assert.ok(
    requests.some((url) => new URL(url).pathname.startsWith('/assets/models/')),
    `the worker's model downloads were not seen: ${requests.join(' ')}`,
  );
  assertSameOrigin(requests, origin);
  await page.close();
});

test('a garbage file shows an error and the page stays usable', { timeout: 10 * 60_000 }, async () => {
  requirements({ volumes: false });
  const { page, log } = await openApp();
  const { origin, requests } = shared;

  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');

  // Drop a file that is not a volume on the viewer.
  const dir = mkdtempSync(join(tmpdir(), 'insitu-garbage-'));
  const garbage = join(dir, 'garbage.nii.gz');
  writeFileSync(garbage, Buffer.from('this is not a NIfTI volume, just some text\n'.repeat(20)));
  const dataTransfer = await page.evaluateHandle(
    ({ name, base64 }) => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], name));
      return transfer;
    },
    { name: 'garbage.nii.gz', base64: readFileSync(garbage).toString('base64') },
  );
  await page.dispatchEvent('[data-testid=drop-zone]', 'drop', { dataTransfer });
  await page.waitForFunction(() => window.insitu.state.error !== null);
  await idle(page);
  rmSync(dir, { recursive: true, force: true });

  const box = page.locator('[data-testid=error]');
  assert.ok(await box.isVisible(), 'the error box is shown');
  const message = await box.textContent();
  console.log(`# error shown: ${message}`);
  assert.match(message, /garbage\.nii\.gz/, 'the error names the file');

  // The sample is still the input, and the page still works.
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');
  assert.match(await page.textContent('[data-testid=volume-info]'), /t1_crop\.nii\.gz/);
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is still enabled');
  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load again${log()}`);
  assert.ok(await box.isHidden(), 'the error box is cleared by the next good action');

  assertSameOrigin(requests, origin);
  await page.close();
});

test('a model file that fails to download or fails its checksum shows an error', { timeout: 10 * 60_000 }, async () => {
  requirements({ volumes: false });
  const { page, log } = await openApp();
  const { origin, requests } = shared;

  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  await page.selectOption('[data-testid=model-select]', MODEL);
  const modelFile = '**/assets/models/**/model.json';

  // The site does not have the file.
  await page.route(modelFile, (route) => route.fulfill({ status: 404, body: 'Not Found' }));
  await page.click('[data-testid=run]');
  let message = await idle(page);
  console.log(`# error shown: ${message}`);
  assert.match(message ?? '', /HTTP 404/, `expected a download error${log()}`);
  assert.ok(await page.locator('[data-testid=error]').isVisible());

  // The file arrives, but altered: its sha256 does not match the registry.
  await page.unroute(modelFile);
  await page.route(modelFile, async (route) => {
    const response = await route.fetch();
    const body = Buffer.concat([await response.body(), Buffer.from(' ')]);
    await route.fulfill({ response, body });
  });
  await page.click('[data-testid=run]');
  message = await idle(page);
  console.log(`# error shown: ${message}`);
  assert.match(message ?? '', /sha256/, `expected a checksum error${log()}`);

  // Nothing else changed and the page is still usable.
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');
  assert.equal(await page.evaluate(() => window.insitu.lastResult), null);
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is still enabled');
  assertSameOrigin(requests, origin);
  await page.close();
});
