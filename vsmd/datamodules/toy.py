"""``Toy2DDataModule``: the 2-D toys' DataModule of the configs before the toys became a source of
``VectorDataModule`` (``dataset: spiral``), kept so that its configs and checkpoints load and give the same numbers.
The toys themselves are in vsmd.datamodules.toy_source (re-exported here)."""

from __future__ import annotations

from vsmd.datamodules.toy_source import DATASETS, ToySource, check_toy, checkerboard, make_toy, rotation_matrix, spiral
from vsmd.datamodules.vector_base import StreamLoader
from vsmd.datamodules.vectors import VectorDataModule
from vsmd.settings import SettingsPolicy

__all__ = ["DATASETS", "StreamLoader", "Toy2DDataModule", "checkerboard", "make_toy", "rotation_matrix", "spiral"]


class Toy2DDataModule(VectorDataModule):
    """Spiral or checkerboard with a per-axis stretch (spiral-8Y: stretch [1, 8]; checkerboard-6X: [6, 1]): the same
    as ``VectorDataModule(dataset=..., stretch=..., ...)`` (the toy source), with the defaults below.

    Training batches are drawn fresh from a seeded stream (use ``trainer.max_steps``); validation, test
    and predict sets are fixed draws from other seeds. The toys are used in their own units (no standardisation).

    Args:
        dataset: "spiral" or "checkerboard".
        stretch: multiply x and y by these factors.
        rotate: then rotate the data by this many degrees about the origin (counter-clockwise), e.g. 45 for a
            stretch off the coordinate axes, which a diagonal A cannot follow (model ``rotation: pca`` can).
        batch_size: training batch size.
        n_val: validation set size.
        n_test: real samples for the test metrics (3000 in the paper's PMF-RMSE).
        n_predict: samples ``vsmd predict`` generates.
        seed: seed of the data stream and of the fixed sets.
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings)
    DATA_SETTINGS = SettingsPolicy(data=("dataset", "stretch", "rotate"),
                                   loading=("batch_size", "n_val", "n_test", "n_predict", "seed"))

    def __init__(self, dataset: str = "spiral", stretch: list[float] = [1.0, 8.0], batch_size: int = 512,
                 n_val: int = 2000, n_test: int = 3000, n_predict: int = 3000, seed: int = 0,
                 rotate: float = 0.0) -> None:
        # VectorDataBase's init, not VectorDataModule's: the saved options are this class's own
        super(VectorDataModule, self).__init__()
        check_toy(dataset, stretch, rotate)
        if min(batch_size, n_val, n_test, n_predict) < 1:
            raise ValueError("batch_size, n_val, n_test and n_predict must be >= 1")
        self.save_hyperparameters()
        self.serve(ToySource(dataset, stretch, rotate, n_val, n_test, n_predict, seed), batch_size, n_predict, seed)
        self.dataset, self.stretch, self.rotate = dataset, self.source.stretch, self.source.rotate
        self.n_val, self.n_test = n_val, n_test
