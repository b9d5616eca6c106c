// Browser tests of the volume formats the page opens beyond a single NIfTI file: a DICOM
// export folder with two series (the page asks which one), a broken DICOM dropped after it (the
// volume stays), and a MetaImage header chosen with its data file, segmented on the CPU path and
// downloaded in the input's own format.
//
//   node --test tests/browser/
//
// Needs (the test fails, saying so, when any is missing): the built page (see segment.test.mjs),
//   INSITU_TEST_DATA      the mirror's data folder (../shared/data here), for the DICOM series
//                         dicom/siemens_prisma_sagittal_gre_series2 (with its dcm2niix reference)
//                         and pydicom_testfiles/CT_small.dcm
//   INSITU_TEST_VOLUME    a small float32 NIfTI volume with tissue in it, and
//   INSITU_TEST_EXPECTED  the CLI's tissue_fast labels of it (both as for segment.test.mjs)
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import {
  assertSameOrigin,
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
const RUN_TIMEOUT_MS = 20 * 60_000;
const HOW_TO_RUN = '\nRun `scripts/test.sh`, which prepares these files, or see its browser-test lines.';

function data() {
  failIfMissing([...missingFiles(['INSITU_TEST_DATA']), ...missingBuild()], HOW_TO_RUN);
  return process.env.INSITU_TEST_DATA;
}

test('a DICOM folder with two series asks which one, opens it on the right grid, and a broken DICOM keeps it', { timeout: 10 * 60_000 }, async () => {
  const root = data();
  const seriesDir = join(root, 'dicom/siemens_prisma_sagittal_gre_series2');
  const slices = readdirSync(join(seriesDir, 'dicom')).filter((name) => name.endsWith('.dcm'));
  assert.equal(slices.length, 5, `expected the 5 slices of ${seriesDir}/dicom`);
  // An export folder as scanners write them: one subfolder per series, slice names reused
  // (the CT slice is called 1.dcm too), and a file that is not an image.
  const exportDir = mkdtempSync(join(tmpdir(), 'insitu-dicom-'));
  const folder = join(exportDir, 'export');
  mkdirSync(join(folder, 'series2'), { recursive: true });
  mkdirSync(join(folder, 'series1'));
  for (const name of slices) copyFileSync(join(seriesDir, 'dicom', name), join(folder, 'series2', name));
  copyFileSync(join(root, 'pydicom_testfiles/CT_small.dcm'), join(folder, 'series1', slices[0]));
  writeFileSync(join(folder, 'notes.txt'), 'not an image');
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();

  // The page reads the files' heads to list the series, then the chosen series' files whole.
  await page.setInputFiles('[data-testid=folder-input]', folder);
  await page.waitForFunction(() => window.insitu.state.pendingSeries || window.insitu.state.error);
  assert.equal(await idle(page), null, `opening the folder failed${log()}`);
  assert.ok(await page.isVisible('[data-testid=series-chooser]'), 'the series chooser is shown');
  assert.equal(await page.evaluate(() => window.insitu.state.input), null, 'nothing is opened before a series is chosen');
  // Listed from heads: these Siemens files' headers (99 KB, private CSA headers) run past the
  // first 64 KiB, so they alone are sent whole; the CT slice (39 KB) and notes.txt are sent as heads.
  const listing = await page.evaluate(() => window.insitu.listing);
  console.log(`# listing sent ${listing.sentBytes} of ${listing.totalBytes} bytes`);
  assert.equal(listing.files, 7);
  assert.equal(listing.wholeFiles, 5, 'the five files whose header is longer than 64 KiB are sent whole');
  const options = await page.$$eval('[data-testid=series-select] option', (list) =>
    list.map((o) => ({ value: o.value, text: o.textContent })),
  );
  console.log(`# series offered: ${options.map((o) => o.text).join(' | ')}`);
  assert.equal(options.length, 2, 'two series are offered');
  const sagittal = options.find((o) => /gre_field_mapping/.test(o.text));
  assert.ok(sagittal, 'the sagittal series is listed by its description');
  assert.match(sagittal.text, /42 × 64 × 5 · 5 files/);

  await page.selectOption('[data-testid=series-select]', sagittal.value);
  await page.click('[data-testid=series-open]');
  assert.equal(await idle(page), null, `opening the series failed${log()}`);
  // Only now are the chosen series' files read whole: keep the folder until then.
  rmSync(exportDir, { recursive: true, force: true });
  const input = await page.evaluate(() => {
    const { name, series, info, skipped } = window.insitu.state.input;
    return { name, series, info, skipped };
  });
  assert.equal(input.series, sagittal.value);
  assert.equal(input.name, 'gre_field_mapping_PMUlog (series 2)', 'the volume takes the series name');
  assert.equal(input.info.format, 'DICOM');
  assert.deepEqual(input.info.dims, [42, 64, 5]);
  assert.deepEqual(
    input.skipped.map(([path]) => path).sort(),
    ['export/notes.txt', `export/series1/${slices[0]}`],
    'the other series and notes.txt are reported as not used',
  );
  const kept = await page.evaluate(() => window.insitu.state.input.files.map(([path]) => path));
  assert.deepEqual(kept.sort(), slices.map((name) => `export/series2/${name}`).sort(), 'only the series is kept');
  assert.match(await page.textContent('[data-testid=volume-info]'), /DICOM series · 42 × 64 × 5 voxels/);
  assert.ok(await page.isHidden('[data-testid=series-chooser]'));
  assert.ok(await page.isHidden('#viewer-empty'), 'the viewer shows the series');

  // dcm2niix's conversion of the same series stores the rows in the opposite order; the
  // world position of every voxel must agree: ours = theirs with the row axis reversed.
  const ref = readNifti(readFileSync(join(seriesDir, 'ref/2_gre_field_mapping_PMUlog.nii')), 'dcm2niix reference');
  const rows = ref.dims[1];
  const want = ref.srow.map((r) => [r[0], -r[1], r[2], r[3] + r[1] * (rows - 1)]);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 4; j++) {
      assert.ok(
        Math.abs(input.info.affine[i][j] - want[i][j]) < 1e-3,
        `affine[${i}][${j}] is ${input.info.affine[i][j]}, dcm2niix gives ${want[i][j]}\n${JSON.stringify(input.info.affine)}`,
      );
    }
  }

  // A DICOM whose pixel data is cut short: a specific error, and the series stays loaded.
  const broken = 'MR_small_short_pixeldata.dcm';
  await dropFiles(page, [{ name: broken, bytes: readFileSync(new URL(`../fixtures/formats/${broken}`, import.meta.url)) }]);
  await page.waitForFunction(() => window.insitu.state.error !== null);
  const message = await idle(page);
  console.log(`# error shown: ${message}`);
  assert.match(message, new RegExp(`${broken}.*PixelData holds 1000 bytes`));
  assert.equal(await page.evaluate(() => window.insitu.state.input?.series), sagittal.value, 'the series stays the input');
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is still enabled');
  assertSameOrigin(requests, origin);
  await page.close();
});

