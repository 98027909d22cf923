"""Build Nexus guest images from Debian packages only.

An image is a directory::

    <image dir>/
      vmlinuz        bzImage of Debian's cloud kernel (QEMU)
      vmlinux        uncompressed ELF kernel (Firecracker); absent if extraction failed
      initrd.img     busybox + virtio/vsock/ACPI-button modules, /init -> switch_root
      rootfs.ext4    ext4 root filesystem made with ``mkfs.ext4 -d`` (no loop mounts)
      manifest.json  {name, kernel_sha256, initrd_sha256, rootfs_sha256, vmlinux_sha256,
                      sizes, kernel_version, built_at, inputs_sha256}

Two images exist:

* ``default``: ``debootstrap --variant=minbase --include=<DEFAULT_INCLUDE> bookworm`` (python3
  with its full standard library, iproute2, ping, curl, CA certificates, procps) +
  busybox + the Nexus guest agent (``/opt/nexus/lib/nexus/guest``) + a fast ``/sbin/init``.
* ``test``: busybox only, same init, built in seconds; for fast tests.

Everything is cached under ``<cache_dir>/images/<name>-<inputs hash>``: a second build with
the same inputs is instant. The kernel (``apt-get download`` of the package
``linux-image-cloud-amd64`` depends on) and the debootstrap tree are cached separately.

Entry point: :func:`build_image`.

Guest side conventions (kernel command line):
``nexus.root=/dev/vda`` (mount and switch_root; absent = initramfs-only mode),
``nexus.hostname=NAME``, ``nexus.counter=1`` (print ``NEXUS-COUNT n`` every 0.5 s; tests use
it to prove a paused guest is frozen). The init prints ``NEXUS-GUEST-BOOTED`` on the console
once userspace runs, and powers off on SIGTERM, on the ACPI power button (QEMU
``system_powerdown``) and on Ctrl-Alt-Del (Firecracker ``SendCtrlAltDel``).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nexus.core.files import sha256_file

ProgressCallback = Callable[[float, str], None]
ImageName = Literal["default", "test"]

BUILDER_VERSION = "3"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
SUITE = "bookworm"
# Debian packages only: the full Python standard library (python3: http, email, sqlite3,
# venv ...), the everyday network tools and TLS roots. Sizes: docs/images.md.
DEFAULT_INCLUDE = (
    "python3",
    "iproute2",
    "iputils-ping",
    "curl",
    "ca-certificates",
    "procps",
)
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "button",
    "evdev",
    "overlay",  # containers: the image's read-only file system under a writable layer
)
BUSYBOX = "/bin/busybox"
GUEST_SRC = Path(__file__).resolve().parents[1] / "guest"
ROOTFS_SIZE_MIB: dict[str, int] = {"default": 512, "test": 64}


class ImageBuildError(Exception):
    """Building an image failed; the message names the failing step."""


@dataclass(frozen=True)
class KernelArtifacts:
    """A downloaded and unpacked Debian cloud kernel."""

    package: str
    version: str  # package version, e.g. 6.1.192-2
    release: str  # uname -r, e.g. 6.1.0-56-cloud-amd64
    dir: Path

    @property
    def vmlinuz(self) -> Path:
        """The bzImage."""
        return self.dir / "vmlinuz"

    @property
    def vmlinux(self) -> Path | None:
        """The uncompressed ELF kernel, if extraction succeeded."""
        p = self.dir / "vmlinux"
        return p if p.exists() else None

    @property
    def modules_dir(self) -> Path:
        """Flat directory holding the selected ``.ko`` files."""
        return self.dir / "modules"


@dataclass(frozen=True)
class BuiltImage:
    """A built image directory and its manifest."""

    name: str
    dir: Path
    manifest: dict[str, object]

    @property
    def kernel(self) -> Path:
        """bzImage (QEMU)."""
        return self.dir / "vmlinuz"

    @property
    def vmlinux(self) -> Path | None:
        """ELF kernel (Firecracker), if present."""
        p = self.dir / "vmlinux"
        return p if p.exists() else None

    @property
    def initrd(self) -> Path:
        """The initramfs."""
        return self.dir / "initrd.img"

    @property
    def rootfs(self) -> Path:
        """The ext4 root filesystem image."""
        return self.dir / "rootfs.ext4"


# --- guest scripts -----------------------------------------------------------------------

INITRAMFS_INIT = r"""#!/bin/busybox sh
# Nexus initramfs: load virtio modules, mount the root disk, switch_root.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
for m in $(/bin/busybox cat /lib/modules/order); do
  /bin/busybox insmod /lib/modules/$m.ko 2>/dev/null
