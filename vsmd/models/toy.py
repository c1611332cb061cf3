"""The vector task (the paper's spiral-8Y and checkerboard-6X, and a user's own vectors of any dimension) for both
generative families: MLP network, the metric bundle of vsmd.metrics.vectors and straightness, sample and path figures.
ToyVSMD and ToyAGM are the task mixed with a family.

The model learns in the DataModule's coordinates (z-scored columns for ``VectorDataModule(standardise=True)``); the
standardisation reaches the model through the DataModule's ``standardisation`` (:class:`DataUnits`, a callback), is
kept in the checkpoint (buffers ``data_mean``, ``data_std``) and undone by ``to_data_units``: test metrics,
samples and figures are in the data's own units. The 2-D toys have none (the identity, no arithmetic)."""

from __future__ import annotations

import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from vsmd.caller import option
from vsmd.diffusion.grids import check_t_stop
from vsmd.metrics import DivergedSamplesError, sample_problem, straightness, vector_metrics, write_json
from vsmd.metrics.health import unusable_advice_for
from vsmd.metrics.vectors import metric_notes
from vsmd.models.agm import AGMModule
from vsmd.models.score import VSMDModule
from vsmd.models.nets import MLPScoreNet
from vsmd.plotting import samples_figure, trajectories_figure, vectors_figure


def check_toy(data_dim: int, hidden: int, depth: int) -> None:
    if data_dim < 1 or hidden < 1 or depth < 1:
        raise ValueError(f"data_dim, hidden and depth must be >= 1, got {data_dim}, {hidden}, {depth}")


