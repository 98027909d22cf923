#!/usr/bin/env bash
# Builds the web console (ui/ -> ui/dist) when its inputs changed: `npm ci` from the committed
# package-lock.json, the API types generated from the manager's OpenAPI document
# (ui/src/api/schema.d.ts, never committed), the type check and the Vite build.
# A stamp keyed on a hash of the lock file, the UI sources and the Python sources (they make
# the OpenAPI document) skips all of it when nothing changed. Needs .venv (install-deps.sh).
#   scripts/build-ui.sh            build if needed
#   scripts/build-ui.sh --force    build anyway
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "build-ui: node and npm are needed (Node >= 20.19): apt-get install nodejs npm" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "build-ui: Node $(node --version) is too old for Vite: Node >= 20.19 is needed" >&2
  exit 1
fi

hash_of() { sha256sum "$@" | sha256sum | cut -c1-64; }
lock_hash=$(hash_of ui/package-lock.json)
src_hash=$(hash_of ui/package-lock.json ui/package.json ui/index.html ui/*.ts ui/tsconfig*.json \
  $(find ui/src ui/public -type f ! -name schema.d.ts 2>/dev/null | sort) \
  $(find src/nexus -name '*.py' | sort) scripts/gen_docs.py)
deps_stamp=ui/node_modules/.nexus-deps-stamp
build_stamp=ui/node_modules/.nexus-build-stamp

if [ "${1:-}" != "--force" ] && [ -f ui/dist/index.html ] && [ -f "$build_stamp" ] \
   && [ "$(cat "$build_stamp")" = "$src_hash" ]; then
  exit 0
fi
if [ ! -f "$deps_stamp" ] || [ "$(cat "$deps_stamp")" != "$lock_hash" ]; then
  echo "==> npm ci (ui/)"
  (cd ui && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$deps_stamp"
fi
echo "==> building the web console (ui/dist)"
.venv/bin/python scripts/gen_docs.py --openapi-only ui/openapi.json
(cd ui && npx --no-install openapi-typescript openapi.json -o src/api/schema.d.ts --silent \
  && npm run --silent build)
echo "$src_hash" > "$build_stamp"
