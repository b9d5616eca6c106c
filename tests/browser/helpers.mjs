// Shared scaffolding of the browser tests: the build checks, a NIfTI-1 reader, the static
// server (scripts/serve.mjs) and headless Debian Chromium driven by playwright-core, the page
// helpers, and the same-origin check. Each test file calls `after(closeShared)`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const DIST = join(ROOT, 'dist');
export const CHROMIUM = process.env.INSITU_CHROMIUM ?? '/usr/bin/chromium';
export const STEP_TIMEOUT_MS = 2 * 60_000;

/** What the built page needs that is missing: messages saying how to make each. */
export function missingBuild() {
  const missing = [];
  if (!existsSync(join(DIST, 'index.html'))) missing.push('dist/index.html is missing (npm run build)');
  if (!existsSync(join(DIST, 'insitu_bg.wasm'))) {
    missing.push('dist/insitu_bg.wasm is missing (build the wasm core into pkg/, then npm run build)');
  }
  if (!existsSync(join(DIST, 'assets/models'))) missing.push('dist/assets/models is missing (insitu fetch --dest dist/assets)');
  if (!existsSync(join(DIST, 'assets/data/t1_crop.nii.gz'))) {
    missing.push('dist/assets/data/t1_crop.nii.gz is missing (insitu fetch --dest dist/assets)');
  }
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} is missing (apt-get install chromium)`);
  return missing;
}

/** A message for each env var in `names` that is unset or names a file that does not exist. */
export function missingFiles(names) {
  const missing = [];
  for (const name of names) {
    const path = process.env[name];
    if (!path) missing.push(`env ${name} is not set`);
    else if (!existsSync(path)) missing.push(`${name}=${path} does not exist`);
  }
  return missing;
}

/** Throws (the test fails, never skips) when anything is missing. */
export function failIfMissing(missing, howToRun) {
  if (missing.length) {
    throw new Error(`The browser test cannot run:\n  - ${missing.join('\n  - ')}\n${howToRun}`);
  }
}

// ---- NIfTI-1 ------------------------------------------------------------------------------

/** Header fields, the sform rows (3 x 4) and the voxel bytes of a NIfTI-1 file (.nii or .nii.gz). */
export function readNifti(bytes, what) {
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
  const f32 = (at) => (little ? buf.readFloatLE(at) : buf.readFloatBE(at));
  const voxOffset = f32(108);
  const scale = { slope: f32(112), inter: f32(116) };
  const srow = [280, 296, 312].map((at) => [0, 1, 2, 3].map((i) => f32(at + 4 * i)));
  const nbytes = (dims.reduce((a, b) => a * b, 1) * bitpix) / 8;
  assert.ok(buf.length >= voxOffset + nbytes, `${what}: ${buf.length} bytes, header promises ${voxOffset + nbytes}`);
  return { dims, datatype, bitpix, little, scale, srow, voxels: buf.subarray(voxOffset, voxOffset + nbytes) };
}

export function firstDifference(a, b) {
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

/**
 * INSITU_TEST_VOLUME and the CLI's tissue_fast labels of it (INSITU_TEST_EXPECTED), as
 * scripts/test.sh prepares them; fails, saying what is missing, when either is not there or
 * the labels are all one value (a comparison with them would prove nothing).
 */
export function cliTestCase() {
  const howToRun = '\nRun `scripts/test.sh`, which prepares these files, or see its browser-test lines.';
  failIfMissing([...missingFiles(['INSITU_TEST_VOLUME', 'INSITU_TEST_EXPECTED']), ...missingBuild()], howToRun);
  const want = readNifti(readFileSync(process.env.INSITU_TEST_EXPECTED), process.env.INSITU_TEST_EXPECTED);
  assert.ok(new Set(want.voxels).size > 1, 'the expected labels are not all one value');
  return { volume: process.env.INSITU_TEST_VOLUME, want };
}

/** The selected run's labels, downloaded with the page's Download button as a user would. */
export async function downloadedLabels(page) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=download]')]);
  return readNifti(readFileSync(await download.path()), 'downloaded segmentation');
}

/** Fails, saying how many and where, unless `got` has `want`'s grid and voxel bytes. */
export function assertSameLabels(got, want, what = 'the CLI output') {
  assert.deepEqual(got.dims, want.dims, `dims differ from ${what}`);
  if (!got.voxels.equals(want.voxels)) {
    const { count, first } = firstDifference(got.voxels, want.voxels);
    assert.fail(`${count} of ${want.voxels.length} voxel bytes differ from ${what} (first at byte ${first})`);
  }
}

/** Drops files ([{name, bytes}]) on the page's drop zone, as a user dragging them would. */
export async function dropFiles(page, files) {
  const dataTransfer = await page.evaluateHandle((list) => {
    const transfer = new DataTransfer();
    for (const { name, base64 } of list) {
      transfer.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name));
    }
    return transfer;
  }, files.map(({ name, bytes }) => ({ name, base64: Buffer.from(bytes).toString('base64') })));
  await page.dispatchEvent('[data-testid=drop-zone]', 'drop', { dataTransfer });
}

// ---- server and browser -----------------------------------------------------------------

let shared = null;

/** The server, browser context and request log, once `setup()` ran. */
export function sharedSession() {
  return shared;
}

/** Starts scripts/serve.mjs on a free port and Chromium with a fresh profile, once for all tests. */
export async function setup() {
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

/** Closes the browser and the server (register with `after(closeShared)`). */
export async function closeShared() {
  if (!shared) return;
  await shared.context.close().catch(() => {});
  shared.server.kill();
  rmSync(shared.profile, { recursive: true, force: true });
  shared = null;
}

/** A new page on the app with its console (page and workers) kept for error messages. */
export async function openApp() {
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
  await started(page, consoleTail);
  return { page, log: consoleTail };
}

/**
 * Waits until a (re)loaded page has started and has brought back the session this browser kept
 * (an earlier page of the same test file leaves one), so the test starts from a settled page.
 */
export async function started(page, log = () => '') {
  await page.waitForFunction(() => window.insitu?.state.ready || window.insitu?.state.error);
  const error = await page.evaluate(() => window.insitu.state.error);
  assert.equal(error, null, `the page did not start: ${error}${log()}`);
  await page.waitForFunction(() => window.insitu.state.restored !== false && !window.insitu.state.running, null, { polling: 100 });
}

/** Presses "Clear everything from this browser" and waits until the page says it cleared. */
export async function clearBrowser(page) {
  await page.click('[data-testid=clear-storage]');
  await page.waitForFunction(() => /Cleared from this browser/.test(document.querySelector('[data-testid=storage-note]').textContent));
  return page.textContent('[data-testid=storage-note]');
}

/** Waits until the page is idle again; returns its state's error (null when none). */
export async function idle(page, timeout = STEP_TIMEOUT_MS) {
  await page.waitForFunction(() => !window.insitu.state.running, null, { timeout, polling: 250 });
  return page.evaluate(() => window.insitu.state.error);
}

export function assertSameOrigin(requests, origin) {
  const outside = requests.filter((url) => {
    if (url.startsWith('data:')) return false; // never leaves the page
    return new URL(url).origin !== origin; // blob: URLs carry their creator's origin
  });
  assert.deepEqual(outside, [], `requests left the page's origin ${origin}`);
}