/** A MetaImage header (.mhd) for the voxels of a NIfTI volume, on the same world grid. */
function metaImageHeader(nifti, dataFile) {
  const types = { 2: 'MET_UCHAR', 4: 'MET_SHORT', 16: 'MET_FLOAT', 512: 'MET_USHORT' };
  assert.ok(types[nifti.datatype], `NIfTI datatype ${nifti.datatype} has no MetaImage type here`);
  assert.ok([0, 1].includes(nifti.scale.slope) && nifti.scale.inter === 0, 'the volume must be unscaled');
  // NIfTI's sform maps to RAS; MetaImage is LPS: x and y change sign.
  const lps = nifti.srow.map((row, i) => (i < 2 ? row.map((v) => -v) : row));
  const spacing = [0, 1, 2].map((j) => Math.hypot(lps[0][j], lps[1][j], lps[2][j]));
  const directions = [0, 1, 2].flatMap((j) => [0, 1, 2].map((i) => lps[i][j] / spacing[j]));
  return [
    'ObjectType = Image',
    'NDims = 3',
    'BinaryData = True',
    `BinaryDataByteOrderMSB = ${!nifti.little ? 'True' : 'False'}`,
    'CompressedData = False',
    `TransformMatrix = ${directions.join(' ')}`,
    `Offset = ${lps.map((row) => row[3]).join(' ')}`,
    `ElementSpacing = ${spacing.join(' ')}`,
    `DimSize = ${nifti.dims.slice(0, 3).join(' ')}`,
    `ElementType = ${types[nifti.datatype]}`,
    `ElementDataFile = ${dataFile}`,
    '',
  ].join('\n');
}

