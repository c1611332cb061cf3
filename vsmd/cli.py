"""The ``vsmd`` command: LightningCLI with fit / validate / test / predict and YAML configs under configs/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch  # noqa: E402
from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

import vsmd.datamodules  # noqa: E402,F401  (registers the DataModules for class_path short names)
from vsmd.models import VSMDModule  # noqa: E402

_CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be read."""


def check_checkpoint(path: str | os.PathLike) -> None:
    """Fail early, with what to do, when a checkpoint is missing, unreadable or not a Lightning checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p} (look under <run>/checkpoints/, e.g. last.ckpt)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {p} is corrupt or not a PyTorch file ({type(err).__name__}: {err}); "
                              "use another checkpoint of the run, e.g. last.ckpt or an earlier step") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by vsmd fit")


class VSMDCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and str(ckpt) not in _CKPT_KEYWORDS:
            check_checkpoint(ckpt)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``vsmd`` console command (``args`` lets tests call it in-process)."""
    try:
        VSMDCLI(VSMDModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args)
    except (CheckpointError, FloatingPointError, FileNotFoundError, ValueError) as err:
        if os.environ.get("VSMD_DEBUG"):
            raise
        print(f"vsmd: error: {err}\n(set VSMD_DEBUG=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
