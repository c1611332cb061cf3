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


# Evaluation settings: for validate/test/predict with --ckpt_path, these come from the config and command line,
# not from the checkpoint (Lightning lets a checkpoint's hyper-parameters override both, which would silently
# ignore e.g. --model.init_args.sample_steps 50). Everything else (architecture, process) must match the
# weights and still comes from the checkpoint.
EVAL_SETTINGS = {"sampler", "sample_steps", "seed", "num_samples", "fid_weights", "fid_reference_images", "fid_cache",
                 "grid_size", "val_sample_steps", "n_straight", "straight_steps", "compile"}


class VSMDCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)  # reads only the hparams
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items()
                   if k not in EVAL_SETTINGS and k != "_instantiator"}
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        if hparams:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)

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
