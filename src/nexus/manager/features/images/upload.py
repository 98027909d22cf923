"""Streamed multipart upload of image files: parts go straight to disk with a size limit,
never into memory. Parts: ``name``, ``description``, ``kernel``, ``rootfs``, ``initrd``
(optional) and optional ``kernel_sha256`` / ``rootfs_sha256`` / ``initrd_sha256``.

The service authorizes the caller *before* it hands the body stream here (the route never
parses the body), takes one of ``max_concurrent_uploads`` slots (:func:`upload_slot`) and
checks the free space (:func:`ensure_free_space`): a refused upload reads and writes
nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from nexus.core.errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from nexus.manager.features.vms.ceilings import InsufficientStorage
from nexus.manager.platform.appstate import ManagerState

FILE_PARTS = {"kernel": "vmlinuz", "rootfs": "rootfs.ext4", "initrd": "initrd.img"}
TEXT_PARTS = {"name", "description", "kernel_sha256", "rootfs_sha256", "initrd_sha256"}
MAX_TEXT = 4096
RETRY_AFTER_S = 30
# Uploads in progress per manager state (one process may host several apps in tests).
_active: dict[int, int] = {}


@contextlib.asynccontextmanager
async def upload_slot(state: ManagerState) -> AsyncIterator[None]:
    """Hold one of the ``max_concurrent_uploads`` slots of this manager process, or raise
    503 with ``Retry-After`` (uploads hold disk bandwidth and free space for minutes)."""
    key = id(state)
    limit = state.settings.max_concurrent_uploads
    if _active.get(key, 0) >= limit:
        raise ServiceUnavailable(
            f"{limit} concurrent image upload(s) already in progress on this manager "
            f"(max_concurrent_uploads); retry in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    _active[key] = _active.get(key, 0) + 1
    try:
        yield
    finally:
        _active[key] -= 1
        if _active[key] <= 0:
            del _active[key]


def declared_length(content_length: str | None, max_bytes: int) -> int | None:
    """The body size the client declared (None: chunked); over ``max_bytes`` is a 413 before
    anything is read."""
    if content_length is None or not content_length.strip():
        return None
    if not content_length.strip().isdigit():
        raise BadRequest("Content-Length must be a number of bytes")
    n = int(content_length)
    if n > max_bytes:
        raise PayloadTooLarge(
            f"upload of {n} bytes exceeds the limit of {max_bytes} bytes (max_upload_bytes)"
        )
    return n


def ensure_free_space(root: Path, need: int) -> None:
    """507 unless the file system of ``root`` has ``need`` bytes free for us (a chunked
    upload of unknown size must fit the whole ``max_upload_bytes``)."""
    root.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise InsufficientStorage(
            f"the manager's image directory has {free // (1024 * 1024)} MiB free, the upload "
            f"needs up to {need // (1024 * 1024)} MiB (its Content-Length, or max_upload_bytes "
            "when it is sent chunked); free space or send a Content-Length"
        )


@dataclass
class UploadedImage:
    """What the client sent: text fields and the temp paths of file parts."""

    dir: Path
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


async def receive_upload(
    body: AsyncIterable[bytes], content_type: str, tmp_root: Path, max_bytes: int
) -> UploadedImage:
    """Parse ``body`` as multipart/form-data, streaming files to ``tmp_root`` (0600)."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequest("expected a multipart/form-data body with a boundary")
    tmp_root.mkdir(parents=True, exist_ok=True)
    up = UploadedImage(dir=Path(tempfile.mkdtemp(prefix=".upload-", dir=tmp_root)))
    state: dict[str, Any] = {"headers": {}, "name": None, "fh": None, "text": None, "header": b""}
    total = 0
    errors: list[str] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["header"].lower()] = (
            state["headers"].get(state["header"].lower(), b"") + data[start:end]
        )

    def on_header_end() -> None:
        state["header"] = b""

    def on_headers_finished() -> None:
        disp = state["headers"].get(b"content-disposition", b"")
        _, opts = parse_options_header(disp)
        name = opts.get(b"name", b"").decode(errors="replace")
        state["name"] = name
        if name in FILE_PARTS:
            if name in up.files:
                errors.append(f"part '{name}' given twice")
                state["fh"] = None
                return
            path = up.dir / FILE_PARTS[name]
            up.files[FILE_PARTS[name]] = path
            state["fh"] = os.fdopen(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb"
            )
        elif name in TEXT_PARTS:
            state["text"] = bytearray()
        else:
            errors.append(f"unknown part '{name}'")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        fh: IO[bytes] | None = state["fh"]
        if fh is not None:
            fh.write(data[start:end])
        elif state["text"] is not None:
            state["text"] += data[start:end]
            if len(state["text"]) > MAX_TEXT:
                errors.append(f"part '{state['name']}' is too long")
                state["text"] = None

    def on_part_end() -> None:
        if state["fh"] is not None:
            state["fh"].close()
        elif state["text"] is not None:
            up.fields[state["name"]] = state["text"].decode(errors="replace").strip()
        state.update(headers={}, name=None, fh=None, text=None)

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body:
            total += len(chunk)
            if total > max_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
            _feed(parser, chunk)
            if errors:
                raise BadRequest("; ".join(errors))
        _feed(parser, None)
        if errors:
            raise BadRequest("; ".join(errors))
        for required in ("kernel", "rootfs"):
            if FILE_PARTS[required] not in up.files:
                raise BadRequest(f"missing file part '{required}'")
        if not up.fields.get("name"):
            raise BadRequest("missing text part 'name'")
    except BaseException:
        if state["fh"] is not None:
            state["fh"].close()
        up.cleanup()
        raise
    return up


def _feed(parser: MultipartParser, chunk: bytes | None) -> None:
    """Feed the parser (``None``: finish); malformed multipart is a 400, not a crash."""
    try:
        if chunk is None:
            parser.finalize()
        else:
            parser.write(chunk)
    except FormParserError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
