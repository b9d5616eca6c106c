// Cancel: a long segmentation (the whole conformed 256³ grid on the CPU path) is stopped within
// a second, the volume and the earlier run stay, and the next run, in the fresh worker, gives
// the native CLI's labels.
//
//   node --test tests/browser/cancel.test.mjs
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

test('Cancel stops a running segmentation within a second, keeps the volume and earlier runs, and the next run works', { timeout: 3 * RUN_TIMEOUT_MS }, async () => {
  const { volume, want } = cliTestCase();
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();
  const cancel = '[data-testid=cancel]';
  const stage = () => page.textContent('[data-testid=stage]');

  await page.setInputFiles('[data-testid=file-input]', volume);
  assert.equal(await idle(page), null, `loading ${volume} failed${log()}`);
  assert.ok(await page.isDisabled(cancel), 'Cancel is disabled while nothing runs');

  // An earlier run, head box only: quick.
  await page.selectOption('[data-testid=model-select]', MODEL);
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the first run failed${log()}`);
  assert.ok(await page.isVisible(`[data-testid=run-${MODEL}]`), 'the first run is listed');

  // A long run: the whole 256³ grid. Cancel it once the network is running.
  await page.uncheck('[data-testid=crop]');
  await page.click('[data-testid=run]');
  assert.ok(await page.isEnabled(cancel), 'Cancel is enabled while a segmentation runs');
  await page.waitForFunction(() => window.insitu.state.stage === 'layer', null, { polling: 50 });
  assert.ok(await page.evaluate(() => window.insitu.state.segmenting), 'the long run was still running when Cancel was pressed');
  const running = page.workers();
  assert.equal(running.length, 1, 'one worker runs the segmentation');
  const ended = running[0].waitForEvent('close', { timeout: 5000 });
  const ms = await page.evaluate(
    () =>
      new Promise((resolve) => {
        const t0 = performance.now();
        document.querySelector('[data-testid=cancel]').click();
        const check = () => {
          const said = /cancelled/i.test(document.querySelector('[data-testid=stage]').textContent);
          if (said && !window.insitu.state.running) resolve(performance.now() - t0);
          else setTimeout(check, 10);
        };
        check();
      }),
  );
  console.log(`# cancelled in ${ms.toFixed(0)} ms: ${await stage()}`);
  assert.ok(ms < 1000, `the page said cancelled ${ms.toFixed(0)} ms after Cancel was pressed`);
  // The worker that ran it is ended, not left computing (the browser reports its close ~2 s later here).
  await ended;
  assert.equal(await page.evaluate(() => window.insitu.state.error), null, 'a cancel is not an error');
  assert.ok(await page.locator('[data-testid=error]').isHidden());
  assert.ok(await page.isDisabled(cancel), 'Cancel is disabled again');
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is enabled again');

  // The volume and the earlier run are kept, and the stopped run reports nothing more.
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), basename(volume));
  assert.deepEqual(await page.evaluate(() => [...window.insitu.state.runs.keys()]), [MODEL]);
  assert.equal(await page.evaluate(() => window.insitu.lastResult?.id), MODEL, 'the earlier run is still the selected one');
  await page.waitForTimeout(2000);
  assert.match(await stage(), /cancelled/i, 'no progress arrived from the stopped run');

  // The next run works, in the fresh worker, and gives the CLI's labels.
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the run after the cancel failed${log()}`);
  assert.match(await stage(), /Done/);
  assertSameLabels(await downloadedLabels(page), want);
  assertSameOrigin(requests, origin);
  await page.close();
});
