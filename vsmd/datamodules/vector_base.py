"""What the vector DataModule (``VectorDataModule``, and ``Toy2DDataModule``, its toy form) gives a vector model
(``ToyVSMD``), whether its rows are generated (a toy) or read from a file:

- ``data_dim``: the dimension d (the model's ``data_dim`` must match it);
- ``fixed_set(split)``: the fixed real vectors (N, d) of "val", "test" and "predict" (for predict: its figure's real
  panel and scale), in the coordinates the model learns;
- ``train_dataloader()``: an endless seeded stream of training batches (B, d) whose position is saved in
  checkpoints (``StreamLoader``), so a resumed fit draws on instead of replaying the first batches; train with
  ``trainer.max_steps``;
- the val loader in batches of ``batch_size``, the test loader as one batch (the whole real test set, so the metrics
  compare full sets), and the predict loader as one batch of ``n_predict`` indices (the number of samples to
  generate);
- ``standardisation``: None, or the per-coordinate (mean, std) (float64, (d,)) that took the data to the model's
  coordinates, x_model = (x - mean) / std; ``unstandardised(x)`` takes vectors back to the data's units.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


def standardised(x: Tensor, standardisation: tuple[Tensor, Tensor] | None) -> Tensor:
    """Vectors in the data's units -> the model's coordinates, (x - mean) / std (computed in float64, returned in x's
    dtype); x itself for no standardisation (None)."""
    s = standardisation
    return x if s is None else ((x.double() - s[0].to(x.device)) / s[1].to(x.device)).to(x.dtype)


class StreamLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints, so a resumed run draws new batches
    instead of replaying the first ones (it may skip the one batch that was prefetched)."""

    def state_dict(self) -> dict:
        return {"position": self.dataset.position}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.position = int(state["position"])


class VectorDataBase(pl.LightningDataModule):
    """The shared part of the vector DataModules (module docstring); subclasses set ``data_dim``, ``batch_size`` and
    ``n_predict`` and define ``fixed_set`` and ``train_dataloader``."""

    data_dim: int
    batch_size: int
    n_predict: int

    def fixed_set(self, split: str) -> Tensor:
        raise NotImplementedError

    @property
    def standardisation(self) -> tuple[Tensor, Tensor] | None:
        """None: the model learns the data in their own units."""
        return None

    def standardised(self, x: Tensor) -> Tensor:
        """Vectors in the data's units -> the model's coordinates, (x - mean) / std (computed in float64)."""
        return standardised(x, self.standardisation)

    def unstandardised(self, x: Tensor) -> Tensor:
        """Vectors in the model's coordinates (e.g. generated samples) -> the data's units, x * std + mean."""
        s = self.standardisation
        return x if s is None else (x.double() * s[1].to(x.device) + s[0].to(x.device)).to(x.dtype)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.fixed_set("val"), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        # One batch: the whole real test set, so the metrics compare full sets.
        real = self.fixed_set("test")
        return DataLoader(real, batch_size=len(real))

    def predict_dataloader(self) -> DataLoader:
        # One batch whose size is the number of samples to generate.
        return DataLoader(TensorDataset(torch.arange(self.n_predict)), batch_size=self.n_predict)
