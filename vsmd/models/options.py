"""The option groups of the generative modules, each a frozen dataclass that checks itself when it is built.

The command line and the configs keep the options flat (``--model.init_args.sa_lr``), as every config, the README
and older checkpoints name them; a module builds its groups from them in ``__init__``, so that a bad value is
refused before anything is built, by the group it belongs to. Checks that join two groups (a sampler that needs
something of the process) are the family module's.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmd.diffusion.ei import EI_GRIDS
from vsmd.diffusion.variational import SA_SAMPLERS, ZB_MODES

RHO_INITS = ("data", "zero")
ROTATIONS = ("none", "pca", "learned")
PARAMETRISATIONS = ("eps_v", "eps")


@dataclass(frozen=True)
class TrainingOptions:
    """The network's optimisation: AdamW, its EMA copy, the training times (t_levels fixed levels; 0: continuous)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    t_levels: int = 1000

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.t_levels < 0:
            raise ValueError(f"need t_levels >= 0, got {self.t_levels}")


@dataclass(frozen=True)
class SamplingOptions:
    """The evaluation sampler: its name, grid points, seed, the EI integrator's order and grid, and t_stop."""

    sampler: str = "heun"
    sample_steps: int = 50
    seed: int = 0
    ei_order: int = 3
    ei_grid: str = "quadratic"
    t_stop: float | None = None

    def __post_init__(self) -> None:
        if self.ei_order not in (1, 2, 3) or self.ei_grid not in EI_GRIDS:
            raise ValueError(f"need ei_order in 1..3 and ei_grid in {EI_GRIDS}, got {self.ei_order}, {self.ei_grid!r}")
        if self.sample_steps < 2:
            raise ValueError(f"need sample_steps >= 2, got {self.sample_steps}")


@dataclass(frozen=True)
class ProcessOptions:
    """A forward diffusion of VSMD and its relatives (vsmd.diffusion.forward), what the network predicts, and the
    frame it runs in."""

    process: str = "vsuld"
    beta: float = 5.0
    beta_schedule: str = "auto"
    beta_min: float = 0.1
    gamma: float = 2.0
    damping: float | None = None
    init_velocity: str = "hsm"
    v0_var: float = 1.0
    t_eps: float = 1e-3
    parametrisation: str = "eps_v"
    rotation: str = "none"

    def __post_init__(self) -> None:
        if self.process == "agm":
            raise ValueError("process agm is a model family of its own since vsmd 0.2: use the class "
                             "vsmd.models.ToyAGM, ImageAGM or TimeSeriesAGM (class_path) and drop process: agm and "
                             "the diffusion options (beta, gamma, damping, init_velocity, the SA and rho options)")
        if self.parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {self.parametrisation!r}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")

    def diffusion(self) -> dict:
        """The keyword arguments of vsmd.diffusion.make_process."""
        return dict(beta=self.beta, beta_schedule=self.beta_schedule, beta_min=self.beta_min, gamma=self.gamma,
                    damping=self.damping, init_velocity=self.init_velocity, v0_var=self.v0_var, t_eps=self.t_eps)


@dataclass(frozen=True)
class SAOptions:
    """The SA stages on A (vsmd.diffusion.variational) and the data-informed start of A."""

    sa_every: int = 100
    sa_steps: int = 5
    sa_paths: int = 256
    sa_points: int | None = None
    sa_sampler: str = "heun"
    sa_lr: float = 1e-2
    sa_lr_decay: float = 0.99
    sa_lr_decay_every: int = 100
    sa_warmup: int = 0
    sa_cooldown: int = 0
    zb_mode: str = "fbsde"
    zeta: float = 1.0
    rho_init: str = "data"
    rho_init_kl: float = 0.003
    rho_init_samples: int = 4096

    def __post_init__(self) -> None:
        if self.zb_mode not in ZB_MODES:
            raise ValueError(f"zb_mode must be one of {ZB_MODES}, got {self.zb_mode!r}")
        if self.sa_sampler not in SA_SAMPLERS:
            raise ValueError(f"sa_sampler must be one of {SA_SAMPLERS}, got {self.sa_sampler!r}")
        if self.rho_init not in RHO_INITS:
            raise ValueError(f"rho_init must be one of {RHO_INITS}, got {self.rho_init!r}")
        if not self.rho_init_kl > 0 or self.rho_init_samples < 2:
            raise ValueError(f"need rho_init_kl > 0 (a KL budget in nats) and rho_init_samples >= 2, got "
                             f"{self.rho_init_kl} and {self.rho_init_samples}")
        if self.sa_points is not None and self.sa_points < 2:
            raise ValueError(f"sa_points must be >= 2, got {self.sa_points}")
        if self.sa_every < 1:
            raise ValueError(f"need sa_every >= 1, got {self.sa_every}")

    @property
    def points(self) -> int:
        """Time points of the backward simulation: 100 for "em" (as the VSMD code), 50 for "heun" (the same
        number of network calls), unless set."""
        return self.sa_points if self.sa_points is not None else (100 if self.sa_sampler == "em" else 50)


@dataclass(frozen=True)
class AGMOptions:
    """The AGM bridge (vsmd.diffusion.agm): noise scale p, start correlation -k, the data scale it runs on, and
    velocity guidance toward a point."""

    agm_p: float = 3.0
    agm_k: float = 0.2
    agm_scale: str = "none"

    def __post_init__(self) -> None:
        if self.agm_scale not in ("none", "data"):
            raise ValueError(f"agm_scale must be 'none' or 'data', got {self.agm_scale!r}")


def groups(values: dict, *classes: type) -> list:
    """Each dataclass in ``classes`` built from the entries of ``values`` it has fields for."""
    out = []
    for cls in classes:
        names = cls.__dataclass_fields__.keys()
        out.append(cls(**{k: v for k, v in values.items() if k in names}))
    return out
