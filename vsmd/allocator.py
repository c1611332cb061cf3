"""The C allocator setting of ``vsmd`` runs: freed memory is kept for reuse instead of handed back to the kernel.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives it
back with ``munmap`` on free. A training step of a large network allocates and frees the same big activations at
every step (the Electricity-size forecaster: 73 MB each), so each step pays for the kernel mapping and zeroing those
pages again: half of that step's time on this project's 2-core reference machine (benchmarks/results/speed.md).
``keep_freed_memory`` turns mmap off for malloc (``M_MMAP_MAX`` 0) and never trims the heap (``M_TRIM_THRESHOLD``
2^31 - 1), as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`` does. The process
then holds on to its peak memory (the Electricity-size run: about 1.4 GB more resident); results do not change.

``vsmd fit``, ``test`` and ``predict`` (and ``vsmd.fit``, which runs the same command) call it at start-up. Set the
environment variable ``VSMD_MALLOC=system`` to keep the C library's own setting. It does nothing where the C library
is not glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Applies the setting once per process; returns whether it is in force (False: opted out or not glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    choice = os.environ.get("VSMD_MALLOC", "reuse").strip().lower()
    if choice == "system":
        return False
    if choice != "reuse":
        raise ValueError(f"VSMD_MALLOC={choice!r} is not a setting: use 'reuse' (the default: keep freed memory for "
                         "reuse) or 'system' (the C library's own malloc setting)")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        _applied = False
    return _applied
