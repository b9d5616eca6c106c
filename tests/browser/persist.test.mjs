// Nothing lost on reload: the opened volume, the runs and their evaluations are kept in this
// browser (IndexedDB) and come back after a reload and after the tab crashed, the same bytes and
// the same metrics; "Clear everything from this browser" really empties IndexedDB and Cache
// Storage and unregisters the service worker, so a reload brings nothing back; and when the
// browser refuses to store (as when the quota is used up), the page says so and the session in
// the tab is untouched.
//
//   node --test tests/browser/persist.test.mjs
//
// Needs (the test fails, saying so, when any is missing): the built page with dist/assets (see
// segment.test.mjs), and
//   INSITU_TEST_DATA   the mirror's data folder (../shared/data here): reference/t1_crop_tissue_fast.nii.gz
//                      is the reference labels of the sample, on its grid
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  assertSameOrigin,
  clearBrowser,
  closeShared,
  failIfMissing,
  idle,
  missingBuild,
  missingFiles,
  openApp,
  sharedSession,
  started,
} from './helpers.mjs';

after(closeShared);

const MODEL = 'tissue_fast';
const RUN_TIMEOUT_MS = 15 * 60_000;
const HOW_TO_RUN = '\nRun `scripts/test.sh`, which prepares these files, or see its browser-test lines.';

function requirements() {
  failIfMissing([...missingFiles(['INSITU_TEST_DATA']), ...missingBuild()], HOW_TO_RUN);
  const reference = join(process.env.INSITU_TEST_DATA, 'reference/t1_crop_tissue_fast.nii.gz');
  failIfMissing(existsSync(reference) ? [] : [`${reference} does not exist`], HOW_TO_RUN);
  return reference;
}

/** Everything of the session, bytes as sha256: the volume's files, the runs, their evaluations. */
const SNAPSHOT = async () => {
  const hex = async (bytes) =>
    bytes
      ? Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)), (b) => b.toString(16).padStart(2, '0')).join('')
      : null;
  const { state } = window.insitu;
  const input = state.input && {
    name: state.input.name,
    series: state.input.series,
    info: state.input.info,
    files: await Promise.all(state.input.files.map(async ([path, bytes]) => [path, await hex(bytes)])),
  };
  const runs = await Promise.all(
    [...state.runs.values()].map(async (run) => ({
      id: run.id,
      modelName: run.modelName,
      backend: run.backend,
      fileName: run.fileName,
      timings: run.timings_ms,
      labels: await hex(run.labels),
      labelsLikeInput: await hex(run.labelsLikeInput),
      evaluation: run.evaluation && {
        report: JSON.stringify(run.evaluation.report),
        csv: run.evaluation.csv,
        errorMap: await hex(run.evaluation.errorMap),
        referenceName: run.evaluation.referenceName,
        mapping: run.evaluation.mapping,
        toleranceMm: run.evaluation.toleranceMm,
      },
    })),
  );
  const table = [...document.querySelectorAll('[data-testid=eval-table] td[data-metric]')].map(
    (td) => `${td.closest('tr').dataset.label}:${td.dataset.metric}=${td.dataset.value}`,
  );
  return {
    input,
    runs,
    selected: state.result?.id ?? null,
    reference: state.reference && { name: state.reference.name, bytes: await hex(state.reference.bytes) },
    evalSettings: state.evalSettings,
    table,
    runButtons: [...document.querySelectorAll('[data-testid=runs] button')].map((b) => b.textContent),
  };
};

/** What this origin keeps in the browser: IndexedDB databases and Cache Storage caches. */
const STORAGE = async () => ({
  databases: (await indexedDB.databases()).map((d) => d.name),
  caches: await caches.keys(),
  serviceWorkers: (await navigator.serviceWorker.getRegistrations()).length,
});

async function sessionSaved(page, pattern) {
  await page.waitForFunction(
    (source) => {
      const status = document.querySelector('[data-testid=session-status]');
      return status.dataset.ok === 'true' && new RegExp(source).test(status.textContent);
    },
    pattern.source,
    { polling: 100 },
  );
}

