"""The web console at /: SPA fallback, long-cached hashed assets, the API untouched, and a
clear page when the console is not built."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nexus.core.settings import Settings
from nexus.manager.app import create_app

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends


def _client(tmp_path: Path, ui_dir: Path) -> httpx.AsyncClient:
    settings = Settings(state_dir=tmp_path / "state", embedded_agent=False, ui_dir=ui_dir)
    app = create_app(settings)  # no lifespan: these paths need no database
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text('<!doctype html><script src="/assets/index-abc123.js"></script>')
    (d / "assets" / "index-abc123.js").write_text("console.log(1)")
    (d / "favicon.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("not for you")
    return d


async def test_spa_fallback_and_cache_headers(tmp_path: Path, dist: Path) -> None:
    async with _client(tmp_path, dist) as c:
        for path in ("/", "/vms", "/vms/vm_123", "/login"):
            r = await c.get(path, headers=HTML)
            assert r.status_code == 200, path
            assert r.text.startswith("<!doctype html>")
            assert r.headers["cache-control"] == "no-cache"
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert r.headers["x-request-id"]
        a = await c.get("/assets/index-abc123.js")
        assert a.status_code == 200 and a.text == "console.log(1)"
        assert a.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (await c.get("/favicon.svg")).text == "<svg/>"
        assert (await c.get("/assets/missing.js")).status_code == 404
        for path in (
            "/assets/../../secret.txt",
            "/assets/%2e%2e/%2e%2e/secret.txt",
            "/../secret.txt",
        ):
            assert "not for you" not in (await c.get(path, headers=HTML)).text
        h = await c.head("/vms", headers=HTML)
        assert h.status_code == 200


async def test_api_paths_stay_the_api(tmp_path: Path, dist: Path) -> None:
    async with _client(tmp_path, dist) as c:
        for path in ("/v1/no-such-thing", "/v1/vms/../no-such-thing"):
            r = await c.get(path, headers=HTML)
            assert r.status_code == 404
            assert r.headers["content-type"].startswith("application/problem+json")
        # a client that is no browser gets the API's 404 for an unknown path, as before
        r = await c.get("/nowhere")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await c.post("/somewhere")  # not a GET: the router answers, as before
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await c.get("/openapi.json")
        assert r.status_code == 200 and r.json()["openapi"]
        assert (
            (await c.get("/health/nope"))
            .headers["content-type"]
            .startswith("application/problem+json")
        )


async def test_not_built_says_how_to_build(tmp_path: Path) -> None:
    async with _client(tmp_path, tmp_path / "nowhere") as c:
        assert (await c.get("/vms", headers=HTML)).status_code == 503
        r = await c.get("/")
        assert r.status_code == 503
        assert "npm ci" in r.text and "install-deps.sh" in r.text
        assert (await c.get("/v1/nope")).status_code == 404