done
root=""
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in nexus.root=*) root="${arg#nexus.root=}" ;; esac
done
if [ -n "$root" ]; then
  i=0
  while [ ! -b "$root" ] && [ $i -lt 500 ]; do /bin/busybox usleep 10000; i=$((i+1)); done
  if /bin/busybox mount -t ext4 -o rw "$root" /newroot; then
    /bin/busybox umount /proc /sys
    /bin/busybox mount --move /dev /newroot/dev 2>/dev/null
    exec /bin/busybox switch_root /newroot /sbin/init
  fi
  echo "NEXUS-INIT-ERROR cannot mount root $root"
  /bin/busybox poweroff -f
fi
# initramfs-only mode
/bin/busybox umount /proc /sys
exec /sbin/init
"""

ROOTFS_INIT = r"""#!/usr/local/bin/busybox sh
# Nexus guest init (PID 1): mount, banner, guest agent, power-off on request.
BB=/usr/local/bin/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
$BB mount -t proc proc /proc
$BB mount -t sysfs sys /sys
$BB mount -t devtmpfs dev /dev 2>/dev/null
$BB mkdir -p /dev/pts /dev/shm /run /tmp
$BB mount -t devpts devpts /dev/pts
$BB mount -t tmpfs tmpfs /run
$BB mount -t tmpfs tmpfs /dev/shm
$BB mount -o remount,rw / 2>/dev/null
[ -w /tmp ] || $BB mount -t tmpfs tmpfs /tmp
host=nexus
counter=""
mid=""
for arg in $($BB cat /proc/cmdline); do
  case "$arg" in
    nexus.hostname=*) host="${arg#nexus.hostname=}" ;;
    nexus.machine_id=*) mid="${arg#nexus.machine_id=}" ;;
    nexus.counter=1) counter=1 ;;
  esac
done
$BB hostname "$host"
echo "$host" > /etc/hostname 2>/dev/null
# every VM its own machine id (clones boot a copy of their source's disk)
if [ -n "$mid" ]; then
  echo "$mid" > /etc/machine-id 2>/dev/null
  [ -d /var/lib/dbus ] && echo "$mid" > /var/lib/dbus/machine-id 2>/dev/null
