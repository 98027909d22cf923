#!/usr/bin/env bash
# make dist: builds dist/nexus_microvm-<version>-py3-none-any.whl (with the built web console,
# ui/dist, as nexus/manager/ui: hatch_build.py) and the sdist, checks both
# with twine, and exports the lock file's server requirements (pinned, with hashes) to
# dist/requirements-server.txt for the installer. Versions come from src/nexus/__init__.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DIST_DIR:-dist}
if [ ! -f ui/dist/index.html ]; then
  echo "build-dist: ui/dist is not built (scripts/build-ui.sh): the wheel would carry no web console" >&2
  exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
.tools/bin/uv build --quiet --out-dir "$OUT" --sdist --wheel
.tools/bin/uv export --quiet --frozen --no-dev --extra server --no-emit-project \
  --format requirements-txt -o "$OUT/requirements-server.txt"
.tools/bin/uv export --quiet --frozen --no-dev --no-emit-project \
  --format requirements-txt -o "$OUT/requirements-client.txt"
.venv/bin/twine check --strict "$OUT"/*.whl "$OUT"/*.tar.gz
ls -l "$OUT"
