"""Evaluation metrics."""

from vsmd.metrics.toy import pmf, pmf_rmse, straightness

__all__ = ["pmf", "pmf_rmse", "straightness"]
