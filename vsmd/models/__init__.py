"""Score networks and LightningModules."""

from vsmd.models.base import VSMDModule
from vsmd.models.nets import MLPScoreNet
from vsmd.models.toy import ToyVSMD

__all__ = ["MLPScoreNet", "ToyVSMD", "VSMDModule"]
