// The session kept in this browser, so that a reload or a crashed tab loses nothing: the opened
// volume (its files' names and bytes, the chosen DICOM series), the runs (labels and what the
// page shows of them) and their evaluations, the reference labels and the evaluation settings.
// It lives in IndexedDB (database `insitu`, origin-private), written after every change in one
// transaction, so what is stored is always one consistent moment of the session.
//
// When the browser refuses to store (quota full, private mode, storage off) the session stays
// in the tab as it is and the page says so; nothing in memory depends on this module.

const DB_NAME = 'insitu';
const STORE = 'session';
const KEEPING_KEY = 'insitu.keep'; // localStorage: 'off' once "Clear everything" ran

/** False once the user cleared everything: nothing is stored again until they turn it back on. */
export function keepingOn() {
  try {
    return localStorage.getItem(KEEPING_KEY) !== 'off';
  } catch {
    return true;
  }
}

export function setKeeping(on) {
  try {
    if (on) localStorage.removeItem(KEEPING_KEY);
    else localStorage.setItem(KEEPING_KEY, 'off');
  } catch {
    // No localStorage: keeping simply stays on.
  }
}

const request = (req) =>
  new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });

function formatBytes(bytes) {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

/** The bytes of the typed arrays in `value`, roughly what storing it takes. */
function sizeOf(value) {
  if (ArrayBuffer.isView(value)) return value.byteLength;
  if (Array.isArray(value)) return value.reduce((sum, v) => sum + sizeOf(v), 0);
  if (value && typeof value === 'object') return Object.values(value).reduce((sum, v) => sum + sizeOf(v), 0);
  return 0;
}

/** A sentence saying why the browser refused to store `bytes`, with the room it reports. */
async function refusal(err, bytes) {
  const name = err?.name ?? 'Error';
  if (name === 'QuotaExceededError') {
    let room = '';
    try {
      const { usage, quota } = await navigator.storage.estimate();
      room = `; the browser reports ${formatBytes(usage)} used of the ${formatBytes(quota)} this site may use`;
    } catch {
      // No estimate: say it without those numbers.
    }
    return `This browser has no room left to keep the session (${formatBytes(bytes)} to store${room})`;
  }
  return `This browser could not keep the session (${name}: ${err?.message ?? err})`;
}

export class SessionStore {
  /** @param {(status: {ok: boolean, text: string}) => void} onStatus  told after each save or failure */
  constructor(onStatus) {
    this.onStatus = onStatus;
    this.db = null;
    this.saved = { input: undefined, reference: undefined }; // what is already stored, by identity
    this.writing = null;
    this.again = false;
    this.paused = false; // while a restore rebuilds the session
  }

  open() {
    if (!this.db) {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE);
      this.db = request(req).then((db) => {
        db.onversionchange = () => {
          db.close(); // let "Clear everything" delete the database
          this.db = null;
        };
        return db;
      });
      this.db.catch(() => (this.db = null));
    }
    return this.db;
  }

  /** The stored session, or null when there is none (or it cannot be read). */
  async load() {
    if (!keepingOn()) return null;
    try {
      const dbs = (await indexedDB.databases?.()) ?? [{ name: DB_NAME }];
      if (!dbs.some((d) => d.name === DB_NAME)) return null; // do not create an empty database
      const db = await this.open();
      const tx = db.transaction(STORE, 'readonly');
      const store = tx.objectStore(STORE);
      const [input, reference, runs, meta] = await Promise.all(
        ['input', 'reference', 'runs', 'meta'].map((key) => request(store.get(key))),
      );
      if (!input) return null;
      this.saved = { input, reference: reference ?? null };
      return { input, reference: reference ?? null, runs: runs ?? [], meta: meta ?? {} };
    } catch (err) {
      this.onStatus({ ok: false, text: `The session kept in this browser could not be read (${err?.message ?? err}).` });
      return null;
    }
  }

  /** Stores the page's session (coalesced: one write at a time, the latest state wins). */
  save(state) {
    if (this.paused || !keepingOn()) return Promise.resolve();
    this.state = state;
    if (this.writing) {
      this.again = true;
      return this.writing;
    }
    this.writing = (async () => {
      do {
        this.again = false;
        await this.write(this.state);
      } while (this.again);
    })().finally(() => (this.writing = null));
    return this.writing;
  }

  async write(state) {
    if (!state.input) return; // nothing opened yet: keep what is stored (only Clear deletes it)
    const runs = [...state.runs.values()];
    const what = { input: state.input, reference: state.reference ?? null };
    let bytes = sizeOf(runs);
    try {
      const db = await this.open();
      const tx = db.transaction(STORE, 'readwrite');
      const store = tx.objectStore(STORE);
      // The volume and the reference are large and change rarely: written when they change.
      for (const key of ['input', 'reference']) {
        if (what[key] === this.saved[key]) continue;
        bytes += sizeOf(what[key]);
        store.put(what[key], key);
      }
      store.put(runs, 'runs');
      store.put({ evalSettings: state.evalSettings, selected: state.result?.id ?? null, savedAt: Date.now() }, 'meta');
      await new Promise((resolve, reject) => {
        tx.oncomplete = resolve;
        tx.onabort = () => reject(tx.error ?? new DOMException('The transaction was aborted', 'AbortError'));
      });
      this.saved = what;
      this.onStatus({ ok: true, text: this.describe(state, runs) });
    } catch (err) {
      this.saved = { input: undefined, reference: undefined }; // write everything next time
      const why = await refusal(err, bytes);
      console.warn('insitu:', why, err);
      this.onStatus({
        ok: false,
        text: `${why}. Everything is still here in this tab, but a reload or a crash would lose what is not saved. Free some space for this site (or clear it) and keep working: the next change tries again.`,
      });
    }
  }

  describe(state, runs) {
    const evaluated = runs.filter((r) => r.evaluation).length;
    const parts = [`${runs.length} run${runs.length === 1 ? '' : 's'}`];
    if (evaluated) parts.push(`${evaluated} evaluation${evaluated === 1 ? '' : 's'}`);
    const time = new Date().toLocaleTimeString();
    return `Kept in this browser, restored on reload: ${state.input.name}, ${parts.join(', ')} (saved ${time}).`;
  }

  /** Deletes the database (after any write in progress). */
  async clear() {
    await this.writing?.catch(() => {});
    const db = await this.db?.catch(() => null);
    db?.close();
    this.db = null;
    this.saved = { input: undefined, reference: undefined };
    await new Promise((resolve, reject) => {
      const req = indexedDB.deleteDatabase(DB_NAME);
      req.onsuccess = resolve;
      req.onerror = () => reject(req.error);
      // Another tab of the page holding it open closes it on `versionchange`; then this succeeds.
    });
  }
}
