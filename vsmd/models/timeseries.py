"""Multivariate probabilistic forecasting (paper section 5.2), TimeGrad-style, for both generative families.

An RNN over scaled lagged values and time features encodes the history into h_t; the score network models
x_t | h_t on the phase space of the chosen process, with A diagonal over the D series. Training uses teacher
forcing over the context and the forecast window; forecasts are autoregressive: each step samples x_t for all
paths at once, feeds it back through the lags, and moves the RNN one step. TimeSeriesVSMD and TimeSeriesAGM are the
task mixed with a family.
"""

from __future__ import annotations

import time
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vsmd.datamodules.series_windows import forecast_table
from vsmd.datamodules.timeseries import default_lags
from vsmd.diffusion import sample as run_sampler
from vsmd.metrics.health import DivergedSamplesError, sample_problem, unusable_advice_for, write_json
from vsmd.metrics.timeseries import METRIC_KEYS, gluonts_metrics
from vsmd.models.agm import AGMModule
from vsmd.models.score import VSMDModule
from vsmd.models.nets import TimeGradNet
from vsmd.plotting import forecast_figure

SCALINGS = ("mean", "std", "none")


def n_time_features(freq: str) -> int:
    from gluonts.time_feature import time_features_from_frequency_str

    return len(time_features_from_frequency_str(freq))


TS_SETTINGS = dict(
    weights=("target_dim", "freq", "context_length", "lags", "scaling", "rnn", "hidden", "layers", "cond_dim",
             "channels", "residual_layers"),
    resume=("dropout",), evaluation=("num_samples",))


def resolve_lags(lags: list[int] | None, freq: str) -> list[int]:
    """The lags the RNN sees: ``lags`` sorted without repeats, or TimeGrad's set for ``freq`` when None."""
    return sorted(set(lags)) if lags is not None else default_lags(freq)


def check_forecaster(target_dim: int, num_samples: int, context_length: int | None, lags: list[int],
                     scaling: str) -> None:
    if target_dim < 1 or num_samples < 1 or (context_length is not None and context_length < 1):
        raise ValueError(f"target_dim, num_samples and context_length must be >= 1, got {target_dim}, "
                         f"{num_samples}, {context_length}")
    if not lags or min(lags) < 1:
        raise ValueError(f"lags must be positive integers, got {lags}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")


