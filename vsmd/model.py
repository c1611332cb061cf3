"""A trained model from Python (what ``vsmd.load`` and ``vsmd.fit`` return): samples, forecasts and
trajectories in the data's own coordinates, with the data settings it was trained with."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from vsmd.caller import python_api
from vsmd.cli import check_same_data
from vsmd.diffusion.trajectory_sampling import resample
from vsmd.metrics.trajectory import state_at
from vsmd.settings import resolve


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """No "GPU available" lines from the Trainers the API makes."""
    lg = logging.getLogger("lightning.pytorch")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(level)


@contextlib.contextmanager
def evaluation_settings(module: pl.LightningModule, settings: Mapping[str, Any]) -> Iterator[None]:
    """The module's evaluation settings (its class's ``SETTINGS.evaluation``: sampler, sample_steps, seed, ...) set
    to ``settings`` for the duration, as ``vsmd test --model.init_args.<name>`` sets them; others are refused."""
    allowed = tuple(getattr(getattr(type(module), "SETTINGS", None), "evaluation", ()))
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise ValueError(f"{', '.join(bad)}: not an evaluation setting of {type(module).__name__}, whose evaluation "
                         f"settings are {', '.join(allowed)} (the other options are fixed by the checkpoint)")
    missing = object()
    old = {k: module.hparams.get(k, missing) for k in settings}
    module.hparams.update(settings)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is missing:
                module.hparams.pop(k, None)
            else:
                module.hparams[k] = v


def grid_for_nfe(nfe: int, probe: Callable[[int], int]) -> int:
    """The grid points at which a sampler makes ``nfe`` network evaluations. ``probe(n)`` is the NFE at n points
    (measured on one sample: the count is affine in n for every sampler, t_stop's extra call and AGM's hop
    included)."""
    a, b = probe(4), probe(5)
    per, base = b - a, a - 4 * (b - a)
    steps, rest = divmod(nfe - base, per)
    if rest or steps < 2:
        near = sorted({per * k + base for k in range(2, 2 + max(steps, 0) + 3)}, key=lambda v: (abs(v - nfe), v))[:2]
        raise ValueError(f"this sampler cannot make exactly {nfe} network evaluations: at n grid points (n >= 2) it "
                         f"makes {per} n {'+' if base >= 0 else '-'} {abs(base)}; pass nfe={near[0]} or "
                         f"{near[-1]}, or steps=n")
    return steps


class Model:
    """A trained vsmd model and the data settings it was trained with.

    Attributes:
        module: the LightningModule (``ToyVSMD``, ``TimeSeriesVSMD``, ``ImageVSMD``, ``TrajectoryBridge``, ...) in
            eval mode; its options are ``module.hparams``.
        checkpoint: the checkpoint it was loaded from.
        data_class: the class path of the DataModule it was trained with.
        data_settings: that DataModule's options (``data.init_args`` of its config).
        run_dir: the run folder ``runs/<name>/version_N`` of ``vsmd.fit`` (None after ``vsmd.load``).
    """

    def __init__(self, module: pl.LightningModule, checkpoint: Path | None = None, data_class: str | None = None,
                 data_settings: dict[str, Any] | None = None, datamodule: LightningDataModule | None = None) -> None:
        """A model you trained yourself is ``vsmd.Model(module, datamodule=dm)``; ``vsmd.load`` and
        ``vsmd.fit`` fill in the rest."""
        self.module, self.checkpoint = module, checkpoint
        self.data_class, self.data_settings = data_class, dict(data_settings or {})
        self.run_dir: Path | None = None
        self._datamodule: LightningDataModule | None = None
        if datamodule is not None:
            self.datamodule = datamodule

    def __repr__(self) -> str:
        steps = getattr(self.module, "trained_steps", 0)
        return f"Model({type(self.module).__name__}, {steps} steps, from {self.checkpoint})"

    # ----------------------------------------------------------------------------------------------
    @property
    @python_api
    def datamodule(self) -> LightningDataModule:
        """The data: the DataModule the checkpoint was trained with, built from its saved options on first use,
        or one you set (``model.datamodule = dm``; checked as ``vsmd test`` checks a config's data)."""
        if self._datamodule is None:
            cls = resolve(self.data_class)
            if cls is None:
                raise ValueError(f"{self.checkpoint} records no DataModule vsmd can build ({self.data_class}); set "
                                 "one: model.datamodule = vsmd.datamodules.<DataModule>(...)")
            try:
                self._datamodule = cls(**self.data_settings)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{err} (the model was trained on it). Set the data yourself: "
                                        "model.datamodule = vsmd.datamodules.<DataModule>(path=...), or "
                                        "vsmd.load(..., datamodule=...)") from None
        return self._datamodule

    @datamodule.setter
    @python_api
    def datamodule(self, datamodule: LightningDataModule) -> None:
        self.check_data(datamodule)
        self._datamodule = datamodule

    @python_api
    def check_data(self, datamodule: LightningDataModule) -> None:
        """Refuse data other than the model's: another DataModule class or another value of an option that defines
        the data (vsmd.cli.check_same_data, the check of ``vsmd test``)."""
        given = (f"{type(datamodule).__module__}.{type(datamodule).__name__}",
                 dict(getattr(datamodule, "hparams", {})))
        check_same_data(self.checkpoint or "the model", (self.data_class, self.data_settings), given,
                        "(use the DataModule the model was trained with, or none: the checkpoint's own is built)")

    def _needs(self, method: str, what: str) -> pl.LightningModule:
        m = self.module
        able = {"sample": hasattr(m, "generate") and not hasattr(m, "forecast"), "forecast": hasattr(m, "forecast"),
                "trajectories": hasattr(m, "trajectories")}
        if not able[method]:
            has = [k for k, v in able.items() if v]
            raise TypeError(f"a {type(m).__name__} model does not {what}; it has model.{has[0]}(...)" if has else
                            f"a {type(m).__name__} model does not {what}")
        return m

    # ----------------------------------------------------------------------------------------------
    def to_data_units(self, x: Tensor) -> Tensor:
        """Vectors in the model's coordinates -> the data's units: the module's own ``to_data_units`` where it has
        one, else the DataModule's ``unstandardised`` (the standardisation of a VectorDataModule); else as they
        are."""
        own = getattr(self.module, "to_data_units", None)
        if own is not None:
            return own(x)
        undo = getattr(self.datamodule, "unstandardised", None) if self.data_class or self._datamodule else None
        return undo(x) if undo is not None else x

    @python_api
    def steps_for_nfe(self, nfe: int, **settings: Any) -> int:
        """The grid points (``sample_steps``) at which the sampler makes exactly ``nfe`` network evaluations per sample
        (per forecast step), with the evaluation ``settings`` given (``sampler=...``; default: the model's). The count
        is measured on one sample at two grid sizes: it is affine in the grid points for every sampler (heun:
        2 n - 1; em, sscs, ei: n - 1, plus 1 for the data estimate at a t_stop; AGM's integrator: n)."""
        m = self.module
        if not hasattr(m, "generate"):
            raise TypeError(f"a {type(m).__name__} model has no sampler NFE; give its simulation steps (steps=)")
        with evaluation_settings(m, settings):
            if hasattr(m, "forecast"):
                from vsmd.models.timeseries import n_time_features

                if m.prediction_length is None:
                    m.prediction_length = self.datamodule.prediction_length
                history = m.window_history(m.prediction_length)
                target = torch.ones(1, history, m.hparams.target_dim, device=m.device)
                feat = torch.zeros(1, history + 1, n_time_features(m.hparams.freq), device=m.device)
                return grid_for_nfe(nfe, lambda s: m.forecast(target, feat, 1, steps=s)[1])
            return grid_for_nfe(nfe, lambda s: m.generate(1, steps=s).nfe)

    @python_api
    def sample(self, n: int, sampler: str | None = None, nfe: int | None = None, steps: int | None = None,
               seed: int = 0, return_state: bool = False) -> Tensor:
        """``n`` samples with the EMA network, in the data's own coordinates.

        Args:
            n: how many.
            sampler: "heun", "sscs", "em" or "ei" (AGM: "ei"); None: the model's ``sampler``.
            nfe: network evaluations per sample; the grid points that give exactly this many are found (heun:
                2 n - 1; em, sscs, ei: n - 1, plus 1 with a t_stop; AGM's ei: n). An NFE the sampler cannot make is
                an error naming the nearest ones.
            steps: grid points of the sampler instead of ``nfe``; None (and no nfe): the model's ``sample_steps``.
            seed: the seed of the sampler's noise (the same seed gives the same samples).
            return_state: return the sampler's final phase-space state (n, n_state * d) (x, then v for momentum
                processes) in the model's coordinates instead of the data.

        Returns:
            (n, d) vectors in the data's units (a VectorDataModule's standardisation undone), or images
            (n, C, H, W) in [-1, 1].
        """
        m = self._needs("sample", "sample unconditionally")
        if nfe is not None and steps is not None:
            raise ValueError("give nfe or steps, not both")
        if nfe is not None:
            steps = self.steps_for_nfe(nfe, **({"sampler": sampler} if sampler else {}))
        with evaluation_settings(m, {"sampler": sampler} if sampler else {}):
            if return_state:
                return m.generate(n, steps=steps, seed=seed).state
            if hasattr(m, "generate_images"):
                return m.generate_images(n, seed, steps)[0]
            return self.to_data_units(m.process.split(m.generate(n, steps=steps, seed=seed).state)[0])

    # ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _attached(self, datamodule: LightningDataModule) -> Iterator[None]:
        """The DataModule as a Trainer holding this model sees it (a forecasting window's length is the model's)."""
        with quiet_lightning():
            trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, enable_checkpointing=False)
        trainer.strategy.connect(self.module)
        old, datamodule.trainer = datamodule.trainer, trainer
        try:
            yield
        finally:
            datamodule.trainer = old

    @python_api
    def test_windows(self) -> dict[str, Any]:
        """The rolling test windows of a forecaster's data, as ``vsmd test`` scores them: ``target`` (W, history, D),
        ``future`` (W, H, D), ``time_feat`` (W, history + H, F), ``forecast_start`` (W period strings)."""
        self._needs("forecast", "forecast")
        dm = self.datamodule
        with self._attached(dm):
            dm.setup("test")
            return dm.test_windows()

    @python_api
    def future_window(self) -> dict[str, Any]:
        """The window after the data's last time step, as ``forecast(future=True)`` forecasts it: ``target``
        (1, history, D), ``time_feat`` (1, history + H, F), ``forecast_start`` (1 period string), ``times`` (the H
        future periods, derived from the data's frequency: [[...]]) and ``series`` (the D series' names)."""
        self._needs("forecast", "forecast")
        dm = self.datamodule
        with self._attached(dm):
            dm.setup("predict")
            return dm.future_window() | {"series": dm.series_names}

    @python_api
    def forecast(self, target: Tensor | None = None, time_feat: Tensor | None = None, num_samples: int | None = None,
                 sampler: str | None = None, nfe: int | None = None, steps: int | None = None,
                 seed: int = 0, future: bool = False) -> Tensor:
        """Sample paths of a forecaster, autoregressively, in the data's units.

        Args:
            target: (B, history, D) observed values, history = ``module.window_history(H)``; None (with
                ``time_feat`` None): the test windows of the data (``test_windows``).
            time_feat: (B, history + H, F) time features of the history and the H steps to forecast.
            num_samples: sample paths per window; None: the model's ``num_samples``.
            sampler, nfe, steps, seed: as for ``sample`` (nfe per forecast step).
            future: forecast the H steps after the data's last time step (B = 1; their times and the series'
                names: ``future_window()``) instead of the test windows.

        Returns:
            (B, num_samples, H, D) forecasts.
        """
        m = self._needs("forecast", "forecast")
        if (target is None) != (time_feat is None):
            raise ValueError("give target and time_feat together, or neither (the test windows of the data)")
        if future and target is not None:
            raise ValueError("give target and time_feat, or future=True (the window after the data's last time "
                             "step), not both")
        if nfe is not None and steps is not None:
            raise ValueError("give nfe or steps, not both")
        if target is None:
            w = self.future_window() if future else self.test_windows()
            target, time_feat = w["target"], w["time_feat"]
        if m.prediction_length is None:  # the training windows' horizon sets the context the scale is taken over
            m.prediction_length = self.datamodule.prediction_length
        target, time_feat = (torch.as_tensor(x, dtype=torch.float32, device=m.device) for x in (target, time_feat))
        if nfe is not None:
            steps = self.steps_for_nfe(nfe, **({"sampler": sampler} if sampler else {}))
        with evaluation_settings(m, {"sampler": sampler} if sampler else {}):
            return m.forecast(target, time_feat, num_samples, steps=steps, seed=seed)[0]

    # ----------------------------------------------------------------------------------------------
    @python_api
    def trajectories(self, times: Sequence[float], n: int | None = None, x0: Tensor | None = None,
                     steps: int | None = None, seed: int = 0) -> Tensor:
        """Positions of simulated trajectories at ``times`` (in the data's time units, within the training span).

        Args:
            times: the times to report, e.g. a held-out snapshot's time or any time between the first and last.
            n: trajectories, started from points of the first snapshot drawn with replacement (seeded); None: one
                from each point of the first test snapshot.
            x0: (B, d) start points at the first snapshot time instead (in the DataModule's space).
            steps: simulation steps over the span; None: the model's ``sample_steps``.
            seed: the seed of the start points and the simulation's noise.

        Returns:
            (len(times), n, d) positions, in the DataModule's space (the data's coordinates unless it applies
            ``pca`` or ``whiten``; ``model.datamodule.space`` says which).
        """
        m = self._needs("trajectories", "simulate trajectories")
        if x0 is not None and n is not None:
            raise ValueError("give n or x0, not both")
        if x0 is None:
            dm = self.datamodule
            dm.check_model(m.hparams.data_dim, m.data_identity)
            first = dm.snapshots("test").points[0]
            x0 = first if n is None else resample(first, n, seed)
        times = [float(t) for t in times]
        xs, grid, _ = m.trajectories(torch.as_tensor(x0), times, steps=steps, seed=seed)
        return torch.stack([state_at(xs, grid, t) for t in times])
