"""Property-based fuzzing of the whole OpenAPI document with schemathesis: no 5xx, ever.

Runs the schemathesis CLI against a live manager (authenticated with an admin API token) and
keeps its summary in .nexus/schemathesis-<db>.txt.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.support.server import BIN, ROOT, start_manager

PASSWORD = "schemathesis-admin-pw"


def test_no_server_errors_anywhere(tmp_path: Path, database_url: str) -> None:
    # ``database_url`` gives a fresh database (PostgreSQL: truncated) for the live server.
    srv = start_manager(
        tmp_path / "state",
        admin_password=PASSWORD,
        env={"NEXUS_RATE_LIMITS_ENABLED": "false", "NEXUS_DATABASE_URL": database_url},
    )
    try:
        tok = httpx.post(
            f"{srv.url}/v1/auth/login", json={"username": "admin", "password": PASSWORD}
        ).json()["access_token"]
        api = httpx.post(
            f"{srv.url}/v1/auth/tokens",
            json={"name": "fuzz"},
            headers={"Authorization": f"Bearer {tok}"},
        ).json()["token"]
        examples = os.environ.get("NEXUS_SCHEMATHESIS_EXAMPLES", "25")
        proc = subprocess.run(
            [
                str(BIN / "schemathesis"),
                "run",
                f"{srv.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                examples,
                "--generation-deterministic",
                # The stateful phase would revoke its own token or log itself out; the image
                # build endpoint starts a real debootstrap: both are tested elsewhere.
                "--phases",
                "examples,coverage,fuzzing",
                "--exclude-path",
                "/v1/images/build",
                # It learns token ids from GET /v1/auth/tokens and would revoke its own token,
                # leaving every later operation a 401 (tests/api/test_core.py covers revoking).
                "--exclude-path",
                "/v1/auth/tokens/{token_id}",
                # A stream never ends (each request would wait for the timeout);
                # tests/api/test_event_stream.py covers it.
                "--exclude-path",
                "/v1/events/stream",
                # Generated webhook URLs would be resolved (DNS) and, were one a public
                # address, contacted: no traffic leaves this machine. test_webhooks.py covers
                # their validation.
                "--exclude-path",
                "/v1/webhooks",
                "--exclude-path",
                "/v1/webhooks/{webhook_id}",
                "--request-timeout",
                "60",
                "-H",
                f"Authorization: Bearer {api}",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        db = "postgresql" if os.environ.get("NEXUS_TEST_DATABASE_URL") else "sqlite"
        out = ROOT / ".nexus" / f"schemathesis-{db}.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout and "generated" in proc.stdout
    finally:
        srv.stop()
    errors = [line for line in srv.log_path.read_text().splitlines() if '"unhandled_error"' in line]
    assert not errors, errors[:3]
