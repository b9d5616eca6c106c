// Stands in for pkg/insitu.js when the page was bundled before the Rust core was built
// (see webpack.config.js). It is not a core: starting it fails with what to do.
const message =
  'The insitu core (pkg/insitu.js + insitu_bg.wasm) was not built when this page was bundled. ' +
  'Build it for the web (wasm-bindgen --target web into pkg/), then run `npm run build` again.';

export default async function init() {
  throw new Error(message);
}
export function registry_json() {
  throw new Error(message);
}
export function inspect_volume() {
  throw new Error(message);
}
export async function segment() {
  throw new Error(message);
}
