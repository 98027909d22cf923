"""Structured logging: JSON lines via structlog, with request context from contextvars."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Query parameters that carry credentials (WebSocket tickets, tokens in URLs): their values
# never reach a log line. uvicorn logs WebSocket upgrades with the full query string.
_SECRET_QUERY = re.compile(r"(?i)\b((?:ticket|token|access_token|refresh_token)=)[^&\s\"']+")


def redact_secrets(text: str) -> str:
    """``text`` with the values of credential query parameters replaced by ``***``."""
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactSecretsFilter(logging.Filter):
    """Rewrites a standard-library record so credential query values are not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        clean = redact_secrets(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and "=" in v:
            event[k] = redact_secrets(v)
    return event


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Configure structlog and the standard library to emit one JSON object per line."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        _redact_processor,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    handler.addFilter(RedactSecretsFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)
    for noisy in ("uvicorn.access", "sqlalchemy.engine", "aiosqlite", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A bound structlog logger."""
    return structlog.get_logger(name)
