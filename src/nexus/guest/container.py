"""Containers inside a Nexus guest: the container image's file system (a read-only ext4 disk)
under an overlay whose writable layer lives on the VM's own disk, a mount and PID namespace
of its own, ``pivot_root`` into it, and the entrypoint run as the image's user.

The host drives it through the guest agent's ``exec`` with
``PYTHONPATH=/opt/nexus/lib python3 -S -c RUN_MAIN COMMAND ...`` (or ``-m nexus.guest.container``):

* ``start --device /dev/vdb [--user U] [--workdir W] [--env K=V]... -- ARGV...`` mounts the
  image read-only at ``/run/nexus-ctr/lower``, the overlay at ``/run/nexus-ctr/root`` (upper
  and work dirs under ``/var/lib/nexus-ctr``: the writable layer survives a restart of the
  entrypoint), then starts ``init`` in a new PID namespace and returns once it runs.
* ``init`` (PID 1 of that namespace, in the guest's mount namespace) forks the entrypoint
  into a new mount namespace where a busybox script mounts ``/proc``, ``/sys`` (read-only)
  and a fresh tmpfs ``/dev`` (null, zero, full, random, urandom, tty, pts, shm: no disk
  devices), pivots the root into the overlay and detaches the old one, then runs the
  entrypoint with ``nsenter -S UID -G GID`` (supplementary groups cleared) in the work dir.
  PID 1 semantics: ``init`` forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
  SIGWINCH to the entrypoint, reaps every orphan, and when the entrypoint exits records its
  exit code (128+signal when killed) and exits, which kills whatever it left behind.
  stdout/stderr become numbered, timestamped lines in ``/run/nexus-ctr/log`` (rotated at
  4 MiB to ``log.1``): ``SEQ EPOCH o|e TEXT``.
* ``status`` prints ``state=running|exited|none code=N pid=N started=T finished=T``.
* ``stop [--timeout S]`` sends SIGTERM (forwarded to the entrypoint), waits, then SIGKILLs.
* ``logs --after SEQ [--max-bytes N]`` prints the log lines numbered above SEQ; ``poll``
  (same options) prints the state line (plus ``seq=``, the last line's number) and then them.
* ``exec [--user U] [--workdir W] -- ARGV...`` runs ARGV inside the running container's
  namespaces and root as the user.
* ``shell [--user U] [-- ARGV...]`` does the same for the user's login shell (from the
  container's /etc/passwd; ``/bin/sh`` otherwise) with the entrypoint's env: the guest
  agent runs it on a PTY for the container's terminal WebSocket.
* ``release [--timeout S]`` stops the entrypoint, unmounts the volumes and syncs (before the
  VM is deleted: a killed VM must not leave a volume with a journal to replay).
* ``start ... --volume DEV:ro|rw:PATH`` (repeatable) mounts a volume's disk and binds it at
  PATH inside the container's root (read-only for ``ro``).

Busybox (``/usr/local/bin/busybox`` in every Nexus image) does what ``python3-minimal``
cannot (no ``os.unshare``, no ``ctypes``): ``unshare``, ``mount``, ``pivot_root`` and
``nsenter``. Busybox runs its own applet for a bare command name, so commands are resolved
here to absolute paths inside the container's root (symlinks resolved within that root).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

# Only cheap modules at the top: every command is a fresh python3 in the guest (under TCG a
# second per heavy import chain), so `start` imports nothing more; `init` and `stop` import
# signal/threading themselves, processes are spawned without `subprocess`, nothing imports
# `typing`, and the host runs it with `-c` (RUN_MAIN), not `-m` (runpy's imports).
RUN_MAIN = "import sys; from nexus.guest.container import main; sys.exit(main(sys.argv[1:]))"

BB = os.environ.get("NEXUS_CTR_BUSYBOX", "/usr/local/bin/busybox")  # (tests: the host's)
BASE = os.environ.get("NEXUS_CTR_BASE", "/run/nexus-ctr")
LOWER = BASE + "/lower"
ROOT = BASE + "/root"
STATE = BASE + "/state"
ENTRY_PID = BASE + "/entry.pid"
ENV = BASE + "/env"
LOG = BASE + "/log"
PERSIST = os.environ.get("NEXUS_CTR_PERSIST", "/var/lib/nexus-ctr")
LOG_ROTATE_BYTES = 4 << 20
MAX_LINE = 16 * 1024
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")

# Runs in the entrypoint's new mount namespace: $1 busybox, $2 root, $3 uid, $4 gid,
# $5 workdir, then argv.
SETUP = r"""
set -e
BB=$1; R=$2; U=$3; G=$4; W=$5; shift 5
for d in proc sys dev tmp; do [ -d "$R/$d" ] || $BB mkdir -p "$R/$d"; done
$BB mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
$BB mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
$BB mount -t tmpfs -o mode=755,nosuid,size=65536k tmpfs "$R/dev"
$BB mknod -m 666 "$R/dev/null" c 1 3
$BB mknod -m 666 "$R/dev/zero" c 1 5
$BB mknod -m 666 "$R/dev/full" c 1 7
$BB mknod -m 666 "$R/dev/random" c 1 8
$BB mknod -m 666 "$R/dev/urandom" c 1 9
$BB mknod -m 666 "$R/dev/tty" c 5 0
$BB mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/.nexus/old"
$BB mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
$BB ln -s pts/ptmx "$R/dev/ptmx"
$BB mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
$BB ln -s /proc/self/fd "$R/dev/fd"
$BB ln -s /proc/self/fd/0 "$R/dev/stdin"
$BB ln -s /proc/self/fd/1 "$R/dev/stdout"
$BB ln -s /proc/self/fd/2 "$R/dev/stderr"
$BB cp "$BB" "$R/dev/.nexus/busybox"
cd "$R"
$BB pivot_root . dev/.nexus/old
X=/dev/.nexus/busybox
$X umount -l /dev/.nexus/old
$X rmdir /dev/.nexus/old
cd "$W" 2>/dev/null || cd /
exec $X nsenter -S "$U" -G "$G" -F -- "$@"
"""


class Fail(Exception):
    """A command failed; printed to stderr, exit status 1."""


def _read(path: str, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def spawn(argv: list[str], *, capture: bool = True) -> tuple[int, str]:
    """Run ``argv`` (an absolute path first) with stdin from /dev/null and wait for it: its
    exit status and (with ``capture``) what it printed, at most 64 KiB."""
    r, w = os.pipe()
    actions: list[tuple[int | str, ...]] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    if capture:
        actions += [(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)]
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out = (out + chunk)[-65536:]
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def _run(argv: list[str]) -> None:
    code, out = spawn(argv)
    if code != 0:
        raise Fail(f"{' '.join(argv[1:4])}: {out.strip()[:300]}")


def _mounted(path: str) -> bool:
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1] == path:
            return True
    return False


# --- paths inside the container's root ---------------------------------------------------


def resolve_in_root(root: str, path: str, hops: int = 40) -> str | None:
    """The host path of ``path`` as the container would see it (symlinks resolved inside
    ``root``, ``..`` never above it), or None if it does not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    while parts:
        p = parts.pop(0)
        if p == "..":
            if done:
                done.pop()
            continue
        host = root + "/" + "/".join([*done, p])
        try:
            target = os.readlink(host)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink
                done.append(p)
                continue
            return None
        hops -= 1
        if hops < 0:
            return None
        if target.startswith("/"):
            done = []
        parts = [q for q in target.split("/") if q not in ("", ".")] + parts
    return root + "/" + "/".join(done)