class DataUnits(Callback):
    """At the start of fit, test and predict: ``pl_module.take_data_units(standardisation, names, identity)`` with
    the DataModule's ``standardisation`` ((mean, std) or None), ``column_names`` and file ``identity`` (None where it
    has none), so that the model never reaches into the trainer for them (as vsmd.datamodules.moments hands over the
    data moments)."""

    def _hand_over(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if dm is not None:
            pl_module.take_data_units(getattr(dm, "standardisation", None), getattr(dm, "column_names", None),
                                      getattr(dm, "identity", None))

    on_fit_start = on_test_start = on_predict_start = _hand_over


class ToyTask:
    """The toy task, mixed into a generative family (ToyVSMD, ToyAGM): its options (data_dim, hidden, depth,
    n_straight, straight_steps) are read from ``self.hparams``."""

    supports_rotation = True
    TASK_SETTINGS = dict(weights=("data_dim", "hidden", "depth"), evaluation=("n_straight", "straight_steps"))

    def init_task_state(self) -> None:
        # x_data = x_model * data_std + data_mean (the DataModule's standardisation; 0 and 1: none)
        self.register_buffer("data_mean", torch.zeros(self.hparams.data_dim, dtype=torch.float64))
        self.register_buffer("data_std", torch.ones(self.hparams.data_dim, dtype=torch.float64))
        self._column_names: list[str] | None = None
        self._data_identity: dict[str, str] | None = None  # the training file's path and fingerprint (a checkpoint's)
        self._test: dict[str, Any] = {}
        self._test_figure: tuple[Tensor, Tensor] | None = None
        self._predicted: list[Tensor] = []
        self._predict_cost: list[tuple[int, float]] = []  # (NFE, sampling seconds) per predict batch

    @property
    def _data_dim(self) -> int:
        return self.hparams.data_dim

    def data_shape(self) -> tuple[int, ...]:
        return (self.hparams.data_dim,)

    def build_net(self) -> nn.Module:
        h = self.hparams
        return MLPScoreNet(h.data_dim, self.process.n_state, h.hidden, h.depth, out_state=self.out_state)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        dim = getattr(dm, "data_dim", None)
        if dim is not None and dim != self._data_dim:
            raise ValueError(f"the data have dimension {dim} but the model was built for data_dim={self._data_dim}; "
                             f"set model.data_dim: {dim}")

    # ----------------------------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        return [*super().configure_callbacks(), DataUnits()]

    @property
    def standardisation(self) -> tuple[Tensor, Tensor] | None:
        """(mean, std) (float64, (d,)) that the model's coordinates are z-scored with, or None (the data's units)."""
        if not self.data_mean.any() and bool((self.data_std == 1).all()):
            return None
        return self.data_mean, self.data_std

    def to_data_units(self, x: Tensor) -> Tensor:
        """Vectors (..., d) in the model's coordinates (generated samples, the test set) in the data's own units,
        x * std + mean (computed in float64, returned in x's dtype); x itself when the data were not standardised."""
        s = self.standardisation
        return x if s is None else (x.double() * s[1].to(x.device) + s[0].to(x.device)).to(x.dtype)

    def take_data_units(self, standardisation: tuple[Tensor, Tensor] | None, names: list[str] | None = None,
                        identity: dict[str, str] | None = None) -> None:
        """The DataModule's standardisation and file (DataUnits): kept where the model has none yet (a new fit, or a
        checkpoint from before vsmd kept them), refused where they differ from those the model learned with (the
        file by its fingerprint: it may have moved)."""
        self._column_names = list(names) if names is not None else None
        trained = self._data_identity
        if identity is not None and trained is not None and identity["sha256"] != trained["sha256"]:
            raise ValueError(f"the checkpoint was trained on {trained['path']}, but "
                             f"{option('data.path', identity['path'])} holds other vectors (their fingerprints "
                             f"differ); pass the file the checkpoint was trained on: "
                             f"{option('data.path', trained['path'])}")
        if identity is not None and trained is None:
            self._data_identity = {"path": str(identity["path"]), "sha256": str(identity["sha256"])}
        mine = self.standardisation
        if standardisation is None and mine is None:
            return
        if mine is None:
            self.data_mean.copy_(standardisation[0].to(torch.float64))
            self.data_std.copy_(standardisation[1].to(torch.float64))
            return
        if standardisation is not None and all(torch.allclose(a.cpu().double(), b.cpu().double(), rtol=1e-9,
                                                              atol=1e-12) for a, b in zip(mine, standardisation)):
            return
        given = ("unstandardised data (standardise: false)" if standardisation is None else
                 f"mean {_short(standardisation[0])}, std {_short(standardisation[1])}")
        raise ValueError(f"the model learned data standardised with mean {_short(mine[0])}, std {_short(mine[1])} "
                         f"(kept in its checkpoint), but the data module gives {given}: use the file, columns, "
                         "val_fraction, seed and standardise the model was trained with")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:  # a checkpoint from before vsmd kept the standardisation: none (the toys had none)
            state.setdefault("data_mean", torch.zeros(self._data_dim, dtype=torch.float64))
            state.setdefault("data_std", torch.ones(self._data_dim, dtype=torch.float64))
        self._data_identity = checkpoint.get("vsmd_vector_data")
        super().on_load_checkpoint(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._data_identity is not None:
            checkpoint["vsmd_vector_data"] = dict(self._data_identity)

    def _figure(self, real: Tensor | None, fake: Tensor, title: str):
        """Generated beside real vectors in the data's units: the toys' 2-D scatter, or ``vectors_figure`` (d != 2,
        or named columns)."""
        if real is None or (self._data_dim == 2 and self._column_names is None):
            return samples_figure(real, fake, title=title) if self._data_dim == 2 else None
        return vectors_figure(real, fake, names=self._column_names, title=title)

    def _x_paths(self, trajectory: Tensor) -> Tensor:
        """The x part (N, B, d) of a sampler trajectory of states (N, B, n_state * d)."""
        return self.process.split(trajectory.flatten(0, 1))[0].reshape(*trajectory.shape[:2], -1)

    # ----------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        tb = self.tensorboard()
        dm = getattr(self.trainer, "datamodule", None)
        if tb is None or self.trainer.sanity_checking or dm is None:
            return
        real = dm.fixed_set("val")
        fake = self.generate(len(real)).state
        x_fake = self.process.split(fake)[0].cpu()
        tb.add_figure("samples", self._figure(self.to_data_units(real), self.to_data_units(x_fake),
                                              self.process.name), self.global_step)
        if self._data_dim != 2:
            return
        paths = self.generate(16, sampler=self.path_sampler, steps=self.hparams.straight_steps, return_trajectory=True)
        tb.add_figure("pf_ode_paths", trajectories_figure(self._x_paths(paths.trajectory).cpu(), paths.times.cpu()),
                      self.global_step)

    # ----------------------------------------------------------------------------------------------
    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        h = self.hparams
        start = time.perf_counter()
        res = self.generate(len(batch), progress=self.show_progress)
        wall = time.perf_counter() - start
        fake = self.process.split(res.state)[0]
        paths = self.generate(h.n_straight, sampler=self.path_sampler, steps=h.straight_steps, return_trajectory=True,
                              seed=h.seed + 1)
        times = paths.times[:-1]  # the grid T..t_eps; the last point is the final Euler step to t = 0
        problem = sample_problem(fake, batch.abs().max())  # in the model's coordinates, where the data are O(1)
        real, fake = self.to_data_units(batch), self.to_data_units(fake)  # the metrics are in the data's units
        s = straightness(self.to_data_units(self._x_paths(paths.trajectory[:-1])), times)
        if problem is None:
            scores = vector_metrics(real, fake)
            metrics = {"rmse_pmf": scores.pop("rmse_pmf")} | {f"straightness_{i}": float(v) for i, v in enumerate(s)}
            metrics |= scores
        else:  # scores over diverged samples would look plausible (the PMF clips far points into its grid)
            metrics = dict.fromkeys(["rmse_pmf", *(f"{m}_{i}" for m in ("straightness", "w1", "std_ratio")
                                                   for i in range(self._data_dim)), "sliced_w1", "mmd", "w1"],
                                    float("nan"))
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})
        units = self.standardisation
        self._test = {"metrics": metrics, "metric_notes": metric_notes(), "sampler": h.sampler,
                      "sample_steps": h.sample_steps, "nfe": res.nfe, "n_samples": len(real), "sampling_seconds": wall,
                      "straightness": {"metric": "rectified-flow straightness int E[(dx/(T-t_eps) - xdot)^2] ds "
                                       "per dimension, finite differences", "sampler": self.path_sampler,
                                       "steps": h.straight_steps, "paths": h.n_straight},
                      "process": self.process.name, "beta": h.get("beta"), "damping": h.get("damping"),
                      "trained_steps": max(self.trained_steps, self.global_step), "samples_problem": problem,
                      "standardisation": None if units is None else {"mean": units[0].tolist(),
                                                                     "std": units[1].tolist()}}
        self._test |= self.variational_summary()
        self._test_figure = (real.cpu(), fake.cpu()) if problem is None else None
        tb = self.tensorboard()
        if tb is not None and self._test_figure is not None:
            tb.add_figure("test/samples", self._figure(*self._test_figure, self.process.name), self.global_step)

    def on_test_epoch_end(self) -> None:
        if not self._test or not self.trainer.is_global_zero:
            return
        path = write_json(self.run_dir() / "test_metrics.json", self._test)
        if self._test["samples_problem"]:
            raise DivergedSamplesError(f"the generated samples are unusable: {self._test['samples_problem']}. The "
                                       f"metrics in {path} are null. " + unusable_advice_for(self))
        if self._test_figure is not None:
            self._save_samples_png(*self._test_figure, self.run_dir() / "test_samples.png")
            np.savez(self.run_dir() / "test_samples.npz", real=self._test_figure[0].numpy(),
                     generated=self._test_figure[1].numpy())
        lines = [f"  {k:<16} {v:.6g}" for k, v in self._test["metrics"].items()]
        print("\n".join([f"test metrics ({self._test['sampler']}, NFE {self._test['nfe']}, "
                         f"{self._test['sampling_seconds']:.2f} s):", *lines, f"written to {path}"]))

    # ----------------------------------------------------------------------------------------------
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """n generated vectors (n, d) in the data's units."""
        n = len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
        start = time.perf_counter()
        res = self.generate(n, progress=self.show_progress, seed=self.hparams.seed + 2 + batch_idx)
        self._predict_cost.append((res.nfe, time.perf_counter() - start))
        x = self.process.split(res.state)[0].cpu()
        self._predicted.append(x)
        return self.to_data_units(x)

    def on_predict_epoch_end(self) -> None:
        if not self._predicted or not self.trainer.is_global_zero:
            return
        x = torch.cat(self._predicted)  # the model's coordinates
        nfe, seconds = self._predict_cost[0][0], sum(c[1] for c in self._predict_cost)
        self._predicted, self._predict_cost = [], []
        out = self.run_dir()
        np.savez(out / "samples.npz", samples=self.to_data_units(x).numpy(), process=self.process.name,
                 sampler=self.hparams.sampler, sample_steps=self.hparams.sample_steps, nfe=nfe,
                 sampling_seconds=seconds)
        dm = getattr(self.trainer, "datamodule", None)
        real = dm.fixed_set("predict") if hasattr(dm, "fixed_set") else None
        problem = sample_problem(x, float(real.abs().max()) if real is not None else 1.0)
        if problem:
            raise DivergedSamplesError(f"the generated samples are unusable: {problem}. They are in "
                                       f"{out / 'samples.npz'} for inspection. " + unusable_advice_for(self))
        real = self.to_data_units(real) if real is not None else None
        self._save_samples_png(real, self.to_data_units(x), out / "samples.png")
        print(f"wrote {len(x)} samples to {out / 'samples.npz'} ({self.hparams.sampler}, NFE {nfe}, {seconds:.2f} s of "
              "sampling)")

    def _save_samples_png(self, real: Tensor | None, fake: Tensor, path) -> None:
        """Generated samples beside real ones on the same axes (the real data's range), as a PNG (none for d != 2
        without real samples)."""
        h = self.hparams
        fig = self._figure(real, fake, f"{self.process.name}{_beta(h)}, {h.sampler} {h.sample_steps}")
        if fig is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)


