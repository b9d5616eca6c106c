// End-to-end test of evaluation and side-by-side comparison in the page (headless Debian
// Chromium, playwright-core): runs two models on a small volume on the CPU backend, loads
// reference labels, checks the page's Dice/NSD/HD95 against the native CLI's `insitu eval`,
// the comparison CSV/HTML exports, the error map toggle, and that bad input keeps what was loaded.
//
//   node --test tests/browser/
//
// Needs (the test fails, saying so, when any is missing):
//   dist/, dist/assets/     as for segment.test.mjs
//   INSITU_TEST_VOLUME      a small volume (a crop of t1_crop, see below)
//   INSITU_TEST_REFERENCE   reference labels on the same grid as INSITU_TEST_VOLUME
//   INSITU_TEST_EVAL_JSON   `insitu eval --pred <CLI segmentation of the volume> --ref $INSITU_TEST_REFERENCE --json`
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { assertSameOrigin, closeShared, failIfMissing, idle, missingBuild, missingFiles, openApp, sharedSession } from './helpers.mjs';

after(closeShared);

const MODEL = 'tissue_fast';
// The second model: the smallest other one in the registry (23 k parameters).
const SECOND_MODEL = 'tissue_gw_tfjs';
const SCREENSHOT = '/tmp/insitu-eval.png';
const RUN_TIMEOUT_MS = 10 * 60_000;
const CSV_HEADER =
  'run,model,kind,prompts,label,name,dice,iou,hd95,assd,nsd,vol_pred_ml,vol_ref_ml,runtime_ms,parameters,gflops,peak_tensor_mb,backend';

const HOW_TO_RUN = `
Prepare and run it like this (from the repository root):
  <build the wasm core into pkg/ (wasm-bindgen --target web)> && npm ci && npm run build
  insitu fetch --dest dist/assets
  insitu convert dist/assets/data/t1_crop.nii.gz -o /tmp/small.nii.gz --crop 100,100,100,48,48,48
  insitu convert ../shared/data/reference/t1_crop_tissue_fast.nii.gz -o /tmp/small_ref.nii.gz --crop 100,100,100,48,48,48
  insitu segment --model ${MODEL} --crop /tmp/small.nii.gz -o /tmp/small_${MODEL}.nii.gz
  insitu eval --pred /tmp/small_${MODEL}.nii.gz --ref /tmp/small_ref.nii.gz --json > /tmp/small_eval.json
  INSITU_TEST_VOLUME=/tmp/small.nii.gz INSITU_TEST_REFERENCE=/tmp/small_ref.nii.gz INSITU_TEST_EVAL_JSON=/tmp/small_eval.json \\
    node --test tests/browser/`;

const ENV = ['INSITU_TEST_VOLUME', 'INSITU_TEST_REFERENCE', 'INSITU_TEST_EVAL_JSON'];

function requirements() {
  failIfMissing([...missingFiles(ENV), ...missingBuild()], HOW_TO_RUN);
  return {
    volume: process.env.INSITU_TEST_VOLUME,
    reference: process.env.INSITU_TEST_REFERENCE,
    expected: JSON.parse(readFileSync(process.env.INSITU_TEST_EVAL_JSON, 'utf8')),
  };
}

/** Equal within 1e-9 relative; `null` (an infinite distance) only equals `null`. */
function assertClose(got, want, what) {
  if (want === null || got === null) {
    assert.equal(got, want, what);
    return;
  }
  const scale = Math.max(Math.abs(want), Number.MIN_VALUE);
  assert.ok(Math.abs(got - want) <= 1e-9 * scale, `${what}: page ${got}, CLI ${want}`);
}

/** "inf" and "" mean no finite number; otherwise the number. */
function cellNumber(text) {
  if (text === 'inf' || text === '' || text === undefined) return null;
  return Number(text);
}

/** The metrics the page's evaluation table shows: {label: {metric: number|null}}. */
async function evaluationTable(page) {
  return page.$$eval('[data-testid=eval-table] tbody tr', (rows) =>
    Object.fromEntries(
      rows.map((row) => [
        row.dataset.label,
        Object.fromEntries([...row.querySelectorAll('td[data-metric]')].map((td) => [td.dataset.metric, td.dataset.value])),
      ]),
    ),
  );
}

