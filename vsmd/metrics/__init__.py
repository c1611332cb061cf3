"""Evaluation metrics."""

from vsmd.metrics.health import DivergedSamplesError, sample_problem, write_json
from vsmd.metrics.timeseries import crps_sum, gluonts_metrics, random_walk_samples
from vsmd.metrics.toy import pmf, pmf_rmse, straightness, wasserstein1d
from vsmd.metrics.vectors import vector_metrics

__all__ = ["DivergedSamplesError", "crps_sum", "gluonts_metrics", "pmf", "pmf_rmse", "random_walk_samples",
           "sample_problem", "straightness", "vector_metrics", "wasserstein1d", "write_json"]
