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
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import {
  assertSameOrigin,
  clearBrowser,
  closeShared,
  dropFiles,
  failIfMissing,
  firstDifference,
  idle,
  missingBuild,
  missingFiles,
  openApp,
  readNifti,
  sharedSession,
} from './helpers.mjs';

after(closeShared);

const MODEL = 'tissue_fast';
const SCREENSHOT = '/tmp/insitu-page.png';
// SwiftShader runs WebGPU on the CPU: slow, and slower still on 2 cores.
const RUN_TIMEOUT_MS = 20 * 60_000;

const HOW_TO_RUN = `
Prepare and run it like this (from the repository root):
  <build the wasm core into pkg/ (wasm-bindgen --target web)> && npm ci && npm run build
  insitu fetch --dest dist/assets
  insitu convert dist/assets/data/t1_crop.nii.gz --crop 104,104,104,64,64,64 -o /tmp/t1_64.nii.gz
  insitu segment --model ${MODEL} --crop /tmp/t1_64.nii.gz -o /tmp/t1_64_${MODEL}.nii.gz
  INSITU_TEST_VOLUME=/tmp/t1_64.nii.gz INSITU_TEST_EXPECTED=/tmp/t1_64_${MODEL}.nii.gz node --test tests/browser/`;

/** Fails (never skips) when something the test needs is missing. */
function requirements({ volumes = true } = {}) {
  const missing = volumes ? missingFiles(['INSITU_TEST_VOLUME', 'INSITU_TEST_EXPECTED']) : [];
  failIfMissing([...missing, ...missingBuild()], HOW_TO_RUN);
  return { volume: process.env.INSITU_TEST_VOLUME, expected: process.env.INSITU_TEST_EXPECTED };
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
  const { origin, requests } = sharedSession();

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
  assert.deepEqual(got.dims.slice(0, 3), input.dims.slice(0, 3), "the segmentation is on the input's grid");
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
  const { origin, requests } = sharedSession();

  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');

  // Drop a file that is not a volume on the viewer.
  const garbage = Buffer.from('this is not a NIfTI volume, just some text\n'.repeat(20));
  await dropFiles(page, [{ name: 'garbage.nii.gz', bytes: garbage }]);
  await page.waitForFunction(() => window.insitu.state.error !== null);
  await idle(page);

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
  // The model ran above, so this browser keeps it for offline use, and a service worker serves it:
  // Playwright's routes never see what a service worker answers. Clear that first.
  const first = await openApp();
  await clearBrowser(first.page);
  await first.page.close();
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();
  assert.equal(await page.evaluate(() => navigator.serviceWorker.controller), null, 'no service worker serves this page');

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
