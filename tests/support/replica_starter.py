"""Start manager replicas at the same instant: ``python -m tests.support.replica_starter
<work dir> <database url>...``.

For each database URL (an empty database), forks two children released by the same pipe
write; each runs the manager's whole start-up — ``create_app`` and its lifespan:
migrations, bootstrap admin, signing keys, every feature's start-up hook, the loops — then
checks the schema is at head and there is exactly one admin, and exits 0 (else prints the
error and exits 1). Forking from this already-imported process keeps a round fast (no
interpreter start, no imports), so a test can repeat it many times. Prints one JSON line:
``{"rounds": [[exit a, exit b], ...], "errors": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from pathlib import Path

from sqlalchemy import func, select

from nexus.core.settings import Settings
from nexus.manager import migrate
from nexus.manager.app import create_app
from nexus.manager.features.users.models import User

PASSWORD = "replica-admin-pass-1"
SECRET = "replica-test-secret-" + "k" * 40


async def _start(url: str, state_dir: Path) -> None:
    settings = Settings(
        database_url=url,
        state_dir=state_dir,
        cache_dir=state_dir / "cache",
        secret_key=SECRET,
        bootstrap_admin_password=PASSWORD,
        embedded_agent=False,
        log_level="error",
    )
    app = create_app(settings)
    state = app.state.nexus
    async with app.router.lifespan_context(app):
        if not await migrate.is_at_head(state.db):
            raise RuntimeError("schema not at head after start-up")
        async with state.db.session() as s:
            admins = (await s.execute(select(func.count()).select_from(User))).scalar()
        if admins != 1:
            raise RuntimeError(f"{admins} users after start-up, not 1")


def _child(url: str, state_dir: Path, go: int, err_path: Path) -> None:
    os.read(go, 1)  # released with the other replica
    try:
        asyncio.run(_start(url, state_dir))
    except BaseException:
        err_path.write_text(traceback.format_exc()[-3000:])
        os._exit(1)
    os._exit(0)


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    rounds: list[list[int]] = []
    errors: list[str] = []
    for i, url in enumerate(argv[1:]):
        r, w = os.pipe()
        pids = []
        for side in "ab":
            state_dir = work / f"r{i}{side}"
            state_dir.mkdir(parents=True, mode=0o700)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _child(url, state_dir, r, state_dir / "error.txt")
            pids.append((pid, state_dir))
        os.write(w, b"xx")  # both at once
        os.close(w)
        os.close(r)
        codes = []
        for pid, state_dir in pids:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            codes.append(code)
            if code != 0:
                err = state_dir / "error.txt"
                errors.append(f"round {i}: {err.read_text() if err.exists() else code}")
        rounds.append(codes)
    print(json.dumps({"rounds": rounds, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
