"""Sampling the learned dynamics of a multi-marginal bridge (Lightning-free): the time grid through the snapshot
times, the simulation of the learned phase-space (or first-order) dynamics, the marginal ODE of the velocity field,
and the velocity at a snapshot (E[v | x] plus the bridge's spread, the conditional flow, Langevin refinement).

Two ways to simulate a momentum model (``TRAJECTORY_SAMPLERS``): "phase" integrates the learned phase-space dynamics
(x, v) with the drift network from a start velocity; "marginal" integrates the first-order ODE dx/dt = E[v | x, t] of
the velocity network (Heun, 2 NFE a step). Since x' = v on every bridge path, that field carries the bridge mixture's
x-marginals exactly, whatever the drift network's error, which in the phase-space simulation compounds through v;
its paths are less smooth. The start velocity is E[v | x] plus the bridge's conditional spread, or (with a velocity
flow) a draw of the conditional flow of v given x at the first and last snapshot, fitted by flow matching from
N(0, I) on the bridge's closed-form pairs (x, v) at the end pins of each chain: once the stages' chains come from
simulations, v given x is broad or multimodal (chains through one point head to different places), and the mean
plus one bridge's spread collapses it. Either can be refined by Langevin dynamics in v with a learned velocity score.

The networks come in as callables on the internal clock; ``network_time`` and ``flow_time`` are their time inputs.
``TRAJECTORY_SAMPLERS`` are the values of the trajectory model's ``sampler`` option (not the score samplers of
``vsmd.diffusion.SAMPLERS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vsmd.diffusion.grids import knot_grid as time_grid  # the trajectory simulator's grid (old name kept)
from vsmd.diffusion.trajectory import MultiMarginalBridge

TRAJECTORY_SAMPLERS = ("phase", "marginal")  # the phase-space simulation; the marginal ODE dx/dt = E[v | x, t]


def check_sampling(sampler: str, dynamics: str, sigma: float, langevin_steps: int = 0, langevin_eta: float = 0.05,
                   velocity_flow_steps: int = 0) -> None:
    """The sampling settings of a trajectory model: its ``sampler`` and how it draws the start velocity."""
    if sampler not in TRAJECTORY_SAMPLERS or (sampler != "phase" and dynamics != "momentum"):
        raise ValueError(f"sampler must be one of {TRAJECTORY_SAMPLERS} ('marginal' for dynamics momentum only), got "
                         f"{sampler!r} with dynamics {dynamics!r}")
    if langevin_steps < 0 or not 0 < langevin_eta < 2:
        raise ValueError(f"need langevin_steps >= 0 and 0 < langevin_eta < 2; got {langevin_steps} and {langevin_eta}")
    if (langevin_steps > 0 or velocity_flow_steps > 0) and dynamics != "momentum":
        raise ValueError("langevin_steps and velocity_flow_steps sample the velocity: they are for dynamics "
                         "momentum")
    if velocity_flow_steps < 0:
        raise ValueError(f"velocity_flow_steps must be >= 0, got {velocity_flow_steps}")
    if langevin_steps > 0 and not sigma > 0:
        raise ValueError("langevin_steps needs sigma > 0 (with sigma 0 the velocity given the position is a point "
                         "mass on each bridge and has no score)")


def resample(points: Tensor, n: int, generator: torch.Generator | int) -> Tensor:
    """``n`` of ``points`` (a pool's chains or a snapshot's points) drawn with replacement; ``generator`` or a seed."""
    generator = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    return points[torch.randint(len(points), (n,), generator=generator)]


def network_time(t: Tensor, t0: float, t1: float) -> Tensor:
    """The networks' time input: 999 (t - t_0) / (t_K - t_0)."""
    return 999.0 * (t - t0) / (t1 - t0)


def flow_time(tau: Tensor, last: bool) -> Tensor:
    """The conditional flow's time input: tau in [0, 1] -> [0, 499] at the first snapshot, [500, 999] at the last."""
    return 499.0 * tau + (500.0 if last else 0.0)


def heun_ode(field: Callable[[Tensor, float], Tensor], x: Tensor, knots: Sequence[float]) -> list[Tensor]:
    """Heun's method for dy/ds = field(y, s) through ``knots`` from y = x; returns the states at every knot."""
    states = [x]
    for a, b in zip(knots[:-1], knots[1:]):
        k1 = field(x, a)
        k2 = field(x + (b - a) * k1, b)
        x = x + (b - a) / 2 * (k1 + k2)
        states.append(x)
    return states


