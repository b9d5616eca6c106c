// The page's side of working offline and of what it keeps in this browser (the "This browser"
// panel): registers the service worker (www/sw.js), says whether the page works offline and which
// models it can run offline, keeps every model a run used (and, on request, all of them) in
// Cache Storage by sha256, turns a failed model download while offline into a message naming the
// model, and "Clear everything from this browser": the service worker, every cache of this site
// and the saved session (www/session-store.js).
import { FILES_CACHE, fileKey, putVerified } from './offline-cache.js';
import { keepingOn, setKeeping } from './session-store.js';

const $ = (id) => document.getElementById(id);

function formatMegabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

const modelPath = (file) => `assets/models/${file.path}`;

export class Offline {
  /**
   * @param {{store: import('./session-store.js').SessionStore, onKeepingOn: () => void}} options
   *   the session store to clear, and what to do when the user turns keeping back on
   */
  constructor({ store, onKeepingOn }) {
    this.store = store;
    this.onKeepingOn = onKeepingOn;
    this.scope = new URL('.', document.baseURI).href;
    this.models = [];
    this.samples = [];
    // unsupported | off | installing | ready | failed
    this.state = 'serviceWorker' in navigator && 'caches' in self ? 'installing' : 'unsupported';
    this.why = '';
    this.note = ''; // the last thing done or failed (keeping models, clearing)
    this.hadController = Boolean(navigator.serviceWorker?.controller);
    this.el = {
      status: $('offline-status'),
      all: $('offline-all'),
      keepOn: $('keep-on'),
      clear: $('clear-storage'),
      note: $('storage-note'),
      session: $('session-status'),
    };
    this.el.all.addEventListener('click', () => this.keepAll());
    this.el.clear.addEventListener('click', () => this.clearEverything());
    this.el.keepOn.addEventListener('click', () => this.turnKeepingOn());
    for (const type of ['online', 'offline']) window.addEventListener(type, () => this.render());
    navigator.serviceWorker?.addEventListener('controllerchange', () => {
      if (!this.hadController) return; // the first visit's worker taking over: nothing changed
      this.say('A new version of insitu was installed for offline use: reload the page to use it.');
    });
  }

  /** Registers the service worker unless keeping is off or the browser has none. */
  start() {
    if (this.state === 'unsupported') return this.render();
    if (!keepingOn()) {
      this.state = 'off';
      return this.render();
    }
    return this.register();
  }

  async register() {
    if (navigator.serviceWorker.controller) {
      // This page came from the service worker: it works offline. Registering again only checks
      // for a newer build, which needs the network (and would hold up Clear while it waits).
      this.state = 'ready';
      this.render();
      if (navigator.onLine) navigator.serviceWorker.register('sw.js').then((r) => r.update()).catch(() => {});
      return;
    }
    this.state = 'installing';
    this.render();
    try {
      const registration = await navigator.serviceWorker.register('sw.js');
      if (!registration.active) {
        const worker = registration.installing ?? registration.waiting;
        await new Promise((resolve, reject) => {
          const check = () => {
            if (worker.state === 'activated') resolve();
            if (worker.state === 'redundant') reject(new Error('the service worker could not keep the app (see the console)'));
          };
          worker.addEventListener('statechange', check);
          check();
        });
      }
      this.state = 'ready';
    } catch (err) {
      // A registration that could not be checked (offline) still serves the page it controls.
      this.state = navigator.serviceWorker.controller ? 'ready' : 'failed';
      this.why = err.message ?? String(err);
      console.warn('insitu: the service worker could not be registered:', err);
    }
    this.render();
  }

  /** The registry's models the page lists, and its samples ({path, sha256, bytes}). */
  setModels(models, samples = []) {
    this.models = models;
    this.samples = samples;
    this.render();
  }

  async has(path, sha256) {
    return Boolean(await caches.match(fileKey(this.scope, path, sha256), { cacheName: FILES_CACHE }));
  }

  /** Ids of the models whose files are all kept in this browser. */
  async keptModels() {
    if (this.state === 'unsupported' || !(await caches.has(FILES_CACHE))) return new Set();
    const kept = new Set();
    for (const model of this.models) {
      const present = await Promise.all(model.files.map((f) => this.has(modelPath(f), f.sha256)));
      if (present.every(Boolean)) kept.add(model.id);
    }
    return kept;
  }

  /** Keeps a model's files in Cache Storage (after a run: the copy the run just downloaded). */
  async keepModel(model) {
    if (!keepingOn() || this.state === 'unsupported' || this.state === 'failed') return;
    try {
      const cache = await caches.open(FILES_CACHE);
      for (const file of model.files) {
        const path = modelPath(file);
        const key = fileKey(this.scope, path, file.sha256);
        if (await cache.match(key)) continue;
        const url = new URL(path, this.scope);
        try {
          // The browser's HTTP cache holds the copy the worker fetched; its sha256 says if it is current.
          await putVerified(cache, key, await fetch(url, { cache: 'force-cache' }), file.sha256, path);
        } catch {
          await putVerified(cache, key, await fetch(url, { cache: 'reload' }), file.sha256, path);
        }
      }
    } catch (err) {
      const why = err?.name === 'QuotaExceededError' ? 'this browser has no room left for this site' : (err.message ?? err);
      this.say(`${model.name} could not be kept for offline use (${why}); it still runs while online.`);
      return;
    }
    await this.render();
  }

