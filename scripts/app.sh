#!/usr/bin/env bash
# One command: set up, build and serve insitu on http://127.0.0.1:${PORT:-8080}
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --app # only what the page needs: no native CLI, no test browser
exec node scripts/serve.mjs dist "${PORT:-8080}"
