"""Score networks and LightningModules."""

from vsmd.models.base import PhaseSpaceModule, VSMDModule
from vsmd.models.images import ImageVSMD
from vsmd.models.nets import ConditionalConvScoreNet, MLPScoreNet, TimeGradNet
from vsmd.models.timeseries import TimeSeriesVSMD
from vsmd.models.toy import ToyVSMD
from vsmd.models.trajectory import TrajectoryBridge
from vsmd.models.unet import UNet

__all__ = ["ConditionalConvScoreNet", "ImageVSMD", "MLPScoreNet", "PhaseSpaceModule", "TimeGradNet", "TimeSeriesVSMD",
           "ToyVSMD", "TrajectoryBridge", "UNet", "VSMDModule"]
