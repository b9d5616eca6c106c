// Works offline after the first visit: one visit online (load the sample, run a model, evaluate),
// then the browser goes offline and the server is stopped too (Playwright's setOffline does not
// reach a service worker's own requests; a stopped server reaches nothing), the page is reloaded
// from this browser's copy, the sample loads, the model that ran runs again with the same labels
// and evaluates to the same metrics; a model that never ran says it is not available offline,
// naming it, and the page stays usable. Back online, "Make all models available offline" keeps
// the rest (the size it shows is the registry's), and offline again that model runs too.
//
//   node --test tests/browser/offline.test.mjs
//
// Needs (the test fails, saying so, when any is missing): the built page with dist/assets (see
// segment.test.mjs), and INSITU_TEST_DATA, the mirror's data folder (../shared/data here), whose
// reference/t1_crop_tissue_fast.nii.gz holds reference labels of the sample on its grid.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DIST,
  ROOT,
  assertSameOrigin,
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
const OTHER = 'tissue_gw_tfjs'; // the smallest other model: never run before going offline
const RUN_TIMEOUT_MS = 15 * 60_000;
const HOW_TO_RUN = '\nRun `scripts/test.sh`, which prepares these files, or see its browser-test lines.';

function requirements() {
  failIfMissing([...missingFiles(['INSITU_TEST_DATA']), ...missingBuild()], HOW_TO_RUN);
  const reference = join(process.env.INSITU_TEST_DATA, 'reference/t1_crop_tissue_fast.nii.gz');
  failIfMissing(existsSync(reference) ? [] : [`${reference} does not exist`], HOW_TO_RUN);
  return reference;
}

/** The build the service worker was made for: {version, app: [{path, sha256}], files}. */
function builtServiceWorker() {
  const text = readFileSync(join(DIST, 'sw.js'), 'utf8');
  const literal = /JSON\.parse\(("(?:[^"\\]|\\.)*")\)/.exec(text);
  assert.ok(literal, 'dist/sw.js holds its build as JSON.parse("...")');
  return JSON.parse(JSON.parse(literal[1]));
}

const context = () => sharedSession().context;
const keptModels = async (page) => ((await page.getAttribute('[data-testid=offline-status]', 'data-models')) ?? '').split(',').filter(Boolean);

/** Runs `model` on the CPU (head box) on the loaded volume; returns the run's labels as base64. */
async function runModel(page, model, log) {
  await page.selectOption('[data-testid=model-select]', model);
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  const t = Date.now();
  await page.click('[data-testid=run]');
  const error = await idle(page, RUN_TIMEOUT_MS);
  console.log(`# ${model}: ${error ? `failed (${error})` : 'ran'} in ${Date.now() - t} ms`);
  return error;
}

const labelsOf = (page, model) =>
  page.evaluate((id) => {
    const labels = window.insitu.state.runs.get(id)?.labels;
    return labels ? btoa(Array.from(labels, (b) => String.fromCharCode(b)).join('')) : null;
  }, model);

const metricsOf = (page, model) => page.evaluate((id) => JSON.stringify(window.insitu.state.runs.get(id)?.evaluation?.report ?? null), model);