def _beta(h) -> str:
    return f"-{h.beta:g}" if h.get("beta") is not None else ""


def _short(v: Tensor, most: int = 4) -> str:
    """A vector in words: its first ``most`` entries to 4 digits."""
    vals = [f"{float(x):.4g}" for x in v[:most]]
    return "[" + ", ".join(vals + (["..."] if len(v) > most else [])) + "]"


class ToyVSMD(ToyTask, VSMDModule):
    """VSMD and its relatives on low-dimensional vectors (the paper's spiral-8Y and checkerboard-6X).

    Args:
        data_dim: dimension of the data (2 for the toys); must match the datamodule.
        hidden: width of the MLP.
        depth: residual blocks of the MLP.
        n_straight: probability-flow paths used for the straightness metric.
        straight_steps: Heun grid points of those paths.
        ei_order, ei_grid: the "ei" sampler's order and grid; None gives the toys' recommended setting, order 2 on
            the uniform grid (benchmarks/results/toy_ei.md: the only setting within the goals on both toys; the
            module-wide order 3 on the quadratic grid is twice as far from Heun-99 in W1 at NFE 20).
        ei_t_stop: where the "ei" sampler stops and returns the data estimate when ``t_stop`` is not set (0.02, the
            "+ x0" rows of toy_ei.md); None runs it to t_eps. Other samplers ignore it.
        **kwargs: the process, optimisation, SA and sampler options of ``VSMDModule``.
    """

    SETTINGS = VSMDModule.SETTINGS.extend(weights=ToyTask.TASK_SETTINGS["weights"],
                                          evaluation=(*ToyTask.TASK_SETTINGS["evaluation"], "ei_t_stop"))

    def __init__(self, data_dim: int = 2, hidden: int = 256, depth: int = 3, n_straight: int = 1000,
                 straight_steps: int = 100, ei_order: int | None = None, ei_grid: str | None = None,
                 ei_t_stop: float | None = 0.02, **kwargs: Any) -> None:
        check_toy(data_dim, hidden, depth)
        check_t_stop(ei_t_stop, kwargs.get("t_eps", 1e-3), 1.0, option="ei_t_stop", unset=" or null (run ei to t_eps)")
        ei_order = ei_order if ei_order is not None else 2
        ei_grid = ei_grid if ei_grid is not None else "uniform"
        super().__init__(ei_order=ei_order, ei_grid=ei_grid, **kwargs)
        self.hparams.update(ei_order=ei_order, ei_grid=ei_grid)  # LightningCLI saves the config's None otherwise
        self.init_task_state()

    def sampler_options(self, net: nn.Module, cond: Tensor | None = None, sampler: str | None = None) -> dict[str, Any]:
        """The module's options, with the data estimate at ``ei_t_stop`` for "ei" where no t_stop is set."""
        opts = super().sampler_options(net, cond, sampler)
        stop = self.hparams.get("ei_t_stop")
        if (sampler or self.hparams.sampler) == "ei" and opts["t_stop"] is None and stop:
            opts["t_stop"] = stop
        return opts


class ToyAGM(ToyTask, AGMModule):
    """The AGM bridge on low-dimensional vectors (configs/spiral8y_agm.yaml).

    Args:
        data_dim, hidden, depth, n_straight, straight_steps: as for ToyVSMD (the paths of the straightness metric
            follow AGM's integrator).
        **kwargs: the bridge, optimisation and sampler options of ``AGMModule``.
    """

    SETTINGS = AGMModule.SETTINGS.extend(**ToyTask.TASK_SETTINGS)

    def __init__(self, data_dim: int = 2, hidden: int = 256, depth: int = 3, n_straight: int = 1000,
                 straight_steps: int = 100, **kwargs: Any) -> None:
        check_toy(data_dim, hidden, depth)
        super().__init__(**kwargs)
        self.init_task_state()
