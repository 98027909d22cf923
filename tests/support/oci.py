"""An OCI image layout built in the tests from a busybox tree (no network): busybox, a passwd
with user 'app', an entrypoint script and a web root, in two gzip layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

RUN_SH = """#!/bin/sh
echo "container says hello FOO=$FOO uid=$(id -u) cwd=$(pwd)"
echo "to stderr" >&2
trap 'echo "got SIGTERM"; exit 143' TERM
httpd -f -p 8080 -h /www &
while true; do sleep 0.2; done
"""


def _tar_of(tree: dict[str, tuple[str, bytes | str, int]]) -> bytes:
    """A layer: name -> (type f|d|l, payload, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (kind, payload, mode) in tree.items():
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            data = payload if isinstance(payload, bytes) else payload.encode()
            if kind == "d":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def build_oci_layout(dest: Path) -> None:
    """An OCI image layout directory: busybox, a passwd with user 'app', an entrypoint
    script and a web root; config: entrypoint, env, user, workdir, exposed port."""
    bb = Path("/bin/busybox").read_bytes()
    tree: dict[str, tuple[str, bytes | str, int]] = {
        "bin": ("d", b"", 0o755),
        "bin/busybox": ("f", bb, 0o755),
        "etc": ("d", b"", 0o755),
        "etc/passwd": ("f", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n", 0o644),
        "etc/group": ("f", "root:x:0:\napp:x:1000:\n", 0o644),
        "app": ("d", b"", 0o755),
        "app/run.sh": ("f", RUN_SH, 0o755),
        "www": ("d", b"", 0o755),
        "www/index.html": ("f", "hello from the container image\n", 0o644),
        "tmp": ("d", b"", 0o1777),
    }
    for applet in ("sh", "echo", "id", "pwd", "httpd", "sleep", "cat", "ls", "kill"):
        tree[f"bin/{applet}"] = ("l", "/bin/busybox", 0o777)
    base = _tar_of(tree)
    top = _tar_of({"www/marker.txt": ("f", "second layer\n", 0o644)})
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    diff_ids = [f"sha256:{hashlib.sha256(gzip.decompress(x)).hexdigest()}" for x in (base, top)]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/run.sh"],
            "Env": ["PATH=/bin", "FOO=from-image"],
            "User": "app",
            "WorkingDir": "/app",
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **put(json.dumps(config).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(x)}
                   for x in (base, top)],
    }  # fmt: skip
    m = put(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]}  # fmt: skip
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
