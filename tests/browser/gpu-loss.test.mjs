// A lost GPU: a WebGPU run whose device is destroyed mid-run (the page's test hook, as a driver
// reset or a lost GPU process would) is repeated on the CPU path automatically; the result says
// so in plain words, gives the native CLI's labels, and the volume and earlier runs are kept.
//
//   node --test tests/browser/gpu-loss.test.mjs
//
// Needs (the test fails, saying so, when any is missing): the built page, INSITU_TEST_VOLUME
// and INSITU_TEST_EXPECTED (the CLI's `segment --model tissue_fast --crop` labels of it), as
// for segment.test.mjs.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import {
  assertSameOrigin,
  cliTestCase,
  closeShared,
  assertSameLabels,
  downloadedLabels,
  idle,
  openApp,
  sharedSession,
} from './helpers.mjs';

after(closeShared);

const MODEL = 'tissue_fast';
const RUN_TIMEOUT_MS = 20 * 60_000;

test('a GPU lost mid-run: the run is repeated on the CPU, says so, and gives the CLI labels', { timeout: 2 * RUN_TIMEOUT_MS }, async () => {
  const { volume, want } = cliTestCase();
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();

  await page.setInputFiles('[data-testid=file-input]', volume);
  assert.equal(await idle(page), null, `loading ${volume} failed${log()}`);
  await page.selectOption('[data-testid=model-select]', MODEL);
  await page.check('[data-testid=crop]');

  // An earlier run on the CPU, kept through what follows.
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the CPU run failed${log()}`);

  // A WebGPU run; once its network runs, the device is destroyed.
  await page.selectOption('[data-testid=backend-select]', 'webgpu');
  await page.click('[data-testid=run]');
  await page.waitForFunction(() => window.insitu.state.stage === 'layer', null, { polling: 50, timeout: RUN_TIMEOUT_MS });
  const { destroyed } = await page.evaluate(() => window.insitu.loseGpu());
  assert.ok(destroyed >= 1, 'the worker held a WebGPU device to destroy');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the run did not recover from the lost GPU${log()}`);

  const run = await page.evaluate(() => {
    const r = window.insitu.lastResult;
    return { backend: r.backend, fallback: r.fallback, id: r.id };
  });
  const status = await page.textContent('[data-testid=run-status]');
  console.log(`# ${status}`);
  assert.equal(run.backend, 'cpu', 'the labels came from the CPU path');
  // The core notices the failed readback, or the worker the lost device, whichever is first.
  assert.match(run.fallback ?? '', /WebGPU.*(lost|failed).*repeated on the CPU/s, 'the result says why it moved');
  assert.match(status, /repeated on the CPU/, 'the page shows it');
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), basename(volume), 'the volume is kept');
  assert.deepEqual(await page.evaluate(() => [...window.insitu.state.runs.keys()]), [MODEL]);

  assertSameLabels(await downloadedLabels(page), want);

  // The fresh worker works on: another run, straight on the CPU.
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the run after the recovery failed${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.lastResult.fallback), null);
  assertSameOrigin(requests, origin);
  await page.close();
});
