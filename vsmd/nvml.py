"""Torch's CUDA availability check without a library that is not there: one less system call per optimiser step.

Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that ``torch.cuda.is_available()`` asks NVML (the
NVIDIA driver's management library) instead of initialising CUDA, which would poison processes forked later. torch's
Adam and AdamW call ``torch.accelerator.is_available()`` at every step, and where NVML is missing (every machine
without the NVIDIA driver, while the PyPI torch wheels are built with CUDA) each call tries to load it with
``dlopen``, fails, and then asks the CUDA runtime, which says "no device" without starting a context. That search of
the library path was about 0.3 ms of a 6 ms toy step on the project's 2-core reference machine
(benchmarks/results/speed.md).

``skip_missing_nvml`` checks once whether NVML can be loaded. Where it cannot, it sets the variable to ``0``, so that
the check goes to the CUDA runtime at once: the same answer, and the same call that the NVML path falls back to. With
NVML present nothing changes. ``vsmd fit``, ``test`` and ``predict`` (and ``vsmd.fit``) call it at start-up, next to
the malloc setting (vsmd/allocator.py).
"""

from __future__ import annotations

import ctypes
import os
import platform

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML = "libnvidia-ml.so.1"  # the name torch's NVML probe loads on Linux


def nvml_loadable() -> bool:
    try:
        ctypes.CDLL(NVML)
    except OSError:
        return False
    return True


def skip_missing_nvml() -> bool:
    """Where NVML-based checks are asked for (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, as Lightning sets it), torch is
    built for CUDA (not ROCm, whose device count never uses NVML, and not a CPU-only build, which never asks), the
    system is Linux and NVML cannot be loaded, set the variable to ``0``; returns whether it did."""
    import torch

    if os.environ.get(VARIABLE) != "1" or platform.system() != "Linux" or torch.version.cuda is None \
            or torch.version.hip is not None or nvml_loadable():
        return False
    os.environ[VARIABLE] = "0"
    return True
