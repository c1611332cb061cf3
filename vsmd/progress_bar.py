"""The training progress bar of ``vsmd fit``: Lightning's TQDM bar, redrawn at most ten times a second.

Lightning's ``TQDMProgressBar`` (refresh_rate 1) redraws the bar and rebuilds its metrics at every training step.
On a small network that is a visible share of the step: about 0.25 ms of a 6 ms toy step on the project's 2-core
reference machine (4%; benchmarks/results/speed.md). ``SteadyProgressBar`` skips the redraws that come sooner than
``interval`` seconds after the last one, and always draws the fit's last step, so the bar reads the same to the eye.
The CLI adds it where the Trainer shows a bar and the config brings no progress bar of its own.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class SteadyProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training bar is redrawn at most every ``interval`` seconds (and at the last step)."""

    def __init__(self, interval: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval = interval
        self._drawn_at = -math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        total = bar.total if bar is not None else None
        last = (total is not None and math.isfinite(total) and batch_idx + 1 >= total) \
            or (trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step)
        now = time.monotonic()
        if not last and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