  async keepAll() {
    const kept = await this.keptModels();
    const missing = this.models.filter((m) => !kept.has(m.id));
    for (const [i, model] of missing.entries()) {
      this.say(`Keeping models for offline use: ${model.name} (${i + 1} of ${missing.length})…`);
      await this.keepModel(model);
    }
    const now = await this.keptModels();
    this.say(now.size === this.models.length ? 'All models are available offline.' : `${now.size} of ${this.models.length} models are available offline.`);
  }

  /** A clearer error for a run that failed because its model could not be downloaded. */
  async runError(err, model) {
    const message = err?.message ?? String(err);
    if (!/Could not download/.test(message)) return err;
    const kept = await this.keptModels().catch(() => new Set());
    if (kept.has(model.id)) return err;
    if (navigator.onLine && !/HTTP 503|fetch|network/i.test(message)) return err; // e.g. a 404 from the server
    const names = this.models.filter((m) => kept.has(m.id)).map((m) => m.name);
    return new Error(
      `${model.name} is not available offline: its files were never kept in this browser, and the server cannot be reached. ` +
        (names.length ? `Available offline: ${names.join(', ')}. ` : 'No model is kept for offline use yet. ') +
        `To use ${model.name} offline, run it once while online (or press "Make all models available offline"). (${message})`,
    );
  }

  /** Shows the saved session's status (from the SessionStore). */
  sessionStatus({ ok, text }) {
    this.el.session.textContent = text;
    this.el.session.classList.toggle('error', !ok);
    this.el.session.dataset.ok = String(ok);
  }

  say(text) {
    this.note = text;
    this.render();
  }

  async clearEverything() {
    setKeeping(false); // first, so nothing is kept again behind the clearing
    const done = [];
    const failed = [];
    const deleteCaches = async () => {
      const names = 'caches' in self ? await caches.keys() : [];
      for (const name of names) await caches.delete(name);
      return names;
    };
    try {
      await this.store.clear();
      done.push('the saved session (IndexedDB database "insitu": volume, runs, evaluations)');
    } catch (err) {
      failed.push(`the saved session (${err.message ?? err})`);
    }
    let names = [];
    try {
      names = await deleteCaches();
    } catch (err) {
      failed.push(`the caches (${err.message ?? err})`);
    }
    try {
      const registrations = (await navigator.serviceWorker?.getRegistrations()) ?? [];
      for (const registration of registrations) await registration.unregister();
      done.push(`${registrations.length} service worker${registrations.length === 1 ? '' : 's'}`);
      names = [...new Set([...names, ...(await deleteCaches())])]; // what an install still running wrote meanwhile
    } catch (err) {
      failed.push(`the service worker (${err.message ?? err})`);
    }
    done.splice(1, 0, `${names.length} cache${names.length === 1 ? '' : 's'} (the app and the models kept for offline use)`);
    this.state = 'off';
    this.sessionStatus({ ok: true, text: 'Nothing is kept in this browser.' });
    this.say(
      (failed.length ? `Could not clear ${failed.join(', ')}. ` : '') +
        `Cleared from this browser: ${done.join(', ')}. Nothing new is kept until you turn keeping back on; ` +
        'what is on screen stays until this tab is reloaded or closed.',
    );
  }

  async turnKeepingOn() {
    setKeeping(true);
    this.note = '';
    this.sessionStatus({ ok: true, text: 'What you open, run and evaluate is kept in this browser and restored on reload.' });
    this.onKeepingOn();
    await this.register();
  }

  async render() {
    const { status, all, keepOn, note } = this.el;
    const kept = this.state === 'ready' || this.state === 'installing' ? await this.keptModels().catch(() => new Set()) : new Set();
    const names = this.models.filter((m) => kept.has(m.id)).map((m) => m.name);
    const sampleKept = this.state === 'ready' && (await Promise.all(this.samples.map((s) => this.has(s.path, s.sha256)))).some(Boolean);
    const offline = navigator.onLine ? '' : 'You are offline. ';
    const text = {
      unsupported: 'Does not work offline: this browser offers no service workers to this page.',
      off: 'Offline use and saving are off (cleared): the page needs the network, and a reload starts empty.',
      installing: 'Getting ready to work offline…',
      failed: `Does not work offline: ${this.why}.`,
      ready:
        `Works offline: the app${sampleKept ? ', the sample' : ''} and ` +
        (names.length ? `${names.length} of ${this.models.length} models (${names.join(', ')}).` : 'no model yet (a model is kept once it ran).'),
    }[this.state];
    status.textContent = offline + text;
    status.dataset.state = this.state;
    status.dataset.models = [...kept].join(',');
    const missing = this.models.filter((m) => !kept.has(m.id));
    const bytes = missing.flatMap((m) => m.files).reduce((sum, f) => sum + (f.bytes || 0), 0);
    all.hidden = this.state !== 'ready' || missing.length === 0;
    all.textContent = `Make all models available offline (${missing.length} more, ${formatMegabytes(bytes)} to download)`;
    keepOn.hidden = this.state !== 'off';
    note.textContent = this.note;
    note.hidden = !this.note;
  }
}