/** RFC 4180 fields of one CSV line (quoted fields may hold commas and doubled quotes). */
function csvFields(line) {
  const fields = [];
  let at = 0;
  for (;;) {
    let field = '';
    if (line[at] === '"') {
      at++;
      for (;;) {
        const quote = line.indexOf('"', at);
        assert.ok(quote >= 0, `unterminated quoted CSV field in: ${line}`);
        field += line.slice(at, quote);
        at = quote + 1;
        if (line[at] !== '"') break;
        field += '"';
        at++;
      }
    } else {
      const comma = line.indexOf(',', at);
      field = line.slice(at, comma < 0 ? line.length : comma);
      at = comma < 0 ? line.length : comma;
    }
    fields.push(field);
    if (line[at] !== ',') return fields;
    at++;
  }
}

function parseCsv(text) {
  const [header, ...lines] = text.trimEnd().split('\n'); // no field of these runs holds a newline
  const columns = csvFields(header);
  return {
    header,
    rows: lines.map((line) => {
      const fields = csvFields(line);
      assert.equal(fields.length, columns.length, `CSV row with ${fields.length} fields: ${line}`);
      return Object.fromEntries(fields.map((v, i) => [columns[i], v]));
    }),
  };
}

async function runModel(page, model, log) {
  await page.selectOption('[data-testid=model-select]', model);
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  const error = await idle(page, RUN_TIMEOUT_MS);
  assert.equal(error, null, `${model} failed: ${error}${log()}`);
}

async function download(page, testid) {
  const [file] = await Promise.all([page.waitForEvent('download'), page.click(`[data-testid=${testid}]`)]);
  return { name: file.suggestedFilename(), text: readFileSync(await file.path(), 'utf8') };
}

