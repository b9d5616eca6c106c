// Bundles the page (www/main.js) and its inference worker (www/worker.js, found through
// `new Worker(new URL('./worker.js', import.meta.url))`) into dist/, with the Rust core's
// wasm (pkg/insitu_bg.wasm, from `new URL(..., import.meta.url)`) beside them.
// dist/assets/ (models, sample data) is filled by `insitu fetch --dest dist/assets`, not here.
// index.html gets the page's security policy as <meta> tags (scripts/security-policy.mjs), for
// static hosts that cannot send it as headers the way scripts/serve.mjs does.
// www/sw.js, the offline service worker, is bundled as dist/sw.js with the list of every
// emitted file and its sha256 written in (scripts/service-worker-plugin.mjs).
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import CopyPlugin from 'copy-webpack-plugin';
import { SECURITY_META_TAGS } from './scripts/security-policy.mjs';
import { ServiceWorkerPlugin } from './scripts/service-worker-plugin.mjs';

const root = dirname(fileURLToPath(import.meta.url));
const pkgJs = resolve(root, 'pkg/insitu.js');
const havePkg = existsSync(pkgJs);

const POLICY_PLACEHOLDER = /<!-- security-policy:[^>]*-->/;

/** www/index.html with the security policy's <meta> tags in place of its placeholder. */
function withSecurityPolicy(html) {
  const text = html.toString();
  if (!POLICY_PLACEHOLDER.test(text)) {
    throw new Error('www/index.html has no <!-- security-policy: ... --> placeholder: the page would ship without its CSP.');
  }
  return text.replace(POLICY_PLACEHOLDER, SECURITY_META_TAGS);
}

// Without the wasm core the page still bundles, against a module that only throws
// "core not built" when the worker starts, so the page shows that error. Never a fake core.
class MissingPkgWarning {
  apply(compiler) {
    compiler.hooks.thisCompilation.tap('MissingPkgWarning', (compilation) => {
      const { WebpackError } = compiler.webpack;
      compilation.warnings.push(
        new WebpackError(
          'pkg/insitu.js not found: the page is bundled WITHOUT the Rust core and cannot segment. ' +
            'Build the core for the web first (wasm-bindgen --target web, output in pkg/), then rebuild.',
        ),
      );
    });
  }
}

export default (env, argv) => ({
  mode: argv.mode ?? 'production',
  context: root,
  entry: { main: './www/main.js', sw: './www/sw.js' },
  target: 'web',
  output: {
    path: resolve(root, 'dist'),
    filename: '[name].js',
    chunkFilename: '[name].[contenthash:8].js',
    assetModuleFilename: '[name][ext]',
    publicPath: 'auto',
    // Keep dist/assets/ (filled by the CLI) when rebuilding.
    clean: { keep: /^assets\// },
  },
  module: {
    rules: [{ test: /\.wasm$/, type: 'asset/resource', generator: { filename: '[name][ext]' } }],
  },
  resolve: {
    alias: {
      // NiiVue's zarr reader (zarrita) loads these codecs on demand; insitu hands the viewer
      // NIfTI only, so they would be 0.35 MB (brotli) of emscripten the service worker caches
      // for nothing.
      'numcodecs/blosc': false,
      'numcodecs/lz4': false,
      'numcodecs/zstd': false,
      ...(havePkg ? {} : { [pkgJs]: resolve(root, 'www/missing-pkg.js'), [resolve(root, 'pkg/insitu_bg.wasm')]: false }),
    },
  },
  plugins: [
    new CopyPlugin({
      patterns: [
        { from: 'www/index.html', transform: withSecurityPolicy },
        { from: 'www/style.css' },
        { from: 'www/manifest.webmanifest' },
        { from: 'www/icon.svg' },
      ],
    }),
    new ServiceWorkerPlugin({ worker: 'sw.js', registry: resolve(root, 'src/models/registry.json') }),
    ...(havePkg ? [] : [new MissingPkgWarning()]),
  ],
  devtool: argv.mode === 'development' ? 'source-map' : false,
  performance: { hints: false }, // NiiVue alone is ~1.5 MB; the wasm more.
  stats: 'errors-warnings',
});
