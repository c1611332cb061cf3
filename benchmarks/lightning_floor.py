"""The floor's step inside Lightning's automatic loop (issue 26): what Lightning's own per-step machinery costs.

``benchmarks/speed.py`` times vsmd against a bare loop (the floor). vsmd is a Lightning application, so part of the
gap is Lightning's training loop itself: the fetch through a DataLoader, the optimiser closure, the hooks of the
module and of the Trainer's callbacks, gradient clipping through the precision plugin, progress tracking. To separate
that part from vsmd's own code, ``run`` trains the floor's exact step (its networks, ``Floor.loss``, AdamW, clipping
and EMA) as a minimal LightningModule under a bare Trainer: automatic optimisation, ``gradient_clip_val`` as the row's
config sets it, no logger, no checkpoints, no callbacks of its own, a loader of integers (the floor cycles its own
batches). Its blocks alternate with blocks of the plain floor in the same process, as the vsmd blocks do.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings

import torch
from torch import nn


def run(floor, block: int, n_blocks: int, clip: float | None, threads: int) -> tuple[list[float], list[float]]:
    """``n_blocks + 1`` blocks of ``block`` steps of the floor's step under Lightning, each followed by a block of
    the plain floor; returns the seconds of each (Lightning's, the floor's)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    class FloorModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.nets = nn.ModuleList(floor.nets)

        def training_step(self, batch, batch_idx):
            return floor.loss()

        def configure_optimizers(self):
            if floor.sched is None:
                return floor.opt
            return {"optimizer": floor.opt, "lr_scheduler": {"scheduler": floor.sched, "interval": "step"}}

        def optimizer_step(self, *args, **kwargs) -> None:
            super().optimizer_step(*args, **kwargs)
            floor.update_ema()

    lightning_t: list[float] = []
    floor_t: list[float] = []

    class Interleave(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step % block:
                return
            lightning_t.append(time.perf_counter() - self.t0)
            floor_t.append(floor.run(block))
            self.t0 = time.perf_counter()

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=block * (n_blocks + 1), gradient_clip_val=clip,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, callbacks=[Interleave()], num_sanity_val_steps=0)
            trainer.fit(FloorModule(), DataLoader(range(2**40), batch_size=None))
    finally:
        torch.set_num_threads(before)
    return lightning_t, floor_t