fi
$BB ip link set lo up 2>/dev/null
# Static addresses: one ip=<addr>::<gw>:<netmask>:<host>:<dev>:off[:dns0[:dns1]] per NIC
# (docs/networking.md). The guest kernel has no CONFIG_IP_PNP, so init applies them.
gwset=""
for arg in $($BB cat /proc/cmdline); do
  case "$arg" in
    ip=*:*)
      oldifs="$IFS"; IFS=:; set -- ${arg#ip=}; IFS="$oldifs"
      dev=${6:-eth0}; i=0
      while [ ! -e "/sys/class/net/$dev" ] && [ $i -lt 300 ]; do $BB usleep 10000; i=$((i+1)); done
      if $BB ifconfig "$dev" "$1" netmask "$4" up; then
        echo "NEXUS-NET $dev $1"
        if [ -n "$3" ] && [ -z "$gwset" ]; then $BB route add default gw "$3" && gwset=1; fi
        [ -n "$8" ] && echo "nameserver $8" >> /etc/resolv.conf
        [ -n "$9" ] && echo "nameserver $9" >> /etc/resolv.conf
      fi ;;
  esac
done
[ -x /etc/nexus/rc.local ] && /etc/nexus/rc.local </dev/null
AGENT=""
halt_now() {
  trap '' TERM INT USR1 USR2
  echo "NEXUS-GUEST-POWEROFF"
  [ -n "$AGENT" ] && $BB kill -TERM "$AGENT" 2>/dev/null && $BB usleep 200000
  $BB sync
  $BB poweroff -f
}
trap halt_now TERM INT USR1 USR2
# Ctrl-Alt-Del (Firecracker SendCtrlAltDel) -> SIGINT to PID 1
echo 0 > /proc/sys/kernel/ctrl-alt-del 2>/dev/null
# ACPI power button (QEMU system_powerdown): wait for an input event, signal PID 1
for ev in /sys/class/input/event*; do
  [ -e "$ev/device/name" ] || continue
  case "$($BB cat $ev/device/name)" in
    *"Power Button"*)
      ( $BB head -c 1 /dev/input/${ev##*/} >/dev/null 2>&1 && $BB kill -USR2 1 ) & ;;
  esac
done
echo "NEXUS-GUEST-BOOTED $($BB cut -d' ' -f1 /proc/uptime) $($BB uname -r)"
if [ -n "$counter" ]; then
  ( n=0; while :; do n=$((n+1)); echo "NEXUS-COUNT $n"; $BB sleep 0.5; done ) &
fi
if [ -x /usr/bin/python3 ] && [ -f /opt/nexus/lib/nexus/guest/agent.py ]; then
  PYTHONPATH=/opt/nexus/lib /usr/bin/python3 -m nexus.guest.agent </dev/null &
  AGENT=$!
else
  echo "NEXUS-GUEST-READY no-agent"
fi
while :; do
  $BB sleep 3600 &
  wait $!
done
"""


# Test image only: a busybox httpd on port 80 whose CGI scripts let tests act inside the
# guest without an exec API (ping a peer, write/read a file on the first extra disk).
TEST_IMAGE_FILES: dict[str, str] = {
    "etc/nexus/rc.local": """#!/bin/sh
mkdir -p /www/cgi-bin /mnt/vol
hostname > /www/index.html
busybox httpd -p 80 -h /www
""",
    "www/cgi-bin/ping": """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
case "$QUERY_STRING" in ""|*[!0-9.]*) echo bad; exit 0 ;; esac
if ping -c 3 -w 5 "$QUERY_STRING" >/dev/null 2>&1; then echo ok; else echo fail; fi
""",
    "www/cgi-bin/vol": """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
dev=/dev/vdb
case "$QUERY_STRING" in
  write=*)
    text="${QUERY_STRING#write=}"
    case "$text" in ""|*[!a-zA-Z0-9-]*) echo bad; exit 0 ;; esac
    mount -t ext4 "$dev" /mnt/vol 2>&1 || exit 0
    if echo "$text" > /mnt/vol/hello.txt 2>/dev/null; then sync; echo written; else echo failed; fi
    umount /mnt/vol ;;
  read)
    mount -t ext4 -o ro "$dev" /mnt/vol 2>&1 || exit 0
    cat /mnt/vol/hello.txt 2>&1
    umount /mnt/vol ;;
  *) echo bad ;;
