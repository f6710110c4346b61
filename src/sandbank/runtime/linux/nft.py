"""nftables through its JSON API: libnftables in-process, ``nft -j`` as a fallback.

Commands are Python dicts serialized to JSON, never strings spliced into nft's
language: a sandbox id or a policy entry cannot change what a rule means.
One ``run`` is one kernel transaction, so a batch either applies whole or not
at all (a policy is replaced atomically).

libnftables costs ~1 ms a call where spawning ``nft`` costs ~5 ms; it is not
thread safe, so calls are serialized and a context lives for one call.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import shutil
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from sandbank.errors import RuntimeFailure

Command = dict[str, Any]

#: NFT_CTX_OUTPUT_JSON in libnftables.h
_OUTPUT_JSON = 1 << 4


class NftError(RuntimeFailure):
    """nft refused a batch; the message is nft's own."""


class _Lib:
    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self.lock = threading.Lock()

    def run(self, payload: bytes) -> tuple[int, str, str]:
        with self.lock:
            ctx = self.lib.nft_ctx_new(0)
            if not ctx:
                raise RuntimeFailure("libnftables: cannot create a context")
            try:
                self.lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
                self.lib.nft_ctx_buffer_output(ctx)
                self.lib.nft_ctx_buffer_error(ctx)
                rc = self.lib.nft_run_cmd_from_buffer(ctx, payload)
                out = self.lib.nft_ctx_get_output_buffer(ctx) or b""
                err = self.lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                self.lib.nft_ctx_free(ctx)
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


def _load() -> _Lib | None:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        return _Lib(ctypes.CDLL(name, use_errno=True))
    except (OSError, AttributeError):
        return None


class Nft:
    """Runs JSON batches; ``prefer_library=False`` forces the ``nft`` binary."""

    def __init__(self, prefer_library: bool = True) -> None:
        self._lib = _load() if prefer_library else None
        self._binary = shutil.which("nft")
        if self._lib is None and self._binary is None:
            raise RuntimeFailure(
                "nftables is not installed (neither libnftables nor nft): apt-get install nftables"
            )

    @property
    def backend(self) -> str:
        return "libnftables" if self._lib is not None else "nft"

    def run_sync(self, commands: Sequence[Command]) -> list[Command]:
        """Apply ``commands`` as one transaction; returns nft's JSON output objects."""
        payload = json.dumps({"nftables": list(commands)}).encode()
        if self._lib is not None:
            rc, out, err = self._lib.run(payload)
        else:
            assert self._binary is not None
            proc = subprocess.run(
                [self._binary, "-j", "-f", "-"],
                input=payload,
                capture_output=True,
                timeout=30,
                check=False,
            )
            rc, out, err = proc.returncode, proc.stdout.decode(), proc.stderr.decode()
        if rc != 0:
            raise NftError(f"nft: {err.strip() or 'failed'}")
        if not out.strip():
            return []
        items = json.loads(out).get("nftables", [])
        return [i for i in items if isinstance(i, dict)]

    async def run(self, commands: Sequence[Command]) -> list[Command]:
        return await asyncio.to_thread(self.run_sync, commands)

    def list_sync(self, kind: str, **ident: Any) -> list[Command] | None:
        """``list <kind>`` (table, chain, set, map); None when it does not exist."""
        try:
            return self.run_sync([{"list": {kind: ident}}])
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise


def element_keys(listing: list[Command], kind: str) -> set[str]:
    """The keys (plain, or of ``{"elem": {"val": ...}}`` members) in the output
    of ``list set``/``list map`` when they are strings (interface names)."""
    keys: set[str] = set()
    for item in listing:
        body = item.get(kind)
        if not isinstance(body, dict):
            continue
        for elem in body.get("elem") or []:
            key = elem[0] if isinstance(elem, list) else elem
            if isinstance(key, dict) and isinstance(key.get("elem"), dict):
                key = key["elem"].get("val")
            if isinstance(key, str):
                keys.add(key)
    return keys
