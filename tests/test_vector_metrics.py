"""The vector metrics of any dimension (vsmd.metrics.vectors, vsmd.metrics.distances), each against an independent
computation, and the figure on principal axes (vsmd.plotting.vectors_figure)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from vsmd.metrics import pmf_rmse, wasserstein1d
from vsmd.metrics.distances import mmd, sliced_w1, subsample, w1, w1_per_axis
from vsmd.metrics.vectors import metric_notes, vector_metrics
from vsmd.plotting import plt, principal_axes, vectors_figure


def test_per_axis_w1_matches_scipy_for_any_sizes() -> None:
    g = np.random.default_rng(0)
    a, b = g.standard_normal((300, 4)), g.exponential(size=(170, 4)) * [1, 2, 3, 4]
    expected = [wasserstein_distance(a[:, j], b[:, j]) for j in range(4)]
    np.testing.assert_allclose(w1_per_axis(a, b), expected, rtol=1e-12)
    c = g.standard_normal((300, 4))  # equal sizes: the same as the toys' wasserstein1d
    np.testing.assert_allclose(w1_per_axis(a, c), wasserstein1d(torch.from_numpy(a), torch.from_numpy(c)), rtol=1e-12)


def test_sliced_w1_zero_on_the_same_set_and_the_mean_projected_shift() -> None:
    g = np.random.default_rng(1)
    d, shift = 5, np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    a = g.standard_normal((400, d))
    assert sliced_w1(a, a, seed=3) == 0.0
    # a translated copy: every projection is translated by <shift, u>, so the 1-D W1 is |<shift, u>| exactly
    u = np.random.default_rng(3).standard_normal((d, 500))
    u /= np.linalg.norm(u, axis=0, keepdims=True)
    assert abs(sliced_w1(a + shift, a, seed=3) - np.abs(shift @ u).mean()) < 1e-9
    # and over random directions E|<shift, u>| = |shift| Gamma(d/2) / (sqrt(pi) Gamma((d + 1)/2)), the mean over
    # 4000 directions within 3 % of it (its Monte Carlo error is about 0.6 %)
    e_abs = math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    got = sliced_w1(a[:50] + shift, a[:50], projections=4000, seed=0, quantiles=50)
    assert abs(got - np.linalg.norm(shift) * e_abs) < 0.03 * np.linalg.norm(shift) * e_abs


def test_mmd_zero_on_the_same_set_and_equal_to_a_direct_double_sum() -> None:
    g = np.random.default_rng(2)
    a, b = g.standard_normal((40, 3)), g.standard_normal((30, 3)) + 0.5
    assert mmd(a, a) < 1e-7
    h = 0.7  # a stated bandwidth: one RBF kernel exp(-|x - y|^2 / (2 h^2))

    def k(x, y):
        return np.exp(-cdist(x, y, "sqeuclidean") / (2 * h ** 2))

    direct = math.sqrt(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())
    assert abs(mmd(a, b, bandwidths=(1.0,), scale=h) - direct) < 1e-12
    assert abs(mmd(a, b, bandwidths=(h,), scale=1.0) - direct) < 1e-12
    med = np.median(cdist(b, b)[np.triu_indices(len(b), 1)])  # the median heuristic: bandwidths times it
    assert abs(mmd(a, b, bandwidths=(h / med,)) - direct) < 1e-12
    with pytest.raises(ValueError, match="length scale must be positive"):
        mmd(a, b, scale=0.0)


def test_exact_w1_through_pot_is_the_optimal_assignment() -> None:
    g = np.random.default_rng(3)
    a, b = g.standard_normal((12, 6)), g.standard_normal((12, 6)) * 2 + 1
    cost = cdist(a, b)
    r, c = linear_sum_assignment(cost)  # equal sizes, uniform weights: W1 is the best matching's mean cost
    assert abs(w1(a, b) - cost[r, c].mean()) < 1e-12


def test_subsample_is_seeded_and_keeps_small_sets() -> None:
    a = np.arange(100.0).reshape(50, 2)
    assert subsample(a, 80) is not None and np.array_equal(subsample(a, 80), a)
    s = subsample(a, 10, seed=4)
    assert s.shape == (10, 2) and np.array_equal(s, subsample(a, 10, seed=4))
    assert not np.array_equal(s, subsample(a, 10, seed=5))
    assert len({tuple(r) for r in s}) == 10 and all(tuple(r) in {tuple(x) for x in a} for r in s)


def test_vector_metrics_bundle_in_5d() -> None:
    g = np.random.default_rng(4)
    real = g.standard_normal((600, 5)) * [1, 2, 3, 4, 5]
    out = vector_metrics(real, real.copy())
    assert set(out) == {"rmse_pmf", "sliced_w1", "mmd", "w1", *(f"{m}_{j}" for m in ("w1", "std_ratio")
                                                               for j in range(5))}
    assert math.isnan(out["rmse_pmf"])  # the 2-D PMF is defined for d = 2 only
    assert all(out[f"w1_{j}"] == 0 and out[f"std_ratio_{j}"] == 1 for j in range(5))
    assert out["sliced_w1"] == 0 and out["mmd"] < 1e-7
    assert out["w1"] < 1e-6  # POT's Euclidean cost is the root of an expanded square: not exactly 0
    fake = g.standard_normal((500, 5)) * [1, 2, 3, 4, 10]  # sizes may differ; the last axis is twice as wide
    out = vector_metrics(real, fake, w1_points=200, mmd_points=300, seed=7)
    assert abs(out["std_ratio_4"] - 2) < 0.2 and all(abs(out[f"std_ratio_{j}"] - 1) < 0.15 for j in range(4))
    assert out["w1_4"] > 5 * max(out[f"w1_{j}"] for j in range(4))
    np.testing.assert_equal(out, vector_metrics(real, fake, w1_points=200, mmd_points=300, seed=7))  # seeded
    assert abs(out["w1"] - w1(subsample(fake, 200, 7), subsample(real, 200, 8))) < 1e-12
    assert out["mmd"] > 0 and out["sliced_w1"] > 0
    notes = metric_notes(seed=7, w1_points=200, mmd_points=300)
    assert "200 points" in notes["w1"] and "median" in notes["mmd"]


def test_vector_metrics_repeats_the_toy_numbers_in_2d() -> None:
    """For float32 tensors of equal size (what ToyVSMD.test_step has), the same numbers as the toy test today."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 2, generator=g) * 3, torch.randn(300, 2, generator=g) * 2.5
    out = vector_metrics(real, fake)
    assert out["rmse_pmf"] == pmf_rmse(real, fake)
    assert [out["w1_0"], out["w1_1"]] == [float(v) for v in wasserstein1d(real, fake)]
    assert [out["std_ratio_0"], out["std_ratio_1"]] == [float(v) for v in fake.std(0) / real.std(0)]


