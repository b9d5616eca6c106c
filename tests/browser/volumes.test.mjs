// Browser tests of 4-D and big inputs: a 4-D NIfTI opens with a volume chooser and volume 1
// is what the page shows and keeps (voxels as nibabel reads them, tests/fixtures/volumes4d);
// NIfTI headers claiming 800³ and 2048³ float32 grids are refused before they are read, saying
// their size and the page's limit, and the volume open before stays; a multi-volume DICOM series is
// listed from the first bytes of its files only, then read whole and opened at volume 1. A
// reload brings back the chosen volume.
//
//   node --test tests/browser/volumes.test.mjs
//
// Needs the built page (see segment.test.mjs); the fixtures are committed.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertSameOrigin, closeShared, failIfMissing, idle, missingBuild, openApp, readNifti, sharedSession, started } from './helpers.mjs';

after(closeShared);

const FIXTURES = fileURLToPath(new URL('../fixtures/volumes4d/', import.meta.url));
const EXPECTED = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8'));
const HOW_TO_RUN = '\nRun `scripts/test.sh`, which builds the page, or see its browser-test lines.';

/** The float32 voxels of the NIfTI the page gave its viewer: {dims, sum, sha256}. */
function viewVoxels(bytes) {
  const view = readNifti(Uint8Array.from(bytes), 'the viewer copy');
  assert.equal(view.datatype, 16, 'the viewer copy is float32');
  const values = new Float32Array(view.voxels.buffer.slice(view.voxels.byteOffset, view.voxels.byteOffset + view.voxels.byteLength));
  const sum = values.reduce((a, b) => a + b, 0);
  return { dims: view.dims.slice(0, 3), sum, sha256: createHash('sha256').update(view.voxels).digest('hex') };
}

async function openedInput(page) {
  return page.evaluate(() => {
    const { name, series, volume, volumes, info, files } = window.insitu.state.input;
    return { name, series, volume, volumes, info, files: files.map(([path]) => path), view: window.insitu.lastView && [...window.insitu.lastView] };
  });
}

async function chooseVolume(page, index, log) {
  await page.selectOption('[data-testid=volume-select]', String(index));
  await page.click('[data-testid=volume-open]');
  assert.equal(await idle(page), null, `opening volume ${index} failed${log()}`);
}

function assertAffine(got, want, what) {
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 4; j++) {
      assert.ok(Math.abs(got[i][j] - want[i][j]) < 1e-4, `${what}: affine[${i}][${j}] is ${got[i][j]}, expected ${want[i][j]}`);
    }
  }
}

/** A NIfTI-1 header claiming an n³ float32 grid, and a few bytes of data: 4 KiB on disk. */
function hugeHeader(n) {
  const buf = Buffer.alloc(4096);
  buf.writeInt32LE(348, 0);
  [3, n, n, n, 1, 1, 1, 1].forEach((d, i) => buf.writeInt16LE(d, 40 + 2 * i));
  buf.writeInt16LE(16, 70); // float32
  buf.writeInt16LE(32, 72);
  [1, 1, 1, 1, 1, 1, 1, 1].forEach((p, i) => buf.writeFloatLE(p, 76 + 4 * i));
  buf.writeFloatLE(352, 108);
  buf.writeFloatLE(1, 112);
  buf.writeInt16LE(1, 254); // sform_code
  [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]].forEach((row, r) => row.forEach((v, i) => buf.writeFloatLE(v, 280 + 16 * r + 4 * i)));
  buf.write('n+1\0', 344, 'latin1');
  return buf;
}

