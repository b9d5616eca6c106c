// scripts/stage-assets.mjs (what scripts/app.sh stages the page's assets with, no native build
// needed) must stage exactly what `insitu fetch` stages: the same files, the same bytes, the
// same paths printed, and the same refusal of a file whose sha256 is wrong.
//
//   node --test tests/browser/stage-assets.test.mjs
//
// Needs the native CLI (target/debug/insitu, or $INSITU_BIN) and the mirror both use
// ($INSITU_MIRROR, else ../shared; without one both download from upstream).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { ROOT, failIfMissing } from './helpers.mjs';

const CLI = process.env.INSITU_BIN ?? join(ROOT, 'target/debug/insitu');
const STAGER = join(ROOT, 'scripts/stage-assets.mjs');
const REGISTRY = JSON.parse(readFileSync(join(ROOT, 'src/models/registry.json'), 'utf8'));

function requirements() {
  failIfMissing(existsSync(CLI) ? [] : [`${CLI} is missing (cargo build --bin insitu, or set INSITU_BIN)`], '');
  // The CLI compiles the registry in; the node stager reads the file. Compare like with like.
  const registry = join(ROOT, 'src/models/registry.json');
  failIfMissing(
    statSync(CLI).mtimeMs >= statSync(registry).mtimeMs ? [] : [`${CLI} is older than ${registry}: rebuild it (cargo build --bin insitu)`],
    '',
  );
}

/** Runs a stager (the CLI's fetch or the node script) from the repository root, as the scripts do. */
function stage(which, dest, { env = {}, models = [] } = {}) {
  const modelArgs = models.flatMap((m) => ['--model', m]);
  const [command, args] =
    which === 'cli' ? [CLI, ['fetch', '--dest', dest, ...modelArgs]] : [process.execPath, [STAGER, '--dest', dest, ...modelArgs]];
  const r = spawnSync(command, args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 10 * 60_000 });
  const printed = r.stdout.split('\n').filter(Boolean).map((line) => relative(dest, line));
  return { status: r.status, stderr: r.stderr, printed };
}

/** Every file under `dir`: relative path -> bytes. */
function tree(dir) {
  const files = new Map();
  const walk = (at) => {
    for (const entry of readdirSync(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) walk(path);
      else files.set(relative(dir, path), readFileSync(path));
    }
  };
  walk(dir);
  return files;
}

test('the node stager stages the same files, with the same bytes, as `insitu fetch`', { timeout: 20 * 60_000 }, () => {
  requirements();
  const work = mkdtempSync(join(tmpdir(), 'insitu-stage-'));
  try {
    const cli = stage('cli', join(work, 'cli'));
    assert.equal(cli.status, 0, `insitu fetch failed: ${cli.stderr}`);
    const node = stage('node', join(work, 'node'));
    assert.equal(node.status, 0, `stage-assets.mjs failed: ${node.stderr}`);
    assert.deepEqual(node.printed, cli.printed, 'both print the same staged paths, in the same order');

    const want = tree(join(work, 'cli'));
    const got = tree(join(work, 'node'));
    const expected = [
      ...REGISTRY.models.flatMap((m) => m.files.map((f) => join('models', f.path))),
      ...REGISTRY.samples.map((s) => join('data', s.path)),
    ].sort();
    assert.deepEqual([...want.keys()].sort(), expected, 'the CLI staged every registry file');
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), 'the same file names');
    for (const [path, bytes] of want) assert.ok(got.get(path).equals(bytes), `${path}: the same bytes`);

    // A second run leaves the staged files alone.
    const before = statSync(join(work, 'node', expected[0])).mtimeMs;
    const again = stage('node', join(work, 'node'));
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(again.printed, node.printed);
    assert.equal(statSync(join(work, 'node', expected[0])).mtimeMs, before, 'an identical staged file is not rewritten');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('a mirror file with the wrong sha256 is refused by both, naming it, and not staged', { timeout: 10 * 60_000 }, () => {
  requirements();
  const model = REGISTRY.models.find((m) => m.default);
  const sample = REGISTRY.samples[0];
  const bad = model.files[model.files.length - 1];
  const source = process.env.INSITU_MIRROR ?? join(ROOT, '../shared');
  failIfMissing(existsSync(source) ? [] : [`no mirror at ${source} to copy ${model.id}'s files from (set INSITU_MIRROR)`], '');
  const work = mkdtempSync(join(tmpdir(), 'insitu-stage-bad-'));
  try {
    // A mirror holding the default model and the sample, one file altered by a byte.
    const mirror = join(work, 'mirror');
    for (const [collection, path] of [...model.files.map((f) => ['models', f.path]), ['data', sample.path]]) {
      mkdirSync(dirname(join(mirror, collection, path)), { recursive: true });
      copyFileSync(join(source, collection, path), join(mirror, collection, path));
    }
    const altered = join(mirror, 'models', bad.path);
    writeFileSync(altered, Buffer.concat([readFileSync(altered), Buffer.from([0])]));

    const message = new RegExp(`^insitu: ${bad.path.replace(/[.]/g, '\\.')}: sha256 [0-9a-f]{64} does not match the registry's ${bad.sha256}$`, 'm');
    for (const which of ['cli', 'node']) {
      const dest = join(work, which);
      const r = stage(which, dest, { env: { INSITU_MIRROR: mirror }, models: [model.id] });
      assert.equal(r.status, 1, `${which}: exit status (stderr: ${r.stderr})`);
      assert.match(r.stderr, message, `${which}: the message names the file and both checksums`);
      assert.ok(!existsSync(join(dest, 'models', bad.path)), `${which}: the bad file is not staged`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
