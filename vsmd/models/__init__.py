"""Score networks and LightningModules."""

from vsmd.models.base import VSMDModule
from vsmd.models.images import ImageVSMD
from vsmd.models.nets import ConditionalConvScoreNet, MLPScoreNet, TimeGradNet
from vsmd.models.timeseries import TimeSeriesVSMD
from vsmd.models.toy import ToyVSMD
from vsmd.models.unet import UNet

__all__ = ["ConditionalConvScoreNet", "ImageVSMD", "MLPScoreNet", "TimeGradNet", "TimeSeriesVSMD", "ToyVSMD", "UNet",
           "VSMDModule"]
