"""Per-step costs removed for issue 26 keep their numbers: the warm-up EMA's foreach update is exactly the per-tensor
formula averaged + (current - averaged) * (1 - min(decay, (1 + n) / (10 + n))), and AGM's coefficient table, now
computed once per grid, is exactly the coefficients at those levels."""

from __future__ import annotations

import torch

from vsmd.diffusion.agm import AGMProcess
from vsmd.models import ema as ema_lib
from vsmd.models.nets import MLPScoreNet


def test_warmup_ema_is_the_per_tensor_formula_bit_for_bit() -> None:
    torch.manual_seed(0)
    net = MLPScoreNet(2, 2, hidden=16, depth=2)
    ema = ema_lib.make_ema(net, 0.99, warmup=True)
    want = [p.detach().clone() for p in net.parameters()]
    for n in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ema.update_parameters(net)
        d = min(0.99, (1.0 + n) / (10.0 + n))
        want = ([p.detach().clone() for p in net.parameters()] if n == 0
                else [a + (p.detach() - a) * (1.0 - d) for a, p in zip(want, net.parameters())])
    assert int(ema.n_averaged) == 40
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), want))
    assert not any(torch.equal(a, p) for a, p in zip(ema.module.parameters(), net.parameters()))


def test_agm_table_is_computed_once_per_grid_and_equals_the_coefficients() -> None:
    path = AGMProcess((2,), p=3.0, k=0.2)
    levels = torch.linspace(path.t_eps, path.t_max, 1000)
    first = path.table(levels)
    assert path.table(levels.clone()) is first  # the same grid: reused
    want = path.coefficients(levels)
    assert first.keys() == want.keys() and all(torch.equal(first[k], want[k]) for k in want)
    other = torch.linspace(path.t_eps, path.t_max, 10)
    assert all(torch.equal(path.table(other)[k], path.coefficients(other)[k]) for k in want)
