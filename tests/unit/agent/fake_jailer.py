"""A fake Firecracker ``jailer`` that follows the contract of Firecracker's ``docs/jailer.md``.

Usage (as documented)::

    jailer --id <id> --exec-file <exec_file> --uid <uid> --gid <gid>
           [--parent-cgroup <relative_path>] [--cgroup-version 1|2] [--cgroup <file>=<value>]...
           [--chroot-base-dir <chroot_base>] [--netns <netns>]
           [--resource-limit <resource>=<value>]... [--daemonize] [--new-pid-ns]
           [-- <extra arguments for Firecracker>]

Flags are parsed strictly: an unknown flag, a missing required flag, a repeated single-use
flag or an invalid value makes it exit 1 with a message on stderr (its stdout/stderr is the
VM's console log), as the real jailer does. ``--id`` must be ``[A-Za-z0-9-]{1,64}``;
``--exec-file`` must exist and its file name contain ``firecracker``.

Then, like the real jailer: the chroot is ``<chroot_base>/<exec_file name>/<id>/root``
(``chroot_base`` defaults to ``/srv/jailer``); the exec-file is copied to
``<chroot>/<exec_file name>``; the chroot root is chowned to ``uid:gid``; the process execs
(same pid) ``<exec_file name> --id=<id> --start-time-us=<n> --start-time-cpu-us=<n>`` plus the
arguments after ``--``.

What it cannot do: it does not ``pivot_root``/``chroot``, drop privileges, ``mknod``
``/dev/kvm`` or ``/dev/net/tun``, or touch cgroups. Instead it requires the chroot root to
exist already (the Nexus driver stages it before spawning), ``chdir``\\ s into it and passes
the fake-only flags ``--chroot <dir> --chroot-uid <uid> --chroot-gid <gid>`` to the fake
Firecracker, which then resolves the API socket and every API-body path inside ``<dir>``
and checks ownership (see ``fake_firecracker.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

VALUED = {
    "--id",
    "--exec-file",
    "--uid",
    "--gid",
    "--parent-cgroup",
    "--cgroup-version",
    "--cgroup",
    "--chroot-base-dir",
    "--netns",
    "--resource-limit",
}
SWITCHES = {"--daemonize", "--new-pid-ns"}
REPEATABLE = {"--cgroup", "--resource-limit"}
REQUIRED = ("--id", "--exec-file", "--uid", "--gid")
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
KV_RE = re.compile(r"^[^=\s]+=\S+$")


def fail(msg: str) -> None:
    print(f"fake jailer: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(jailer flags, Firecracker arguments after ``--``); exits 1 on any error."""
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return flags, argv[i + 1 :]
        if arg in SWITCHES:
            if arg in flags:
                fail(f"{arg} given more than once")
            flags[arg] = []
            i += 1
            continue
        if arg not in VALUED:
            fail(f"unknown argument {arg!r}")
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            fail(f"{arg} needs a value")
        if arg in flags and arg not in REPEATABLE:
            fail(f"{arg} given more than once")
        flags.setdefault(arg, []).append(argv[i + 1])
        i += 2
    return flags, []


# cgroup files each version has (the ones a Nexus VM's limits use)
CGROUP_FILES = {
    "1": {"memory.limit_in_bytes", "cpu.cfs_period_us", "cpu.cfs_quota_us", "pids.max",
          "cpuset.cpus", "cpuset.mems"},
    "2": {"memory.max", "memory.high", "cpu.max", "pids.max", "cpuset.cpus", "cpuset.mems"},
}  # fmt: skip


def check_cgroups(flags: dict[str, list[str]]) -> None:
    """``--cgroup <file>=<value>`` must name a file of the chosen ``--cgroup-version``
    (default 1), with a value that file takes; ``--parent-cgroup`` is a relative path."""
    version = flags.get("--cgroup-version", ["1"])[0]
    for kv in flags.get("--cgroup", []):
        name, _, value = kv.partition("=")
        if name not in CGROUP_FILES[version]:
            fail(f"cgroup file {name!r} does not exist in cgroup v{version}")
        if name not in ("cpuset.cpus", "cpuset.mems") and not value.isdigit():
            fail(f"{name}={value!r}: expected a number")
    for parent in flags.get("--parent-cgroup", []):
        if parent.startswith("/") or ".." in parent.split("/"):
            fail(f"--parent-cgroup {parent!r} must be a relative path inside the hierarchy")


def main() -> None:
    flags, fc_args = parse(sys.argv[1:])
    for name in REQUIRED:
        if name not in flags:
            fail(f"missing required argument {name}")
    jail_id = flags["--id"][0]
    if not ID_RE.match(jail_id):
        fail(f"invalid instance id {jail_id!r}")
    exec_file = flags["--exec-file"][0]
    if not os.path.isfile(exec_file):
        fail(f"exec-file {exec_file!r} does not exist")
    exec_name = os.path.basename(exec_file)
    if "firecracker" not in exec_name:
        fail(f"exec-file name {exec_name!r} does not contain 'firecracker'")
    try:
        uid, gid = int(flags["--uid"][0]), int(flags["--gid"][0])
    except ValueError:
        fail("--uid/--gid must be integers")
        return
    if flags.get("--cgroup-version", ["1"])[0] not in ("1", "2"):
        fail("--cgroup-version must be 1 or 2")
    for kv in flags.get("--cgroup", []) + flags.get("--resource-limit", []):
        if not KV_RE.match(kv):
            fail(f"{kv!r} is not <name>=<value>")
    if uid == 0 or gid == 0:
        fail("--uid/--gid 0: the jailer would run Firecracker as root")
    check_cgroups(flags)
    if "--netns" in flags and not os.path.exists(flags["--netns"][0]):
        fail(f"netns {flags['--netns'][0]!r} does not exist")
    if "--id" in fc_args or any(a.startswith("--id=") for a in fc_args):
        fail("--id after '--': the jailer passes --id to Firecracker itself")

    base = flags.get("--chroot-base-dir", ["/srv/jailer"])[0]
    if not os.path.isabs(base):
        fail(f"chroot base dir {base!r} is not absolute")
    root = os.path.join(base, exec_name, jail_id, "root")
    if not os.path.isdir(root):
        fail(f"chroot {root} was not prepared (the fake cannot build a real one)")
    target = os.path.join(root, exec_name)
    shutil.copy2(exec_file, target)
    os.chown(root, uid, gid)
    os.chdir(root)
    started = str(int(time.time() * 1_000_000))
    argv = [
        target,
        f"--id={jail_id}",
        f"--start-time-us={started}",
        f"--start-time-cpu-us={int(time.process_time() * 1_000_000)}",
        "--chroot",
        root,
        "--chroot-uid",
        str(uid),
        "--chroot-gid",
        str(gid),
        *fc_args,
    ]
    os.execv(target, argv)


if __name__ == "__main__":
    main()
