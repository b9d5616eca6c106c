// The service worker: makes the page work offline after its first visit.
//
// The build (scripts/service-worker-plugin.mjs) writes into BUILD the app's files with their
// sha256 (every file webpack emits: HTML, JS, wasm, CSS, manifest, icon) and the registry's
// model and sample files with theirs. One build is one cache, `insitu-app-<version>`, where the
// version is a hash of those lists: a new build is a new service worker script (the browser
// checks it on every visit while online), which fills its own cache, takes over and deletes the
// older ones. Model and sample files live in `insitu-files`, keyed by sha256 (www/offline-cache.js).
//
//   install   fetches every app file (revalidating the HTTP cache), checks its sha256, caches it;
//             the samples too when the host serves them (best effort); then takes over at once
//   activate  deletes other builds' caches and file entries no build lists, claims the pages
//   fetch     app files and known model/sample files from the cache, else from the network; a
//             model or sample neither cached nor reachable gets a 503 "Not available offline"
//
// This worker never adds model files itself: the page keeps a model once a run used it (or when
// asked to keep all of them), so that "Clear everything" (which first turns keeping off) cannot
// be undone behind its back by a worker still serving an open tab.
import { APP_CACHE_PREFIX, FILES_CACHE, fileKey, putVerified } from './offline-cache.js';

/** {version, app: [{path, sha256}], files: [{path, sha256, bytes, sample?}]}, written by the build. */
const BUILD = JSON.parse('__INSITU_OFFLINE_BUILD__');
const APP_CACHE = `${APP_CACHE_PREFIX}${BUILD.version}`;
const scope = self.registration.scope;
const appFiles = new Map(BUILD.app.map((f) => [new URL(f.path, scope).href, f]));
const knownFiles = new Map(BUILD.files.map((f) => [new URL(f.path, scope).href, f]));
const INDEX = new URL('index.html', scope).href;

async function precache() {
  const cache = await caches.open(APP_CACHE);
  try {
    await Promise.all(
      BUILD.app.map(async (f) => {
        const url = new URL(f.path, scope).href;
        // Revalidated, not refetched: what the page just loaded comes from the HTTP cache (the
        // server answers 304); the sha256 check says whether it is this build's file.
        await putVerified(cache, url, await fetch(url, { cache: 'no-cache' }), f.sha256, f.path);
      }),
    );
  } catch (err) {
    await caches.delete(APP_CACHE); // never leave half a build behind
    throw err;
  }
  const files = await caches.open(FILES_CACHE);
  for (const f of BUILD.files.filter((file) => file.sample)) {
    const key = fileKey(scope, f.path, f.sha256);
    if (await files.match(key)) continue;
    try {
      await putVerified(files, key, await fetch(new URL(f.path, scope), { cache: 'no-cache' }), f.sha256, f.path);
    } catch (err) {
      console.warn(`insitu: the sample ${f.path} is not kept for offline use (${err.message ?? err})`);
    }
  }
}

self.addEventListener('install', (event) => {
  event.waitUntil(precache().then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith(APP_CACHE_PREFIX) && name !== APP_CACHE) await caches.delete(name);
      }
      if (await caches.has(FILES_CACHE)) {
        const files = await caches.open(FILES_CACHE);
        const listed = new Set(BUILD.files.map((f) => fileKey(scope, f.path, f.sha256)));
        for (const request of await files.keys()) if (!listed.has(request.url)) await files.delete(request);
      }
      await self.clients.claim();
    })(),
  );
});

/** The cached response under `key` in `cacheName` (never creating the cache), else the network's. */
async function cachedOrNetwork(request, cacheName, key, what) {
  const cached = await caches.match(key, { cacheName });
  if (cached) return cached;
  try {
    return await fetch(request);
  } catch {
    return new Response(`${what} is not available offline: it was never kept in this browser.\n`, {
      status: 503,
      statusText: 'Not available offline',
      headers: { 'Content-Type': 'text/plain; charset=utf-8' },
    });
  }
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  url.search = '';
  url.hash = '';
  const href = request.mode === 'navigate' && url.href === scope ? INDEX : url.href;
  const app = appFiles.get(href);
  if (app) {
    event.respondWith(cachedOrNetwork(request, APP_CACHE, href, app.path));
    return;
  }
  const file = knownFiles.get(href);
  if (file) event.respondWith(cachedOrNetwork(request, FILES_CACHE, fileKey(scope, file.path, file.sha256), file.path));
  // Anything else goes to the network as if there were no service worker.
});
