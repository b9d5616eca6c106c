// The page <-> worker protocol is defined once (www/protocol.js): the stages it lists are the
// ones the core emits (src/pipeline.rs `Stage::name`) plus the worker's own, and both the page
// and the worker take their names from it rather than spelling them out.
//
//   node --test tests/browser/protocol.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './helpers.mjs';
import { OPS, PROMPT_STAGES, STAGES } from '../../www/protocol.js';

const read = (path) => readFileSync(join(ROOT, path), 'utf8');

test("the protocol's stages are the core's stages and the worker's, each once", () => {
  const pipeline = read('src/pipeline.rs');
  const nameFn = pipeline.slice(pipeline.indexOf('pub fn name(&self)'));
  const core = [...nameFn.slice(0, nameFn.indexOf('\n    }')).matchAll(/=> "([a-z_]+)"/g)].map((m) => m[1]);
  assert.ok(core.length >= 4, `found the core's stage names in src/pipeline.rs: ${core}`);
  const worker = [...read('www/worker.js').matchAll(/progress\('([a-z_]+)'/g)].map((m) => m[1]);
  assert.deepEqual(new Set(worker), new Set(['download', 'verify']), 'the stages the worker emits');
  const listed = STAGES.map(([name]) => name);
  assert.equal(new Set(listed).size, listed.length, 'no stage is listed twice');
  assert.deepEqual(new Set(listed), new Set([...worker, ...core]), 'protocol.js lists exactly what is emitted');
  const shares = STAGES.reduce((sum, [, share]) => sum + share, 0);
  assert.ok(Math.abs(shares - 1) < 1e-9, `the progress shares add up to 1 (${shares})`);
});

test("a prompt run's stages are the worker's and the core's one per slice", () => {
  const stage = /const PROMPT_STAGE: &str = "([a-z_]+)";/.exec(read('src/wasm.rs'))?.[1];
  assert.ok(stage, "found the core's prompt stage in src/wasm.rs");
  assert.deepEqual(PROMPT_STAGES.map(([name]) => name), ['download', 'verify', stage]);
  const shares = PROMPT_STAGES.reduce((sum, [, share]) => sum + share, 0);
  assert.ok(Math.abs(shares - 1) < 1e-9, `the progress shares add up to 1 (${shares})`);
});

test('the page and the worker name operations only through OPS', () => {
  for (const file of ['www/main.js', 'www/worker.js']) {
    const text = read(file);
    for (const op of Object.values(OPS)) {
      assert.ok(!text.includes(`'${op}'`), `${file} spells out the operation '${op}' instead of using OPS`);
    }
  }
  const worker = read('www/worker.js');
  for (const key of Object.keys(OPS)) {
    assert.ok(worker.includes(`[OPS.${key}]`), `the worker implements OPS.${key}`);
  }
});