test('the volume, runs and evaluations come back after a reload and a crash; Clear empties this browser', { timeout: RUN_TIMEOUT_MS + 10 * 60_000 }, async () => {
  const reference = requirements();
  const { page: first, log } = await openApp();
  const { context, origin, requests } = sharedSession();
  let page = first;

  let t = Date.now();
  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  await page.selectOption('[data-testid=model-select]', MODEL);
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the segmentation failed${log()}`);
  console.log(`# sample loaded and segmented in ${Date.now() - t} ms`);
  t = Date.now();
  await page.setInputFiles('[data-testid=reference-input]', reference);
  assert.equal(await idle(page), null, `the evaluation failed${log()}`);
  console.log(`# evaluated in ${Date.now() - t} ms`);
  await sessionSaved(page, /t1_crop\.nii\.gz, 1 run, 1 evaluation/);
  const before = await page.evaluate(SNAPSHOT);
  assert.equal(before.input.name, 't1_crop.nii.gz');
  assert.equal(before.runs.length, 1);
  assert.ok(before.runs[0].labels && before.runs[0].evaluation?.errorMap, 'the run has labels and an evaluation');
  assert.ok(before.table.length > 0, 'the evaluation table is shown');

  // Reload: everything is back, byte for byte, with the same metrics on the page.
  t = Date.now();
  await page.reload();
  await started(page, log);
  console.log(`# reloaded and restored in ${Date.now() - t} ms`);
  assert.deepEqual(await page.evaluate(SNAPSHOT), before, 'the session after the reload');
  assert.match(await page.textContent('[data-testid=stage]'), /Restored from this browser: t1_crop\.nii\.gz, 1 run\(s\), 1 evaluation\(s\)/);
  assert.match(await page.textContent('[data-testid=volume-info]'), /t1_crop\.nii\.gz/);
  assert.match(await page.textContent('[data-testid=reference-info]'), /t1_crop_tissue_fast\.nii\.gz/);
  assert.ok(await page.isVisible('[data-testid=evaluation]'), 'the evaluation is shown');
  assert.ok(await page.isEnabled('[data-testid=download]'), 'the restored run can be downloaded');

  // The tab crashes: a new tab brings it all back too.
  const crashed = page.waitForEvent('crash');
  const cdp = await context.newCDPSession(page);
  cdp.send('Page.crash').catch(() => {}); // never answers: the renderer is gone
  await crashed;
  await page.close().catch(() => {});
  t = Date.now();
  ({ page } = await openApp());
  console.log(`# new tab after the crash restored in ${Date.now() - t} ms`);
  assert.deepEqual(await page.evaluate(SNAPSHOT), before, 'the session after the crash');

  // Clear everything: IndexedDB, the caches and the service worker go; a reload brings nothing back.
  const stored = await page.evaluate(STORAGE);
  assert.ok(stored.databases.includes('insitu'), `the session database exists: ${JSON.stringify(stored)}`);
  const note = await clearBrowser(page);
  console.log(`# ${note}`);
  assert.match(note, /saved session \(IndexedDB/);
  assert.deepEqual(await page.evaluate(STORAGE), { databases: [], caches: [], serviceWorkers: 0 }, 'storage right after Clear');
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz', 'the tab keeps what is on screen');
  await page.reload();
  await started(page, log);
  const empty = await page.evaluate(SNAPSHOT);
  assert.equal(empty.input, null, 'no volume is back');
  assert.deepEqual(empty.runs, [], 'no run is back');
  assert.equal(empty.reference, null, 'no reference is back');
  assert.deepEqual(await page.evaluate(STORAGE), { databases: [], caches: [], serviceWorkers: 0 }, 'storage after the reload');
  assert.equal(await page.getAttribute('[data-testid=offline-status]', 'data-state'), 'off');
  assert.ok(await page.isVisible('[data-testid=keep-on]'), 'the page offers to keep things again');

  // Nothing is kept while keeping is off, even when the user works.
  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  await page.waitForTimeout(300);
  assert.deepEqual(await page.evaluate(STORAGE), { databases: [], caches: [], serviceWorkers: 0 }, 'storage while keeping is off');

  // Turned back on: the session is saved again and the app is kept for offline use.
  await page.click('[data-testid=keep-on]');
  await sessionSaved(page, /t1_crop\.nii\.gz, 0 runs/);
  await page.waitForFunction(() => document.querySelector('[data-testid=offline-status]').dataset.state === 'ready');
  const again = await page.evaluate(STORAGE);
  assert.ok(again.databases.includes('insitu') && again.caches.length > 0 && again.serviceWorkers === 1, JSON.stringify(again));

  assertSameOrigin(requests, origin);
  await page.close();
});

test('no room left to keep the session: the page says so, keeps working, and saves once there is room', { timeout: RUN_TIMEOUT_MS + 5 * 60_000 }, async () => {
  requirements();
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();
  // The browser refuses every write as it does when the site's quota is used up. (Chromium's
  // DevTools quota override, Storage.overrideQuotaForOrigin, did not refuse these writes
  // reliably: after Clear the usage it counts lags, and a write replacing as many bytes as it
  // adds goes through; so the refusal is made here, where IndexedDB is written.)
  await page.evaluate(() => {
    window.__put = IDBObjectStore.prototype.put;
    IDBObjectStore.prototype.put = function () {
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    };
  });
  try {
    await page.setInputFiles('[data-testid=file-input]', join(process.env.INSITU_TEST_DATA, 't1_crop.nii.gz'));
    assert.equal(await idle(page), null, `the volume did not load${log()}`);
    await page.waitForFunction(() => document.querySelector('[data-testid=session-status]').dataset.ok === 'false', null, { polling: 100 });
    const message = await page.textContent('[data-testid=session-status]');
    console.log(`# ${message}`);
    assert.match(message, /no room left to keep the session/);
    assert.match(message, /still here in this tab/);
    assert.ok(await page.locator('[data-testid=session-status]').isVisible());

    // The session in the tab is whole and works.
    assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');
    await page.selectOption('[data-testid=model-select]', MODEL);
    await page.selectOption('[data-testid=backend-select]', 'cpu');
    await page.check('[data-testid=crop]');
    await page.click('[data-testid=run]');
    assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the segmentation failed${log()}`);
    assert.equal(await page.evaluate(() => window.insitu.state.runs.size), 1);
  } finally {
    await page.evaluate(() => (IDBObjectStore.prototype.put = window.__put)); // room again
  }

  // With room again, the next change saves everything, and a reload brings it back.
  await page.click(`[data-testid=run-${MODEL}]`);
  await sessionSaved(page, /t1_crop\.nii\.gz, 1 run/);
  const before = await page.evaluate(SNAPSHOT);
  await page.reload();
  await started(page, log);
  assert.deepEqual(await page.evaluate(SNAPSHOT), before, 'the session after the reload');

  assertSameOrigin(requests, origin);
  await page.close();
});
