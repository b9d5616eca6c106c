// The page's promise, enforced: every response carries the security policy of
// scripts/security-policy.mjs, a segmentation runs under it without a single violation, a
// request to another origin, made by the page, by its worker or from the exported HTML report,
// is blocked before it is sent (a server on another origin counts what reaches it), and the
// page says so.
//
//   node --test tests/browser/privacy.test.mjs
//
// Needs (the test fails, saying so, when any is missing): the built page (see segment.test.mjs),
//   INSITU_TEST_VOLUME    a small volume with tissue in it (as for segment.test.mjs)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { META_CONTENT_SECURITY_POLICY, SECURITY_HEADERS } from '../../scripts/security-policy.mjs';
import { closeShared, failIfMissing, idle, missingBuild, missingFiles, openApp, setup, sharedSession } from './helpers.mjs';

const HOW_TO_RUN = '\nRun `scripts/test.sh`, which prepares these files, or see its browser-test lines.';
const RUN_TIMEOUT_MS = 20 * 60_000;
const NOTICE = /insitu never sends data off this device/;
const PIXEL = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64'); // a 1x1 GIF
const BLOCKED = ['script blocked', 'image blocked', 'fetch blocked'];

/** A server on another origin (another port) recording every request that reaches it. */
let other;
before(async () => {
  const hits = [];
  const server = createServer((req, res) => {
    hits.push(req.url);
    if (req.url.endsWith('.png')) {
      res.writeHead(200, { 'Content-Type': 'image/gif' });
      return res.end(PIXEL);
    }
    res.writeHead(200, { 'Content-Type': 'text/javascript', 'Access-Control-Allow-Origin': '*' });
    res.end('// reached\n');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  other = { origin: `http://127.0.0.1:${server.address().port}`, hits, server };
});
after(async () => {
  other?.server.close();
  await closeShared();
});

/** Makes a page ask `origin` for a script, an image and a fetch; resolves with what became of each. */
const INJECT = async (origin) => {
  const script = new Promise((resolve) => {
    const s = document.createElement('script');
    s.onload = () => resolve('script loaded');
    s.onerror = () => resolve('script blocked');
    s.src = `${origin}/script.js`;
    document.head.append(s);
  });
  const image = new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve('image loaded');
    img.onerror = () => resolve('image blocked');
    img.src = `${origin}/image.png`;
  });
  const fetched = fetch(`${origin}/fetch`).then(
    () => 'fetch reached',
    () => 'fetch blocked',
  );
  return Promise.all([script, image, fetched]);
};

test('the server on the other origin is reached by a page without the policy', async () => {
  // Without this the "blocked, nothing reached it" checks below could pass for the wrong reason.
  failIfMissing(missingBuild(), HOW_TO_RUN);
  const { context } = await setup();
  const page = await context.newPage(); // about:blank: no policy
  assert.deepEqual(await page.evaluate(INJECT, other.origin), ['script loaded', 'image loaded', 'fetch reached']);
  assert.deepEqual(other.hits.sort(), ['/fetch', '/image.png', '/script.js']);
  other.hits.length = 0;
  await page.close();
});

