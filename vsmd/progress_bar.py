"""The training progress bar of ``vsmd fit``: Lightning's TQDM bar, redrawn at most ten times a second.

Lightning's ``TQDMProgressBar`` (refresh_rate 1) redraws the bar and rebuilds its metrics at every training step.
On a small network that is a visible share of the step: about 0.25 ms of a 6 ms toy step on the project's 2-core
reference machine (4%; docs/benchmarks.md). ``SteadyProgressBar`` redraws the training bar when ``interval`` seconds
have passed since the last redraw (its ``refresh_rate`` is not used for it), and brings it up to date before a
validation and at the end of an epoch or of the fit, so the bar reads the same to the eye and ends on the last step.
The CLI adds it where the Trainer shows a bar, the config brings no progress bar of its own, and Lightning's default
would be the TQDM bar (with ``rich`` installed, Lightning's default is its Rich bar, which vsmd leaves alone).
"""

from __future__ import annotations

import math
import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

RICH = bool(_RICH_AVAILABLE)  # Lightning's default bar is then its RichProgressBar, which vsmd keeps


class SteadyProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training bar is redrawn at most every ``interval`` seconds, and brought up to date
    before validations and at the end of each epoch and of the fit."""

    def __init__(self, interval: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval = interval
        self._drawn_at = -math.inf
        self._done = 0  # training batches finished in this epoch
        self._shown = 0  # the count the bar shows

    def _draw(self, trainer, pl_module) -> None:
        bar = self.train_progress_bar
        self._drawn_at = time.monotonic()
        if bar is None or bar.disable or self._shown == self._done:
            return
        bar.n = self._shown = self._done
        bar.refresh()
        bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._done = self._shown = 0
        self._drawn_at = -math.inf  # a new epoch's bar shows its first batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self._done = batch_idx + 1
        total = self.train_progress_bar.total if self.train_progress_bar is not None else None
        last = (total is not None and math.isfinite(total) and self._done >= total) \
            or (trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step)
        if last or time.monotonic() - self._drawn_at >= self.interval:
            self._draw(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module)
        super().on_validation_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._draw(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._draw(trainer, pl_module)
        super().on_train_end(trainer, pl_module)
