#!/usr/bin/env bash
# Installs what a fresh machine lacks, then builds the native CLI, the wasm package and the
# web bundle, and stages the registry's models and sample volume into dist/assets.
# Idempotent: each step is skipped when its result is already there.
#
#   scripts/setup.sh          everything the tests need (scripts/test.sh)
#   scripts/setup.sh --app    only what serving the page needs (scripts/app.sh): no chromium,
#                             no lavapipe, no native CLI
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  '') app_only=false ;;
  --app) app_only=true ;;
  *) echo "usage: scripts/setup.sh [--app]  (got: $*)" >&2; exit 2 ;;
esac

log() { printf '\n== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
if ! $app_only; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  command -v curl >/dev/null 2>&1 || apt_packages+=(curl) # the CLI downloads with curl
  # Mesa's lavapipe: a Vulkan device on the CPU for the native GPU-path test.
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || apt_packages+=(mesa-vulkan-drivers)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "apt-get install ${apt_packages[*]}"
  as_root apt-get update -q
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${apt_packages[@]}"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# wasm-bindgen's CLI must match the library version in Cargo.lock exactly.
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  log "cargo install wasm-bindgen-cli $bindgen_version (takes several minutes, once)"
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

log "npm ci"
[ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund

if ! $app_only; then
  # With the GPU path, as scripts/test.sh tests it: one feature set, dependencies built once.
  log "native build (CLI, --features gpu)"
  cargo build --features gpu --bin insitu
fi

log "wasm build"
# wasm-release (Cargo.toml): dependencies optimized for size, insitu's kernels for speed.
cargo build --profile wasm-release --lib --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/wasm-release/insitu.wasm
# Debian's binaryen is too old for wasm-bindgen's output; npm's is pinned in package.json.
npx --no-install wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-simd pkg/insitu_bg.wasm -o pkg/insitu_bg.wasm

log "web bundle"
npm run build

# The same files, paths and sha256 checks as `insitu fetch --dest dist/assets`
# (tests/browser/stage-assets.test.mjs compares the two), without waiting for the native build.
log "models and sample data -> dist/assets"
node scripts/stage-assets.mjs --dest dist/assets
