"""OCI layout tars made in the test itself (tarfile + JSON): a small image whose
python3 comes from the base template's files, and one without python3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

SHIFT = 100000
#: What of the base template the python image takes (the stdlib minus its tests).
PYTHON_PARTS = (
    "usr/bin/python3.11", "usr/bin/dash", "usr/lib/python3.11", "usr/lib64",
    "usr/lib/x86_64-linux-gnu/libm.so*", "usr/lib/x86_64-linux-gnu/libz.so*",
    "usr/lib/x86_64-linux-gnu/libexpat.so*", "usr/lib/x86_64-linux-gnu/libc.so*",
    "usr/lib/x86_64-linux-gnu/ld-linux*", "usr/lib/x86_64-linux-gnu/libffi.so*",
)  # fmt: skip
SKIP = ("usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter")

#: usr-merge, a shell, and python3 only under /usr/local (the import links /usr/bin/python3).
LINKS = (
    ("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("usr/bin/sh", "dash"),
    ("usr/local/bin/python3", "/usr/bin/python3.11"),
)  # fmt: skip
Layer = Callable[[tarfile.TarFile], None]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)


def _unshift(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if info.name.startswith(SKIP):
        return None
    info.uid, info.gid = max(0, info.uid - SHIFT), max(0, info.gid - SHIFT)
    info.uname = info.gname = ""
    return info


def python_layer(base_rootfs: Path) -> Layer:
    def write(tar: tarfile.TarFile) -> None:
        for pattern in PYTHON_PARTS:
            for found in sorted(base_rootfs.glob(pattern)):
                rel = str(found.relative_to(base_rootfs))
                tar.add(found, arcname=rel, filter=_unshift)
        for name, target in LINKS:
            _add_link(tar, name, target)
        _add_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _add_bytes(tar, "etc/group", b"root:x:0:\n")
        _add_bytes(tar, "etc/removed-later", b"layer one\n")

    return write


def second_layer(tar: tarfile.TarFile) -> None:
    """Adds a file and deletes one of the first layer (a whiteout)."""
    _add_bytes(tar, "etc/motd", b"from layer two\n")
    _add_bytes(tar, "etc/.wh.removed-later", b"")


def bare_layer(tar: tarfile.TarFile) -> None:
    _add_bytes(tar, "etc/hello", b"no python here\n")


def _blob(out: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    _add_bytes(out, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_tar(path: Path, layers: list[Layer], config: dict[str, object]) -> None:
    with tarfile.open(path, "w") as out:
        descs, diff_ids = [], []
        for layer in layers:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                layer(tar)
            desc = _blob(out, buf.getvalue())
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **desc})
            diff_ids.append(desc["digest"])
        cfg = {"architecture": "amd64", "os": "linux", "config": config,
               "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
        cfg_desc = _blob(out, json.dumps(cfg).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg_desc},
            "layers": descs,
        }
        man_desc = _blob(out, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **man_desc,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }]}  # fmt: skip
        _add_bytes(out, "index.json", json.dumps(index).encode())
        _add_bytes(out, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')


def write_docker_tar(path: Path, layers: list[Layer], config: dict[str, object]) -> None:
    """The ``docker save`` format: manifest.json, a config blob, one tar per layer."""
    with tarfile.open(path, "w") as out:
        names, diff_ids = [], []
        for layer in layers:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                layer(tar)
            digest = hashlib.sha256(buf.getvalue()).hexdigest()
            _add_bytes(out, f"{digest}/layer.tar", buf.getvalue())
            names.append(f"{digest}/layer.tar")
            diff_ids.append(f"sha256:{digest}")
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                          "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()  # fmt: skip
        cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
        _add_bytes(out, cfg_name, cfg)
        manifest = [{"Config": cfg_name, "RepoTags": ["sandbank-test:latest"], "Layers": names}]
        _add_bytes(out, "manifest.json", json.dumps(manifest).encode())