async function loadSample(page, log) {
  await page.click('[data-testid=load-sample]');
  assert.equal(await idle(page), null, `the sample did not load${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');
}

async function evaluate(page, reference, log) {
  await page.setInputFiles('[data-testid=reference-input]', reference);
  assert.equal(await idle(page), null, `the evaluation failed${log()}`);
  assert.ok(await page.isVisible('[data-testid=evaluation]'), 'the evaluation is shown');
}

/** Stops the page's server (the browser keeps its origin: the next server listens on the same port). */
async function stopServer() {
  const shared = sharedSession();
  if (shared.server.exitCode === null && shared.server.signalCode === null) {
    const exited = new Promise((resolve) => shared.server.once('exit', resolve));
    shared.server.kill();
    await exited;
  }
  await assert.rejects(fetch(`${shared.origin}/`), 'the server is down');
}

async function startServer(root = DIST) {
  const shared = sharedSession();
  const port = new URL(shared.origin).port;
  const server = spawn(process.execPath, [join(ROOT, 'scripts/serve.mjs'), port, root], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    server.stdout.on('data', (chunk) => /serving/.test(String(chunk)) && resolve());
    server.on('exit', (code) => reject(new Error(`scripts/serve.mjs exited (${code}) before listening on ${port}`)));
  });
  shared.server = server; // closeShared stops it
}

test('after one visit the page works offline: sample, a model that ran, evaluation; an uncached model says so', { timeout: 3 * RUN_TIMEOUT_MS + 10 * 60_000 }, async () => {
  const reference = requirements();
  const build = builtServiceWorker();
  const registry = JSON.parse(readFileSync(join(ROOT, 'src/models/registry.json'), 'utf8'));
  const listed = registry.models; // the page lists every model, LiteMedSAM (box prompts) included
  const otherName = registry.models.find((m) => m.id === OTHER).name;
  const { page, log } = await openApp();
  const { context, origin, requests } = sharedSession();

  // First visit, online: the app is kept, and the model that ran.
  let t = Date.now();
  await page.waitForFunction(() => document.querySelector('[data-testid=offline-status]').dataset.state === 'ready', null, { polling: 100 });
  console.log(`# kept for offline use ${Date.now() - t} ms after the page started: ${await page.textContent('[data-testid=offline-status]')}`);
  const cached = await page.evaluate(async (appFiles) => {
    const names = await caches.keys();
    const app = names.find((n) => n.startsWith('insitu-app-'));
    const cache = await caches.open(app);
    const hashes = {};
    for (const { path } of appFiles) {
      const response = await cache.match(new URL(path, document.baseURI).href);
      const digest = response && (await crypto.subtle.digest('SHA-256', await response.arrayBuffer()));
      hashes[path] = digest ? Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('') : null;
    }
    return { names, app, hashes };
  }, build.app);
  assert.equal(cached.app, `insitu-app-${build.version}`, `one cache for this build: ${cached.names}`);
  assert.deepEqual(
    cached.hashes,
    Object.fromEntries(build.app.map((f) => [f.path, f.sha256])),
    'every file of the build is cached with its sha256',
  );
  for (const want of ['index.html', 'main.js', 'insitu_bg.wasm', 'style.css', 'manifest.webmanifest']) {
    assert.ok(build.app.some((f) => f.path === want), `${want} is among the cached files`);
  }
  const manifest = await page.evaluate(async () => {
    const link = document.querySelector('link[rel=manifest]');
    return (await fetch(link.href)).json();
  });
  assert.equal(manifest.start_url, './');
  assert.ok(manifest.icons.length > 0, 'the manifest has an icon');

  await loadSample(page, log);
  assert.equal(await runModel(page, MODEL, log), null, `the first run failed${log()}`);
  await evaluate(page, reference, log);
  const online = { labels: await labelsOf(page, MODEL), metrics: await metricsOf(page, MODEL) };
  await page.waitForFunction((id) => document.querySelector('[data-testid=offline-status]').dataset.models.split(',').includes(id), MODEL);
  assert.deepEqual(await keptModels(page), [MODEL]);
  const status = await page.textContent('[data-testid=offline-status]');
  console.log(`# ${status}`);
  assert.match(status, /Works offline: the app, the sample and 1 of \d+ models \(Tissue \(fast\)\)/);
  // "All models" says what it will download before it does.
  const missingBytes = listed.filter((m) => m.id !== MODEL).flatMap((m) => m.files).reduce((s, f) => s + f.bytes, 0);
  assert.equal(
    (await page.textContent('[data-testid=offline-all]')).trim(),
    `Make all models available offline (${listed.length - 1} more, ${(missingBytes / 1e6).toFixed(1)} MB to download)`,
  );

  // Offline: no network for the browser, and no server at all.
  await context.setOffline(true);
  await stopServer();
  t = Date.now();
  await page.reload();
  await started(page, log);
  console.log(`# reloaded offline in ${Date.now() - t} ms`);
  // (Whether it also says "You are offline" depends on navigator.onLine, which Playwright's
  // setOffline does not always change.)
  assert.match(await page.textContent('[data-testid=offline-status]'), /Works offline: the app, the sample and 1 of/);
  await loadSample(page, log);
  assert.equal(await runModel(page, MODEL, log), null, `the cached model did not run offline${log()}`);
  assert.equal(await labelsOf(page, MODEL), online.labels, 'the same labels as online');
  await evaluate(page, reference, log);
  assert.equal(await metricsOf(page, MODEL), online.metrics, 'the same metrics as online');

  // A model that never ran: a clear message naming it; the page keeps its volume and run.
  const error = await runModel(page, OTHER, log);
  console.log(`# error shown: ${error}`);
  assert.match(error ?? '', new RegExp(`^${otherName.replace(/[()+.]/g, '\\$&')} is not available offline`));
  assert.match(error, /Available offline: Tissue \(fast\)/);
  assert.ok(await page.isVisible('[data-testid=error]'));
  assert.equal(await page.evaluate(() => window.insitu.state.input?.name), 't1_crop.nii.gz');
  assert.ok(await page.isVisible(`[data-testid=run-${MODEL}]`), 'the earlier run is still listed');
  assert.ok(await page.isEnabled('[data-testid=run]'), 'Run is still enabled');

  // Online again, keep all the models, then offline that model runs too.
  await startServer();
  await context.setOffline(false);
  t = Date.now();
  await page.click('[data-testid=offline-all]');
  await page.waitForFunction(() => /All models are available offline/.test(document.querySelector('[data-testid=storage-note]').textContent));
  console.log(`# all models kept in ${Date.now() - t} ms`);
  assert.deepEqual((await keptModels(page)).sort(), listed.map((m) => m.id).sort());
  assert.ok(await page.isHidden('[data-testid=offline-all]'), 'nothing left to keep');
  await context.setOffline(true);
  await stopServer();
  assert.equal(await runModel(page, OTHER, log), null, `${OTHER} did not run offline once kept${log()}`);

  assertSameOrigin(requests, origin);
  await page.close();
});

