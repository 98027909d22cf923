"""The agent's image cache: an image's files on this host, fetched from the manager when the
manager's image directory (``ImageRef.source_dir``) cannot be read here (a remote host).

Resolution, by the setting ``image_fetch``:

* ``auto`` (default): ``source_dir`` when the files the VM needs exist there and are
  readable (the all-in-one embedded agent, or a shared filesystem); otherwise the cache.
* ``always``: always the cache.

Cache layout: ``<state_dir>/images/<image id>/<file>`` (on an all-in-one host that is the
manager's own image directory, so nothing is fetched). Each missing file is downloaded with
``GET {manager}/v1/hosts/{host_id}/images/{image_id}/files/{name}`` (Bearer host token, from
the agent's stored registration credentials) into a temporary ``.<name>.<random>.part`` in
the same directory, hashed while it streams (runs of zeros stay holes: the file stays as
sparse as the manager's), checked against the SHA-256 in the ``ImageRef`` (``vmlinux``,
which has none there, against the manager's ``X-Content-SHA256`` header), fsynced and
renamed into place. A fetched ``rootfs.ext4`` that carries a disk-container header (qcow2,
vmdk, LUKS...: :func:`nexus.images.checks.refuse_container`, the manager's upload check) is
refused the same way (:class:`ImageRejected`) before it can be used: the agent never hands
a container to a VMM as a raw image. A mismatch deletes the temporary file and fails naming
the file. A
dropped connection resumes with ``Range`` (a few attempts); a crashed agent leaves only
``.part`` files, which the next fetch of that image removes. One ``asyncio.Lock`` per image
id: concurrent VM creations of one image download it once.

Files in the cache are never modified once renamed into place (VM root disks are qcow2
overlays whose backing file is the cached ``rootfs.ext4``), so a present file is trusted;
nothing is evicted (see docs/images.md).

Example::

    cache = ImageCache(settings)
    image_dir = await cache.ensure(spec.image, "vmlinuz")   # fetches what is missing
    image_dir == cache.local_dir(spec.image, "vmlinuz")     # sync, never fetches
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import httpx

from nexus.agent.managerlink import manager_verify
from nexus.agent.registration import load_credentials
from nexus.core.settings import Settings
from nexus.hostapi.models import ImageRef
from nexus.images.checks import ImageCheckError, refuse_container

log = logging.getLogger(__name__)

SHA256_HEADER = "X-Content-SHA256"
PART_SUFFIX = ".part"
IMAGE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CHUNK_BYTES = 1024 * 1024
PROGRESS_EVERY_S = 5.0


class ImageFetchError(Exception):
    """The image's files cannot be made available on this host (fetch failed, checksum
    mismatch...). The message names the image and the file."""


class ImageMissing(ImageFetchError):
    """The image (or one of its files) is not here and cannot be had: no manager
    credentials to fetch it, an invalid image id, or the manager has no such file (404)."""


class ImageRejected(ImageFetchError):
    """A fetched file is not what an image file must be (a disk container, not raw ext4)."""


ROOTFS = "rootfs.ext4"


class ManagerCredentials(Protocol):
    """What the cache needs of the agent's registration (``nexus.agent.daemon.Credentials``)."""

    manager_url: str
    host_id: str
    host_token: str


CredentialsProvider = Callable[[], ManagerCredentials | None]


def stored_credentials(settings: Settings) -> ManagerCredentials | None:
    """The credentials ``nexus-agent`` stored at registration (re-read on every fetch:
    a re-registration changes the host token)."""
    return load_credentials(settings)


def required_files(ref: ImageRef, kernel: str) -> dict[str, str | None]:
    """The files a VM of this image needs on a host whose VMM boots ``kernel`` (``vmlinuz``
    or ``vmlinux``), each with its expected SHA-256 (None: not in the ``ImageRef``)."""
    files: dict[str, str | None] = {}
    if kernel:  # "" for a read-only data disk (VmSpec.image_disks): its rootfs.ext4 only
        files[kernel] = ref.kernel_sha256 if kernel == "vmlinuz" else None
    files["rootfs.ext4"] = ref.rootfs_sha256
    if ref.initrd_sha256:
        files["initrd.img"] = ref.initrd_sha256
    return files


def _readable(d: Path, names: Iterable[str]) -> bool:
    try:
        return all((d / n).is_file() and os.access(d / n, os.R_OK) for n in names)
    except OSError:
        return False


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


