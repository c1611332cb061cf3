"""Evaluation metrics."""

from vsmd.metrics.toy import pmf, pmf_rmse, straightness, wasserstein1d

__all__ = ["pmf", "pmf_rmse", "straightness", "wasserstein1d"]