test('a new build, served online, replaces the cached app: a new cache, the old one deleted, the open page told to reload', { timeout: 10 * 60_000 }, async () => {
  requirements();
  // A fresh profile, as a first visit: after the offline test above, the old worker was seen to
  // outlive its page and keep the new one from activating within a minute (alone: 1 s).
  await closeShared();
  const build = builtServiceWorker();
  // The same files under another build version: what a rebuild with any change looks like to the browser.
  const next = mkdtempSync(join(tmpdir(), 'insitu-next-build-'));
  try {
    cpSync(DIST, next, { recursive: true, filter: (src) => !src.startsWith(join(DIST, 'assets')) });
    symlinkSync(join(DIST, 'assets'), join(next, 'assets'));
    const version = 'feed' + build.version.slice(4);
    const sw = readFileSync(join(DIST, 'sw.js'), 'utf8');
    writeFileSync(join(next, 'sw.js'), sw.replace(`\\"version\\":\\"${build.version}\\"`, `\\"version\\":\\"${version}\\"`));
    assert.notEqual(readFileSync(join(next, 'sw.js'), 'utf8'), sw, 'the next build has another version');
    // scripts/serve.mjs would send the old worker's precompressed copies (scripts/precompress.mjs).
    for (const copy of ['sw.js.br', 'sw.js.gz']) rmSync(join(next, copy), { force: true });

    const { page, log } = await openApp();
    await page.waitForFunction(() => document.querySelector('[data-testid=offline-status]').dataset.state === 'ready');
    assert.ok(await page.evaluate(() => Boolean(navigator.serviceWorker.controller)), 'the page is served by the service worker');
    assert.ok((await page.evaluate(() => caches.keys())).includes(`insitu-app-${build.version}`));

    await stopServer();
    await startServer(next);
    await context().setOffline(false);
    await page.reload();
    await started(page, log);
    await page.waitForFunction(() => /A new version of insitu was installed/.test(document.querySelector('[data-testid=storage-note]').textContent));
    // The page is handed to the new worker as it starts activating; it deletes the old cache then.
    const t = Date.now();
    let names = await page.evaluate(() => caches.keys());
    while (names.includes(`insitu-app-${build.version}`) && Date.now() - t < 60_000) {
      await page.waitForTimeout(250);
      names = await page.evaluate(() => caches.keys());
    }
    console.log(`# the old build's cache was gone ${Date.now() - t} ms after the page was told`);
    assert.ok(names.includes(`insitu-app-${version}`), `the new build's cache: ${names}`);
    assert.ok(!names.includes(`insitu-app-${build.version}`), `the old build's cache is deleted: ${names}`);
    assert.ok(names.includes('insitu-files'), 'the kept models stay');
    await page.close();
  } finally {
    rmSync(next, { recursive: true, force: true });
  }
});
