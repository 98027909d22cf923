"""TLS between agent and manager (issue 12): the agent's HTTPS API and its pin, how the agent
trusts the manager, the refusal of a plain-http manager off loopback, re-registration after
a certificate change. Certificates are made here (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvicorn

from nexus.agent import daemon as agent_cli
from nexus.agent.daemon import main, run_agent
from nexus.agent.registration import AgentStartError, load_credentials, register
from nexus.agent.runtime import AgentRuntime, wait_for
from nexus.core.settings import Settings
from nexus.hostapi.agent_client import AgentCertificateMismatch, AgentClient
from tests.support.tls import CertFiles, ca_file, issue

from .conftest import SleepDriver
from .test_cli import FakeManager, free_port


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The test CA."""
    return trustme.CA()


@pytest.fixture
async def https_manager(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[FakeManager]:
    """The fake manager served over HTTPS with a certificate of ``ca`` for 127.0.0.1."""
    fm = FakeManager()
    cert = issue(ca, tmp_path / "mgr", "manager")
    port = free_port()
    config = uvicorn.Config(
        fm.app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    fm.url = f"https://127.0.0.1:{port}"  # type: ignore[attr-defined]
    fm.cert = cert  # type: ignore[attr-defined]
    yield fm
    server.should_exit = True
    await task


def agent_settings(tmp_path: Path, cert: CertFiles | None, **kw: Any) -> Settings:
    """Agent settings on a free port, with ``cert`` as the API's certificate."""
    values: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "agent_port": free_port(),
        "heartbeat_interval_s": 0.05,
    }
    if cert is not None:
        values.update(tls_cert_file=str(cert.cert), tls_key_file=str(cert.key))
    values.update(kw)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_agent(settings: Settings, url: str, join: str | None) -> AsyncIterator[None]:
    """``run_agent`` as a task until the block ends."""
    started = asyncio.Event()
    rt = AgentRuntime(settings, driver=SleepDriver())
    task = asyncio.create_task(
        run_agent(settings, url, join, embedded=True, runtime=rt, started=started)
    )
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raise the start-up error
    assert started.is_set(), "agent did not start"
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_https_agent_registers_its_pin_and_serves_only_that_certificate(
    ca: trustme.CA, https_manager: FakeManager, tmp_path: Path
) -> None:
    other_ca = trustme.CA()  # an agent certificate need not come from the manager's CA
    cert = issue(other_ca, tmp_path / "agent", "agent")
    settings = agent_settings(tmp_path, cert, tls_ca_file=str(ca_file(ca, tmp_path)))
    url = https_manager.url  # type: ignore[attr-defined]
    async with running_agent(settings, url, "join-ok"):
        reg = https_manager.registrations[0]
        assert reg["agent_url"] == f"https://127.0.0.1:{settings.agent_port}"
        assert reg["agent_cert_sha256"] == cert.sha256
        # heartbeats reach the https manager, verified against tls_ca_file
        assert await wait_for(lambda: len(https_manager.heartbeats) >= 2, 5)
        agent = reg["agent_url"]
        async with AgentClient(agent, "agent-secret", cert_sha256=cert.sha256) as c:
            assert (await c.info()).driver == "sleep"
        # a different certificate (the pin of another one) is refused before any request
        wrong = issue(other_ca, tmp_path / "other", "other").sha256
        async with AgentClient(agent, "agent-secret", cert_sha256=wrong) as c:
            with pytest.raises(AgentCertificateMismatch) as err:
                await c.info()
        assert err.value.type == "certificate-mismatch"
        assert "not the one it registered with" in err.value.detail
        assert cert.sha256 in err.value.detail and wrong in err.value.detail
    creds = load_credentials(settings)
    assert creds is not None and creds.agent_cert_sha256 == cert.sha256


async def test_an_https_manager_is_verified(
    ca: trustme.CA, https_manager: FakeManager, tmp_path: Path
) -> None:
    url = https_manager.url  # type: ignore[attr-defined]
    https_manager.check_listening = False  # register() alone: no agent API listens
    # no tls_ca_file: the system CAs do not know the test CA
    settings = agent_settings(tmp_path, None)
    rt = AgentRuntime(settings, driver=SleepDriver())
    with pytest.raises(AgentStartError, match="CERTIFICATE_VERIFY_FAILED"):
        await register(settings, rt, url, "join-ok", retry_for_s=0.3)
    # a pin of another certificate is refused too; the right pin is accepted
    other = issue(ca, tmp_path / "o", "o").sha256
    pinned = agent_settings(tmp_path, None, manager_cert_sha256=other)
    with pytest.raises(AgentStartError, match="not the pinned"):
        await register(pinned, rt, url, "join-ok", retry_for_s=0.3)
    assert https_manager.registrations == []
    good = https_manager.cert.sha256  # type: ignore[attr-defined]
    colons = ":".join(good[i : i + 2] for i in range(0, 64, 2)).upper()  # openssl's format
    pinned = agent_settings(tmp_path, None, manager_cert_sha256=colons)
    await register(pinned, rt, url, "join-ok", retry_for_s=5)
    assert len(https_manager.registrations) == 1


async def test_a_new_certificate_needs_a_new_join_token_and_presents_the_host_token(
    https_manager: FakeManager, ca: trustme.CA, tmp_path: Path
) -> None:
    url = https_manager.url  # type: ignore[attr-defined]
    ca_pem = str(ca_file(ca, tmp_path))
    first = issue(ca, tmp_path / "a", "first")
    settings = agent_settings(tmp_path, first, tls_ca_file=ca_pem)
    async with running_agent(settings, url, "join-ok"):
        pass
    assert https_manager.register_auth == [None]  # a first registration has no host token
    async with running_agent(settings, url, None):  # same certificate: no registration
        pass
    assert len(https_manager.registrations) == 1
    second = issue(ca, tmp_path / "b", "second")
    rotated = agent_settings(tmp_path, second, tls_ca_file=ca_pem, agent_port=settings.agent_port)
    with pytest.raises(AgentStartError, match=r"certificate changed.*--join-token"):
        async with running_agent(rotated, url, None):
            pass
    async with running_agent(rotated, url, "join-ok"):
        pass
    assert https_manager.registrations[-1]["agent_cert_sha256"] == second.sha256
    assert https_manager.register_auth[-1] == "Bearer host-secret"


async def test_tls_files_that_do_not_work_stop_the_agent(ca: trustme.CA, tmp_path: Path) -> None:
    cert = issue(ca, tmp_path / "a", "a")
    other = issue(ca, tmp_path / "b", "b")
    url = "http://127.0.0.1:1"
    cases = [
        ({"tls_cert_file": str(cert.cert)}, "tls_key_file is not set"),
        ({"tls_key_file": str(cert.key)}, "tls_cert_file is not set"),
        (
            {"tls_cert_file": str(tmp_path / "nope.pem"), "tls_key_file": str(cert.key)},
            "cannot read",
        ),
        (
            {"tls_cert_file": str(cert.cert), "tls_key_file": str(other.key)},
            "is not the key of",
        ),
        ({"tls_ca_file": str(tmp_path / "no-ca.pem")}, "tls_ca_file"),
    ]
    for values, message in cases:
        settings = agent_settings(tmp_path, None, **values)
        with pytest.raises(AgentStartError, match=message):
            await run_agent(
                settings,
                url.replace("http:", "https:"),
                "j",
                runtime=AgentRuntime(settings, driver=SleepDriver()),
            )


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, bool]]:
    """``main`` with ``run_agent`` replaced: records (manager URL, insecure setting)."""
    calls: list[tuple[str, bool]] = []

    async def fake_run(settings: Settings, manager_url: str, *a: Any, **kw: Any) -> None:
        calls.append((manager_url, settings.insecure))

    monkeypatch.setattr(agent_cli, "run_agent", fake_run)
    monkeypatch.setenv("NEXUS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("NEXUS_INSECURE", raising=False)
    return calls


def test_a_plain_http_manager_off_loopback_is_refused_without_insecure(
    no_run: list[tuple[str, bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--manager", "http://10.1.2.3:8080", "--join-token", "nxj_x"])
    err = capsys.readouterr().err
    assert rc == 2 and no_run == []
    assert len(err.strip().splitlines()) == 1
    assert "http://10.1.2.3:8080" in err and "--insecure" in err
    assert main(["--manager", "http://10.1.2.3:8080", "--join-token", "t", "--insecure"]) == 0
    assert no_run == [("http://10.1.2.3:8080", True)]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.9.0.1:8080",
        "http://[::1]:8080",
        "http://localhost:8080",
        "https://10.1.2.3:8080",
        "https://manager.example:8080",
    ],
)
def test_loopback_http_and_https_managers_need_no_insecure(
    no_run: list[tuple[str, bool]], url: str
) -> None:
    assert main(["--manager", url, "--join-token", "nxj_x"]) == 0
    assert no_run == [(url, False)]


def test_insecure_is_a_setting_too(
    no_run: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_INSECURE", "true")
    assert main(["--manager", "http://manager.example:8080", "--join-token", "t"]) == 0
    assert no_run == [("http://manager.example:8080", True)]


async def test_run_agent_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path, None)
    with pytest.raises(AgentStartError, match="--insecure"):
        await run_agent(
            settings, "http://192.0.2.1:8080", "j", runtime=AgentRuntime(settings, SleepDriver())
        )


def test_help_names_insecure_and_tls(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--insecure" in out and "tls_cert_file" in out and "https://" in out


async def test_image_downloads_verify_the_manager_like_heartbeats(
    ca: trustme.CA, tmp_path: Path
) -> None:
    import hashlib

    from fastapi import FastAPI
    from fastapi.responses import Response

    from nexus.agent.storage.imagecache import ImageCache, ImageFetchError

    data = b"\x7fELF" + bytes(range(256)) * 64
    app = FastAPI()

    @app.get("/v1/hosts/h1/images/img_1/files/vmlinuz")
    async def file() -> Response:
        return Response(data, media_type="application/octet-stream")

    cert = issue(ca, tmp_path / "mgr", "manager")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ssl_certfile=str(cert.cert),
            ssl_keyfile=str(cert.key),
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)

    class Creds:
        manager_url = f"https://127.0.0.1:{port}"
        host_id = "h1"
        host_token = "host-secret"

    want = hashlib.sha256(data).hexdigest()
    try:
        for values, ok in [
            ({}, False),  # system CAs: the test CA is unknown
            ({"tls_ca_file": str(ca_file(ca, tmp_path))}, True),
            ({"manager_cert_sha256": cert.sha256}, True),
            ({"manager_cert_sha256": "ab" * 32}, False),
        ]:
            settings = agent_settings(tmp_path, None, **values)
            cache = ImageCache(settings, credentials=lambda: Creds(), attempts=1)
            target = tmp_path / "cache" / str(len(values)) / ("ok" if ok else "no")
            target.mkdir(parents=True, exist_ok=True)
            if ok:
                await cache._fetch("img_1", "vmlinuz", want, target, Creds())
                assert (target / "vmlinuz").read_bytes() == data
            else:
                with pytest.raises(ImageFetchError, match=r"CERTIFICATE_VERIFY_FAILED|pinned"):
                    await cache._fetch("img_1", "vmlinuz", want, target, Creds())
    finally:
        server.should_exit = True
        await task
