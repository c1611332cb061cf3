"""The warm-up EMA (vsmd.models.ema): the foreach update is exactly the per-tensor formula
averaged + (current - averaged) * (1 - min(decay, (1 + n) / (10 + n)))."""

from __future__ import annotations

import torch

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