test('every response carries the policy, and a segmentation runs under it with no violation', { timeout: RUN_TIMEOUT_MS + 5 * 60_000 }, async () => {
  failIfMissing([...missingFiles(['INSITU_TEST_VOLUME']), ...missingBuild()], HOW_TO_RUN);
  const { context } = await setup();
  const responses = [];
  const onResponse = (response) => responses.push(response);
  context.on('response', onResponse);
  const { page, log } = await openApp();
  const { origin } = sharedSession();

  // The policy in the page itself, for static hosting (less frame-ancestors, which meta cannot carry).
  const meta = await page.$eval('meta[http-equiv=Content-Security-Policy]', (m) => m.content);
  assert.equal(meta, META_CONTENT_SECURITY_POLICY);
  assert.doesNotMatch(meta, /frame-ancestors/);
  assert.equal(await page.$eval('meta[name=referrer]', (m) => m.content), 'no-referrer');

  await page.setInputFiles('[data-testid=file-input]', process.env.INSITU_TEST_VOLUME);
  assert.equal(await idle(page), null, `loading the volume failed${log()}`);
  await page.selectOption('[data-testid=model-select]', 'tissue_fast');
  await page.selectOption('[data-testid=backend-select]', 'cpu');
  await page.check('[data-testid=crop]');
  await page.click('[data-testid=run]');
  assert.equal(await idle(page, RUN_TIMEOUT_MS), null, `segmentation failed${log()}`);
  assert.equal(await page.evaluate(() => window.insitu.lastResult?.backend), 'cpu', 'the run finished');
  context.off('response', onResponse);

  // Every response of the app (page, bundle, worker, wasm, model files, the volume) had the headers.
  const ours = responses.filter((r) => new URL(r.url()).origin === origin);
  const paths = ours.map((r) => new URL(r.url()).pathname);
  for (const want of ['/', '/main.js', '/insitu_bg.wasm']) assert.ok(paths.includes(want), `${want} was loaded: ${paths.join(' ')}`);
  assert.ok(paths.some((p) => p.startsWith('/assets/models/')), `the model files were loaded: ${paths.join(' ')}`);
  assert.ok(paths.some((p) => /worker/.test(p)), `the worker was loaded: ${paths.join(' ')}`);
  for (const response of ours) {
    const headers = await response.allHeaders();
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      assert.equal(headers[name.toLowerCase()], value, `${name} of ${response.url()}`);
    }
  }
  // A 404 too.
  const missing = await fetch(`${origin}/no-such-file`);
  assert.equal(missing.status, 404);
  assert.equal(missing.headers.get('content-security-policy'), SECURITY_HEADERS['Content-Security-Policy']);

  // Nothing was blocked: the page needs nothing the policy forbids.
  assert.deepEqual(await page.evaluate(() => window.insitu.state.blocked), []);
  assert.ok(await page.locator('[data-testid=privacy-notice]').isHidden(), 'no privacy notice');
  const complaints = log()
    .split('\n')
    .filter((line) => /Content.Security.Policy|Permissions.Policy|Refused to/i.test(line));
  assert.deepEqual(complaints, [], 'the browser reported no policy problem');

  // The exported HTML report carries its own policy: opened from disk, it can reach nothing.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-testid=export-html]')]);
  const dir = mkdtempSync(join(tmpdir(), 'insitu-report-'));
  try {
    const file = join(dir, 'report.html');
    await download.saveAs(file);
    const report = await context.newPage();
    await report.goto(pathToFileURL(file).href);
    assert.match(
      await report.$eval('meta[http-equiv=Content-Security-Policy]', (m) => m.content),
      /^default-src 'none';/,
    );
    assert.deepEqual(await report.evaluate(INJECT, other.origin), BLOCKED);
    await report.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(other.hits, [], 'nothing from the report reached the other origin');
  await page.close();
});

test('a request to another origin, from the page or its worker, is blocked, never sent, and reported', { timeout: 5 * 60_000 }, async () => {
  failIfMissing(missingBuild(), HOW_TO_RUN);
  const { page, log } = await openApp();
  const notice = page.locator('[data-testid=privacy-notice]');
  assert.ok(await notice.isHidden(), 'no notice before anything was blocked');

  assert.deepEqual(await page.evaluate(INJECT, other.origin), BLOCKED);
  await page.waitForFunction(() => window.insitu.state.blocked.length >= 3);
  // Each is reported once per policy that blocks it: the header's and the page's <meta> copy.
  const directives = await page.evaluate(() => [...new Set(window.insitu.state.blocked.map((b) => b.directive))].sort());
  assert.deepEqual(directives, ['connect-src', 'img-src', 'script-src-elem']);
  assert.ok(await notice.isVisible(), `the page shows what it blocked${log()}`);
  const text = await notice.textContent();
  console.log(`# notice: ${text}`);
  assert.match(text, new RegExp(`Blocked a request to ${other.origin.replace(/[.:/]/g, '\\$&')}`));
  assert.match(text, NOTICE);

  // The worker is under the policy too (served with it), and the page hears of its violations.
  const [worker] = page.workers();
  assert.ok(worker, 'the worker runs');
  const before = await page.evaluate(() => window.insitu.state.blocked.length);
  const fetched = await worker.evaluate(
    (origin) => fetch(`${origin}/from-worker`).then(() => 'fetch reached', () => 'fetch blocked'),
    other.origin,
  );
  assert.equal(fetched, 'fetch blocked');
  await page.waitForFunction((n) => window.insitu.state.blocked.length > n, before);
  assert.deepEqual(await page.evaluate(() => window.insitu.state.blocked.at(-1)), {
    uri: `${other.origin}/from-worker`,
    directive: 'connect-src',
  });

  // Give a request that slipped through time to arrive: none may.
  await page.waitForTimeout(500);
  assert.deepEqual(other.hits, [], 'no request reached the other origin');
  await page.close();
});