@torch.no_grad()
def langevin_velocity(score: Callable[[Tensor], Tensor], v: Tensor, step_sd: Tensor | float, steps: int,
                      eta: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Unadjusted Langevin dynamics in the velocity, the position held: v <- v + delta score(v) + sqrt(2 delta) xi
    with delta = eta step_sd^2 (``step_sd`` (B, d), (B,) or a number: about the sd of v given x, so that a step
    moves a fixed fraction of the law's width). On a Gaussian of that sd the stationary sd is
    step_sd / sqrt(1 - eta / 2) (ULA's bias: 1.3% at eta 0.05)."""
    if steps < 0 or not 0 < eta < 2:
        raise ValueError(f"need langevin steps >= 0 and 0 < eta < 2, got {steps} and {eta}")
    step_sd = torch.as_tensor(step_sd, dtype=v.dtype, device=v.device)
    step_sd = step_sd[:, None] if step_sd.dim() == 1 else step_sd
    delta = eta * step_sd ** 2
    for _ in range(steps):
        xi = torch.randn(v.shape, generator=generator).to(v)
        v = v + delta * score(v) + (2 * delta).sqrt() * xi
    return v


@torch.no_grad()
def simulate_paths(drift: Callable[[Tensor, Tensor | None, Tensor], Tensor], x0: Tensor, v0: Tensor | None,
                   grid: Tensor, sigma: float, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor | None]:
    """Integrate the learned dynamics on ``grid`` from (x0[, v0]) at grid[0]; returns the x path (N, B, d) and the v
    path (or None). First order: Euler-Maruyama. Momentum: the double integrator's exact step with the drift held
    over the step, x += v h + a h^2 / 2, v += a h, plus its exact noise sigma^2 [[h^3/3, h^2/2], [h^2/2, h]]."""
    x, v = x0, v0
    xs, vs = [x], [v] if v is not None else None
    for i in range(len(grid) - 1):
        t, h = float(grid[i]), float(grid[i + 1] - grid[i])
        tt = torch.full((len(x),), t, device=x.device, dtype=x.dtype)
        f = drift(x, v, tt)
        z = torch.randn(2, *x.shape, generator=generator).to(x) if sigma > 0 else None
        if v is None:
            x = x + f * h + (sigma * math.sqrt(h) * z[0] if z is not None else 0)
        else:
            nx, nv = x + v * h + f * h * h / 2, v + f * h
            if z is not None:  # Cholesky of [[h^3/3, h^2/2], [h^2/2, h]]
                l11 = math.sqrt(h ** 3 / 3)
                l21 = (h * h / 2) / l11
                l22 = math.sqrt(max(h - l21 * l21, 0.0))
                nx = nx + sigma * l11 * z[0]
                nv = nv + sigma * (l21 * z[0] + l22 * z[1])
            x, v = nx, nv
            vs.append(v)
        xs.append(x)
    return torch.stack(xs), (torch.stack(vs) if vs is not None else None)


@torch.no_grad()
def simulate_through_pins(drift: Callable[[Tensor, Tensor | None, Tensor], Tensor], bridge: MultiMarginalBridge,
                          x0: Tensor, v0: Tensor | None, steps: int, generator: torch.Generator | None = None
                          ) -> Tensor:
    """``simulate_paths`` on a grid of about ``steps`` steps through the pins of ``bridge`` (its clock, its noise)
    from (x0[, v0]) at its first pin; returns the positions at the pins in the bridge's order, (B, n, d)."""
    grid = time_grid(bridge.times.tolist(), steps)
    xs, _ = simulate_paths(drift, x0, v0, grid.to(torch.float32), bridge.sigma, generator)
    at = [int((grid - float(p)).abs().argmin()) for p in bridge.times]
    return xs[at].transpose(0, 1)


@torch.no_grad()
def marginal_paths(velocity: Callable[[Tensor, Tensor], Tensor], x0: Tensor, grid: Tensor, t0: float, t1: float
                   ) -> Tensor:
    """The paths (N, B, d) of the first-order ODE dx/dt = velocity(x, c) on ``grid`` (N,) from x0 by Heun (2 NFE a
    step), c the network time of t for the span [t0, t1] (``velocity`` is E[v | x, t]: x' = v on every bridge path,
    so this field carries the bridge mixture's x-marginals)."""
    field = lambda x, s: velocity(x, network_time(torch.full((len(x),), s, device=x.device), t0, t1))  # noqa: E731
    return torch.stack(heun_ode(field, x0, grid.tolist()))


@torch.no_grad()
def flow_velocity(flow: Callable[[Tensor, Tensor], Tensor], x: Tensor, last: bool, steps: int,
                  generator: torch.Generator | None) -> Tensor:
    """v given x at the first (or last) snapshot by the conditional flow ``flow(cat(x, u), flow_time)``: Heun from
    N(0, I) over tau in [0, 1] in ``steps`` steps."""
    v = torch.randn(x.shape, generator=generator).to(x)
    taus = torch.linspace(0, 1, steps + 1).tolist()
    return heun_ode(lambda u, s: flow(torch.cat([x, u], 1), flow_time(torch.full((len(x),), s, device=x.device),
                                                                     last)), v, taus)[-1]


def start_velocity(x: Tensor, spread: float, generator: torch.Generator | None,
                   mean: Callable[[Tensor], Tensor] | None = None, flow: Callable[[], Tensor] | None = None,
                   noise: Callable[[Tensor], Tensor] | None = None, langevin_steps: int = 0,
                   langevin_eta: float = 0.05) -> Tensor:
    """The velocity at a snapshot given positions x: ``flow()`` if given (a draw of the conditional flow), else
    ``mean(x)`` (E[v | x]) plus ``spread`` (the bridge's conditional sd of v given x) times standard noise; then,
    with a velocity score given as its noise prediction ``noise(v)`` (the score is -noise / spread),
    ``langevin_steps`` of Langevin dynamics in v, steps scaled by the spread (the score varies on that scale)."""
    v = flow() if flow is not None else mean(x) + spread * torch.randn(x.shape, generator=generator).to(x)
    if noise is None or langevin_steps == 0:
        return v
    return langevin_velocity(lambda u: -noise(u) / spread, v, spread, langevin_steps, langevin_eta, generator)


class LearnedDynamics:
    """A trajectory model's learned fields as evaluation uses them, on the internal clock of ``reference`` (the
    forward bridge pinned at the training snapshots). Networks take (state, network time); None: the model has none.

    Args:
        reference: the forward bridge (its pins, noise and dynamics).
        forward, backward: the policies' drift networks (backward: on the mirrored clock).
        velocity: E[v | x, t]; noise: the velocity score as its noise prediction; flow: the conditional flow of v
            given x at the first and last pin.
        langevin_steps, langevin_eta, flow_steps: how the start velocity is drawn (``start_velocity``).
    """

    def __init__(self, reference: MultiMarginalBridge, forward: nn.Module, backward: nn.Module | None = None,
                 velocity: nn.Module | None = None, noise: nn.Module | None = None, flow: nn.Module | None = None,
                 langevin_steps: int = 0, langevin_eta: float = 0.05, flow_steps: int = 0) -> None:
        self.reference, self.forward, self.backward = reference, forward, backward
        self.velocity, self.noise, self.flow = velocity, noise, flow
        self.langevin_steps, self.langevin_eta, self.flow_steps = langevin_steps, langevin_eta, flow_steps
        self.t0, self.t1 = float(reference.times[0]), float(reference.times[-1])

    def drift(self, policy: nn.Module) -> Callable[[Tensor, Tensor | None, Tensor], Tensor]:
        """The simulator's drift(x, v, t) of a policy network (v is None for first-order dynamics)."""
        t0, t1 = self.t0, self.t1
        if self.reference.momentum:
            return lambda x, v, t: policy(torch.cat([x, v], 1), network_time(t, t0, t1))
        return lambda x, v, t: policy(x, network_time(t, t0, t1))

    def start_velocity(self, x: Tensor, t: float, generator: torch.Generator | None) -> Tensor:
        """The velocity at a snapshot at time t given positions x: from the conditional flow at the first and last
        snapshot if there is one, else E[v | x, t] plus the bridge's conditional spread; then (with a velocity
        score) ``langevin_steps`` of Langevin dynamics in v."""
        c = network_time(torch.full((len(x),), t, device=x.device), self.t0, self.t1)
        noise, flow = self.noise, self.flow is not None and t in (self.t0, self.t1)
        return start_velocity(
            x, self.reference.velocity_spread(t), generator, mean=lambda y: self.velocity(y, c),
            flow=(lambda: flow_velocity(self.flow, x, t == self.t1, self.flow_steps, generator)) if flow else None,
            noise=(lambda u: noise(torch.cat([x, u], 1), c)) if noise is not None else None,
            langevin_steps=self.langevin_steps, langevin_eta=self.langevin_eta)

    @torch.no_grad()
    def simulate_pins(self, direction: str, x0: Tensor, steps: int, generator: torch.Generator | None,
                      start: Callable[[Tensor, float, torch.Generator | None], Tensor] | None = None) -> Tensor:
        """Simulate a policy ("forward" or "backward") from positions at its starting end (t_0 forward, t_K
        backward) through every pin, the start velocity from ``start`` (default ``start_velocity``); returns the
        positions at the pins in forward order, (B, K + 1, d)."""
        forward = direction == "forward"
        bridge = self.reference if forward else self.reference.reversed()
        v0 = None
        if self.reference.momentum:
            v0 = (start or self.start_velocity)(x0, self.t0 if forward else self.t1, generator)
            v0 = v0 if forward else -v0  # the backward clock runs the velocity backwards
        chain = simulate_through_pins(self.drift(self.forward if forward else self.backward), bridge, x0, v0, steps,
                                      generator)
        return chain if forward else chain.flip(1)

    @torch.no_grad()
    def paths(self, x0: Tensor, grid: Tensor, generator: torch.Generator | None, marginal: bool = False,
              start: Callable[[Tensor, float, torch.Generator | None], Tensor] | None = None) -> tuple[Tensor, int]:
        """(x paths (N, B, d) on ``grid`` from x0 at t_0, NFE): the marginal ODE of ``velocity`` if ``marginal``,
        else the forward policy's dynamics from the start velocity of ``start`` (default ``start_velocity``)."""
        if marginal:  # dx/dt = E[v | x, t]
            return marginal_paths(self.velocity, x0, grid, self.t0, self.t1), 2 * (len(grid) - 1)
        v0 = (start or self.start_velocity)(x0, self.t0, generator) if self.reference.momentum else None
        xs, _ = simulate_paths(self.drift(self.forward), x0, v0, grid.to(torch.float32), self.reference.sigma,
                               generator)
        return xs, len(grid) - 1 + (1 if self.reference.momentum else 0)
