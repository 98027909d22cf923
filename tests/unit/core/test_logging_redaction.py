"""Credentials in URLs never reach a log line (uvicorn logs WebSocket upgrades with the
query string: ``?ticket=nxt_...``)."""

from __future__ import annotations

import logging

import pytest

from nexus.core.logging import configure_logging, get_logger, redact_secrets


def test_uvicorn_websocket_line_has_no_ticket(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("info", json=True)
    uv = logging.getLogger("uvicorn.error")
    # as `nexus-manager serve` leaves it (log_config=None): no handlers, propagate to root
    # (another test may have run uvicorn.Config, which configures this logger its own way)
    for lg in (uv, logging.getLogger("uvicorn")):
        monkeypatch.setattr(lg, "handlers", [])
        monkeypatch.setattr(lg, "propagate", True)
        monkeypatch.setattr(lg, "disabled", False)
    level = uv.level
    uv.setLevel(logging.INFO)  # setLevel (not the attribute): it clears the level caches
    try:
        _log_ws_line(uv)
    finally:
        uv.setLevel(level)
    _check(capsys)


def _log_ws_line(uv: logging.Logger) -> None:
    uv.info(
        '%s - "WebSocket %s" [accepted]',
        "10.0.0.5:41000",
        "/v1/vms/vm_1/shell/ws?ticket=nxt_SECRETVALUE123&cols=80",
    )
    get_logger("nexus.access").info("request", path="/v1/x?token=nxs_OTHERSECRET")


def _check(capsys: pytest.CaptureFixture[str]) -> None:
    err = capsys.readouterr().err
    assert "SECRETVALUE123" not in err and "OTHERSECRET" not in err
    assert "ticket=***" in err and "cols=80" in err and "token=***" in err


def test_redact_keeps_other_parameters() -> None:
    assert redact_secrets("/a?x=1&ticket=abc&y=2") == "/a?x=1&ticket=***&y=2"
    assert redact_secrets("/plain/path") == "/plain/path"
