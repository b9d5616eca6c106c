#!/usr/bin/env node
// Tiny dependency-free static server for the built page (dist/) on 127.0.0.1.
//
//   node scripts/serve.mjs [port] [root]      (either order; or PORT=8080 node scripts/serve.mjs)
//
// root defaults to dist/ beside this script's folder, port to $PORT or 8080; 0 picks a free port. Prints "insitu: serving <root> at http://127.0.0.1:<port>/"
// once listening (the browser test reads that line). GET/HEAD only, no directory listing.
// Every response carries the page's security policy (scripts/security-policy.mjs).
import { createServer } from 'node:http';
import { createReadStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SECURITY_HEADERS } from './security-policy.mjs';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  // Volumes and model weights: opaque bytes. `.gz` must not get Content-Encoding: gzip,
  // or the browser would inflate the .nii.gz before the app sees it.
  '.gz': 'application/octet-stream',
  '.nii': 'application/octet-stream',
  '.mgz': 'application/octet-stream',
  '.bin': 'application/octet-stream',
  '.pth': 'application/octet-stream',
  '.onnx': 'application/octet-stream',
};

const here = fileURLToPath(new URL('.', import.meta.url));
const args = process.argv.slice(2);
const portArg = args.find((a) => /^\d+$/.test(a)) ?? process.env.PORT ?? '8080';
const rootArg = args.find((a) => !/^\d+$/.test(a)) ?? join(here, '..', 'dist');
const port = Number(portArg);
const root = resolve(rootArg);

if (args.length > 2 || !/^\d+$/.test(portArg) || port > 65535) {
  console.error(`insitu: usage: node scripts/serve.mjs [port] [root] (got ${JSON.stringify(args)}, PORT=${process.env.PORT ?? ''})`);
  process.exit(2);
}

if (!existsSync(join(root, 'index.html'))) {
  console.error(`insitu: ${root}/index.html not found: build the page first (npm run build)`);
  process.exit(1);
}

/** The copy of `file` scripts/precompress.mjs wrote in an encoding the browser accepts, if any:
 *  {file, size, encoding}. Never for .gz files themselves (a .nii.gz stays opaque bytes). */
async function precompressed(file, acceptEncoding) {
  if (file.endsWith('.gz') || file.endsWith('.br')) return null;
  const accepted = acceptEncoding.split(',').map((part) => part.split(';')[0].trim());
  for (const [encoding, suffix] of [['br', '.br'], ['gzip', '.gz']]) {
    if (!accepted.includes(encoding)) continue;
    try {
      const info = await stat(file + suffix);
      if (info.isFile()) return { file: file + suffix, size: info.size, encoding };
    } catch {
      // no such copy: try the next encoding
    }
  }
  return null;
}

function send(res, status, text) {
  res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(`${status} ${text}\n`);
}

const server = createServer(async (req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'Method Not Allowed');
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  } catch {
    return send(res, 400, 'Bad Request');
  }
  if (path.endsWith('/')) path += 'index.html';
  const file = resolve(root, '.' + path);
  if (file !== root && !file.startsWith(root + sep)) return send(res, 403, 'Forbidden');
  let info;
  try {
    info = await stat(file);
  } catch {
    return send(res, 404, 'Not Found');
  }
  if (!info.isFile()) return send(res, 404, 'Not Found'); // no directory listing
  const encoded = await precompressed(file, req.headers['accept-encoding'] ?? '');
  // Revalidation (no-cache) answers 304 for what the browser holds: the service worker's first
  // fill of its cache then costs no second download of what the page just loaded.
  const etag = `"${info.size.toString(16)}-${Math.trunc(info.mtimeMs).toString(16)}${encoded ? `-${encoded.encoding}` : ''}"`;
  const headers = {
    ...SECURITY_HEADERS,
    'Content-Type': MIME[extname(file).toLowerCase()] ?? 'application/octet-stream',
    'Cache-Control': 'no-cache',
    ETag: etag,
    Vary: 'Accept-Encoding',
  };
  if (req.headers['if-none-match'] === etag) {
    res.writeHead(304, headers);
    return res.end();
  }
  res.writeHead(200, {
    ...headers,
    'Content-Length': encoded?.size ?? info.size,
    ...(encoded && { 'Content-Encoding': encoded.encoding }),
  });
  if (req.method === 'HEAD') return res.end();
  createReadStream(encoded?.file ?? file)
    .on('error', () => res.destroy())
    .pipe(res);
});

server.listen(port, '127.0.0.1', () => {
  const { port: actual } = server.address();
  console.log(`insitu: serving ${root} at http://127.0.0.1:${actual}/`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