class ImageCache:
    """Resolves an ``ImageRef`` to a local directory, downloading into the cache if needed.

    ``credentials`` returns the manager URL, host id and host token (default: the agent's
    stored registration); ``transport`` lets tests pass an ``httpx.ASGITransport``."""

    def __init__(
        self,
        settings: Settings,
        *,
        credentials: CredentialsProvider | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 3,
    ) -> None:
        self.settings = settings
        self.root = Path(settings.state_dir) / "images"
        self._credentials = credentials or (lambda: stored_credentials(settings))
        self._transport = transport
        self._attempts = max(1, attempts)
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0
        """Files downloaded (completed and verified) by this cache object."""

    def cache_dir(self, image_id: str) -> Path:
        """``<state_dir>/images/<image id>`` (the id is checked: it becomes a path)."""
        if not IMAGE_ID_RE.match(image_id):
            raise ImageMissing(f"invalid image id {image_id[:80]!r}")
        return self.root / image_id

    def _use_source(self, ref: ImageRef, files: dict[str, str | None]) -> bool:
        return self.settings.image_fetch == "auto" and _readable(Path(ref.source_dir), files)

    def local_dir(self, ref: ImageRef, kernel: str) -> Path:
        """Where this image's files are on this host now (never fetches): ``source_dir``
        when ``auto`` finds it readable, else the cache directory (which may be incomplete
        if :meth:`ensure` has not run; callers then report the missing file)."""
        if self._use_source(ref, required_files(ref, kernel)):
            return Path(ref.source_dir)
        return self.cache_dir(ref.id)

    async def ensure(self, ref: ImageRef, kernel: str) -> Path:
        """The local directory with every file a VM of ``ref`` needs, fetching (and
        verifying) whatever the cache lacks. Raises :class:`ImageFetchError`."""
        files = required_files(ref, kernel)
        if self._use_source(ref, files):
            return Path(ref.source_dir)
        cache = self.cache_dir(ref.id)
        if _readable(cache, files):
            return cache
        lock = self._locks.setdefault(ref.id, asyncio.Lock())
        async with lock:
            missing = {n: sha for n, sha in files.items() if not (cache / n).is_file()}
            if not missing:  # another VM creation fetched it while we waited
                return cache
            creds = self._credentials()
            if creds is None:
                where = f"in {cache}"
                if self.settings.image_fetch == "auto":
                    where = f"neither in {ref.source_dir} nor {where}"
                raise ImageMissing(
                    f"image {ref.id}: {', '.join(missing)} not found on this host ({where}) "
                    "and the agent has no manager credentials to fetch it "
                    "(register with nexus-agent --join-token)"
                )
            try:
                cache.mkdir(parents=True, exist_ok=True)
                self._remove_partials(cache)
                for name, want in missing.items():
                    await self._fetch(ref.id, name, want, cache, creds)
            except OSError as exc:  # disk full, permissions...: the temp file is gone
                raise ImageFetchError(f"image {ref.id}: cannot cache it in {cache}: {exc}") from exc
        return cache

    @staticmethod
    def _remove_partials(cache: Path) -> None:
        """Temporary files of an interrupted earlier fetch (we hold the image's lock)."""
        for p in cache.glob(f".*{PART_SUFFIX}"):
            log.info("removing the partial download %s", p)
            p.unlink(missing_ok=True)

    async def _fetch(
        self, image_id: str, name: str, want: str | None, cache: Path, creds: ManagerCredentials
    ) -> None:
        """Download one file to a temporary name, verify, fsync, rename into place."""
        url = (
            f"{creds.manager_url.rstrip('/')}/v1/hosts/{creds.host_id}"
            f"/images/{image_id}/files/{name}"
        )
        tmp = cache / f".{name}.{secrets.token_hex(4)}{PART_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            sha, header_sha, size = await self._download(url, fd, image_id, name, creds)
            await asyncio.to_thread(os.fsync, fd)
            os.close(fd)
            fd = -1
            expected = want or header_sha
            if not expected:
                raise ImageFetchError(
                    f"image {image_id}: {name}: no SHA-256 to verify the download against"
                )
            if sha != expected.lower():
                raise ImageFetchError(
                    f"image {image_id}: {name}: sha256 mismatch after download (expected "
                    f"{expected[:16]}..., got {sha[:16]}...); the download was discarded"
                )
            if name == ROOTFS:
                try:
                    await asyncio.to_thread(refuse_container, tmp, name)
                except ImageCheckError as exc:
                    raise ImageRejected(
                        f"image {image_id}: {exc}; the download was discarded"
                    ) from exc
            os.replace(tmp, cache / name)
            _fsync_dir(cache)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.downloads += 1
        log.info("image %s: %s cached (%s, sha256 %s)", image_id, name, _mib(size), sha[:16])

    async def _download(
        self, url: str, fd: int, image_id: str, name: str, creds: ManagerCredentials
    ) -> tuple[str, str | None, int]:
        """Stream ``url`` into ``fd`` (resuming with ``Range`` after a dropped connection);
        returns (sha256 of what was written, the manager's sha256 header, size)."""
        headers = {"Authorization": f"Bearer {creds.host_token}"}
        timeout = httpx.Timeout(30.0, read=120.0)
        h = hashlib.sha256()
        have = 0
        header_sha: str | None = None
        etag: str | None = None
        started = time.monotonic()
        async with httpx.AsyncClient(
            transport=self._transport,
            timeout=timeout,
            headers=headers,
            verify=manager_verify(self.settings, url),  # as registration and heartbeats
        ) as http:
            for attempt in range(1, self._attempts + 1):
                req_headers: dict[str, str] = {}
                if have and etag:
                    req_headers = {"Range": f"bytes={have}-", "If-Range": etag}
                try:
                    async with http.stream("GET", url, headers=req_headers) as resp:
                        if resp.status_code == 200 and have:  # no resume: start over
                            os.ftruncate(fd, 0)
                            os.lseek(fd, 0, os.SEEK_SET)
                            h, have = hashlib.sha256(), 0
                        elif resp.status_code == 206 and not resp.headers.get(
                            "content-range", ""
                        ).startswith(f"bytes {have}-"):
                            raise ImageFetchError(
                                f"image {image_id}: fetching {name}: the manager answered the "
                                f"wrong range ({resp.headers.get('content-range')!r})"
                            )
                        elif resp.status_code not in (200, 206):
                            await resp.aread()
                            cls = ImageMissing if resp.status_code == 404 else ImageFetchError
                            raise cls(
                                f"image {image_id}: fetching {name} from the manager failed: "
                                f"HTTP {resp.status_code} {_detail(resp)}"
                            )
                        header_sha = resp.headers.get(SHA256_HEADER) or header_sha
                        etag = resp.headers.get("etag") or etag
                        total = have + int(resp.headers.get("content-length", "0") or 0)
                        if attempt == 1:
                            log.info("image %s: fetching %s (%s)", image_id, name, _mib(total))
                        last_log = time.monotonic()
                        async for chunk in resp.aiter_bytes(CHUNK_BYTES):
                            if chunk.count(0) == len(chunk):  # a hole: keep the file sparse
                                os.lseek(fd, len(chunk), os.SEEK_CUR)
                            else:
                                _write_all(fd, chunk)
                            h.update(chunk)
                            have += len(chunk)
                            if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                                last_log = time.monotonic()
                                pct = f" ({100 * have // total}%)" if total else ""
                                log.info(
                                    "image %s: %s %s of %s%s",
                                    image_id,
                                    name,
                                    _mib(have),
                                    _mib(total),
                                    pct,
                                )
                    os.ftruncate(fd, have)  # trailing holes
                    break
                except httpx.TransportError as exc:
                    if attempt == self._attempts:
                        raise ImageFetchError(
                            f"image {image_id}: fetching {name} from the manager failed after "
                            f"{attempt} attempts: {exc or type(exc).__name__}"
                        ) from exc
                    log.warning(
                        "image %s: fetching %s interrupted at %s (%s); resuming",
                        image_id,
                        name,
                        _mib(have),
                        exc or type(exc).__name__,
                    )
                    await asyncio.sleep(0.5 * attempt)
        secs = max(time.monotonic() - started, 1e-3)
        log.info(
            "image %s: %s downloaded in %.1f s (%s/s)", image_id, name, secs, _mib(int(have / secs))
        )
        return h.hexdigest(), header_sha, have


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", ""))[:300]
    except ValueError:
        return resp.text[:300]