def find_command(root: str, name: str, env: list[str]) -> str:
    """``name`` as an absolute path inside the container (searched in its PATH)."""
    if "/" in name:
        return name if name.startswith("/") else "/" + name
    path = DEFAULT_PATH
    for item in env:
        if item.startswith("PATH="):
            path = item[5:]
    for d in path.split(":"):
        if not d.startswith("/"):
            continue
        host = resolve_in_root(root, d + "/" + name)
        if host and os.path.isfile(host) and os.access(host, os.X_OK):
            return d.rstrip("/") + "/" + name
    raise Fail(f"{name}: command not found in the container's PATH")


def resolve_user(root: str, user: str) -> tuple[int, int]:
    """``user`` (``name|uid[:group|gid]``, empty = root) as numbers, from the container's
    own /etc/passwd and /etc/group."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")

    def table(path: str) -> list[list[str]]:
        host = resolve_in_root(root, path)
        text = _read(host) if host else ""
        return [line.split(":") for line in text.splitlines() if line.count(":") >= 2]

    uid = gid = None
    if name.isdigit():
        uid = int(name)
        for f in table("/etc/passwd"):
            if f[2] == name and len(f) > 3 and f[3].isdigit():
                gid = int(f[3])
    else:
        for f in table("/etc/passwd"):
            if f[0] == name and f[2].isdigit() and len(f) > 3 and f[3].isdigit():
                uid, gid = int(f[2]), int(f[3])
        if uid is None:
            raise Fail(f"user {name!r} is not in the container's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = next((int(f[2]) for f in table("/etc/group") if f[0] == group
                        and f[2].isdigit()), None)  # fmt: skip
            if gid is None:
                raise Fail(f"group {group!r} is not in the container's /etc/group")
    return uid, gid if gid is not None else uid


# --- state -------------------------------------------------------------------------------


def read_state() -> dict[str, str]:
    """The last state ``init`` recorded (empty if none)."""
    out: dict[str, str] = {}
    for item in _read(STATE).split():
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` (as the guest's root PID namespace numbers it) runs and is no zombie:
    read from /proc, which works from inside a container's PID namespace too (``boot`` runs
    there; a signal 0 would look the number up in the wrong namespace)."""
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and not (") Z" in stat or ") X" in stat)


