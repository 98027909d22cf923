"""Browser tests: Python Playwright driving Debian's chromium (headless, never a downloaded
browser) against a real manager (tests.support.server.start_manager) serving the built console.

Each page records console errors, page errors and failed requests (4xx/5xx) so a test can
assert there were none; screenshots go to ``.artifacts/screenshots/`` (not committed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ROOT, LiveServer, login, start_manager

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("NEXUS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("NEXUS_TEST_SCREENSHOTS", ROOT / ".artifacts" / "screenshots"))
ADMIN_PASSWORD = "browser-admin-pass-1"
VIEWER = ("vic", "vic-password-123")
OPERATOR = ("olga", "olga-password-123")


def _ui_built() -> bool:
    return (ROOT / "ui" / "dist" / "index.html").is_file()


@pytest.fixture(scope="session")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A manager (no agent: the pages need none) with an admin, an operator and a viewer."""
    if not _ui_built():
        pytest.fail("ui/dist is not built: run scripts/build-ui.sh (install-deps.sh does)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (install-deps.sh --test)")
    srv = start_manager(
        tmp_path_factory.mktemp("browser"),
        admin_password=ADMIN_PASSWORD,
        env={
            "NEXUS_WEBHOOK_ALLOWLIST": '["127.0.0.1"]',  # a webhook the crawler can open
            # every test signs in (and the crawler's pages refresh): more than the default
            # 10/minute on a fast machine; the limit itself is tested in tests/api
            "NEXUS_RATE_LIMIT_AUTH": "1000/minute",
        },
    )
    h = login(srv, ADMIN_PASSWORD)
    for name, pw, role in [(*VIEWER, "viewer"), (*OPERATOR, "operator")]:
        r = httpx.post(
            f"{srv.url}/v1/users", headers=h, json={"username": name, "password": pw, "role": role}
        )
        r.raise_for_status()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def admin_headers(manager: LiveServer) -> dict[str, str]:
    """An admin's Authorization header, for setting things up through the API."""
    return login(manager, ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the session."""
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class Watched:
    """A page and what went wrong on it."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expected_status: set[int] = field(default_factory=set)

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
        self.goto("/login")
        self.page.get_by_role("textbox", name="Username").fill(username)
        self.page.get_by_role("textbox", name="Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_test_id("whoami").wait_for()

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def problems(self) -> list[str]:
        return [*self.errors, *self.failed]


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Watched]]:
    """Open fresh browser contexts (no session) on a manager; their errors are recorded."""
    contexts: list[Any] = []

    def _open(base: str) -> Watched:
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(ctx)
        pg = ctx.new_page()
        w = Watched(pg, base)
        pg.on("console", lambda m: _console(w, m))
        pg.on("pageerror", lambda e: w.errors.append(f"page error: {e}"))
        pg.on("response", lambda r: _response(w, r))
        pg.on("requestfailed", lambda r: _request_failed(w, r))
        return w

    yield _open
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def page(open_page: Callable[[str], Watched], manager: LiveServer) -> Watched:
    """A fresh page on the session's manager."""
    return open_page(manager.url)


def _console(w: Watched, m: Any) -> None:
    if m.type == "error":
        w.errors.append(f"console {m.type}: {m.text}")


def _response(w: Watched, r: Any) -> None:
    if r.status >= 400 and r.status not in w.expected_status:
        w.failed.append(f"{r.request.method} {r.url} -> {r.status}")


def _request_failed(w: Watched, r: Any) -> None:
    # a stream or a fetch the page itself aborted on navigation is no failure
    if "ERR_ABORTED" in (r.failure or ""):
        return
    w.failed.append(f"{r.method} {r.url} failed: {r.failure}")


def clean_screenshots() -> None:
    """Start a run with an empty screenshot directory."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
