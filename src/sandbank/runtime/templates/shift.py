"""Shift a rootfs's ownership into the sandboxes' uid range, once, at build time.

runc 1.1 cannot idmap mounts, and the template is the shared read-only lower
layer of every sandbox, so it is stored already owned by host uid/gid
``id + offset``: root inside (host ``offset``) then owns what root should own.

chown has side effects a plain walk would get wrong:

* it clears setuid/setgid bits (even for root), so ``sudo`` would lose its
  setuid bit: the mode is written back afterwards;
* it drops ``security.capability``, and a v2 file capability would not be
  honoured inside a user namespace anyway: it is written back as v3 with the
  namespace's root as ``rootid``;
* a hard-linked inode must be shifted once, not once per name.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

CAPS_XATTR = "security.capability"
_V2 = 0x02000000
_V3 = 0x03000000
_REVISION_MASK = 0xFF000000
_FLAGS_MASK = 0x000000FF
_V2_SIZE = 20
_V3_SIZE = 24


def caps_v3(raw: bytes, rootid: int) -> bytes:
    """A v2 or v3 ``security.capability`` value rewritten as v3 for ``rootid``."""
    if len(raw) < _V2_SIZE:
        raise ValueError("security.capability value is too short")
    (magic,) = struct.unpack_from("<I", raw)
    if magic & _REVISION_MASK not in (_V2, _V3):
        raise ValueError(f"unknown security.capability revision {magic:#x}")
    flags = magic & _FLAGS_MASK
    return struct.pack("<I", _V3 | flags) + raw[4:_V2_SIZE] + struct.pack("<I", rootid)


def shift_tree(root: Path, offset: int, id_range: int) -> int:
    """lchown everything under ``root`` (inclusive) by ``offset``; returns the inode count.

    Refuses ids at or above ``id_range``: they cannot be mapped into the
    sandbox, and finding one usually means the tree was already shifted.
    """
    seen: set[tuple[int, int]] = set()
    pending = [str(root)]
    count = 0
    while pending:
        path = pending.pop()
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as it:
                pending.extend(entry.path for entry in it)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if st.st_uid >= id_range or st.st_gid >= id_range:
            owner = f"{st.st_uid}:{st.st_gid}"
            raise ValueError(f"{path} is owned by {owner}, outside 0..{id_range - 1}")
        _shift_one(path, st, offset)
        count += 1
    return count


def _shift_one(path: str, st: os.stat_result, offset: int) -> None:
    caps: bytes | None = None
    if stat.S_ISREG(st.st_mode):
        try:
            caps = os.getxattr(path, CAPS_XATTR, follow_symlinks=False)
        except OSError:
            caps = None
    os.chown(path, st.st_uid + offset, st.st_gid + offset, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps:
        os.setxattr(path, CAPS_XATTR, caps_v3(caps, offset), follow_symlinks=False)
