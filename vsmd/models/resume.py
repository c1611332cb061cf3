"""What a resumed fit changes: the training settings of this run that differ from the checkpoint's.

The module class declares which options may change on resume (``SETTINGS.resume``, vsmd.settings). This callback
compares them with the checkpoint's at load, and at the start of training gives the network's optimiser this run's
learning rate and weight decay (the optimiser state came with the old ones) and prints what changed.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback


class ResumeChanges(Callback):
    """Applies and reports the ``resume`` settings that differ from the checkpoint's."""

    def __init__(self) -> None:
        self.changes: dict[str, tuple[Any, Any]] = {}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        h, old = pl_module.hparams, checkpoint.get("hyper_parameters", {})
        self.changes = {k: (old[k], h[k]) for k in pl_module.SETTINGS.resume if k in old and k in h and old[k] != h[k]}

    def on_train_start(self, trainer, pl_module) -> None:
        changes, self.changes = self.changes, {}
        if "lr" in changes:
            old, new = changes["lr"]
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] *= new / old
                    if "initial_lr" in group:
                        group["initial_lr"] *= new / old
            for cfg in trainer.lr_scheduler_configs:
                cfg.scheduler.base_lrs = [b * new / old for b in cfg.scheduler.base_lrs]
        if "weight_decay" in changes:
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["weight_decay"] = changes["weight_decay"][1]
        if changes:
            pl_module.print("resume with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                                                       changes.items()))
