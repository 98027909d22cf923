"""The baseline for ``api_ratio``: a bare FastAPI app that returns the same JSON body as
``GET /v1/vms?limit=50`` from memory, served by uvicorn with the manager's settings.

    python -m bench.bare_app BODY_JSON PORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse


def create_app(body: dict[str, Any]) -> FastAPI:
    """One route, ``GET /v1/vms``, answering ``body`` (serialized per request)."""
    app = FastAPI()

    @app.get("/v1/vms")
    async def list_vms() -> JSONResponse:
        return JSONResponse(body)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Serve with the same uvicorn options as ``nexus-manager serve``."""
    body = json.loads(Path(sys.argv[1]).read_text())
    uvicorn.run(
        create_app(body),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
    )


if __name__ == "__main__":
    main()
