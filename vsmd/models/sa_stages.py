"""The SA stage machine of VSMD's variational scores A, as a Lightning Callback with its own checkpoint state.

Every ``sa_every`` network steps (after ``sa_warmup``, before the last ``sa_cooldown``) a stage simulates backward
paths with the current network and takes ``sa_steps`` steps of the module's A optimiser (``pl_module.sa``, a
vsmd.diffusion.VariationalScoreSA). Stages run at the start of a step, so that a checkpoint written at the end of step
S (by ModelCheckpoint, before any module hook) resumes into the stage that step S + 1 begins with. The checkpoint
keeps the optimiser, its schedule and counters under ``vsmd_sa`` (rho itself is in the state dict).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback


class SAStages(Callback):
    """Runs the SA stages of a module with an ``sa`` (VSMDModule with an adaptive process)."""

    def __init__(self) -> None:
        self.done_at = -1  # global step of the last stage (guards against a double stage)

    def due(self, trainer, pl_module, step: int) -> bool:
        h = pl_module.hparams
        if pl_module.sa is None or step <= 0 or step < h.sa_warmup or step % h.sa_every:
            return False
        max_steps = trainer.max_steps if trainer is not None else -1
        return not (h.sa_cooldown and max_steps > 0 and step > max_steps - h.sa_cooldown)

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        step = pl_module.global_step
        if not self.due(trainer, pl_module, step) or self.done_at == step:
            return
        self.done_at = step
        sa = pl_module.sa
        seed = 1_000_003 * pl_module.hparams.seed + 7919 * pl_module.global_rank + sa.stages  # new paths per stage
        gen = torch.Generator(pl_module.device).manual_seed(seed)
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda x: trainer.strategy.reduce(x, reduce_op="mean")  # noqa: E731
        with pl_module.sampling_mode(pl_module.net) as net:
            info = sa.stage(pl_module.sa_score_fn(batch, net, gen), gen, reduce)
        pl_module.log_dict({"sa/loss": info["loss_after"], "sa/grad_norm": info["grad_norm"], "sa/lr": sa.lr,
                            "sa/seconds_total": sa.seconds}, on_step=True, on_epoch=False)
        if pl_module.frame_rotation is not None:  # the process now runs in the refined frame
            pl_module.refresh_frame()
            pl_module.log("sa/rotation_grad_norm", info["rotation_grad_norm"], on_step=True, on_epoch=False)
        pl_module.log_variational_scores()  # A only changes here, so it is logged here rather than every step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if pl_module.sa is not None:
            checkpoint["vsmd_sa"] = pl_module.sa.state_dict() | {"done_at": self.done_at}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("vsmd_sa")
        if pl_module.sa is None or state is None:
            return
        h = pl_module.hparams
        pl_module.sa.load_state_dict(state)
        self.done_at = int(state.get("done_at", -1))
        pl_module.sa.retune(h.sa_lr, h.sa_lr_decay, h.sa_lr_decay_every)  # the schedule of this run, not the old one
