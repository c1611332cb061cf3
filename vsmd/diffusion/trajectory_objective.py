"""Bridge matching on chains (Lightning-free): the training objective of the multi-marginal bridges.

At a time drawn uniformly in (t_0, t_K), a state of the reference process pinned at each chain (``MultiMarginalBridge.
sample``) and the regression targets there: the pinned drift for the policy networks (forward on the bridge, backward
on its mirror), E[v | x, t] for the velocity network, the velocity's noise for the velocity score, and at both end
pins the conditional flow of v given x (flow matching from N(0, I)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vsmd.diffusion.trajectory import MultiMarginalBridge
from vsmd.diffusion.trajectory_sampling import flow_time, network_time

NETWORKS = ("forward", "backward", "velocity", "velocity_score", "velocity_flow")


class BridgeMatchingLoss:
    """The loss of a multi-marginal bridge's networks on chains (B, K + 1, d).

    Args:
        reference: the forward bridge pinned at the training snapshot times (internal clock).
        sigma_min: first order only: a constant Gaussian blur of the paths' states (OT-CFM's sigma).
    """

    def __init__(self, reference: MultiMarginalBridge, sigma_min: float = 0.0) -> None:
        self.reference, self.mirrored, self.sigma_min = reference, reference.reversed(), float(sigma_min)
        self.t0, self.t1 = float(reference.times[0]), float(reference.times[-1])

    def drift(self, net: nn.Module | None, bridge: MultiMarginalBridge, chain: Tensor,
              generator: torch.Generator | None, velocity_noise: bool = False
              ) -> tuple[Tensor | None, tuple[Tensor, ...], Tensor]:
        """(the weighted drift regression of ``net`` on ``bridge``, or None without a net; the bridge's sample with
        the blurred x; the networks' time input)."""
        t = bridge.sample_times(len(chain), generator).to(chain.device)
        sample = bridge.sample(chain, t, generator, velocity_noise=velocity_noise)
        x, v, target = sample[0], sample[1], sample[2]
        if self.sigma_min > 0:
            x = x + self.sigma_min * torch.randn(x.shape, generator=generator).to(x)
        c, w = network_time(t, self.t0, self.t1).float(), bridge.loss_weight(t).float()
        if net is None:  # only the samples (the drift is not fitted in this stage)
            return None, (x, *sample[1:]), c
        pred = net(torch.cat([x, v], 1), c) if bridge.momentum else net(x, c)
        return ((pred - target).pow(2).sum(1) * w).mean(), (x, *sample[1:]), c

    def velocity_flow(self, net: nn.Module, chain: Tensor, generator: torch.Generator | None) -> Tensor:
        """Flow matching of v given x at both end pins: pairs from the bridge's closed-form law there (x is the
        chain's point, v its kriging law), straight paths from N(0, I)."""
        losses = []
        for last, t in ((False, self.t0), (True, self.t1)):
            tt = torch.full((len(chain),), t, dtype=torch.float64)
            x, v = self.reference.sample(chain, tt, generator)[:2]
            z = torch.randn(v.shape, generator=generator).to(v)
            tau = torch.rand(len(v), generator=generator).to(v)
            v_tau = (1 - tau[:, None]) * z + tau[:, None] * v
            pred = net(torch.cat([x, v_tau], 1), flow_time(tau, last))
            losses.append((pred - (v - z)).pow(2).sum(1).mean())
        return sum(losses) / 2

    def __call__(self, chain: Tensor, nets: dict[str, nn.Module | None], fit: tuple[str, ...] = ("forward", "backward"),
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """(the total loss, its parts as floats). ``nets`` maps the names of ``NETWORKS`` to the networks the model
        has (None: absent); ``fit`` names the policies to fit; the velocity networks are always fitted."""
        drift_loss, sample, c = self.drift(nets["forward"] if "forward" in fit else None, self.reference, chain,
                                           generator, velocity_noise=nets.get("velocity_score") is not None)
        parts = {}
        total = drift_loss if drift_loss is not None else chain.new_zeros(())
        if drift_loss is not None:
            parts["drift"] = float(drift_loss.detach())
        if self.reference.momentum:
            x, v, _, v_target = sample[:4]
            v_loss = (nets["velocity"](x, c) - v_target).pow(2).sum(1).mean()
            total, parts["velocity"] = total + v_loss, float(v_loss.detach())
            if nets.get("velocity_score") is not None:  # denoising: the noise of v given x on its bridge
                eps = sample[4]
                s_loss = (nets["velocity_score"](torch.cat([x, v], 1), c) - eps).pow(2).sum(1).mean()
                total, parts["velocity_score"] = total + s_loss, float(s_loss.detach())
            if nets.get("velocity_flow") is not None:
                f_loss = self.velocity_flow(nets["velocity_flow"], chain, generator)
                total, parts["velocity_flow"] = total + f_loss, float(f_loss.detach())
        if nets.get("backward") is not None and "backward" in fit:
            b_loss = self.drift(nets["backward"], self.mirrored, chain.flip(1), generator)[0]
            total, parts["backward_drift"] = total + b_loss, float(b_loss.detach())
        return total, parts
