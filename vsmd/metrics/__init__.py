"""Evaluation metrics."""

from vsmd.metrics.timeseries import crps_sum, gluonts_metrics, random_walk_samples
from vsmd.metrics.toy import pmf, pmf_rmse, straightness, wasserstein1d

__all__ = ["crps_sum", "gluonts_metrics", "pmf", "pmf_rmse", "random_walk_samples", "straightness",
           "wasserstein1d"]
