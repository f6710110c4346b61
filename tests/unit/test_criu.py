"""Finding a working criu, and saying why there is none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbank.runtime.linux import criu


async def test_a_missing_binary_is_named(tmp_path: Path) -> None:
    found = await criu.detect(str(tmp_path / "no-criu"))
    assert not found.usable
    assert found.problem is not None and "no-criu" in found.problem
    assert "scripts/criu.sh" in found.problem


async def test_a_failing_check_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Error: vdso: Failed to fill self vdso symtable'\nexit 1\n")
    fake.chmod(0o755)
    found = await criu.detect(str(fake))
    assert not found.usable
    assert found.problem is not None and "vdso" in found.problem and "criu check" in found.problem


@pytest.mark.skipif(os.geteuid() != 0, reason="criu check needs root")
async def test_the_project_build_is_found_first() -> None:
    local = criu.project_root() / criu.PROJECT_BINARY
    if not local.is_file():
        pytest.skip("scripts/criu.sh has not built criu here")
    assert criu.candidates()[0] == str(local)
    found = await criu.detect()
    assert found.usable and found.binary == str(local)


def test_file_key_names_mount_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open(path, "w") as fh:
        key = criu.file_key(os.getpid(), fh.fileno())
    assert key.startswith("file[") and key.endswith(f":{os.stat(path).st_ino:x}]")


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a root-owned directory")
def test_kdat_dir_must_be_root_only(tmp_path: Path) -> None:
    good = tmp_path / "kdat"
    assert criu.prepare_kdat_dir(good) is None
    assert os.stat(good).st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    problem = criu.prepare_kdat_dir(loose)
    assert problem is not None and "only root" in problem
