"""Container images: OCI / docker archives unpacked safely into a read-only ext4 file system.

A container image is a stack of tar layers plus a JSON config. Tenants hand us the archive
(an upload, or what ``skopeo copy`` fetched from a registry), so every byte of it is hostile:

* :func:`read_archive` reads an **OCI image layout** tar (``oci-layout``, ``index.json``,
  ``blobs/sha256/...``; what ``skopeo copy ... oci-archive:`` writes) or a **docker-archive**
  tar (``manifest.json`` + ``<layer>.tar``; what ``docker save`` writes) without extracting
  the outer tar anywhere: blobs are read from it member by member and their SHA-256 checked
  against the digests that name them.
* :func:`apply_layer` applies one layer to a directory the way the OCI image spec says:
  ``.wh.NAME`` whiteouts delete NAME from the layers below, ``.wh..wh..opq`` makes a
  directory opaque. Refused (:class:`LayerError`, the whole image fails): absolute names,
  any ``..`` component, an entry whose parent directory is a symlink (so a symlink laid by an
  earlier entry, ``etc -> /etc`` or ``x -> ../../..``, is never followed on the host), hard
  links whose target is outside the tree or a symlink, and more than ``max_bytes`` of file
  content or ``max_entries`` entries. Device nodes are never created on the host: they are
  skipped (the guest's ``/dev`` is a fresh tmpfs anyway). Symlinks themselves may point
  anywhere — ``/bin/sh -> /bin/busybox`` is normal — because the host never follows them;
  the guest resolves them inside the container's root.
* :func:`build_rootfs` turns the resulting tree into an ext4 file with ``mkfs.ext4 -d`` (no
  loop mounts), which the agent attaches read-only and the guest agent mounts as the lower
  layer of an overlay.
* :func:`pull` runs ``skopeo copy`` into an ``oci-archive`` (credentials through a private
  auth file, never the command line).

Example::

    img = read_archive(Path("busybox.tar"))
    tree = tmp / "tree"; tree.mkdir()
    for layer in img.layers:
        with img.open_blob(layer) as fh:
            apply_layer(fh, tree, budget)
    build_rootfs(tree, tmp / "rootfs.ext4")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_CONFIG_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_LAYERS = 128
DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_ENTRIES = 500_000
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Readable(Protocol):
    """What layers are read from: a binary stream's ``read``."""

    def read(self, n: int = -1, /) -> bytes: ...


class LayerError(Exception):
    """An archive or layer was refused; the message is fit for an API ``detail``."""


@dataclass
class Budget:
    """What is left of the size and entry caps across all layers of one image."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES
    used_bytes: int = 0
    used_entries: int = 0
    skipped_devices: int = 0

    def take(self, size: int) -> None:
        """Count one entry of ``size`` content bytes; refuse past the caps."""
        self.used_entries += 1
        self.used_bytes += max(0, size)
        if self.used_entries > self.max_entries:
            raise LayerError(f"the image has more than {self.max_entries} files")
        if self.used_bytes > self.max_bytes:
            raise LayerError(f"the image unpacks to more than {self.max_bytes} bytes")


@dataclass
class ImageConfig:
    """The parts of an image config a container runs with."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "env": self.env,
            "workdir": self.workdir,
            "user": self.user,
            "exposed_ports": self.exposed_ports,
        }


@dataclass
class ArchiveImage:
    """An image read from an archive: its digest, config and layer member names."""

    path: Path
    digest: str
    config: ImageConfig
    layers: list[tuple[str, str | None]]
    """(member name in the outer tar, expected ``sha256:...`` digest or None)."""

    @contextlib.contextmanager
    def open_layer(self, index: int) -> Iterator[Readable]:
        """One layer's (possibly compressed) bytes, digest-checked once read to the end."""
        name, digest = self.layers[index]
        with tarfile.open(self.path, "r:") as outer:
            data = _member_file(outer, name)
            if digest is None:
                yield data
                return
            checked = _HashingReader(data)
            yield checked
            checked.read_rest()
            if "sha256:" + checked.hexdigest() != digest:
                raise LayerError(f"layer {index} does not match its digest {digest}")


