"""vsmd/nvml.py: where NVML cannot be loaded, torch's CUDA check goes to the CUDA runtime at once (the same answer),
instead of trying to load NVML at every optimiser step. Checked in subprocesses (the setting is an environment variable
of the process, which Lightning's import sets)."""

import os
import platform
import subprocess
import sys

import pytest

from vsmd import nvml

PROBE = r"""
import os, sys
import lightning.pytorch  # sets PYTORCH_NVML_BASED_CUDA_CHECK=1
import torch
before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), torch.cuda.is_available()
if sys.argv[1] == "cli":
    from vsmd.cli import main
    try:
        main(["fit", "--print_config=skip_null"], raise_errors=True)
    except SystemExit:
        pass
else:
    from vsmd.nvml import skip_missing_nvml
    print("changed", skip_missing_nvml())
print("before", *before)
print("after", os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), torch.cuda.is_available())
"""

linux = pytest.mark.skipif(platform.system() != "Linux", reason="the NVML probe is Linux's")


def _probe(mode: str) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != nvml.VARIABLE}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.split()}


@linux
@pytest.mark.parametrize("mode", ["direct", "cli"])
def test_the_check_skips_nvml_only_where_it_cannot_be_loaded(mode):
    lines = _probe(mode)
    assert lines["before"][0] == "1"  # as Lightning sets it
    expected = "1" if nvml.nvml_loadable() else "0"
    assert lines["after"][0] == expected
    assert lines["after"][1] == lines["before"][1]  # torch.cuda.is_available() gives the same answer
    if mode == "direct":
        assert lines["changed"] == [str(expected == "0")]


def test_nothing_changes_where_nvml_loads_or_the_check_was_not_asked_for(monkeypatch):
    import torch

    monkeypatch.setattr(nvml.platform, "system", lambda: "Linux")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv(nvml.VARIABLE, "1")
    monkeypatch.setattr(nvml, "nvml_loadable", lambda: True)
    assert not nvml.skip_missing_nvml() and os.environ[nvml.VARIABLE] == "1"
    monkeypatch.setattr(nvml, "nvml_loadable", lambda: False)
    monkeypatch.delenv(nvml.VARIABLE)
    assert not nvml.skip_missing_nvml() and nvml.VARIABLE not in os.environ
    monkeypatch.setenv(nvml.VARIABLE, "1")
    assert nvml.skip_missing_nvml() and os.environ[nvml.VARIABLE] == "0"


def test_a_missing_library_is_reported_as_not_loadable(monkeypatch):
    monkeypatch.setattr(nvml, "NVML", "libvsmd-no-such-library.so.0")
    assert not nvml.nvml_loadable()


@pytest.mark.parametrize("build", ["rocm", "cpu"])
def test_a_rocm_or_cpu_only_torch_is_left_as_it_is(monkeypatch, build):
    import torch

    monkeypatch.setattr(nvml.platform, "system", lambda: "Linux")
    monkeypatch.setattr(nvml, "nvml_loadable", lambda: False)
    monkeypatch.setenv(nvml.VARIABLE, "1")
    monkeypatch.setattr(torch.version, "cuda", None if build == "cpu" else "13.0")
    monkeypatch.setattr(torch.version, "hip", "6.4" if build == "rocm" else None)
    assert not nvml.skip_missing_nvml() and os.environ[nvml.VARIABLE] == "1"
