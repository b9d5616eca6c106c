// What the service worker (www/sw.js) and the page (www/offline.js) agree on about Cache Storage:
// the cache names and how a model or sample file is keyed: by the sha256 the registry gives it,
// so a file whose registry hash changes is a different entry, and a stale one is never served.

/** The app's own files (HTML, JS, wasm, CSS, manifest, icon) of one build: `insitu-app-<version>`. */
export const APP_CACHE_PREFIX = 'insitu-app-';
/** Model and sample files, keyed by sha256, kept across builds (entries no build lists are pruned). */
export const FILES_CACHE = 'insitu-files';

/** The cache key of a file served at `path` (relative to the app's folder `scope`) with that sha256. */
export function fileKey(scope, path, sha256) {
  return `${new URL(path, scope).href}?sha256=${sha256.toLowerCase()}`;
}

export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Reads `response` and, when its bytes have the expected sha256, puts them in `cache` under
 * `key` (with the response's headers). Returns the bytes' sha256; throws when it differs.
 */
export async function putVerified(cache, key, response, sha256, what) {
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  const actual = await sha256Hex(bytes);
  if (actual !== sha256.toLowerCase()) {
    throw new Error(`${what}: its sha256 is ${actual}, expected ${sha256}; not kept`);
  }
  await cache.put(key, new Response(bytes, { status: 200, statusText: 'OK', headers: response.headers }));
  return actual;
}
