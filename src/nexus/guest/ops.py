"""One-shot operations: requests answered inline with one RESPONSE, no stream left open —
``metrics``, ``reseed``, ``identity``, ``file_read``, ``file_write`` — and the facts
sent in the HELLO answer.

Each op takes the request's argument map and returns the answer's map, or raises
:class:`~nexus.guest.common.RequestError`. Options that keep tests from changing the
machine that runs them (``--no-set-clock`` and friends) arrive as keyword arguments.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from nexus.guest.common import AGENT_VERSION, RequestError, opt_num, opt_str, read_file
from nexus.guest.protocol import MAX_PAYLOAD

#: Every op this agent serves (advertised in the HELLO answer); exec and shell are streams.
OPS = ("exec", "shell", "metrics", "reseed", "identity", "file_read", "file_write")
#: Largest ``file_read`` answer (leaves room for the rest of the RESPONSE value).
MAX_FILE_BYTES = MAX_PAYLOAD - 4096
# Linux ioctl number (x86_64, aarch64): python3-minimal has no module that names it.
RNDADDENTROPY = 0x40085203


# ---------------------------------------------------------------------------------------
# Facts and metrics
# ---------------------------------------------------------------------------------------


def boot_time() -> float:
    """Boot time as a Unix epoch (from /proc/stat ``btime``)."""
    for line in read_file("/proc/stat", 1 << 20).splitlines():
        if line.startswith("btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                break
    return time.time() - uptime()


def uptime() -> float:
    """Seconds since boot (``/proc/uptime``), or monotonic time as a fallback."""
    try:
        return float(read_file("/proc/uptime").split()[0])
    except (IndexError, ValueError):
        return time.monotonic()


def facts() -> dict[str, Any]:
    """Facts about this guest, sent in the HELLO answer."""
    uname = os.uname()
    pretty = ""
    for line in read_file("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    return {
        "agent_version": AGENT_VERSION,
        "hostname": uname.nodename,
        "kernel": uname.release,
        "arch": uname.machine,
        "os": pretty,
        "boot_time": boot_time(),
        "uptime_s": uptime(),
        "time": time.time(),
        "pid": os.getpid(),
        "python": ".".join(str(v) for v in sys.version_info[:3]),
        "ops": list(OPS),
        "max_payload": MAX_PAYLOAD,
    }


def metrics() -> dict[str, Any]:
    """Load, memory, root disk usage and uptime of the guest."""
    mem: dict[str, int] = {}
    for line in read_file("/proc/meminfo").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            try:
                mem[parts[0][:-1]] = int(parts[1]) * 1024
            except ValueError:
                continue
    try:
        load = list(os.getloadavg())
    except OSError:
        load = [0.0, 0.0, 0.0]
    result: dict[str, Any] = {
        "time": time.time(),
        "uptime_s": uptime(),
        "load_avg": load,
        "cpus": os.cpu_count() or 1,
        "mem_total_bytes": mem.get("MemTotal", 0),
        "mem_available_bytes": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "mem_free_bytes": mem.get("MemFree", 0),
        "swap_total_bytes": mem.get("SwapTotal", 0),
        "swap_free_bytes": mem.get("SwapFree", 0),
    }
    try:
        st = os.statvfs("/")
        total = st.f_blocks * st.f_frsize
        result["disk_total_bytes"] = total
        result["disk_free_bytes"] = st.f_bavail * st.f_frsize
        result["disk_used_bytes"] = total - st.f_bfree * st.f_frsize
    except OSError:
        result["disk_total_bytes"] = result["disk_free_bytes"] = result["disk_used_bytes"] = 0
    try:
        result["procs"] = sum(1 for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        result["procs"] = 0
    return result


# ---------------------------------------------------------------------------------------
# After a restore: clock, entropy, identity
# ---------------------------------------------------------------------------------------


def reseed(
    args: dict[str, Any], *, set_clock: bool = True, credit_entropy: bool = True
) -> dict[str, Any]:
    """Set the clock from ``epoch`` and mix ``entropy`` into the kernel pool."""
    epoch = opt_num(args, "epoch", None)
    entropy = args.get("entropy", b"")
    if not isinstance(entropy, bytes):
        raise RequestError("bad_request", "entropy must be bytes")
    result: dict[str, Any] = {
        "clock_set": False,
        "entropy_bytes": len(entropy),
        "entropy_credited": False,
    }
    if epoch is not None:
        if not set_clock:
            result["clock_error"] = "disabled"
        else:
            try:
                time.clock_settime(time.CLOCK_REALTIME, epoch)
                result["clock_set"] = True
            except OSError as exc:
                result["clock_error"] = str(exc)
    if entropy:
        try:
            fd = os.open("/dev/urandom", os.O_WRONLY)
        except OSError as exc:
            raise RequestError("io_error", f"/dev/urandom: {exc}") from None
        try:
            done = False
            if credit_entropy:
                info = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
                try:
                    fcntl.ioctl(fd, RNDADDENTROPY, info)
                    done = result["entropy_credited"] = True
                except OSError:
                    done = False
            if not done:
                os.write(fd, entropy)
        finally:
            os.close(fd)
    return result


def identity(args: dict[str, Any], *, apply: bool = True) -> dict[str, Any]:
    """Take on a new identity after a memory restore into a new VM (clone uniqueness):
    ``hostname``, ``machine_id`` (32 hex digits) and, per NIC, ``{dev, mac, addr,
    netmask, gateway?}``. Validates everything before changing anything; with
    ``apply=False`` (``--no-set-identity``, tests) returns the plan without applying it."""
    plan = identity_plan(args)
    result: dict[str, Any] = {"applied": apply, **plan}
    if not apply:
        return result
    if "hostname" in plan:
        socket.sethostname(plan["hostname"])
        _write_text("/etc/hostname", plan["hostname"] + "\n")
    if "machine_id" in plan:
        _write_text("/etc/machine-id", plan["machine_id"] + "\n", 0o444)
        if os.path.isdir("/var/lib/dbus"):
            _write_text("/var/lib/dbus/machine-id", plan["machine_id"] + "\n", 0o444)
    result["nics"] = [dict(nic, **_apply_nic(nic)) for nic in plan.get("nics", [])]
    return result


_HOSTNAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def identity_plan(args: dict[str, Any]) -> dict[str, Any]:
    """The validated ``identity`` request (see :func:`identity`)."""
    plan: dict[str, Any] = {}
    hostname = opt_str(args, "hostname")
    if hostname is not None:
        if not 0 < len(hostname) <= 63 or not set(hostname) <= _HOSTNAME_OK:
            raise RequestError("bad_request", "hostname: 1-63 letters, digits or '-'")
        plan["hostname"] = hostname
    machine_id = opt_str(args, "machine_id")
    if machine_id is not None:
        if len(machine_id) != 32 or not set(machine_id) <= set("0123456789abcdef"):
            raise RequestError("bad_request", "machine_id: 32 lower-case hex digits")
        plan["machine_id"] = machine_id
    nics = args.get("nics") or []
    if not isinstance(nics, list):
        raise RequestError("bad_request", "nics must be a list")
    out = []
    for nic in nics:
        if not isinstance(nic, dict):
            raise RequestError("bad_request", "each nic must be a map")
        dev = str(nic.get("dev", ""))
        if not dev or len(dev) > 15 or not set(dev) <= _HOSTNAME_OK | {"_", "."}:
            raise RequestError("bad_request", f"bad interface name {dev!r}")
        mac = str(nic.get("mac", "")).lower()
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise RequestError("bad_request", f"bad MAC address {mac!r}")
        try:
            int(mac.replace(":", ""), 16)
            addr = _ipv4(nic.get("addr"))
            prefix = _prefix_of(nic.get("netmask"))
            gateway = _ipv4(nic["gateway"]) if nic.get("gateway") else ""
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", f"nic {dev}: {exc}") from None
        out.append({"dev": dev, "mac": mac, "cidr": f"{addr}/{prefix}", "gateway": gateway})
    if out:
        plan["nics"] = out
    return plan


def _ipv4(value: Any) -> str:
    """A dotted-quad IPv4 address, normalised (python3-minimal has no ``ipaddress``)."""
    parts = str(value).split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        raise ValueError(f"{str(value)[:40]!r} is not an IPv4 address")
    return ".".join(str(int(p)) for p in parts)


def _prefix_of(netmask: Any) -> int:
    """The prefix length of a dotted-quad netmask (contiguous ones only)."""
    n = 0
    for p in _ipv4(netmask).split("."):
        n = n << 8 | int(p)
    prefix = bin(n).count("1")
    if n != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        raise ValueError(f"{netmask!r} is not a netmask")
    return prefix


def _write_text(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.nexus-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _apply_nic(nic: dict[str, Any]) -> dict[str, Any]:
    """New MAC + address (+ default route) on one interface, with busybox ``ip``."""
    bb = "/usr/local/bin/busybox"
    ip = [bb, "ip"] if os.path.exists(bb) else ["ip"]
    dev = nic["dev"]
    steps = [
        [*ip, "link", "set", "dev", dev, "down"],
        [*ip, "link", "set", "dev", dev, "address", nic["mac"]],
        [*ip, "link", "set", "dev", dev, "up"],
        [*ip, "-4", "addr", "flush", "dev", dev],
        [*ip, "addr", "add", nic["cidr"], "dev", dev],
    ]
    if nic["gateway"]:
        steps.append([*ip, "route", "replace", "default", "via", nic["gateway"], "dev", dev])
    for argv in steps:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"ok": False, "error": f"{' '.join(argv[-4:])}: {exc}"}
        if res.returncode != 0:
            return {"ok": False, "error": f"{' '.join(argv[1:])}: {res.stderr.strip()[:200]}"}
    return {"ok": True}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def file_read(args: dict[str, Any]) -> dict[str, Any]:
    """Read up to ``max_bytes`` (default and cap: MAX_FILE_BYTES) of a file."""
    path = opt_str(args, "path")
    if not path:
        raise RequestError("bad_request", "path is required")
    limit = int(opt_num(args, "max_bytes", MAX_FILE_BYTES) or 0)
    limit = max(0, min(limit, MAX_FILE_BYTES))
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read(limit + 1)
    except OSError as exc:
        raise RequestError("io_error", f"{path}: {exc.strerror or exc}") from None
    return {
        "data": data[:limit],
        "truncated": len(data) > limit,
        "size": max(size, len(data[:limit])),
    }


def file_write(args: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` to ``path`` (atomically by rename unless ``append``)."""
    path = opt_str(args, "path")
    data = args.get("data", b"")
    if not path or not isinstance(data, bytes):
        raise RequestError("bad_request", "path (str) and data (bytes) are required")
    mode = args.get("mode", 0o644)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise RequestError("bad_request", "mode must be an int permission mask")
    try:
        if args.get("mkdirs"):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if args.get("append"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
            target = None
        else:
            target = f"{path}.nexus-tmp-{os.getpid()}"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if target is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        if target is not None:
            os.rename(target, path)
    except OSError as exc:
        raise RequestError("io_error", f"{path}: {exc.strerror or exc}") from None
    return {"written": len(data)}
