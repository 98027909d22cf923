"""The docs site: the reference pages are generated from the code (the CLI reference from the
Typer command tree, the API reference from the app's OpenAPI document, ReDoc bundled — no
CDN) and ``mkdocs build --strict`` passes. The same as ``make docs``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_docs_build_strict(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "scripts/gen_docs.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ref = ROOT / "docs" / "reference"
    cli = (ref / "cli.md").read_text()
    for cmd in ("nexus vm create", "nexus vm list", "nexus login", "nexus audit list"):
        assert f"`{cmd}`" in cli
    spec = json.loads((ref / "openapi.json").read_text())
    assert spec["openapi"].startswith("3.") and "/v1/vms" in spec["paths"]
    assert (ref / "redoc.standalone.js").stat().st_size > 100_000

    site = tmp_path / "site"
    res = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for page in (
        "index.html",
        "getting-started.html",
        "concepts.html",
        "reference/cli.html",
        "reference/api.html",
        "operators/runbook.html",
        "security.html",
    ):
        assert (site / page).exists(), page
    api = (site / "reference" / "api.html").read_text()
    assert '<script src="redoc.standalone.js">' in api
    # the API page loads nothing from elsewhere (the site is readable offline)
    assert not re.search(r"<script[^>]*src=\"(https?:)?//", api)
    assert (site / "reference" / "openapi.json").exists()
    assert (site / "reference" / "redoc.standalone.js").exists()
    assert (site / "reference" / "openapi.js").read_text().startswith("window.NEXUS_OPENAPI = {")
