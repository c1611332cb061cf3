"""The math of VSMD in pure torch: closed-form kernels, forward processes, samplers, SA updates of A."""

from vsmd.diffusion.process import ADAPTIVE, BRIDGES, MOMENTUM, PROCESSES, ForwardProcess
from vsmd.diffusion.registry import SAMPLERS, make_process, sample
from vsmd.diffusion.samplers import euler_maruyama, heun, splitting
from vsmd.diffusion.types import GaussianPath, SampleResult
from vsmd.diffusion.variational import ZB_MODES, SAStats, Trajectories, VariationalScoreSA, forward_loss, simulate

__all__ = ["ADAPTIVE", "BRIDGES", "MOMENTUM", "PROCESSES", "SAMPLERS", "ZB_MODES", "ForwardProcess", "GaussianPath",
           "SAStats", "SampleResult", "Trajectories", "VariationalScoreSA", "euler_maruyama", "forward_loss", "heun",
           "make_process", "sample", "simulate", "splitting"]