test('evaluates two runs against a reference, same metrics as the CLI; compares and exports them', { timeout: 2 * RUN_TIMEOUT_MS + 10 * 60_000 }, async () => {
  const { volume, reference, expected } = requirements();
  const expectedLabels = Object.keys(expected.labels);
  assert.ok(expectedLabels.length > 0, `${process.env.INSITU_TEST_EVAL_JSON} has no labels: comparing against it proves nothing`);
  const { page, log } = await openApp();
  const { origin, requests } = sharedSession();

  await page.setInputFiles('[data-testid=file-input]', volume);
  assert.equal(await idle(page), null, `loading ${volume} failed${log()}`);

  // Two models on the same case: both runs are kept.
  await runModel(page, MODEL, log);
  await runModel(page, SECOND_MODEL, log);
  const runs = await page.evaluate(() => [...window.insitu.state.runs.keys()]);
  assert.deepEqual(runs, [MODEL, SECOND_MODEL], 'the second run is added, not replacing the first');
  assert.equal(await page.locator('[data-testid=runs] button').count(), 2);
  const facts = await page.evaluate(() =>
    [...window.insitu.state.runs.values()].map((r) => ({ id: r.id, backend: r.backend, parameters: r.parameters, gflops: r.gflops, total: r.timings_ms?.total })),
  );
  console.log(`# runs: ${JSON.stringify(facts)}`);
  for (const run of facts) {
    assert.equal(run.backend, 'cpu', `${run.id} ran on ${run.backend}`);
    assert.ok(run.parameters > 0 && run.gflops > 0 && run.total > 0, `${run.id} reports parameters, GFLOPs and runtime`);
  }

  // The reference: both runs are evaluated.
  await page.setInputFiles('[data-testid=reference-input]', reference);
  assert.equal(await idle(page), null, `evaluating against ${reference} failed${log()}`);
  assert.match(await page.textContent('[data-testid=reference-info]'), new RegExp(basename(reference).replace(/\./g, '\\.')));

  // tissue_fast's metrics in the page equal the CLI's.
  await page.click(`[data-testid=run-${MODEL}]`);
  await page.waitForFunction((id) => document.querySelector('[data-testid=eval-table]')?.dataset.run === id, MODEL);
  const table = await evaluationTable(page);
  assert.deepEqual(Object.keys(table).sort(), expectedLabels.sort(), 'the page evaluates the labels the CLI does');
  for (const label of expectedLabels) {
    for (const metric of ['dice', 'nsd', 'hd95']) {
      assertClose(cellNumber(table[label][metric]), expected.labels[label][metric], `${MODEL} label ${label} ${metric}`);
    }
  }
  assert.ok(await page.locator('[data-testid=eval-chart] svg rect').count() >= 2 * expectedLabels.length, 'the chart has a Dice and an NSD bar per label');

  // The comparison table has a column per run.
  assert.equal(await page.locator('[data-testid=compare-table] thead th[data-run]').count(), 2);

  // The error map overlay and its legend follow the toggle.
  assert.ok(await page.locator('[data-testid=error-legend]').isVisible(), 'the error legend is shown');
  assert.match(await page.textContent('[data-testid=error-legend]'), /false positive.*false negative/s);
  await page.uncheck('[data-testid=error-map-toggle]');
  assert.ok(await page.locator('[data-testid=error-legend]').isHidden(), 'the error legend hides with the overlay');
  await page.check('[data-testid=error-map-toggle]');

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`# screenshot: ${SCREENSHOT}`);

  // CSV: the header, a row per run × label, the numbers the page shows.
  const csv = await download(page, 'export-csv');
  const { header, rows } = parseCsv(csv.text);
  assert.equal(header, CSV_HEADER);
  for (const run of [MODEL, SECOND_MODEL]) {
    assert.ok(rows.some((r) => r.run === run), `the CSV has rows for ${run}`);
  }
  for (const label of expectedLabels) {
    const row = rows.find((r) => r.run === MODEL && r.label === label);
    assert.ok(row, `the CSV has ${MODEL} label ${label}`);
    for (const metric of ['dice', 'nsd', 'hd95']) {
      assertClose(cellNumber(row[metric]), cellNumber(table[label][metric]), `CSV ${MODEL} label ${label} ${metric}`);
    }
    assert.equal(row.backend, 'cpu');
    assert.equal(row.kind, 'task-specific', 'a MeshNet run is marked task-specific');
  }
  const compared = await page.$$eval('[data-testid=compare-table] tbody tr', (trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.row, [...tr.querySelectorAll('td')].map((td) => td.dataset.value)])),
  );
  for (const row of rows.filter((r) => r.run === SECOND_MODEL)) {
    for (const metric of ['dice', 'nsd', 'hd95']) {
      assertClose(cellNumber(row[metric]), cellNumber(compared[`${metric}:${row.label}`]?.[1]), `CSV ${SECOND_MODEL} label ${row.label} ${metric}`);
    }
    assertClose(cellNumber(row.runtime_ms), cellNumber(compared.runtime_ms[1]), `CSV ${SECOND_MODEL} runtime`);
  }

  // JSON and the self-contained HTML report.
  const json = JSON.parse((await download(page, 'export-json')).text);
  assert.deepEqual(json.runs.map((r) => r.run), [MODEL, SECOND_MODEL]);
  const html = (await download(page, 'export-html')).text;
  assert.match(html, /<svg/);
  assert.match(html, /<style>/);
  assert.doesNotMatch(html, /<script|<link|(src|href)\s*=\s*["']?(https?:)?\/\//i, 'the report makes no external request');

  // A reference on another grid: an error, and the loaded reference and results stay.
  const dir = mkdtempSync(join(tmpdir(), 'insitu-eval-'));
  try {
    let nii = Buffer.from(readFileSync(reference));
    if (nii[0] === 0x1f && nii[1] === 0x8b) nii = gunzipSync(nii);
    nii.writeFloatLE(nii.readFloatLE(80) * 2, 80); // pixdim[1]: another voxel spacing
    const otherGrid = join(dir, 'other_grid.nii');
    writeFileSync(otherGrid, nii);
    await page.setInputFiles('[data-testid=reference-input]', otherGrid);
    let message = await idle(page);
    console.log(`# error shown: ${message}`);
    assert.match(message ?? '', /grids differ/, `expected a grid error${log()}`);
    assert.ok(await page.locator('[data-testid=error]').isVisible());
    assert.equal(await page.evaluate(() => window.insitu.state.reference?.name), basename(reference));
    assert.deepEqual(await evaluationTable(page), table, 'the evaluation is kept');

    // An unreadable reference file.
    const garbage = join(dir, 'garbage.nii.gz');
    writeFileSync(garbage, 'not a volume\n'.repeat(20));
    await page.setInputFiles('[data-testid=reference-input]', garbage);
    message = await idle(page);
    console.log(`# error shown: ${message}`);
    assert.match(message ?? '', /garbage\.nii\.gz/, 'the error names the file');
    assert.equal(await page.evaluate(() => window.insitu.state.reference?.name), basename(reference));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  // A custom mapping that is not JSON: a clear error, results kept.
  await page.selectOption('[data-testid=mapping-select]', 'custom');
  await page.fill('[data-testid=mapping-json]', '{"name": "broken", "pairs": [');
  await page.click('[data-testid=evaluate]');
  const message = await idle(page);
  console.log(`# error shown: ${message}`);
  assert.match(message ?? '', /not valid JSON/);
  assert.deepEqual(await evaluationTable(page), table, 'the evaluation is kept');
  assert.deepEqual(await page.evaluate(() => [...window.insitu.state.runs.keys()]), [MODEL, SECOND_MODEL]);

  assertSameOrigin(requests, origin);
  await page.close();
});
