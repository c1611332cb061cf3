"""How the data reach a model's data-informed start: through the DataModule's ``moment_batches()``.

At the start of a fit a model may need the training data's moments (VSMDModule: rho_init "data", rotation "pca" /
"learned", agm_scale "data"). A DataModule offers them as

    moment_batches() -> Iterable: the training batches, from the start of the stream, for the data moments (a
    fresh iterable on every call; the model reads as many as it needs).

:class:`DataMoments` (a callback the model installs with ``configure_callbacks``) hands the model that method at
``on_fit_start``, the Lightning hook where the trainer's DataModule is known, so that the model itself never
reaches into the trainer for its data. A DataModule without ``moment_batches`` (vsmd's own: their training stream is
what the moments should see) lends its ``train_dataloader``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lightning.pytorch import Callback


def moment_source(datamodule) -> Callable[[], Iterable] | None:
    """The DataModule's ``moment_batches`` (its ``train_dataloader`` if it has none; None without a DataModule)."""
    if datamodule is None:
        return None
    return getattr(datamodule, "moment_batches", None) or datamodule.train_dataloader


class DataMoments(Callback):
    """At the start of a fit: ``pl_module.start_from_data(moment_batches)`` with the DataModule's method."""

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.start_from_data(moment_source(trainer.datamodule))
