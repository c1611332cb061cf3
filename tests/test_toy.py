"""Toy data, PMF-RMSE and straightness against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vsmd.datamodules import Toy2DDataModule, make_toy
from vsmd.metrics import pmf, pmf_rmse, straightness, wasserstein1d


def test_pmf_rmse_zero_on_identical_inputs_and_sums_to_one() -> None:
    x = make_toy("spiral", 3000, [1, 8], torch.Generator().manual_seed(0))
    assert pmf_rmse(x, x.clone()) == 0.0
    lo, hi = x.min(0).values * 1.025, x.max(0).values * 1.025
    p = pmf(x.double(), lo.double(), hi.double(), 100)
    assert p.shape == (100, 100) and math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)


def test_pmf_rmse_matches_numpy_histogram2d() -> None:
    g = torch.Generator().manual_seed(1)
    real = make_toy("checkerboard", 3000, [6, 1], g)
    fake = real + 2.0 * torch.randn(3000, 2, generator=g)  # some mass falls outside the range: clipped
    r, f = real.double().numpy(), fake.double().numpy()
    lo, hi = r.min(0) * 1.025, r.max(0) * 1.025
    f = np.clip(f, lo, hi)
    rng = [[lo[0], hi[0]], [lo[1], hi[1]]]
    p, _, _ = np.histogram2d(r[:, 0], r[:, 1], bins=100, range=rng)
    q, _, _ = np.histogram2d(f[:, 0], f[:, 1], bins=100, range=rng)
    expected = np.sqrt(np.mean((p / p.sum() - q / q.sum()) ** 2))
    assert pmf_rmse(real, fake) == pytest.approx(expected, rel=1e-9)
    assert pmf_rmse(real, fake) > 0


def test_pmf_right_edge_goes_to_last_bin() -> None:
    lo, hi = torch.tensor([-1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    p = pmf(torch.tensor([[1.0, 1.0], [5.0, -5.0]], dtype=torch.float64), lo, hi, 10)
    assert p[9, 9] == 0.5 and p[9, 0] == 0.5  # the second point is clipped to the corner (1, -1)


def test_pmf_rmse_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        pmf_rmse(torch.zeros(10, 3), torch.zeros(10, 3))


def test_straightness_zero_for_straight_and_exact_for_a_parabola() -> None:
    times = torch.linspace(1.0, 0.0, 2001, dtype=torch.float64)  # decreasing, s = 1 - t in [0, 1]
    s = 1 - times
    straight = (3 * s - 1)[:, None, None].expand(-1, 4, 1)
    assert float(straightness(straight, times)[0]) == pytest.approx(0.0, abs=1e-12)
    # x(s) = s^2: mean velocity 1, xdot = 2s, int_0^1 (1 - 2s)^2 ds = 1/3.
    parabola = torch.stack([s**2, -(s**2)], dim=-1)[:, None, :]
    val = straightness(parabola, times)
    torch.testing.assert_close(val, torch.tensor([1 / 3, 1 / 3], dtype=torch.float64), rtol=1e-5, atol=0)


def test_toy_data_follow_the_recipe() -> None:
    g = torch.Generator().manual_seed(0)
    spiral = make_toy("spiral", 20000, [1, 8], g)
    assert spiral.shape == (20000, 2)
    assert 30 < spiral[:, 1].abs().max() < 45 and spiral[:, 0].abs().max() < 6  # y in about +-35
    board = make_toy("checkerboard", 20000, [6, 1], g)
    x1, x2 = board[:, 0] / 6, board[:, 1]
    assert bool(((x1.sin() * x2.sin()) < 0).all())
    assert board[:, 0].abs().max() <= 6 * 2 * math.pi and board[:, 0].abs().max() > 35
    with pytest.raises(ValueError, match="unknown toy dataset"):
        make_toy("moons", 10)


def test_datamodule_is_seeded_and_resumable() -> None:
    dm = Toy2DDataModule("spiral", [1, 8], batch_size=32, seed=3)
    first = dm.train_dataloader()
    it = iter(first)
    batches = [next(it) for _ in range(3)]
    assert all(b.shape == (32, 2) for b in batches)
    again = iter(Toy2DDataModule("spiral", [1, 8], batch_size=32, seed=3).train_dataloader())
    torch.testing.assert_close(next(again), batches[0])
    state = first.state_dict()
    resumed = Toy2DDataModule("spiral", [1, 8], batch_size=32, seed=3).train_dataloader()
    resumed.load_state_dict(state)
    torch.testing.assert_close(next(iter(resumed)), next(it))  # continues the stream, no replay
    torch.testing.assert_close(dm.fixed_set("test"), dm.fixed_set("test"))
    assert not torch.equal(dm.fixed_set("val")[:100], dm.fixed_set("test")[:100])


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "moons"}, "unknown toy dataset"),
    ({"stretch": [1.0]}, "stretch must be two positive"),
    ({"stretch": [1.0, -2.0]}, "stretch must be two positive"),
    ({"batch_size": 0}, ">= 1"),
])
def test_datamodule_bad_input(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Toy2DDataModule(**kwargs)


def test_wasserstein1d_against_the_closed_form_for_a_shift() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5000, 2, generator=g)
    shifted = x + torch.tensor([0.5, -2.0])
    torch.testing.assert_close(wasserstein1d(x, shifted), torch.tensor([0.5, 2.0], dtype=torch.float64))
    # W1(N(0,1), N(0, s^2)) = |1 - s| sqrt(2/pi); the sample estimate is within a few percent at n = 5000.
    scaled = torch.randn(5000, 2, generator=g) * 3
    torch.testing.assert_close(wasserstein1d(x, scaled), torch.full((2,), 2 * math.sqrt(2 / math.pi),
                                                                      dtype=torch.float64), rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="equal shape"):
        wasserstein1d(x, x[:10])


def test_samples_figure_puts_real_and_generated_on_the_same_axes() -> None:
    from vsmd.plotting import samples_figure
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(500, 2, generator=g) * 2 - 1) * torch.tensor([1.0, 8.0])
    fake = (torch.rand(500, 2, generator=g) * 2 - 1) * torch.tensor([0.9, 2.0])  # inside, squashed on y
    fake[0] = torch.tensor([100.0, 0.0])
    fig = samples_figure(real, fake, title="m")
    left, right = fig.axes
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    assert left.get_ylim()[1] == pytest.approx(float(real[:, 1].max()) * 1.05, rel=1e-6)
    ratio = float(fake[:, 1].std() / real[:, 1].std())
    assert f"y {ratio:.2f}" in right.get_title() and "1 outside" in right.get_title()
