"""Features beyond the core register their routers and start-up hooks here.

Each entry is ``register(app)``: it includes its router(s) and may append coroutine functions
``hook(state)`` to ``app.state.startup_hooks`` (for loops and the embedded agent).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

REGISTRARS: list[Callable[[FastAPI], None]] = []