class _HashingReader:
    """A read-only file object that hashes what passes through it."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._h.update(data)
        return data

    def read_rest(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _member_file(outer: tarfile.TarFile, name: str) -> IO[bytes]:
    try:
        member = outer.getmember(name)
    except KeyError:
        raise LayerError(f"the archive has no member {name!r}") from None
    if not member.isreg():
        raise LayerError(f"archive member {name!r} is not a regular file")
    fh = outer.extractfile(member)
    if fh is None:
        raise LayerError(f"archive member {name!r} cannot be read")
    return fh


def _read_json(outer: tarfile.TarFile, name: str, limit: int, digest: str | None = None) -> Any:
    fh = _member_file(outer, name)
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise LayerError(f"{name} is larger than {limit} bytes")
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise LayerError(f"{name} does not match its digest {digest}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise LayerError(f"{name} is not JSON: {exc}") from None


def _blob_name(digest: Any) -> str:
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise LayerError(f"unsupported digest {str(digest)[:80]!r} (sha256 only)")
    hexd = digest.removeprefix("sha256:")
    if len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise LayerError(f"malformed digest {digest[:80]!r}")
    return f"blobs/sha256/{hexd}"


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LayerError(f"config {what} must be a list of strings")
    if len(value) > 4096 or sum(len(v) for v in value) > 256 * 1024:
        raise LayerError(f"config {what} is too large")
    return list(value)


def parse_config(doc: Any) -> ImageConfig:
    """The runnable parts of an OCI/docker image config document, type-checked."""
    if not isinstance(doc, dict):
        raise LayerError("the image config is not a JSON object")
    cfg = doc.get("config") or doc.get("container_config") or {}
    if not isinstance(cfg, dict):
        raise LayerError("the image config's 'config' is not an object")
    workdir = cfg.get("WorkingDir") or ""
    user = cfg.get("User") or ""
    if not isinstance(workdir, str) or not isinstance(user, str):
        raise LayerError("config WorkingDir and User must be strings")
    ports = cfg.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise LayerError("config ExposedPorts must be an object")
    return ImageConfig(
        entrypoint=_str_list(cfg.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(cfg.get("Cmd"), "Cmd"),
        env=_str_list(cfg.get("Env"), "Env"),
        workdir=workdir[:4096],
        user=user[:256],
        exposed_ports=sorted(str(p)[:32] for p in list(ports)[:256]),
    )


def read_archive(path: Path) -> ArchiveImage:
    """Read an OCI-layout or docker-archive tar: its manifest digest, config and layers."""
    try:
        with tarfile.open(path, "r:") as outer:
            names = set(outer.getnames())
            if "index.json" in names or "./index.json" in names:
                return _read_oci(path, outer, "./" if "./index.json" in names else "")
            if "manifest.json" in names:
                return _read_docker(path, outer)
    except tarfile.TarError as exc:
        raise LayerError(f"not a tar archive: {exc}") from None
    raise LayerError("neither an OCI image layout (index.json) nor a docker archive")


def _read_oci(path: Path, outer: tarfile.TarFile, prefix: str) -> ArchiveImage:
    index = _read_json(outer, prefix + "index.json", MAX_MANIFEST_BYTES)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests or not isinstance(manifests[0], dict):
        raise LayerError("index.json lists no manifest")
    desc = manifests[0]
    digest = desc.get("digest")
    manifest = _read_json(outer, prefix + _blob_name(digest), MAX_MANIFEST_BYTES, digest)
    if isinstance(manifest, dict) and isinstance(manifest.get("manifests"), list):
        raise LayerError("multi-platform indexes are not supported: pull one platform")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise LayerError("the manifest has no config")
    cdigest = manifest["config"].get("digest")
    config = _read_json(outer, prefix + _blob_name(cdigest), MAX_CONFIG_BYTES, cdigest)
    layers = manifest.get("layers") or []
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise LayerError(f"the manifest must list at most {MAX_LAYERS} layers")
    out: list[tuple[str, str | None]] = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise LayerError("malformed layer descriptor")
        out.append((prefix + _blob_name(layer.get("digest")), str(layer.get("digest"))))
    return ArchiveImage(path, str(digest), parse_config(config), out)


def _safe_member(name: Any) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise LayerError(f"unsafe archive member name {str(name)[:80]!r}")
    return name


def _read_docker(path: Path, outer: tarfile.TarFile) -> ArchiveImage:
    manifest = _read_json(outer, "manifest.json", MAX_MANIFEST_BYTES)
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise LayerError("manifest.json lists no image")
    entry = manifest[0]
    config_name = _safe_member(entry.get("Config"))
    config = _read_json(outer, config_name, MAX_CONFIG_BYTES)
    layers = entry.get("Layers") or []
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise LayerError(f"the manifest must list at most {MAX_LAYERS} layers")
    out: list[tuple[str, str | None]] = [(_safe_member(n), None) for n in layers]
    # A docker archive has no manifest digest: hash the config and the layer names, which
    # name the layers' content (docker save names them by their digests).
    cfg_bytes = _member_file(outer, config_name).read(MAX_CONFIG_BYTES + 1)
    h = hashlib.sha256(cfg_bytes)
    for name, _ in out:
        h.update(b"\0" + name.encode())
    return ArchiveImage(path, "sha256:" + h.hexdigest(), parse_config(config), out)


# --- layers ------------------------------------------------------------------------------


def _clean_name(name: str) -> list[str]:
    """The components of a layer entry's name; refuses absolute names and ``..``."""
    if "\0" in name:
        raise LayerError("a layer entry name contains a NUL byte")
    if name.startswith("/"):
        raise LayerError(f"absolute path in layer: {name[:200]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise LayerError(f"'..' in layer path: {name[:200]!r}")
    return parts


def _parent_dir(root: Path, parts: list[str]) -> Path:
    """The host directory an entry goes into; every component must be a real directory
    (created if missing), never a symlink."""
    cur = root
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            os.chmod(cur, 0o755)  # an implicit parent is 0755 whatever the process's umask
            continue
        if stat.S_ISLNK(st.st_mode):
            raise LayerError(f"layer writes through a symlink: {'/'.join(parts)[:200]!r}")
        if not stat.S_ISDIR(st.st_mode):
            raise LayerError(f"layer path has a non-directory parent: {'/'.join(parts)[:200]!r}")
    return cur


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _open_stream(fh: Readable) -> tarfile.TarFile:
    """A streaming tar reader over a plain or gzip layer; zstd and others are refused."""
    head = fh.read(4)
    stream = _Prefixed(head, fh)
    if head.startswith(ZSTD_MAGIC):
        raise LayerError("zstd-compressed layers are not supported")
    mode = "r|gz" if head.startswith(GZIP_MAGIC) else "r|"
    try:
        return tarfile.open(fileobj=stream, mode=mode)  # type: ignore[call-overload,no-any-return]
    except tarfile.TarError as exc:
        raise LayerError(f"a layer is not a tar archive: {exc}") from None


class _Prefixed:
    """Bytes already read, then the rest of a stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._rest.read(n - len(data))
            return data
        return self._rest.read(n)


def apply_layer(fh: Readable, root: Path, budget: Budget) -> None:
    """Apply one layer (tar or tar+gzip) to ``root`` (see the module docstring)."""
    created: set[str] = set()
    try:
        with _open_stream(fh) as tar:
            for member in tar:
                _apply_member(tar, member, root, budget, created)
    except tarfile.TarError as exc:
        raise LayerError(f"a layer is corrupt: {exc}") from None
    except OSError as exc:
        raise LayerError(f"a layer could not be applied: {exc.strerror or exc}") from None


def _apply_member(
    tar: tarfile.TarFile, m: tarfile.TarInfo, root: Path, budget: Budget, created: set[str]
) -> None:
    parts = _clean_name(m.name)
    if not parts:
        return  # "./" itself
    budget.take(m.size if m.isreg() else 0)
    parent = _parent_dir(root, parts)
    base = parts[-1]
    rel = "/".join(parts)
    if base == OPAQUE:
        prefix = "/".join(parts[:-1])
        for child in os.listdir(parent):
            crel = f"{prefix}/{child}" if prefix else child
            if crel not in created:
                _remove(parent / child)
        return
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise LayerError(f"malformed whiteout {rel[:200]!r}")
        _remove(parent / target)
        return
    dest = parent / base
    created.add(rel)
    if m.isdir():
        try:
            st = os.lstat(dest)
            if not stat.S_ISDIR(st.st_mode):
                _remove(dest)
                os.mkdir(dest, 0o700)
        except FileNotFoundError:
            os.mkdir(dest, 0o700)
    elif m.isreg():
        _remove(dest)
        src = tar.extractfile(m)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, 1 << 20)
    elif m.issym():
        _remove(dest)
        os.symlink(m.linkname, dest)
    elif m.islnk():
        tparts = _clean_name(m.linkname)
        if not tparts:
            raise LayerError(f"hard link to the root: {rel[:200]!r}")
        tparent = _parent_dir(root, tparts)
        link_to = tparent / tparts[-1]
        tst = os.lstat(link_to)  # FileNotFoundError -> OSError -> LayerError
        if not stat.S_ISREG(tst.st_mode):
            raise LayerError(f"hard link to a non-regular file: {rel[:200]!r}")
        _remove(dest)
        os.link(link_to, dest, follow_symlinks=False)
        return  # a hard link shares the target's owner, mode and times
    elif m.isfifo():
        _remove(dest)
        os.mkfifo(dest, 0o600)
    elif m.ischr() or m.isblk():
        budget.skipped_devices += 1
        return
    else:
        return  # other types (contiguous files, GNU extensions) carry nothing to lay out
    os.lchown(dest, max(0, m.uid), max(0, m.gid))
    if not m.issym():
        os.chmod(dest, m.mode & 0o7777)
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)


def tree_size(root: Path) -> int:
    """Bytes of file content under ``root`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def build_rootfs(tree: Path, dest: Path, label: str = "nexus-ctr") -> int:
    """``mkfs.ext4 -d`` the tree into ``dest`` (sized to fit); returns the size in MiB."""
    size_mib = max(32, int(tree_size(tree) * 1.3 / (1 << 20)) + 32)
    if dest.exists():
        dest.unlink()
    res = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label[:16], "-E", "root_owner=0:0", "-d", str(tree),
         str(dest), f"{size_mib}M"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise LayerError(f"mkfs.ext4 failed: {res.stderr.strip()[-500:]}")
    return size_mib


def unpack(archive: Path, workdir: Path, budget: Budget | None = None) -> tuple[ArchiveImage, Path]:
    """Read ``archive`` and build ``workdir/rootfs.ext4`` from its layers."""
    img = read_archive(archive)
    budget = budget or Budget()
    tree = workdir / "tree"
    tree.mkdir(mode=0o700)
    for i in range(len(img.layers)):
        with img.open_layer(i) as fh:
            apply_layer(fh, tree, budget)
    tree.chmod(0o755)  # the image's "/" ("./" entries are skipped), whatever the umask
    rootfs = workdir / "rootfs.ext4"
    build_rootfs(tree, rootfs)
    shutil.rmtree(tree)
    return img, rootfs


# --- registries --------------------------------------------------------------------------


def pull(
    reference: str,
    dest: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_verify: bool = True,
    timeout: float = 900,
) -> None:
    """``skopeo copy docker://REFERENCE oci-archive:DEST`` (credentials in a 0600 auth file
    of its own, removed afterwards; never on a command line)."""
    if not reference or reference.startswith("-") or any(c.isspace() for c in reference):
        raise LayerError("a registry reference like 'registry.example:5000/app:1.0' is required")
    ref = reference.removeprefix("docker://")
    argv = ["skopeo", "copy", "--quiet", f"--src-tls-verify={'true' if tls_verify else 'false'}"]
    with tempfile.TemporaryDirectory() as tmp:
        if username is not None:
            registry = ref.split("/", 1)[0]
            auth = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            authfile = Path(tmp) / "auth.json"
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": {registry: {"auth": auth}}}, fh)
            argv.append(f"--src-authfile={authfile}")
        argv += ["docker://" + ref, f"oci-archive:{dest}"]
        try:
            res = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except FileNotFoundError:
            raise LayerError("skopeo is not installed on the manager") from None
        except subprocess.TimeoutExpired:
            raise LayerError(f"pulling {ref} took longer than {timeout:.0f} s") from None
    if res.returncode != 0:
        err = res.stderr.strip()
        if password:
            err = err.replace(password, "***")  # (skopeo does not echo it; never trust that)
        low = err.lower()
        if "unauthorized" in low or "authentication required" in low or " 401 " in low:
            who = "the credentials given" if username is not None else "an anonymous pull"
            raise LayerError(
                f"the registry {ref.split('/', 1)[0]} refused {who} for {ref} (unauthorized): "
                "check the username and password"
            )
        raise LayerError(f"skopeo could not pull {ref}: {err[-500:]}")
