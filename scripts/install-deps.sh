#!/usr/bin/env bash
# Installs what Nexus needs on a Debian/Ubuntu machine: system packages, then the Python
# virtualenv (.venv) from the lock file with uv. Idempotent and quick when all is present.
#   scripts/install-deps.sh            runtime packages
#   scripts/install-deps.sh --test     + test-only packages (PostgreSQL, Prometheus for promtool,
#                                        systemd-analyze and useradd for the installer test,
#                                        docker-registry for the container tests, chromium
#                                        for the browser tests)
# Then it builds the web console (scripts/build-ui.sh: npm ci + Vite; skipped when unchanged).
#   scripts/install-deps.sh --bench    + what make bench needs (wrk)
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(python3 python3-venv python3-pip qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio
      debootstrap nftables iproute2 zstd btrfs-progs skopeo umoci ca-certificates)
if [ "${1:-}" = "--test" ]; then
  # postgresql: the API tests on PostgreSQL; prometheus: promtool rule tests, the scrape
  # test; systemd (systemd-analyze verify) and passwd (useradd --prefix): the installer test;
  # docker-registry: a real OCI registry on loopback for the container tests
  # chromium: the browser tests (Playwright drives Debian's build; no browser is downloaded)
  PKGS+=(postgresql prometheus systemd passwd docker-registry chromium)
fi
if [ "${1:-}" = "--bench" ]; then
  PKGS+=(wrk)
fi

# Node.js + npm build the web console: Debian's packages unless a node is already installed
# (e.g. from NodeSource; Vite needs Node >= 20.19)
command -v node >/dev/null && command -v npm >/dev/null || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .tools/bin/uv ]; then
  echo "==> bootstrapping uv into .tools/"
  "$PY" -m venv .tools
  .tools/bin/pip install -q --disable-pip-version-check "uv==0.13.9"
fi
echo "==> syncing .venv from uv.lock"
# The development virtualenv holds the server too: the `server` extra of pyproject.toml.
.tools/bin/uv sync --frozen --extra server --python "$PY" --quiet

# The web console (ui/ -> ui/dist; quick when unchanged). make test needs it; make up starts the
# API without it (the manager's / then says how to build it).
if ! scripts/build-ui.sh; then
  [ "${1:-}" = "--test" ] && exit 1
  echo "WARNING: the web console was not built (see above); the API works without it" >&2
fi
