#!/usr/bin/env node
// Writes a brotli (.br) and a gzip (.gz) copy beside every file of the app in dist/ (not the
// models and data in dist/assets/), for scripts/serve.mjs to send to browsers that accept them,
// and prints what the app's first load weighs raw and compressed.
//
//   node scripts/precompress.mjs [dist]      (npm run build runs it)
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const COMPRESSIBLE = /\.(html|js|css|wasm|webmanifest|svg|json)$/;
const dist = process.argv[2] ?? 'dist';

const rows = [];
for (const name of readdirSync(dist).sort()) {
  const path = join(dist, name);
  if (!COMPRESSIBLE.test(name) || !statSync(path).isFile()) continue;
  const bytes = readFileSync(path);
  const br = brotliCompressSync(bytes, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
      [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
      [constants.BROTLI_PARAM_MODE]: name.endsWith('.wasm') ? constants.BROTLI_MODE_GENERIC : constants.BROTLI_MODE_TEXT,
    },
  });
  const gz = gzipSync(bytes, { level: 9 });
  writeFileSync(`${path}.br`, br);
  writeFileSync(`${path}.gz`, gz);
  rows.push({ name, raw: bytes.length, br: br.length, gz: gz.length });
}

const mb = (n) => (n / 1e6).toFixed(2).padStart(7);
console.log('file                          raw MB   gzip MB   brotli MB');
for (const { name, raw, gz, br } of rows) console.log(`${name.padEnd(28)} ${mb(raw)}   ${mb(gz)}   ${mb(br)}`);
const sum = (key) => rows.reduce((total, row) => total + row[key], 0);
console.log(`${'all of the app'.padEnd(28)} ${mb(sum('raw'))}   ${mb(sum('gz'))}   ${mb(sum('br'))}`);
