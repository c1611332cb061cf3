"""A callback for the DDP test: at the end of fit, each rank writes its A (rho) to $VSMD_PROBE_DIR/rank<k>.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl


class RhoProbe(pl.Callback):
    def on_train_end(self, trainer, pl_module) -> None:
        out = {"world_size": trainer.world_size, "global_step": trainer.global_step,
               "rho": pl_module.process.rho.detach().flatten().tolist(), "sa_stages": pl_module.sa.stages}
        path = Path(os.environ["VSMD_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(out))