test('a 4-D NIfTI opens with a volume chooser; volume 1 is shown and kept; headers of 800³ and 2048³ are refused before loading', { timeout: 10 * 60_000 }, async () => {
  failIfMissing(missingBuild(), HOW_TO_RUN);
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();
  await page.evaluate(() => (window.insitu.keepView = true));
  const fmri = join(FIXTURES, 'fmri.nii.gz');
  const expected = EXPECTED['fmri.nii.gz'].volumes;

  await page.setInputFiles('[data-testid=file-input]', fmri);
  assert.equal(await idle(page), null, `opening fmri.nii.gz failed${log()}`);
  assert.ok(await page.isVisible('[data-testid=volume-chooser]'), 'the volume chooser is shown');
  const options = await page.$$eval('[data-testid=volume-select] option', (list) => list.map((o) => o.textContent));
  console.log(`# volumes offered: ${options.join(' | ')}`);
  assert.equal(options.length, expected.length);
  assert.match(options[1], /^1 · volume 2 of 3, t = 2 s$/);
  let input = await openedInput(page);
  assert.equal(input.volume, 0, 'the first volume is opened by default');
  assert.equal(viewVoxels(input.view).sha256, expected[0].sha256, 'volume 0 is shown first');

  await chooseVolume(page, 1, log);
  input = await openedInput(page);
  assert.equal(input.volume, 1);
  assert.deepEqual(input.info.dims, expected[1].shape);
  assertAffine(input.info.affine, expected[1].affine, 'volume 1');
  const shown = viewVoxels(input.view);
  assert.equal(shown.sha256, expected[1].sha256, `the viewer shows volume 1 (sum ${shown.sum}, nibabel's ${expected[1].sum})`);
  assert.match(await page.textContent('[data-testid=volume-info]'), /volume 1 of 3, from 0 \(volume 2 of 3, t = 2 s\)/);
  assert.equal(await page.inputValue('[data-testid=volume-select]'), '1');

  // A fresh worker (after Cancel or a lost GPU) is sent the same volume again.
  const sent = await page.evaluate(async () => {
    const { core, state } = window.insitu;
    await core.restart();
    const calls = [];
    const call = core.call.bind(core);
    core.call = (op, args, onProgress) => (calls.push({ op, volume: args.volume }), call(op, args, onProgress));
    await core.ensureOpen(state.input);
    core.call = call;
    return calls;
  });
  assert.deepEqual(sent, [{ op: 'open', volume: 1 }], 'the fresh worker opens volume 1');

  // A run belongs to the volume shown (tiny fixture: seconds on the CPU path).
  await page.selectOption('[data-testid=model-select]', 'tissue_fast');
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page), null, `segmenting volume 1 failed${log()}`);
  const run = await page.evaluate(() => {
    const { fileName, labels } = window.insitu.lastResult;
    return { fileName, labels: [...labels] };
  });
  assert.equal(run.fileName, 'fmri_vol1_tissue_fast.nii.gz');
  assert.deepEqual(readNifti(Uint8Array.from(run.labels), 'labels').dims.slice(0, 3), expected[1].shape);

  // Headers claiming 800³ float32 (1.9 GiB of voxels) and 2048³ (32 GiB, more voxels than
  // insitu reads at all) in 4 KiB files: refused before loading, with the size and the limit.
  const dir = mkdtempSync(join(tmpdir(), 'insitu-huge-'));
  for (const [n, why] of [
    [800, /needs about 4\.8 GiB of the page's memory \(800 x 800 x 800 voxels: about 2\.9 GiB .* more than the 2\.8 GiB the page can give a volume/],
    [2048, /2048x2048x2048 = 8589934592 voxels.*the page can give a volume at most 2\.8 GiB/],
  ]) {
    const huge = join(dir, `huge${n}.nii`);
    writeFileSync(huge, hugeHeader(n));
    await page.setInputFiles('[data-testid=file-input]', huge);
    await page.waitForFunction(() => window.insitu.state.error !== null);
    const message = await idle(page);
    console.log(`# refused: ${message}`);
    assert.match(message, new RegExp(`huge${n}\\.nii \\(4 KiB on disk\\) is too big to open in this page`));
    assert.match(message, why);
    assert.match(message, /insitu convert --crop .* or segment it with the insitu command-line tool/);
  }
  rmSync(dir, { recursive: true, force: true });
  input = await openedInput(page);
  assert.equal(input.name, 'fmri.nii.gz', 'the 4-D volume stays the input');
  assert.equal(input.volume, 1, 'at the volume chosen');
  assert.equal(await page.evaluate(() => window.insitu.state.runs.size), 1, 'and its run stays');
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is still enabled');
  assert.match(await page.textContent('[data-testid=stage]'), /Kept fmri\.nii\.gz/);

  // A reload brings back the same volume of the input (the session kept in this browser).
  await page.reload();
  await started(page, log);
  input = await openedInput(page);
  assert.equal(input.name, 'fmri.nii.gz');
  assert.equal(input.volume, 1, 'the reloaded page opens volume 1 again');
  assert.equal(await page.inputValue('[data-testid=volume-select]'), '1');
  assertSameOrigin(requests, origin);
  await page.close();
});

test('a multi-volume DICOM series is listed from the heads of its files, then opened at volume 1', { timeout: 10 * 60_000 }, async () => {
  failIfMissing(missingBuild(), HOW_TO_RUN);
  const folder = join(FIXTURES, 'dicom_dwi');
  const names = readdirSync(folder);
  const total = names.reduce((sum, name) => sum + statSync(join(folder, name)).size, 0);
  const expected = EXPECTED.dicom_dwi.volumes;
  const { page, log } = await openApp();
  // 4 KiB heads hold these files' headers (2.5 KiB) but not all their pixel data (7.9 KiB files).
  const HEAD = 4096;
  await page.evaluate((head) => {
    window.insitu.keepView = true;
    window.insitu.headBytes = head;
  }, HEAD);

  await page.setInputFiles('[data-testid=folder-input]', folder);
  assert.equal(await idle(page), null, `opening dicom_dwi failed${log()}`);
  const listing = await page.evaluate(() => window.insitu.listing);
  console.log(`# listing sent ${listing.sentBytes} of ${listing.totalBytes} bytes (${listing.files} files)`);
  assert.deepEqual(listing, { files: names.length, wholeFiles: 0, sentBytes: names.length * HEAD, totalBytes: total });

  let input = await openedInput(page);
  assert.equal(input.info.format, 'DICOM');
  assert.equal(input.files.length, names.length, 'the series is read whole once chosen');
  assert.equal(input.volume, 0);
  assert.equal(input.volumes.length, expected.length);
  const options = await page.$$eval('[data-testid=volume-select] option', (list) => list.map((o) => o.textContent));
  console.log(`# volumes offered: ${options.join(' | ')}`);
  assert.match(options[1], /b = 1000/);

  await chooseVolume(page, 1, log);
  input = await openedInput(page);
  assert.equal(input.volume, 1);
  assert.equal(input.volumes[1].b_value, expected[1].b_value);
  const shown = viewVoxels(input.view);
  assert.ok(Math.abs(shown.sum - expected[1].sum) < 1e-3 * Math.abs(expected[1].sum), `volume 1's voxels sum to ${shown.sum}, dcm2niix/pydicom's to ${expected[1].sum}`);
  assert.deepEqual([...shown.dims].sort(), [...expected[1].shape].sort());
  await page.close();
});