class TimeSeriesTask:
    """The forecasting task, mixed into a generative family (TimeSeriesVSMD, TimeSeriesAGM); its options are read
    from ``self.hparams``."""

    supports_rotation = True  # Q is D x D over the series; forecasts leave the frame in forecast()

    def __init__(self, target_dim: int = 8, freq: str = "B", context_length: int | None = None,
                 lags: list[int] | None = None, scaling: str = "std", rnn: str = "gru", hidden: int = 40,
                 layers: int = 2, dropout: float = 0.1, cond_dim: int = 100, channels: int = 8,
                 residual_layers: int = 8, num_samples: int = 100, **kwargs: Any) -> None:
        lags = resolve_lags(lags, freq)
        check_forecaster(target_dim, num_samples, context_length, lags, scaling)
        kwargs.setdefault("ema_warmup", True)  # forecasting runs are short (TimeGrad: about 2000 steps)
        super().__init__(**kwargs)
        self.init_task_state()

    def init_task_state(self) -> None:
        self.prediction_length: int | None = None  # from the data, at setup
        self._test: dict[str, Any] = {}
        self._outputs: list[dict[str, np.ndarray]] = []

    @property
    def _target_dim(self) -> int:
        return self.hparams.target_dim

    @property
    def _lags(self) -> list[int]:
        """The lags (sorted, unique; None: TimeGrad's set for ``freq``). Computed from the options, because a model
        made by LightningCLI saves the config's values as its hyperparameters, not the constructor's locals."""
        return resolve_lags(self.hparams.lags, self.hparams.freq)

    def data_shape(self) -> tuple[int, ...]:
        return (self.hparams.target_dim,)

    def build_net(self) -> nn.Module:
        h = self.hparams
        return TimeGradNet(h.target_dim, self.process.n_state, self._lags, n_time_features(h.freq), rnn=h.rnn,
                           hidden=h.hidden, layers=h.layers, dropout=h.dropout, cond_dim=h.cond_dim,
                           channels=h.channels, residual_layers=h.residual_layers, out_state=self.out_state)

    @property
    def max_lag(self) -> int:
        return max(self._lags)

    def context(self, prediction_length: int) -> int:
        return self.hparams.context_length or prediction_length

    def window_history(self, prediction_length: int) -> int:
        """Past steps a window needs: the context plus the largest lag (the DataModule asks this)."""
        return self.context(prediction_length) + self.max_lag

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "prediction_length"):
            raise ValueError("TimeSeriesVSMD needs a forecasting DataModule (vsmd.datamodules.GluonTSDataModule)")
        if dm.target_dim != self._target_dim:
            raise ValueError(f"the data have {dm.target_dim} series but the model was built for "
                             f"target_dim={self._target_dim}; set model.init_args.target_dim: {dm.target_dim}")
        if dm.freq != self.hparams.freq:
            raise ValueError(f"the data have frequency {dm.freq!r} but the model was built for "
                             f"freq={self.hparams.freq!r}; set model.init_args.freq: {dm.freq}")
        self.prediction_length = dm.prediction_length

    # ----------------------------------------------------------------------------------------------
    def scale(self, target: Tensor, history: int) -> tuple[Tensor, Tensor, Tensor]:
        """(scaled target, loc, scale) with loc and scale (B, 1, D) from the context before step ``history``."""
        ctx = target[:, history - self.context(self.prediction_length):history]
        zero = torch.zeros_like(ctx[:, :1])
        if self.hparams.scaling == "mean":
            scale = ctx.abs().mean(1, keepdim=True)
            fallback = scale.mean(0, keepdim=True).clamp_min(1e-10)  # all-zero context: the batch's scale
            scale, loc = torch.where(scale > 1e-10, scale, fallback), zero
        elif self.hparams.scaling == "std":
            loc = ctx.mean(1, keepdim=True)
            scale = (ctx.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        else:
            scale, loc = torch.ones_like(zero), zero
        return (target - loc) / scale, loc, scale

    def _conditions(self, batch: dict[str, Tensor], net: nn.Module) -> tuple[Tensor, Tensor]:
        """Teacher forcing over context + horizon: (x0 (N, D), cond (N, cond_dim)) with N = B (C + H)."""
        if self.prediction_length is None:
            raise RuntimeError("prediction_length is unknown: attach a GluonTSDataModule (setup sets it)")
        target, time_feat = batch["target"], batch["time_feat"]
        if target.ndim != 3 or target.shape[2] != self._target_dim:
            raise ValueError(f"expected target windows (B, L, {self._target_dim}), got {tuple(target.shape)}")
        history = target.shape[1] - self.prediction_length
        values, _, _ = self.scale(target, history)
        positions = torch.arange(self.max_lag, target.shape[1], device=target.device)
        cond, _ = net.encode(values, time_feat, positions)
        return values[:, self.max_lag:].flatten(0, 1), cond.flatten(0, 1)

    def stats_x0(self, batch: dict[str, Tensor]) -> Tensor:
        """The scaled values the score network models (what _conditions returns as x0), without the RNN."""
        target = batch["target"]
        values, _, _ = self.scale(target, target.shape[1] - self.prediction_length)
        return values[:, self.max_lag:].flatten(0, 1)

    def batch_loss(self, batch: dict[str, Tensor], net: nn.Module) -> Tensor:
        x0, cond = self._conditions(batch, net)
        return self.score_loss(x0, net, cond)

    def sa_score_fn(self, batch: dict[str, Tensor], net: nn.Module, generator: torch.Generator):
        """SA paths are conditioned on sa_paths conditions drawn from this batch's time steps."""
        with torch.no_grad():
            _, cond = self._conditions(batch, net)
        idx = torch.randint(0, len(cond), (self.hparams.sa_paths,), generator=generator, device=generator.device)
        cond = cond[idx.to(cond.device)]
        return lambda a, t: self.score(a, t, net, cond)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forecast(self, target: Tensor, time_feat: Tensor, num_samples: int | None = None,
                 sampler: str | None = None, steps: int | None = None, seed: int | None = None,
                 progress: bool = False) -> tuple[Tensor, int]:
        """Autoregressive sample paths with the EMA network.

        Args:
            target: (B, history, D) observed values, history = window_history(H).
            time_feat: (B, history + H, F) time features of the history and the forecast window.
        Returns:
            samples (B, S, H, D) in data units, and the network evaluations per path (H x sampler NFE).
        """
        h = self.hparams
        s = num_samples or h.num_samples
        b, history, d = target.shape
        horizon = time_feat.shape[1] - history
        if d != self._target_dim or horizon < 1:
            raise ValueError(f"expected target (B, L, {self._target_dim}) and time features longer than it, got "
                             f"{tuple(target.shape)} and {tuple(time_feat.shape)}")
        with self.sampling_mode(self.eval_net) as net:
            values, loc, scale = (x.repeat_interleave(s, 0) for x in self.scale(target, history))
            time_feat = time_feat.repeat_interleave(s, 0)
            _, state = net.encode(values, time_feat, torch.arange(self.max_lag, history, device=self.device))
            gen = torch.Generator(self.device).manual_seed(h.seed if seed is None else seed)
            nfe = 0
            for k in tqdm(range(horizon), desc="forecasting", leave=False, disable=not progress):
                cond, state = net.encode(values, time_feat, torch.tensor([history + k], device=self.device), state)
                cond = cond[:, 0]
                opts = self.sampler_options(net, cond, sampler)
                res = run_sampler(sampler or h.sampler, self.process, lambda a, t, c=cond: self.score(a, t, net, c),
                                  len(cond), steps or h.sample_steps, gen, self.device, **opts)
                values = torch.cat([values, self.from_frame(self.process.split(res.state)[0])[:, None]], dim=1)
                nfe += res.nfe
        out = values[:, history:] * scale + loc
        return out.reshape(b, s, horizon, d), nfe

    def _forecast_batch(self, batch: dict[str, Tensor], seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        samples, nfe = self.forecast(batch["target"], batch["time_feat"], seed=seed, progress=self.show_progress)
        return {"samples": samples.cpu().numpy(), "history": batch["target"].cpu().numpy(),
                "future": batch["future"].cpu().numpy() if "future" in batch else None,
                "forecast_start": list(batch["forecast_start"]), "times": batch.get("times"), "nfe": nfe,
                "seconds": time.perf_counter() - start}

    def _gather(self) -> dict[str, Any]:
        outs, self._outputs = self._outputs, []
        cat = {k: np.concatenate([o[k] for o in outs]) for k in ("samples", "history")}
        cat["future"] = np.concatenate([o["future"] for o in outs]) if outs[0]["future"] is not None else None
        cat["forecast_start"] = [s for o in outs for s in o["forecast_start"]]
        cat["times"] = [t for o in outs for t in o["times"]] if outs[0]["times"] is not None else None
        cat["nfe"], cat["seconds"] = outs[0]["nfe"], sum(o["seconds"] for o in outs)
        return cat

    def _save_npz(self, name: str, out: dict[str, Any]):
        path = self.run_dir() / name
        arrays = {"samples": out["samples"].astype(np.float32), "history": out["history"],
                  "forecast_start": np.array(out["forecast_start"]), "freq": np.array(self.hparams.freq)}
        if out["future"] is not None:
            arrays["future"] = out["future"]
        if out["times"] is not None:  # a forecast after the last time step: its times and the series' names
            arrays |= {"times": np.array(out["times"]), "series": np.array(self.trainer.datamodule.series_names)}
        np.savez_compressed(path, **arrays)
        return path

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._outputs.append(self._forecast_batch(batch, self.hparams.seed + batch_idx))

    def on_test_epoch_end(self) -> None:
        if not self._outputs:
            return
        out = self._gather()
        problem = sample_problem(out["samples"], np.abs(out["history"]).max())
        if problem is None:
            metrics = gluonts_metrics(out["samples"], out["history"], out["future"], out["forecast_start"],
                                      self.hparams.freq)
        else:  # metrics over diverged forecasts are meaningless; report them as null
            metrics = dict.fromkeys(METRIC_KEYS, float("nan"))
        self.log_dict({f"test/{k}": v for k, v in metrics.items()}, rank_zero_only=True)
        if not self.trainer.is_global_zero:
            return
        h = self.hparams
        npz = self._save_npz("forecasts.npz", out)
        self._test = {"metrics": metrics, "metric_source": "gluonts MultivariateEvaluator, quantiles 0.05..0.95, "
                      "sum aggregation (crps_sum = m_sum_mean_wQuantileLoss)",
                      "windows": len(out["samples"]), "num_samples": out["samples"].shape[1],
                      "prediction_length": out["samples"].shape[2], "target_dim": out["samples"].shape[3],
                      "sampler": h.sampler, "sample_steps": h.sample_steps,
                      "nfe_per_step": out["nfe"] // out["samples"].shape[2], "nfe_per_path": out["nfe"],
                      "sampling_seconds": out["seconds"],
                      "process": self.process.name, "beta": h.get("beta"), "damping": h.get("damping"),
                      "scaling": h.scaling,
                      "context_length": self.context(self.prediction_length), "lags": self._lags,
                      "trained_steps": max(self.trained_steps, self.global_step), "forecasts": str(npz),
                      "samples_problem": problem}
        self._test |= self.variational_summary()
        path = write_json(self.run_dir() / "test_metrics.json", self._test)
        if problem:
            raise DivergedSamplesError(f"the forecasts are unusable: {problem}. The metrics in {path} are null; the "
                                       f"forecasts are in {npz} for inspection. " + unusable_advice_for(self))
        fig = forecast_figure(out["history"][0], out["future"][0], out["samples"][0],
                              title=f"{self.process.name}: window 1 from {out['forecast_start'][0]}")
        fig.savefig(self.run_dir() / "forecast.png", dpi=110)
        tb = self.tensorboard()
        if tb is not None:
            tb.add_figure("test/forecast", fig, self.global_step)
        plt.close(fig)
        lines = [f"  {k:<10} {v:.6g}" for k, v in metrics.items()]
        print("\n".join([f"test metrics ({h.sampler}, NFE {self._test['nfe_per_step']} per step, "
                         f"{out['seconds']:.1f} s of sampling):", *lines, f"written to {path} and {npz}"]))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._forecast_batch(batch, self.hparams.seed + 2 + batch_idx)
        self._outputs.append(out)
        return torch.from_numpy(out["samples"])

    def on_predict_epoch_end(self) -> None:
        if not self._outputs or not self.trainer.is_global_zero:
            self._outputs = []
            return
        out = self._gather()
        path = self._save_npz("forecasts.npz", out)
        problem = sample_problem(out["samples"], np.abs(out["history"]).max())
        if problem:
            raise DivergedSamplesError(f"the forecasts are unusable: {problem}. They are in {path} for inspection. "
                                       + unusable_advice_for(self))
        what = f"{len(out['samples'])} windows to {path}"
        if out["times"] is not None:
            table = self.run_dir() / "forecast.csv"
            forecast_table(out["samples"][0], out["times"][0], self.trainer.datamodule.series_names).to_csv(
                table, index=False)
            what = f"the {len(out['times'][0])} steps from {out['times'][0][0]} to {path} and {table}"
        print(f"wrote {out['samples'].shape[1]} forecast paths for {what} ({self.hparams.sampler}, NFE "
              f"{out['nfe'] // out['samples'].shape[2]} per step, {out['seconds']:.1f} s of sampling)")


class TimeSeriesVSMD(TimeSeriesTask, VSMDModule):
    """VSMD and its relatives as a forecaster: RNN encoder + conditional score network over the target dimension.

    Args:
        target_dim: number of series D; must match the data.
        freq: pandas frequency of the data ("B" for Exchange, "h" for Solar and Electricity); must match the data.
        context_length: steps the RNN sees before a forecast and that the scale is computed on (None: the
            dataset's prediction length, as TimeGrad).
        lags: lagged values fed to the RNN (None: TimeGrad's set for ``freq``: B [1, 2], h [1, 24, 168]).
        scaling: "std" ((x - mean) / std over the context, as the VSDM code), "mean" (x / mean|x|, TimeGrad) or
            "none". With "mean", the next value of a slowly moving series sits within ~0.5% of 1 and the
            diffusion model must resolve that at its smallest noise levels; "std" puts the one-step spread at a
            sizeable fraction of unit scale (on Exchange, CRPS-Sum 0.0049 against 0.011 with "mean").
        rnn: "gru" or "lstm".
        hidden: RNN width.
        layers: RNN layers.
        dropout: RNN dropout between layers.
        cond_dim: size of the condition the RNN state is mapped to.
        channels: channels of the score network's residual conv blocks over the series axis.
        residual_layers: number of those blocks.
        num_samples: forecast sample paths per window (test and predict).
        **kwargs: the process, optimisation, SA and sampler options of ``VSMDModule`` (here ema_warmup
            defaults to true).
    """

    SETTINGS = VSMDModule.SETTINGS.extend(**TS_SETTINGS)


class TimeSeriesAGM(TimeSeriesTask, AGMModule):
    """The AGM bridge as a forecaster (benchmarks/results/timeseries_agm.md).

    Args:
        target_dim to num_samples: the task's options, as for TimeSeriesVSMD (target_dim, freq, context_length,
            lags, scaling, rnn, hidden, layers, dropout, cond_dim, channels, residual_layers, num_samples).
        **kwargs: the bridge, optimisation and sampler options of ``AGMModule`` (here ema_warmup defaults to true).
    """

    SETTINGS = AGMModule.SETTINGS.extend(**TS_SETTINGS)