def current() -> dict[str, str]:
    """The state, with a dead ``init`` (killed, guest restarted) reported as exited."""
    st = read_state()
    if st.get("state") == "running":
        pid = int(st.get("pid", "0") or 0)
        if pid <= 0 or not _alive(pid):
            st.update(state="exited", code=st.get("code") or "137")
    return st


# --- commands ----------------------------------------------------------------------------


def cmd_start(args: list[str]) -> int:
    """Mount the image and overlay, start ``init``, wait until it runs (one start at a
    time: concurrent starts queue on a lock, and all but the first find it running)."""
    os.makedirs(BASE, mode=0o700, exist_ok=True)
    with open(BASE + "/start.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        return _start(args)


def _prepare(
    opts: dict[str, list[str]], argv: list[str]
) -> tuple[int, int, str, list[str], list[str]]:
    """Everything before the entrypoint (under the start lock): the image disk, the overlay
    and the volumes mounted, the user, command and env resolved inside the container's root,
    the env kept for shells. Returns (uid, gid, workdir, env, argv)."""
    device = opts.get("device", [""])[-1]
    lower_dir = opts.get("lower-dir", [""])[-1]  # (tests: a directory instead of a disk)
    if not device.startswith("/dev/") and not lower_dir:
        raise Fail("--device /dev/... is required")
    vols = [_volume_arg(v) for v in opts.get("volume", [])]
    if current().get("state") == "running":
        raise Fail("the container is already running")
    for d in (BASE, LOWER, ROOT, PERSIST + "/upper", PERSIST + "/work"):
        os.makedirs(d, mode=0o700, exist_ok=True)
    if not _mounted(LOWER):
        if lower_dir:
            _run([BB, "mount", "--bind", lower_dir, LOWER])
        else:
            _run([BB, "mount", "-t", "ext4", "-o", "ro,noload,nodev", device, LOWER])
    if not _mounted(ROOT):
        # the overlay's root directory takes the upper directory's owner and mode
        lst = os.stat(LOWER)
        os.chown(PERSIST + "/upper", lst.st_uid, lst.st_gid)
        os.chmod(PERSIST + "/upper", lst.st_mode & 0o7777)
        layers = f"lowerdir={LOWER},upperdir={PERSIST}/upper,workdir={PERSIST}/work"
        _run([BB, "mount", "-t", "overlay", "overlay", "-o", layers, ROOT])
    for i, (dev, mode, parts) in enumerate(vols):
        _mount_volume(i, dev, mode, parts)
    env = opts.get("env", [])
    if not any(e.startswith("PATH=") for e in env):
        env = [f"PATH={DEFAULT_PATH}", *env]
    if not argv:
        raise Fail("the image has no entrypoint or command, and none was given")
    uid, gid = resolve_user(ROOT, opts.get("user", [""])[-1])
    argv = [find_command(ROOT, argv[0], env), *argv[1:]]
    workdir = opts.get("workdir", ["/"])[-1] or "/"
    fd = os.open(ENV + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:  # for shells: the entrypoint's env
        fh.write("\0".join(env))
    os.replace(ENV + ".tmp", ENV)
    return uid, gid, workdir, env, argv


def _start(args: list[str]) -> int:
    opts, argv = _options(args)
    uid, gid, workdir, env, argv = _prepare(opts, argv)
    _write(STATE, "state=starting\n")
    init = [BB, "unshare", "-p", "-f", "--", sys.executable, "-S", "-c", RUN_MAIN,
            "init", str(uid), str(gid), workdir, str(len(env)), *env, *argv]  # fmt: skip
    null = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    os.posix_spawn(BB, init, os.environ, file_actions=null, setsid=True)  # not waited for
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = read_state()
        if st.get("state") in ("running", "exited"):
            print(_state_line(st))
            return 0
        time.sleep(0.02)
    raise Fail("the container's init did not start within 10 s")


def cmd_boot(args: list[str]) -> int:
    """``start`` and ``init`` in one process, for ``container-start.sh`` (which runs it as
    PID 1 of a new PID namespace and waits for its state): one Python start instead of two
    on the way to a running entrypoint. ``--token T`` marks the state lines (and names the
    error file ``err.T``) of this start."""
    opts, argv = _options(args)
    token = opts.get("token", [""])[-1]
    if not token or not all(c.isalnum() or c in "._-" for c in token):
        raise Fail("--token is required")
    os.makedirs(BASE, mode=0o700, exist_ok=True)
    lock = os.open(BASE + "/start.lock", os.O_WRONLY | os.O_CREAT, 0o600)  # (not inherited)
    fcntl.flock(lock, fcntl.LOCK_EX)  # held until the state says running
    try:
        uid, gid, workdir, env, argv = _prepare(opts, argv)
    except (Fail, OSError, ValueError) as exc:
        _write(f"{BASE}/err.{token}", f"nexus-container: {exc}\n")
        return 1
    _write(STATE, f"state=starting token={token}\n")
    return _init(str(uid), str(gid), workdir, env, argv, token=token, lock=lock)


RESERVED = ("/proc", "/sys", "/dev")


def check_mount_path(path: str) -> list[str]:
    """The components of a volume's mount path (absolute, no ``..``, not ``/``, not under
    /proc, /sys or /dev): the host checks too; the guest does not rely on it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not path.startswith("/") or ".." in parts or not parts:
        raise Fail(f"bad mount path {path!r}")
    if "/" + parts[0] in RESERVED:
        raise Fail(f"mount path {path!r} is under /{parts[0]}")
    return parts


def mkdirs_in_root(root: str, parts: list[str]) -> str:
    """Create ``root/parts...`` as directories, refusing to cross a symlink or a non-directory
    (a symlink in the image must not point the mount somewhere else)."""
    path = root
    for p in parts:
        path = path + "/" + p
        if not os.path.lexists(path):
            os.mkdir(path)
            os.chmod(path, 0o755)
        elif os.path.islink(path) or not os.path.isdir(path):
            raise Fail(f"cannot mount a volume at /{'/'.join(parts)}: /{p} is not a directory")
    return path


def _volume_arg(spec: str) -> tuple[str, str, list[str]]:
    """``DEV:ro|rw:PATH`` checked: (device, mode, the mount path's components)."""
    dev, mode, path = [*spec.split(":", 2), "", ""][:3]
    if mode not in ("ro", "rw") or not (dev.startswith("/dev/vd") or os.path.isdir(dev)):
        raise Fail(f"bad --volume {spec!r}")
    return dev, mode, check_mount_path(path)


def _mount_volume(i: int, dev: str, mode: str, parts: list[str]) -> None:
    """Mount a volume's file system at ``BASE/vol/N`` and bind it at its path inside the
    container's root (a read-only bind for ``ro``). Idempotent (restarts)."""
    src = f"{BASE}/vol/{i}"
    os.makedirs(src, mode=0o700, exist_ok=True)
    if not _mounted(src):
        if dev.startswith("/dev/"):
            try:
                _run([BB, "mount", "-t", "ext4", "-o", f"{mode},nodev,nosuid", dev, src])
            except Fail:
                if mode != "ro":
                    raise
                # a read-only disk whose journal needs replaying (its last VM was killed)
                _run([BB, "mount", "-t", "ext4", "-o", "ro,noload,nodev,nosuid", dev, src])
        else:  # (tests: a directory instead of a disk)
            _run([BB, "mount", "--bind", dev, src])
    target = mkdirs_in_root(ROOT, parts)
    if not _mounted(target):
        _run([BB, "mount", "--bind", src, target])
        if mode == "ro":
            _run([BB, "mount", "-o", "remount,bind,ro", target])


def _state_line(st: dict[str, str]) -> str:
    return " ".join(f"{k}={st.get(k, '')}" for k in ("state", "code", "pid", "started", "finished"))


class _Log:
    """Numbered, timestamped lines appended to LOG, rotated to LOG.1."""

    def __init__(self) -> None:
        import threading  # (lazy: see the imports)

        self.lock = threading.Lock()
        self.seq = self._last_seq()
        self.fh = open(LOG, "ab")

    @staticmethod
    def _last_seq() -> int:
        for path in (LOG, LOG + ".1"):
            lines = _read_tail(path).splitlines()
            for line in reversed(lines):
                head = line.split(" ", 1)[0]
                if head.isdigit():
                    return int(head)
        return 0

    def line(self, stream: str, data: bytes) -> None:
        with self.lock:
            self.seq += 1
            text = data.replace(b"\r", b"").decode("utf-8", "replace")
            self.fh.write(f"{self.seq} {time.time():.6f} {stream} {text}\n".encode())
            self.fh.flush()
            if self.fh.tell() > LOG_ROTATE_BYTES:
                self.fh.close()
                os.replace(LOG, LOG + ".1")
                self.fh = open(LOG, "ab")


def _read_tail(path: str, n: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _pump(fd: int, stream: str, log: _Log) -> None:
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf or len(buf) >= MAX_LINE:
            cut = buf.find(b"\n")
            if cut < 0 or cut >= MAX_LINE:
                log.line(stream, buf[:MAX_LINE])
                buf = buf[MAX_LINE:]
            else:
                log.line(stream, buf[:cut])
                buf = buf[cut + 1 :]
    if buf:
        log.line(stream, buf)
    os.close(fd)


def cmd_init(args: list[str]) -> int:
    """PID 1 of the container's PID namespace (see the module docstring)."""
    uid, gid, workdir, nenv = args[0], args[1], args[2], int(args[3])
    return _init(uid, gid, workdir, args[4 : 4 + nenv], args[4 + nenv :])


def _init(
    uid: str, gid: str, workdir: str, env: list[str], argv: list[str], *, token: str = "",
    lock: int | None = None,
) -> int:  # fmt: skip
    """Run the entrypoint as PID 1 of this PID namespace would (see the module docstring)."""
    import signal  # (lazy: see the imports)
    import threading

    mark = f" token={token}" if token else ""
    outer = os.readlink("/proc/self")  # our PID as the guest sees it
    log = _Log()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            _write(ENTRY_PID, os.readlink("/proc/self"))
            os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            environ = dict(e.split("=", 1) for e in env if "=" in e)
            setup = [BB, "sh", "-c", SETUP, "setup", BB, ROOT, uid, gid, workdir, *argv]
            os.execve(BB, [BB, "unshare", "-m", "--propagation", "private", "--", *setup], environ)
        except BaseException as exc:
            os.write(2, f"nexus: cannot start the container: {exc}\n".encode())
        os._exit(127)
    os.close(out_w)
    os.close(err_w)
    started = time.time()
    _write(STATE, f"state=running pid={outer} started={started:.3f}{mark}\n")
    if lock is not None:
        os.close(lock)  # a start that queued behind this one now finds it running

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    pumps = [threading.Thread(target=_pump, args=(fd, s, log), daemon=True)
             for fd, s in ((out_r, "o"), (err_r, "e"))]  # fmt: skip
    for t in pumps:
        t.start()
    code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            break
    for t in pumps:
        t.join(1.0)
    _write(STATE, f"state=exited code={code} pid={outer} started={started:.3f} "
                  f"finished={time.time():.3f}{mark}\n")  # fmt: skip
    return 0


def cmd_status(_args: list[str]) -> int:
    """Print the state line."""
    st = current()
    print(_state_line(st) if st else "state=none")
    return 0


def cmd_stop(args: list[str]) -> int:
    """SIGTERM (forwarded to the entrypoint), then SIGKILL after ``--timeout``."""
    import signal  # (lazy: see the imports)

    opts, _ = _options(args)
    timeout = float(opts.get("timeout", ["10"])[-1])
    st = current()
    if st.get("state") != "running":
        print(_state_line(st) if st else "state=none")
        return 0
    pid = int(st["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and current().get("state") == "running":
        time.sleep(0.05)
    if current().get("state") == "running":
        os.kill(pid, signal.SIGKILL)
        while _alive(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        st = read_state()
        if st.get("state") == "running":
            _write(STATE, f"state=exited code=137 pid={pid} started={st.get('started', '')} "
                          f"finished={time.time():.3f}\n")  # fmt: skip
    print(_state_line(current()))
    return 0


def cmd_release(args: list[str]) -> int:
    """Before the VM goes: stop the entrypoint (like ``stop``), unmount the volumes (their
    binds, then their file systems: the data and the journal reach the disk) and sync."""
    cmd_stop(args)
    mounts = [line.split()[1] for line in _read("/proc/self/mounts").splitlines()
              if len(line.split()) > 1]  # fmt: skip
    vols = BASE + "/vol/"
    for target in reversed(mounts):  # innermost first
        if target.startswith(ROOT + "/") or target.startswith(vols):
            spawn([BB, "umount", target])
    os.sync()
    return 0


def cmd_logs(args: list[str]) -> int:
    """Print the log lines numbered above ``--after`` (at most ``--max-bytes``)."""
    opts, _ = _options(args)
    after = int(opts.get("after", ["0"])[-1])
    budget = int(opts.get("max-bytes", [str(1 << 20)])[-1])
    out = sys.stdout.buffer
    for path in (LOG + ".1", LOG):
        try:
            fh = open(path, "rb")
        except OSError:
            continue
        with fh:
            for line in fh:
                head = line.split(b" ", 1)[0]
                if not head.isdigit() or int(head) <= after:
                    continue
                if len(line) > budget:
                    return 0
                budget -= len(line)
                out.write(line)
    out.flush()
    return 0


def cmd_poll(args: list[str]) -> int:
    """``status`` (with ``seq=``, the last log line's number) then ``logs``: what the host
    asks every few seconds, in one process. The state is read first, so an ``exited`` state
    comes with every line the entrypoint wrote."""
    st = current()
    line = _state_line(st) if st else "state=none"
    sys.stdout.write(f"{line} seq={_Log._last_seq()}\n")
    sys.stdout.flush()
    return cmd_logs(args)


def cmd_exec(args: list[str]) -> int:
    """Run a command inside the running container (its namespaces, root and user)."""
    opts, argv = _options(args)
    if current().get("state") != "running":
        raise Fail("the container is not running")
    if not argv:
        raise Fail("a command is required")
    pid = _read(ENTRY_PID).strip()
    if not pid.isdigit():
        raise Fail("the container's entrypoint is not known")
    root = f"/proc/{pid}/root"
    uid, gid = resolve_user(root, opts.get("user", [""])[-1])
    env = [f"{k}={v}" for k, v in os.environ.items() if k not in ("PYTHONPATH",)]
    argv = [find_command(root, argv[0], env), *argv[1:]]
    workdir = opts.get("workdir", [""])[-1]
    wflag = [f"-w{workdir}"] if workdir else ["-w"]
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    os.execve(BB, [BB, "nsenter", "-t", pid, "-m", "-p", "-r", *wflag, "-S", str(uid),
                   "-G", str(gid), "--", *argv], environ)  # fmt: skip
    return 127


def passwd_entry(root: str, uid: int) -> tuple[str, str]:
    """(home, login shell) of ``uid`` in the container's /etc/passwd (``/``, ``/bin/sh``)."""
    host = resolve_in_root(root, "/etc/passwd")
    for line in (_read(host) if host else "").splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2] == str(uid):
            return f[5] or "/", f[6] or "/bin/sh"
    return "/", "/bin/sh"


def cmd_shell(args: list[str]) -> int:
    """An interactive shell (or ARGV) inside the running container, as ``--user`` (the
    image's user), with the entrypoint's env: run by the guest agent on a PTY."""
    opts, argv = _options(args)
    if current().get("state") != "running":
        raise Fail("the container is not running")
    pid = _read(ENTRY_PID).strip()
    if not pid.isdigit():
        raise Fail("the container's entrypoint is not known")
    root = f"/proc/{pid}/root"
    uid, gid = resolve_user(root, opts.get("user", [""])[-1])
    home, login = passwd_entry(root, uid)
    env = [e for e in _read(ENV).split("\0") if "=" in e]
    environ = dict(e.split("=", 1) for e in env)
    environ.setdefault("PATH", DEFAULT_PATH)
    environ.setdefault("HOME", home)
    environ["TERM"] = os.environ.get("TERM", "xterm-256color")
    if not argv:
        shell = resolve_in_root(root, login)
        argv = [login if shell and os.access(shell, os.X_OK) else "/bin/sh"]
    argv = [find_command(root, argv[0], [f"PATH={environ['PATH']}"]), *argv[1:]]
    os.execve(BB, [BB, "nsenter", "-t", pid, "-m", "-p", "-r", "-w", "-S", str(uid),
                   "-G", str(gid), "--", *argv], environ)  # fmt: skip
    return 127


def _options(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--name value`` pairs up to ``--``, and the rest."""
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return opts, args[i + 1 :]
        if not a.startswith("--") or i + 1 >= len(args):
            raise Fail(f"bad option {a!r}")
        opts.setdefault(a[2:], []).append(args[i + 1])
        i += 2
    return opts, []


COMMANDS = {"start": cmd_start, "boot": cmd_boot, "init": cmd_init, "status": cmd_status,
            "stop": cmd_stop, "logs": cmd_logs, "poll": cmd_poll, "exec": cmd_exec,
            "shell": cmd_shell, "release": cmd_release}  # fmt: skip


def main(argv: list[str]) -> int:
    """Dispatch ``argv[0]`` to its command."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: container {{{'|'.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except Fail as exc:
        print(f"nexus-container: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, IndexError) as exc:
        print(f"nexus-container: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
