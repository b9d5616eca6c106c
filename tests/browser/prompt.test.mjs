// LiteMedSAM in the page, on the CPU path: boxes dragged on the box panel's slice of the
// TotalSegmentator CT give the same labels as `insitu prompt` with those boxes; a second box on
// the same slice reuses the slice's embedding (and the first box's mask); propagating a box
// through a slice range matches the CLI's --box3d; boxes from reference labels make a run that
// the workbench marks as a generalist prompted from the reference, evaluated label for label.
//
//   INSITU_TEST_DATA=../shared/data INSITU_TEST_PROMPT_2D=... INSITU_TEST_PROMPT_3D=... \
//     node --test tests/browser/prompt.test.mjs        (scripts/test.sh makes the two CLI outputs)
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  assertSameLabels,
  assertSameOrigin,
  closeShared,
  downloadedLabels,
  failIfMissing,
  idle,
  missingBuild,
  missingFiles,
  openApp,
  readNifti,
  sharedSession,
} from './helpers.mjs';

after(closeShared);

// Each new slice is one encoder pass (~75 GFLOP) in wasm on the CPU.
const RUN_TIMEOUT_MS = 10 * 60_000;
const LIVER = [45, 26, 104, 84];
const SPLEEN = [11, 23, 27, 54];
const K = 15;

/** Drags a box from voxel (i0, j0) to (i1, j1) on the panel's slice, as a user would. */
async function dragBox(page, [i0, j0, i1, j1]) {
  await page.locator('[data-testid=slice-canvas]').scrollIntoViewIfNeeded();
  const [x0, y0] = await page.evaluate(([i, j]) => window.insitu.promptPanel.voxelToClient(i, j), [i0, j0]);
  const [x1, y1] = await page.evaluate(([i, j]) => window.insitu.promptPanel.voxelToClient(i, j), [i1, j1]);
  await page.mouse.move(x0, y0);
  await page.mouse.down();
  await page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2);
  await page.mouse.move(x1, y1);
  await page.mouse.up();
  await page.waitForFunction(() => window.insitu.state.running, null, { timeout: 10_000 }).catch(() => {});
}

/** Reference labels: the liver (label 5 of TotalSegmentator's example_seg) on slice K only, as .nii. */
function liverOnSlice(data) {
  const path = join(data, 'totalsegmentator/example_seg.nii.gz');
  const buf = gunzipSync(readFileSync(path));
  const { dims, datatype, voxels } = readNifti(buf, path);
  assert.equal(datatype, 2, `${path}: uint8 labels expected (datatype ${datatype})`);
  const plane = dims[0] * dims[1]; // dims[0] is the NIfTI's dim[1] (i)
  const out = Buffer.from(buf);
  const start = buf.length - voxels.length;
  for (let n = 0; n < voxels.length; n++) {
    out[start + n] = Math.floor(n / plane) === K && voxels[n] === 5 ? 5 : 0;
  }
  return out;
}

test('LiteMedSAM boxes in the page: same labels as the CLI, cached embeddings, propagation, boxes from the reference', { timeout: 4 * RUN_TIMEOUT_MS }, async () => {
  failIfMissing(
    [...missingFiles(['INSITU_TEST_DATA', 'INSITU_TEST_PROMPT_2D', 'INSITU_TEST_PROMPT_3D']), ...missingBuild()],
    '\nRun `scripts/test.sh`, which makes the CLI outputs, or see its LiteMedSAM lines.',
  );
  const data = process.env.INSITU_TEST_DATA;
  const ct = join(data, 'totalsegmentator/example_ct_sm.nii.gz');
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();

  await page.setInputFiles('[data-testid=file-input]', ct);
  assert.equal(await idle(page), null, `loading ${ct} failed${log()}`);
  await page.selectOption('[data-testid=model-select]', 'litemedsam');
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.waitForSelector('[data-testid=prompt-panel]:not([hidden])');
  assert.match(await page.textContent('[data-testid=intensity-select]'), /Guessed: CT/);
  await page.evaluate((k) => {
    const slice = document.querySelector('[data-testid=slice-input]');
    slice.value = String(k);
    slice.dispatchEvent(new Event('input'));
  }, K);
  await page.waitForFunction((k) => window.insitu.promptPanel.slice && window.insitu.promptPanel.k === k, K);
  await page.waitForFunction(() => window.insitu.promptPanel.slice.width === 122);

  // First box: the slice is encoded once.
  await dragBox(page, LIVER);
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the first box failed${log()}`);
  const first = await page.evaluate(() => window.insitu.lastResult.stats);
  console.log(`# first box: ${await page.textContent('[data-testid=prompt-status]')}`);
  assert.equal(first.encoded_slices, 1);

  // Second object, second box on the same slice: no encoder pass, one decoder call.
  await page.click('[data-testid=add-object]');
  await dragBox(page, SPLEEN);
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `the second box failed${log()}`);
  const second = await page.evaluate(() => window.insitu.lastResult.stats);
  const status = await page.textContent('[data-testid=prompt-status]');
  console.log(`# second box: ${status}`);
  assert.equal(second.encoded_slices, 0, 'the embedded slice is not encoded again');
  assert.equal(second.decoded_boxes, 1, "only the new box is decoded (the first box's mask is kept)");
  assert.match(status, /encoder 0 slice\(s\).*\(1 cached\)/);
  assertSameLabels(await downloadedLabels(page), readNifti(readFileSync(process.env.INSITU_TEST_PROMPT_2D), 'CLI 2-D'), 'insitu prompt --box x2');

  // Propagate the spleen box through slices 14..17: slice 16 is the one new encoder pass.
  await page.fill('[data-testid=propagate-from]', '14');
  await page.fill('[data-testid=propagate-to]', '17');
  await page.click('[data-testid=propagate]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `propagation failed${log()}`);
  const third = await page.evaluate(() => window.insitu.lastResult.stats);
  assert.equal(third.encoded_slices, 1, 'slice 16 only');
  assertSameLabels(await downloadedLabels(page), readNifti(readFileSync(process.env.INSITU_TEST_PROMPT_3D), 'CLI 3-D'), 'insitu prompt --box3d');

  // Boxes from the reference: one box (the liver on slice 15), labelled 5, evaluated as such.
  await page.setInputFiles('[data-testid=reference-input]', { name: 'liver_k15.nii', mimeType: 'application/octet-stream', buffer: liverOnSlice(data) });
  assert.equal(await idle(page), null, `the reference did not load${log()}`);
  await page.selectOption('[data-testid=reference-protocol]', 'per-slice');
  await page.click('[data-testid=reference-boxes]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `boxes from the reference failed${log()}`);
  const run = await page.evaluate(() => {
    const r = window.insitu.lastResult;
    return { id: r.id, kind: r.kind, prompts: r.prompts, dice: r.evaluation?.report?.labels?.['5']?.dice, encoded: r.stats.encoded_slices };
  });
  console.log(`# boxes from the reference: ${JSON.stringify(run)}`);
  assert.equal(run.id, 'litemedsam-per-slice');
  assert.equal(run.kind, 'generalist');
  assert.match(run.prompts, /2-D box per slice from the reference/);
  assert.equal(run.encoded, 0, 'slice 15 is still embedded');
  assert.ok(run.dice > 0.8, `LiteMedSAM's liver on slice 15 against the reference: Dice ${run.dice}`);
  const table = await page.textContent('[data-testid=compare-table]');
  assert.match(table, /Kind.*generalist/s);
  assert.match(table, /Prompts.*from the reference/s);

  assertSameOrigin(requests, origin);
  await page.close();
});
