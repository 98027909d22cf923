"""Container image layers are applied safely: whiteouts and opaque directories honoured,
path escapes refused, device nodes never created on the host, sizes capped."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from nexus.images.oci import Budget, LayerError, apply_layer, parse_config, read_archive, unpack


def _layer(*entries: tuple[str, str, object], gz: bool = False) -> io.BytesIO:
    """A tar layer from (type, name, payload) entries: f=file(bytes), d=dir, l=symlink(target),
    h=hardlink(target), c=char device."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name, payload in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "d" else 0o644
            data = b""
            if kind == "f":
                data = payload if isinstance(payload, bytes) else b""
                ti.size = len(data)
            elif kind == "d":
                ti.type = tarfile.DIRTYPE
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "c":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(ti, io.BytesIO(data) if kind == "f" else None)
    raw = buf.getvalue()
    return io.BytesIO(gzip.compress(raw) if gz else raw)


def test_files_dirs_symlinks_and_hardlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    layer = _layer(
        ("d", "bin", None),
        ("f", "bin/busybox", b"BB"),
        ("l", "bin/sh", "/bin/busybox"),
        ("h", "bin/ls", "bin/busybox"),
        ("f", "./etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        gz=True,
    )
    apply_layer(layer, root, Budget())
    assert (root / "bin/busybox").read_bytes() == b"BB"
    assert os.readlink(root / "bin/sh") == "/bin/busybox"  # kept, never followed on the host
    assert os.stat(root / "bin/ls").st_ino == os.stat(root / "bin/busybox").st_ino
    assert (root / "etc/passwd").exists()


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(
        _layer(("f", "a/keep", b"1"), ("f", "a/gone", b"2"), ("f", "o/old1", b"3"),
               ("f", "o/old2", b"4"), ("d", "dir", None), ("f", "dir/x", b"5")),
        root, Budget(),
    )  # fmt: skip
    apply_layer(
        _layer(("f", "a/.wh.gone", b""), ("f", "o/new", b"n"), ("f", "o/.wh..wh..opq", b""),
               ("f", ".wh.dir", b"")),
        root, Budget(),
    )  # fmt: skip
    assert (root / "a/keep").exists() and not (root / "a/gone").exists()
    assert sorted(os.listdir(root / "o")) == ["new"]  # this layer's entry survives the opaque
    assert not (root / "dir").exists()


@pytest.mark.parametrize(
    "entries",
    [
        [("f", "../escape", b"x")],
        [("f", "a/../../escape", b"x")],
        [("f", "/etc/escape", b"x")],
        [("l", "etc", "/etc"), ("f", "etc/escape", b"x")],  # absolute symlink escape
        [("l", "up", "../../.."), ("f", "up/escape", b"x")],  # relative symlink escape
        [("h", "hl", "../../etc/passwd")],
        [("l", "s", "/etc/passwd"), ("h", "hl", "s")],  # hard link to a symlink
    ],
)
def test_malicious_layers_are_refused(
    tmp_path: Path, entries: list[tuple[str, str, object]]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError):
        apply_layer(_layer(*entries), root, Budget())
    assert not (tmp_path / "escape").exists()
    assert not Path("/etc/escape").exists()


def test_device_nodes_are_not_created(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    budget = Budget()
    apply_layer(_layer(("d", "dev", None), ("c", "dev/null", None)), root, budget)
    assert not (root / "dev/null").exists() and budget.skipped_devices == 1


def test_size_and_entry_caps(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError, match="more than 10 bytes"):
        apply_layer(_layer(("f", "big", b"x" * 11)), root, Budget(max_bytes=10))
    with pytest.raises(LayerError, match="more than 2 files"):
        apply_layer(_layer(("f", "1", b""), ("f", "2", b""), ("f", "3", b"")), root,
                    Budget(max_entries=2))  # fmt: skip


def test_zstd_layers_refused(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="zstd"):
        apply_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 600), tmp_path, Budget())


def test_config_is_type_checked() -> None:
    cfg = parse_config({"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo"],
                                   "Env": ["A=1"], "WorkingDir": "/w", "User": "1000:1000",
                                   "ExposedPorts": {"80/tcp": {}}}})  # fmt: skip
    assert cfg.entrypoint == ["/bin/sh"] and cfg.exposed_ports == ["80/tcp"]
    with pytest.raises(LayerError):
        parse_config({"config": {"Cmd": "not a list"}})


def _oci_archive(path: Path, layers: list[bytes], config: dict[str, object]) -> str:
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d

    cfg = json.dumps(config).encode()
    manifest = json.dumps(
        {"schemaVersion": 2, "config": {"digest": add(cfg), "size": len(cfg)},
         "layers": [{"digest": add(layer), "size": len(layer),
                     "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
                    for layer in layers]}
    ).encode()  # fmt: skip
    mdigest = add(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": mdigest}]}).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", index),
                           *((f"blobs/sha256/{d[7:]}", b) for d, b in blobs.items())]:  # fmt: skip
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return mdigest


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
def test_oci_archive_unpacks_to_ext4(tmp_path: Path) -> None:
    layer = _layer(("f", "hello.txt", b"hi"), gz=True).getvalue()
    digest = _oci_archive(tmp_path / "img.tar", [layer], {"config": {"Cmd": ["/hello"]}})
    work = tmp_path / "w"
    work.mkdir()
    img, rootfs = unpack(tmp_path / "img.tar", work)
    assert img.digest == digest and img.config.cmd == ["/hello"]
    assert rootfs.stat().st_size > 0 and not (work / "tree").exists()


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")
def test_implicit_directories_and_the_root_are_0755_whatever_the_umask(tmp_path: Path) -> None:
    layer = _layer(("f", "usr/bin/tool", b"x"), gz=True).getvalue()  # no entries for usr/, usr/bin/
    _oci_archive(tmp_path / "img.tar", [layer], {"config": {}})
    work = tmp_path / "w"
    work.mkdir()
    old = os.umask(0o077)
    try:
        _img, rootfs = unpack(tmp_path / "img.tar", work)
    finally:
        os.umask(old)
    for path in ("/", "/usr", "/usr/bin"):
        out = subprocess.run(["debugfs", "-R", f"stat {path}", str(rootfs)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "Mode:  0755" in out, (path, out)


def test_tampered_layer_is_refused(tmp_path: Path) -> None:
    layer = _layer(("f", "hello.txt", b"hi")).getvalue()
    _oci_archive(tmp_path / "img.tar", [layer], {"config": {}})
    img = read_archive(tmp_path / "img.tar")
    name, _ = img.layers[0]
    img.layers[0] = (name, "sha256:" + "0" * 64)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError, match="digest"), img.open_layer(0) as fh:
        apply_layer(fh, root, Budget())
