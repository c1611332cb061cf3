"""vsmd's malloc setting (vsmd/allocator.py): big tensors come from the reused heap, not a fresh mmap per allocation.

Checked through /proc/self/maps in a subprocess per case (the setting is per process and cannot be undone): the
address of a 64 MiB tensor lies in the ``[heap]`` mapping with the setting, outside it without."""

import os
import platform
import subprocess
import sys

import pytest

glibc_linux = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="the setting applies to glibc on Linux only")

PROBE = r"""
import sys
import torch
from vsmd.allocator import keep_freed_memory
if sys.argv[1] == "cli":
    from vsmd.cli import main
    try:
        main(["fit", "--print_config=skip_null"], raise_errors=True)  # any command: the setting comes first
    except SystemExit:
        pass
else:
    print("applied", keep_freed_memory())
x = torch.empty(16 * 2**20)
ptr = x.data_ptr()
for line in open("/proc/self/maps"):
    lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
    if lo <= ptr < hi:
        print("in", line.split()[-1] if line.strip().endswith("]") else "anonymous")
        break
"""


def _probe(mode: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VSMD_MALLOC"}
    if env_value is not None:
        env["VSMD_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=300)


@glibc_linux
def test_big_tensors_come_from_the_heap_after_the_setting():
    out = _probe("direct", None)
    assert out.returncode == 0, out.stderr
    assert "applied True" in out.stdout and "in [heap]" in out.stdout, out.stdout


@glibc_linux
def test_the_cli_applies_it_at_start_up():
    out = _probe("cli", None)
    assert out.returncode == 0, out.stderr
    assert "in [heap]" in out.stdout, out.stdout


@glibc_linux
def test_vsmd_malloc_system_keeps_the_c_librarys_setting():
    out = _probe("direct", "system")
    assert out.returncode == 0, out.stderr
    assert "applied False" in out.stdout and "in [heap]" not in out.stdout, out.stdout


def test_an_unknown_vsmd_malloc_value_is_refused_in_words():
    out = _probe("direct", "fast")
    assert out.returncode != 0
    assert "VSMD_MALLOC='fast' is not a setting: use 'reuse'" in out.stderr and "'system'" in out.stderr
