"""The agent's code as sandboxes see it at /opt/sandbank/lib (read-only bind mount).

Only what the agent imports is copied from the installed package, with an
empty ``sandbank/__init__.py``: the real one pulls in the SDK, which needs
packages a template does not have. Files are replaced one by one with a rename,
so sandboxes that are running keep a consistent view of each file.

The mount is read-only, so the agent could never cache its bytecode and would
compile itself on every sandbox start (~10 ms of the time to ready). The
bytecode is compiled here instead, for this interpreter's version: a template
whose python3 is another version just ignores it. Hash-checked .pyc files stay
correct even while a file is being replaced.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import tempfile
from pathlib import Path

import sandbank

#: Files (relative to the ``sandbank`` package) the agent needs.
FIXED = ["errors.py", "protocol/__init__.py", "protocol/agent.py", "protocol/tarstream.py"]


def sources(package: Path | None = None) -> dict[str, Path | None]:
    """Relative destination -> source file (None: write an empty file)."""
    package = package or Path(sandbank.__file__).parent
    wanted: dict[str, Path | None] = {"sandbank/__init__.py": None}
    for rel in FIXED:
        wanted[f"sandbank/{rel}"] = package / rel
    agent = package / "agent"
    for path in sorted(agent.rglob("*.py")):
        wanted[f"sandbank/{path.relative_to(package).as_posix()}"] = path
    return wanted


def assemble(dest: Path, package: Path | None = None) -> list[str]:
    """Make ``dest`` hold exactly the agent's files; returns their relative paths."""
    wanted = sources(package)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    for rel, src in wanted.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(dest).parents:
            os.chmod(dest / parent, 0o755)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                if src is not None:
                    with open(src, "rb") as fh:
                        shutil.copyfileobj(fh, out)
            # Root inside is not host root: the files must be world-readable.
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    keep = {dest / rel for rel in wanted}
    for rel in wanted:
        source = dest / rel
        cached = Path(importlib.util.cache_from_source(str(source)))
        py_compile.compile(
            str(source),
            cfile=str(cached),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
        os.chmod(cached.parent, 0o755)
        os.chmod(cached, 0o644)
        keep.add(cached)
    for path in sorted(dest.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return sorted(wanted)