@pytest.mark.parametrize("real, fake, match", [
    (np.zeros((5, 3)), np.zeros((5, 2)), "dimension 3 but the generated ones 2"),
    (np.zeros(5), np.zeros((5, 1)), r"\(n, d\) set"),
    (np.zeros((5, 2)), np.full((5, 2), np.nan), "generated vectors hold 10 NaN"),
])
def test_vector_metrics_bad_input(real, fake, match) -> None:
    with pytest.raises(ValueError, match=match):
        vector_metrics(real, fake)


def test_vectors_figure_on_principal_axes_and_chosen_columns() -> None:
    g = np.random.default_rng(5)
    z = g.standard_normal((500, 2)) * [5.0, 1.0]
    basis = np.linalg.qr(g.standard_normal((4, 4)))[0][:, :2]  # a 2-D plane in 4-D
    real = torch.from_numpy(z @ basis.T + 10)
    mean, axes = principal_axes(real)
    assert torch.allclose(mean, real.mean(0)) and axes.shape == (4, 2)
    # the first axis is the plane's long direction (up to sign), the second its short one
    assert abs(abs(float(axes[:, 0] @ torch.from_numpy(basis[:, 0]))) - 1) < 1e-2
    assert abs(abs(float(axes[:, 1] @ torch.from_numpy(basis[:, 1]))) - 1) < 1e-2
    fig = vectors_figure(real, real * 1.0)
    assert [a.get_xlabel() for a in fig.axes] == ["principal axis 1"] * 2
    lo, hi = fig.axes[0].get_xlim()
    assert lo < -10 and hi > 10  # the long axis (sd 5) spans the panel
    plt.close(fig)
    fig = vectors_figure(real, real, columns=[2, 3], names=["a", "b", "c", "d"])
    assert fig.axes[0].get_xlabel() == "c" and fig.axes[0].get_ylabel() == "d"
    plt.close(fig)
    plt.close(vectors_figure(real[:, :1], real[:, :1]))  # d = 1: histograms
    with pytest.raises(ValueError, match="two coordinate indices"):
        vectors_figure(real, real, columns=[0, 9])


def test_column_quantiles_are_numpys_linear_quantiles_bit_for_bit() -> None:
    from vsmd.metrics.distances import column_quantiles

    rng = np.random.default_rng(1)
    q = (np.arange(1000) + 0.5) / 1000
    for n in (1, 2, 7, 301):
        x = rng.standard_normal((n, 40)) * 3
        assert np.array_equal(column_quantiles(x, q), np.quantile(x, q, axis=0))
    assert np.array_equal(column_quantiles(x, np.array([0.0, 1.0])), np.quantile(x, [0.0, 1.0], axis=0))
