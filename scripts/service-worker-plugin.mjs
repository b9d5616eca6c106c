// A webpack plugin that writes the offline service worker's file lists into dist/sw.js (the
// bundle of www/sw.js): every file the build emits (HTML, JS chunks, wasm, CSS, manifest, icon;
// not source maps or license notes) with the sha256 of its bytes, and the registry's model and
// sample files (src/models/registry.json) with theirs. The version, a hash of both lists, names
// the build's cache, so any change to any file makes a new cache. It runs after minification and
// after webpack's real content hashes, so the hashes are those of the files served.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

const NAME = 'InsituServiceWorker';
export const BUILD_PLACEHOLDER = '__INSITU_OFFLINE_BUILD__';
const NOT_CACHED = /(\.map|\.LICENSE\.txt)$/;

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** The registry's files as the page serves them: assets/models/<path>, assets/data/<path>. */
export function registryFiles(registry) {
  return [
    ...registry.models.flatMap((m) =>
      m.files.map((f) => ({ path: `assets/models/${f.path}`, sha256: f.sha256, bytes: f.bytes ?? 0 })),
    ),
    ...(registry.samples ?? []).map((s) => ({ path: `assets/data/${s.path}`, sha256: s.sha256, bytes: s.bytes ?? 0, sample: true })),
  ];
}

export class ServiceWorkerPlugin {
  /** @param {{worker: string, registry: string}} options  the worker's asset name, registry.json's path */
  constructor({ worker, registry }) {
    this.worker = worker;
    this.registry = registry;
  }

  apply(compiler) {
    const { Compilation, WebpackError, sources } = compiler.webpack;
    compiler.hooks.thisCompilation.tap(NAME, (compilation) => {
      compilation.fileDependencies.add(this.registry);
      compilation.hooks.processAssets.tap({ name: NAME, stage: Compilation.PROCESS_ASSETS_STAGE_OPTIMIZE_TRANSFER }, () => {
        const fail = (message) => compilation.errors.push(new WebpackError(`${NAME}: ${message}`));
        const worker = compilation.getAsset(this.worker);
        if (!worker) return fail(`no ${this.worker} was emitted`);
        const app = compilation
          .getAssets()
          .filter((a) => a.name !== this.worker && !NOT_CACHED.test(a.name))
          .map((a) => ({ path: a.name, sha256: sha256(a.source.buffer()) }))
          .sort((a, b) => a.path.localeCompare(b.path));
        if (!app.some((f) => f.path === 'index.html')) return fail('index.html is not among the emitted files');
        const files = registryFiles(JSON.parse(readFileSync(this.registry, 'utf8')));
        const version = sha256(JSON.stringify({ app, files })).slice(0, 16);
        const text = worker.source.source().toString();
        const placeholder = new RegExp(`(["'\`])${BUILD_PLACEHOLDER}\\1`, 'g');
        const found = text.match(placeholder)?.length ?? 0;
        if (found !== 1) return fail(`${this.worker} holds ${found} copies of the ${BUILD_PLACEHOLDER} string, not 1`);
        const build = JSON.stringify({ version, app, files });
        compilation.updateAsset(this.worker, new sources.RawSource(text.replace(placeholder, () => JSON.stringify(build))));
      });
    });
  }
}
