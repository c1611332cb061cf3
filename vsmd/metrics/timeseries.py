"""Forecast metrics: CRPS-Sum and friends through GluonTS's MultivariateEvaluator, and an independent check.

CRPS-Sum (every paper of the TimeGrad line): sum the target and each sample path over the D dimensions, take
nearest-rank quantiles q = 0.05, ..., 0.95 of the summed samples, and report the mean over q of
wQL_q = sum_{windows, t} 2 |(s_t - Q_q,t)(1{s_t <= Q_q,t} - q)| / sum_{windows, t} |s_t|.
"""

from __future__ import annotations

import warnings

import numpy as np

QUANTILES = tuple((np.arange(20) / 20.0)[1:])  # 0.05, 0.10, ..., 0.95

# Our name: GluonTS MultivariateEvaluator key.
METRIC_KEYS = {
    "crps_sum": "m_sum_mean_wQuantileLoss",
    "crps": "mean_wQuantileLoss",
    "nd_sum": "m_sum_ND",
    "nrmse_sum": "m_sum_NRMSE",
}


def gluonts_metrics(samples: np.ndarray, history: np.ndarray, future: np.ndarray, forecast_start: list[str],
                    freq: str) -> dict[str, float]:
    """Score forecasts with GluonTS's ``MultivariateEvaluator`` (sum aggregation, quantiles 0.05..0.95).

    Args:
        samples: (W, S, H, D) sample paths for W forecast windows.
        history: (W, L, D) observed values before each window (for the evaluator's scale terms).
        future: (W, H, D) the truth.
        forecast_start: W period strings, the first forecast time of each window.
        freq: pandas frequency of the series.
    Returns:
        crps_sum, crps, nd_sum, nrmse_sum (see ``METRIC_KEYS``).
    """
    import pandas as pd
    from gluonts.evaluation import MultivariateEvaluator
    from gluonts.model.forecast import SampleForecast

    _check_shapes(samples, future)
    w, _, h, _ = samples.shape
    if history.shape[0] != w or len(forecast_start) != w:
        raise ValueError(f"need one history and one forecast start per window ({w}), got {history.shape[0]} and "
                         f"{len(forecast_start)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BDay Period deprecation and empty-slice warnings of unused metrics
        tss, fcs = [], []
        for k in range(w):
            start = pd.Period(forecast_start[k], freq=freq)
            values = np.concatenate([history[k], future[k]]).astype(np.float64)
            index = pd.period_range(end=start + (h - 1), periods=len(values), freq=freq)
            tss.append(pd.DataFrame(values, index=index))
            fcs.append(SampleForecast(samples=samples[k].astype(np.float64), start_date=start, item_id=str(k)))
        evaluator = MultivariateEvaluator(quantiles=QUANTILES, target_agg_funcs={"sum": np.sum}, num_workers=0)
        agg, _ = evaluator(iter(tss), iter(fcs), num_series=w)
    return {ours: float(agg[key]) for ours, key in METRIC_KEYS.items()}


def crps_sum(samples: np.ndarray, future: np.ndarray, quantiles=QUANTILES) -> float:
    """CRPS-Sum by the formula in the module docstring (an independent check of the GluonTS number)."""
    _check_shapes(samples, future)
    s = future.astype(np.float64).sum(-1)                              # (W, H)
    sorted_paths = np.sort(samples.astype(np.float64).sum(-1), axis=1)  # (W, S, H)
    n = sorted_paths.shape[1]
    losses = []
    for q in quantiles:
        pred = sorted_paths[:, int(np.round((n - 1) * q))]
        losses.append(2 * np.abs((s - pred) * ((s <= pred) - q)).sum() / np.abs(s).sum())
    return float(np.mean(losses))


def _check_shapes(samples: np.ndarray, future: np.ndarray) -> None:
    if samples.ndim != 4 or future.ndim != 3 or samples.shape[0] != future.shape[0] \
            or samples.shape[2:] != future.shape[1:]:
        raise ValueError(f"samples must be (W, S, H, D) and future (W, H, D) with matching W, H, D; got "
                         f"{samples.shape} and {future.shape}")


def random_walk_samples(train: np.ndarray, history: np.ndarray, horizon: int, num_samples: int,
                        seed: int = 0) -> np.ndarray:
    """Naive baseline: last value plus Gaussian random-walk noise whose (D x D) step covariance is fitted on the
    first differences of the train split ``train`` (D, T). Returns (W, S, horizon, D) for ``history`` (W, L, D)."""
    diffs = np.diff(train.astype(np.float64), axis=1).T   # (T-1, D)
    cov = np.atleast_2d(np.cov(diffs, rowvar=False))
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cov)))
    rng = np.random.default_rng(seed)
    w, d = history.shape[0], history.shape[2]
    steps = rng.standard_normal((w, num_samples, horizon, d)) @ chol.T
    return history[:, -1][:, None, None, :] + np.cumsum(steps, axis=2)