/** The header fields and the values of a MetaImage (.mha) label file. */
function readMha(bytes) {
  const buf = Buffer.from(bytes);
  const end = buf.indexOf('ElementDataFile = LOCAL\n');
  assert.ok(end > 0, 'the .mha has an ElementDataFile = LOCAL line');
  const fields = Object.fromEntries(
    buf
      .subarray(0, end)
      .toString('latin1')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(' = ')),
  );
  let body = buf.subarray(end + 'ElementDataFile = LOCAL\n'.length);
  if (fields.CompressedData === 'True') body = inflateSync(body);
  const arrays = { MET_UCHAR: Uint8Array, MET_USHORT: Uint16Array };
  const Type = arrays[fields.ElementType];
  assert.ok(Type, `label element type ${fields.ElementType}`);
  const values = new Type(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  return { fields, values };
}

test('a MetaImage header with its data file segments on the CPU like the CLI, and downloads as .mha', { timeout: RUN_TIMEOUT_MS + 10 * 60_000 }, async () => {
  failIfMissing([...missingFiles(['INSITU_TEST_VOLUME', 'INSITU_TEST_EXPECTED']), ...missingBuild()], HOW_TO_RUN);
  const volume = readNifti(readFileSync(process.env.INSITU_TEST_VOLUME), process.env.INSITU_TEST_VOLUME);
  const expected = readNifti(readFileSync(process.env.INSITU_TEST_EXPECTED), process.env.INSITU_TEST_EXPECTED);
  assert.equal(expected.datatype, 2, 'the CLI writes these labels as uint8');
  assert.ok(new Set(expected.voxels).size > 1, 'the expected labels hold tissue');
  const dir = mkdtempSync(join(tmpdir(), 'insitu-mhd-'));
  const header = join(dir, 'small.mhd');
  const raw = join(dir, 'small.raw');
  writeFileSync(header, metaImageHeader(volume, 'small.raw'));
  writeFileSync(raw, volume.voxels);
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();

  await page.setInputFiles('[data-testid=file-input]', [raw, header]);
  assert.equal(await idle(page), null, `opening small.mhd + small.raw failed${log()}`);
  rmSync(dir, { recursive: true, force: true });
  const info = await page.evaluate(() => window.insitu.state.input.info);
  assert.equal(await page.evaluate(() => window.insitu.state.input.name), 'small.mhd');
  assert.equal(info.format, 'MetaImage');
  assert.deepEqual(info.dims, volume.dims.slice(0, 3));

  await page.selectOption('[data-testid=model-select]', MODEL);
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  const error = await idle(page, RUN_TIMEOUT_MS);
  assert.equal(error, null, `segmentation failed: ${error}${log()}`);
  const status = await page.textContent('[data-testid=run-status]');
  console.log(`# ${status}`);
  assert.equal(await page.evaluate(() => window.insitu.lastResult.backend), 'cpu');

  // NIfTI download: the same voxels as the CLI gave for the NIfTI volume.
  const [nii] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=download]')]);
  assert.equal(nii.suggestedFilename(), `small_${MODEL}.nii.gz`);
  const got = readNifti(readFileSync(await nii.path()), 'downloaded segmentation');
  assert.deepEqual(got.dims, expected.dims);
  if (!got.voxels.equals(expected.voxels)) {
    const { count, first } = firstDifference(got.voxels, expected.voxels);
    assert.fail(`${count} of ${expected.voxels.length} voxel bytes differ from the CLI output (first at byte ${first})`);
  }

  // The same labels in the input's own format.
  const likeInput = page.locator('[data-testid=download-like-input]');
  assert.ok(await likeInput.isVisible(), 'a download in the input format is offered');
  assert.equal((await likeInput.textContent()).trim(), 'Download .mha');
  const [mha] = await Promise.all([page.waitForEvent('download'), likeInput.click()]);
  assert.equal(mha.suggestedFilename(), `small_${MODEL}.mha`);
  const labels = readMha(readFileSync(await mha.path()));
  assert.equal(labels.fields.DimSize, volume.dims.slice(0, 3).join(' '));
  assert.equal(labels.values.length, expected.voxels.length);
  const differ = labels.values.findIndex((v, i) => v !== expected.voxels[i]);
  assert.equal(differ, -1, `the .mha labels differ from the CLI's at voxel ${differ}`);
  assertSameOrigin(requests, origin);
  await page.close();
});