esac
""",
}


# --- small helpers -----------------------------------------------------------------------


def _run(argv: list[str], step: str, cwd: Path | None = None, timeout: float = 900) -> str:
    try:
        res = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{step}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{step}: timed out after {timeout:.0f} s") from exc
    if res.returncode != 0:
        raise ImageBuildError(f"{step} failed ({' '.join(argv[:3])}...): {res.stderr[-1500:]}")
    return res.stdout


def _progress(cb: ProgressCallback | None, pct: float, msg: str) -> None:
    if cb is not None:
        cb(max(0.0, min(100.0, pct)), msg)


def debian_mirror() -> str:
    """The Debian mirror configured for apt on this host (deb822 or one-line format)."""
    p = Path("/etc/apt/sources.list.d/debian.sources")
    if p.exists():
        for line in p.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri.rstrip("/")
    p = Path("/etc/apt/sources.list")
    if p.exists():
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                url = parts[1] if not parts[1].startswith("[") else parts[2]
                return url.rstrip("/")
    return "http://deb.debian.org/debian"


# --- cpio (newc), deterministic ----------------------------------------------------------


def write_cpio_newc(root: Path, out: io.BufferedIOBase) -> None:
    """Write the tree at ``root`` as a newc cpio archive with zeroed mtimes (reproducible)."""
    ino = 1

    def entry(name: str, mode: int, data: bytes, nlink: int = 1) -> None:
        nonlocal ino
        namebytes = name.encode() + b"\0"
        hdr = (
            f"070701{ino:08x}{mode:08x}{0:08x}{0:08x}{nlink:08x}{0:08x}"
            f"{len(data):08x}{0:08x}{0:08x}{0:08x}{0:08x}{len(namebytes):08x}{0:08x}"
        ).encode()
        ino += 1
        out.write(hdr + namebytes)
        out.write(b"\0" * ((4 - (len(hdr) + len(namebytes)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    paths = sorted(root.rglob("*"), key=lambda p: str(p.relative_to(root)))
    for p in paths:
        rel = str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            entry(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode())
        elif stat.S_ISDIR(st.st_mode):
            entry(rel, stat.S_IFDIR | (st.st_mode & 0o7777), b"", 2)
        elif stat.S_ISREG(st.st_mode):
            entry(rel, stat.S_IFREG | (st.st_mode & 0o7777), p.read_bytes())
    entry("TRAILER!!!", 0, b"")


# --- kernel ------------------------------------------------------------------------------


def resolve_kernel_package() -> tuple[str, str]:
    """(versioned package name, package version) that linux-image-cloud-amd64 depends on."""
    out = ""
    for attempt in range(2):
        with contextlib.suppress(ImageBuildError):
            out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], "apt-cache depends")
        if "Depends: linux-image-" in out:
            break
        if attempt == 0:
            _run(["apt-get", "update", "-qq"], "apt-get update", timeout=300)
    m = re.search(r"Depends: (linux-image-\S+)", out)
    if not m:
        raise ImageBuildError(f"cannot resolve the package {KERNEL_META_PACKAGE} depends on")
    pkg = m.group(1)
    show = _run(["apt-cache", "show", "--no-all-versions", pkg], "apt-cache show")
    vm = re.search(r"^Version: (\S+)", show, re.M)
    return pkg, vm.group(1) if vm else "unknown"


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Extract the ELF kernel from a bzImage (like linux/scripts/extract-vmlinux).

    Tries gzip, xz, zstd and lz4 payloads (zstd/lz4 need the ``zstd``/``lz4`` CLIs).
    Returns True when ``dest`` holds an ELF file.
    """
    data = bzimage.read_bytes()
    candidates: list[tuple[bytes, Callable[[bytes], bytes]]] = [
        (b"\x1f\x8b\x08", lambda b: gzip.GzipFile(fileobj=io.BytesIO(b)).read()),
        (b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
        (b"\x28\xb5\x2f\xfd", lambda b: _cli_decompress(["zstd", "-dcq"], b)),
        (b"\x02\x21\x4c\x18", lambda b: _cli_decompress(["lz4", "-dcq"], b)),
    ]
    for magic, fn in candidates:
        pos = data.find(magic)
        while pos != -1:
            with contextlib.suppress(Exception):
                out = fn(data[pos:])
                if out[:4] == b"\x7fELF":
                    dest.write_bytes(out)
                    return True
            pos = data.find(magic, pos + 1)
            if pos > 2_000_000:  # the payload starts early; do not scan the whole image
                break
    return False


def _cli_decompress(argv: list[str], payload: bytes) -> bytes:
    # Trailing garbage after the stream makes these tools exit non-zero; the output is
    # still complete, so the ELF check decides.
    res = subprocess.run(argv, input=payload, capture_output=True, timeout=120, check=False)
    return res.stdout


def _resolve_kernel_cached(cache_dir: Path) -> tuple[str, str]:
    """:func:`resolve_kernel_package`, memoised until apt's package lists change."""
    lists = Path("/var/lib/apt/lists")
    stamp = lists.stat().st_mtime if lists.exists() else 0.0
    memo = cache_dir / "kernels" / "resolved.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(memo.read_text())
        if data["stamp"] == stamp:
            return str(data["package"]), str(data["version"])
    pkg, version = resolve_kernel_package()
    memo.parent.mkdir(parents=True, exist_ok=True)
    stamp = lists.stat().st_mtime if lists.exists() else 0.0
    memo.write_text(json.dumps({"stamp": stamp, "package": pkg, "version": version}))
    return pkg, version


def fetch_kernel(cache_dir: Path, progress: ProgressCallback | None = None) -> KernelArtifacts:
    """Download + unpack Debian's cloud kernel into the cache (once per package version)."""
    _progress(progress, 2, "resolving kernel package")
    pkg, version = _resolve_kernel_cached(cache_dir)
    release = pkg.removeprefix("linux-image-")
    kdir = cache_dir / "kernels" / f"{pkg}_{version}"
    if (kdir / "done").exists():
        missing = [m for m in MODULES if not (kdir / "modules" / f"{m}.ko").exists()]
        if missing:  # a cache made before MODULES grew: add the new modules in place
            _add_modules(kdir, pkg, missing)
        return KernelArtifacts(pkg, version, release, kdir)
    _progress(progress, 5, f"downloading {pkg} {version}")
    kdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kdir.parent) as tmp:
        t = Path(tmp)
        os.chmod(t, 0o755)
        _run(["apt-get", "download", "-q", pkg], "apt-get download", cwd=t, timeout=600)
        debs = list(t.glob("*.deb"))
        if not debs:
            raise ImageBuildError("apt-get download produced no .deb")
        _progress(progress, 15, "unpacking kernel package")
        _run(["dpkg", "-x", str(debs[0]), str(t / "x")], "dpkg -x")
        work = t / "out"
        (work / "modules").mkdir(parents=True)
        shutil.copy2(t / "x" / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(t / "x" / "boot" / f"config-{release}", work / "config")
        found = {p.name.split(".ko")[0]: p for p in (t / "x" / "lib" / "modules").rglob("*.ko")}
        for mod in MODULES:
            if mod not in found:
                raise ImageBuildError(f"kernel module {mod} missing from {pkg}")
            shutil.copy2(found[mod], work / "modules" / f"{mod}.ko")
        _progress(progress, 20, "extracting vmlinux for Firecracker")
        extract_vmlinux(work / "vmlinuz", work / "vmlinux")
        (work / "done").write_text(json.dumps({"package": pkg, "version": version}))
        if kdir.exists():
            shutil.rmtree(kdir)
        os.replace(work, kdir)
    return KernelArtifacts(pkg, version, release, kdir)


def _add_modules(kdir: Path, pkg: str, missing: list[str]) -> None:
    """Copy ``missing`` modules from the kernel package into a cached kernel directory."""
    with tempfile.TemporaryDirectory(dir=kdir.parent) as tmp:
        t = Path(tmp)
        _run(["apt-get", "download", "-q", pkg], "apt-get download", cwd=t, timeout=600)
        debs = list(t.glob("*.deb"))
        if not debs:
            raise ImageBuildError("apt-get download produced no .deb")
        _run(["dpkg", "-x", str(debs[0]), str(t / "x")], "dpkg -x")
        found = {p.name.split(".ko")[0]: p for p in (t / "x" / "lib" / "modules").rglob("*.ko")}
        for mod in missing:
            if mod not in found:
                raise ImageBuildError(f"kernel module {mod} missing from {pkg}")
            part = kdir / "modules" / f".{mod}.ko.part"
            shutil.copy2(found[mod], part)
            os.replace(part, kdir / "modules" / f"{mod}.ko")


# --- initramfs ---------------------------------------------------------------------------


def build_initramfs(kernel: KernelArtifacts, dest: Path) -> None:
    """busybox-static + the virtio/vsock/button modules + /init, as gzip'd newc cpio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in (
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "newroot",
            "etc",
            "root",
            "lib/modules",
            "usr/local/bin",
            "run",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        os.symlink("/bin/busybox", root / "usr" / "local" / "bin" / "busybox")
        for mod in MODULES:
            shutil.copy2(kernel.modules_dir / f"{mod}.ko", root / "lib" / "modules" / f"{mod}.ko")
        (root / "lib" / "modules" / "order").write_text("\n".join(MODULES) + "\n")
        _write_exec(root / "init", INITRAMFS_INIT)
        _write_exec(root / "sbin" / "init", ROOTFS_INIT)
        buf = io.BytesIO()
        write_cpio_newc(root, buf)
    with (
        open(dest, "wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        gz.write(buf.getvalue())


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# --- rootfs ------------------------------------------------------------------------------


def _guest_files() -> dict[str, bytes]:
    """Guest agent sources to copy into /opt/nexus/lib/nexus/guest/: every module of the
    package (the agent is split into several) and its shell scripts (the container runtime's
    fast start), so the cache key covers each of them."""
    files = {p.name: p.read_bytes() for p in sorted(GUEST_SRC.glob("*.py"))}
    files.update({p.name: p.read_bytes() for p in sorted(GUEST_SRC.glob("*.sh"))})
    if "agent.py" not in files:  # never build a "default" image without its guest agent
        raise ImageBuildError(f"the guest agent's sources are missing from {GUEST_SRC}")
    return files


#: Commands a user types in the guest to shut it down, as busybox applets in /usr/local/sbin
#: (Debian's minbase has none): they signal PID 1, whose handler stops the agent, syncs and
#: powers off, so the host sees the VM stop.
POWER_COMMANDS = ("poweroff", "halt")


def _install_common(root: Path, guest_files: dict[str, bytes]) -> None:
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "etc", "sbin", "usr/local/bin",
              "usr/local/sbin"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    bb = root / "usr" / "local" / "bin" / "busybox"
    shutil.copy2(BUSYBOX, bb)
    bb.chmod(0o755)
    for cmd in POWER_COMMANDS:
        link = root / "usr" / "local" / "sbin" / cmd
        if not (link.exists() or link.is_symlink()):
            os.symlink("/usr/local/bin/busybox", link)
    init = root / "sbin" / "init"
    if init.exists() or init.is_symlink():
        init.unlink()
    _write_exec(init, ROOTFS_INIT)
    (root / "etc" / "hostname").write_text("nexus\n")
    _install_guest_agent(root, guest_files)
    (root / "tmp").chmod(0o1777)


def _install_guest_agent(root: Path, guest_files: dict[str, bytes]) -> None:
    """Lay out ``/opt/nexus/lib/nexus/guest/`` (the init runs the agent from there)."""
    lib = root / "opt" / "nexus" / "lib" / "nexus"
    (lib / "guest").mkdir(parents=True, exist_ok=True)
    (lib / "__init__.py").write_text('"""Nexus guest-side package (guest agent only)."""\n')
    for name, data in guest_files.items():
        (lib / "guest" / name).write_bytes(data)
    _precompile(root, lib)


def _guest_python_tag(root: Path) -> str | None:
    """``cpython-311`` for a root whose python3 is 3.11 (None without one)."""
    target = root / "usr" / "bin" / "python3"
    if not target.is_symlink():
        return None
    name = os.readlink(target).rsplit("/", 1)[-1]  # python3.11
    ver = name.removeprefix("python")
    return "cpython-" + ver.replace(".", "") if ver[:2] == "3." else None


def _precompile(root: Path, lib: Path) -> None:
    """Byte-compile the guest package into ``__pycache__`` when this interpreter is the
    guest's version (its pyc format): every VM's root disk is a fresh copy of the image, so
    without them each guest compiles the agent at boot and the container runtime on each
    first use (seconds under TCG). Hash-checked pycs: valid whatever the file times."""
    if _guest_python_tag(root) != sys.implementation.cache_tag:
        return
    for src in sorted(lib.rglob("*.py")):
        rel = "/" + str(src.relative_to(root))
        cfile = importlib.util.cache_from_source(str(src))
        mode = py_compile.PycInvalidationMode.CHECKED_HASH
        py_compile.compile(str(src), cfile=cfile, dfile=rel, doraise=True, invalidation_mode=mode)
        os.chmod(cfile, 0o644)
        os.chmod(os.path.dirname(cfile), 0o755)


def _test_tree(root: Path) -> None:
    for d in ("bin", "etc", "usr/bin", "usr/sbin", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        link = root / "bin" / name
        if not link.exists():
            os.symlink("/usr/local/bin/busybox", link)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for rel, text in TEST_IMAGE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_exec(root / rel, text)


def _debootstrap_tree(cache_dir: Path, mirror: str, progress: ProgressCallback | None) -> Path:
    key = hashlib.sha256(
        json.dumps([SUITE, mirror, DEFAULT_INCLUDE, "minbase"]).encode()
    ).hexdigest()[:16]
    tree = cache_dir / "debootstrap" / key
    if (tree / ".nexus-done").exists():
        return tree
    _progress(
        progress,
        30,
        f"debootstrap {SUITE} (minbase + {len(DEFAULT_INCLUDE)} packages) from {mirror}",
    )
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = tree.with_name(key + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEFAULT_INCLUDE)}",
            SUITE,
            str(tmp),
            mirror,
        ],
        "debootstrap",
        timeout=1800,
    )
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_Packages",
        "var/lib/apt/lists/*Release*",
    ):
        for p in tmp.glob(pattern):
            p.unlink()
    (tmp / ".nexus-done").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if tree.exists():
        shutil.rmtree(tree)
    os.replace(tmp, tree)
    return tree


def _mkfs(tree: Path, dest: Path, size_mib: int, label: str) -> None:
    if dest.exists():
        dest.unlink()
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-d",
            str(tree),
            str(dest),
            f"{size_mib}M",
        ],
        "mkfs.ext4",
    )


# --- entry point -------------------------------------------------------------------------


BUILD_LOCK = ".build.lock"


@contextlib.contextmanager
def build_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the cache's build lock (``fcntl.flock`` on ``<cache_dir>/.build.lock``) for the
    block. Every build takes it, so two builds on one cache (the manager's operations,
    ``nexus-manager build-image``, the test fixtures) never race, and a ``force`` rebuild
    never deletes a directory another build is reading or writing. A flock dies with its
    process: a crashed build leaves no stale lock."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / BUILD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def image_inputs(name: ImageName, kernel: KernelArtifacts, mirror: str, size_mib: int) -> str:
    """sha256 over everything that determines the image's bytes (the cache key)."""
    h = hashlib.sha256()
    parts: list[object] = [
        BUILDER_VERSION,
        name,
        kernel.package,
        kernel.version,
        MODULES,
        INITRAMFS_INIT,
        ROOTFS_INIT,
        POWER_COMMANDS,
        sha256_file(Path(BUSYBOX)),
        size_mib,
    ]
    if name == "test":
        parts.append(sorted(TEST_IMAGE_FILES.items()))
    if name == "default":
        parts += [SUITE, mirror, DEFAULT_INCLUDE]
        parts += sorted((k, hashlib.sha256(v).hexdigest()) for k, v in _guest_files().items())
        parts.append(("pyc", sys.implementation.cache_tag))  # precompiled for this version
    h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()


def build_image(
    name: ImageName,
    cache_dir: Path,
    *,
    out_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    rootfs_size_mib: int | None = None,
    force: bool = False,
) -> BuiltImage:
    """Build (or fetch from cache) the ``default`` or ``test`` image.

    Returns the cached image directory (``<cache_dir>/images/<name>-<hash16>``), or a
    copy in ``out_dir`` when given. ``progress(percent, message)`` is called along the way.
    Raises :class:`ImageBuildError`. Runs under :func:`build_lock`.
    """
    if name not in ("default", "test"):
        raise ImageBuildError(f"unknown image {name!r}: choose 'default' or 'test'")
    with build_lock(Path(cache_dir)):
        return _build_image_locked(
            name,
            Path(cache_dir),
            out_dir=out_dir,
            progress=progress,
            rootfs_size_mib=rootfs_size_mib,
            force=force,
        )


def _build_image_locked(
    name: ImageName,
    cache_dir: Path,
    *,
    out_dir: Path | None,
    progress: ProgressCallback | None,
    rootfs_size_mib: int | None,
    force: bool,
) -> BuiltImage:
    """:func:`build_image`'s work, with the cache's build lock held."""
    size = rootfs_size_mib or ROOTFS_SIZE_MIB[name]
    kernel = fetch_kernel(cache_dir, progress)
    mirror = debian_mirror()
    inputs = image_inputs(name, kernel, mirror, size)
    final = cache_dir / "images" / f"{name}-{inputs[:16]}"
    if force and final.exists():
        shutil.rmtree(final)
    if not (final / "manifest.json").exists():
        _progress(progress, 25, "building initramfs")
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
        work.chmod(0o755)
        try:
            shutil.copy2(kernel.vmlinuz, work / "vmlinuz")
            if kernel.vmlinux is not None:
                shutil.copy2(kernel.vmlinux, work / "vmlinux")
            build_initramfs(kernel, work / "initrd.img")
            staging = work / "tree"
            if name == "default":
                base = _debootstrap_tree(cache_dir, mirror, progress)
                _progress(progress, 80, "assembling root filesystem")
                _run(["cp", "-a", "--reflink=auto", str(base), str(staging)], "copy tree")
                (staging / ".nexus-done").unlink(missing_ok=True)
            else:
                staging.mkdir()
                _test_tree(staging)
            _install_common(staging, _guest_files() if name == "default" else {})
            _progress(progress, 90, "mkfs.ext4 -d")
            _mkfs(staging, work / "rootfs.ext4", size, f"nexus-{name}")
            shutil.rmtree(staging)
            _progress(progress, 95, "hashing artefacts")
            manifest = _manifest(name, work, kernel, inputs)
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    manifest = json.loads((final / "manifest.json").read_text())
    result = BuiltImage(name, final, manifest)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in final.iterdir():
            target = out / f.name
            target.unlink(missing_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
        result = BuiltImage(name, out, manifest)
    _progress(progress, 100, f"image {name} ready")
    return result


def _manifest(name: str, d: Path, kernel: KernelArtifacts, inputs: str) -> dict[str, object]:
    files = {"kernel": "vmlinuz", "initrd": "initrd.img", "rootfs": "rootfs.ext4"}
    if (d / "vmlinux").exists():
        files["vmlinux"] = "vmlinux"
    manifest: dict[str, object] = {"name": name}
    for key, fname in files.items():
        manifest[f"{key}_sha256"] = sha256_file(d / fname)
    manifest["files"] = files
    manifest["sizes"] = {key: (d / fname).stat().st_size for key, fname in files.items()}
    manifest["kernel_version"] = kernel.release
    manifest["kernel_package"] = f"{kernel.package} {kernel.version}"
    manifest["inputs_sha256"] = inputs
    manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return manifest
