# Nexus — two commands: `make up` (install + start) and `make test` (install + all checks).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STATE_DIR ?= /var/lib/nexus
PORT ?= 8080

.PHONY: up test deps test-deps bench-deps image lint typecheck test-unit test-api test-pg test-pg-net test-packaging test-vm test-net test-ui test-browser ui bench docs docs-serve dist clean

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test

image: deps
	@$(VENV)/bin/nexus-manager image build default

up: deps
	@NEXUS_STATE_DIR=$(STATE_DIR) $(VENV)/bin/nexus-manager image build default
	@echo "==> starting Nexus on http://127.0.0.1:$(PORT) (state in $(STATE_DIR); Ctrl-C stops)"
	@echo "    log in as 'admin'; the first start prints the password (also in $(STATE_DIR)/initial-admin-password)"
	@NEXUS_STATE_DIR=$(STATE_DIR) exec $(VENV)/bin/nexus-manager serve --port $(PORT)

lint:
	$(VENV)/bin/ruff check src tests bench migrations scripts hatch_build.py deploy/install/nexus-install
	$(VENV)/bin/ruff format --check src tests bench migrations scripts hatch_build.py deploy/install/nexus-install

typecheck:
	$(VENV)/bin/mypy

PACKAGING_TESTS := tests/unit/test_installer.py tests/unit/test_dist.py

test-unit:
	$(VENV)/bin/pytest -q tests/unit tests/api tests/cli $(PACKAGING_TESTS:%=--ignore=%)

# Installing the release into a throwaway prefix and the client wheel alone: minutes of
# pip, run in the other lane of make test
test-packaging:
	$(VENV)/bin/pytest -q $(PACKAGING_TESTS)

test-pg:
	URL=$$(scripts/test-postgres.sh) && NEXUS_TEST_DATABASE_URL=$$URL $(VENV)/bin/pytest -q tests/api

test-net:
	$(VENV)/bin/pytest -q tests/net

test-vm:
	$(VENV)/bin/pytest -q tests/vm

# The web console: build it if its sources changed (scripts/build-ui.sh), its logic tests
# (Vitest), and the browser tests (Playwright driving Debian's chromium against a real manager;
# screenshots in .artifacts/screenshots/).
ui:
	@scripts/build-ui.sh

test-ui: ui
	cd ui && npx --no-install vitest run

test-browser: ui
	$(VENV)/bin/pytest -q tests/browser

test: test-deps
	$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck test-ui
	@# two lanes side by side (one core each), each one's output printed whole when it ends:
	@# the SQLite suite | the PostgreSQL suite, then the host-network suite (its own network
	@# namespaces: nothing shared), the packaging tests and the browser tests (one guest);
	@# then the real-VM suite alone (guests boot under TCG)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-unit test-pg-net
	$(MAKE) --no-print-directory test-vm
	@scripts/test-postgres.sh stop

test-pg-net:
	$(MAKE) --no-print-directory test-pg
	$(MAKE) --no-print-directory test-net test-packaging test-browser

bench-deps:
	@scripts/install-deps.sh --bench

bench: bench-deps
	$(PY) -m bench.run

# The docs site: reference pages generated from the code, then a strict build into site/.
# (tests/unit/test_docs_site.py does the same in make test.)
docs: deps
	$(PY) scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
	@echo "==> docs built: site/index.html"

docs-serve: deps
	$(PY) scripts/gen_docs.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Wheel + sdist of nexus-microvm (the client alone; the server behind the [server] extra),
# checked with twine, and the server's pinned requirements (with hashes) from uv.lock,
# which deploy/install/nexus-install installs from.
dist: deps
	@scripts/build-dist.sh

clean:
	rm -rf .nexus .pytest_cache .mypy_cache .ruff_cache site dist
