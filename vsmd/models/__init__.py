"""Networks and LightningModules: the generative families (VSMDModule, AGMModule) mixed with the tasks (toy vectors,
images, forecasting), and the trajectory bridges."""

from vsmd.models.agm import AGMModule
from vsmd.models.base import GenerativeModule, PhaseSpaceModule
from vsmd.models.images import ImageAGM, ImageVSMD
from vsmd.models.nets import ConditionalConvScoreNet, MLPScoreNet, TimeGradNet
from vsmd.models.score import VSMDModule
from vsmd.models.timeseries import TimeSeriesAGM, TimeSeriesVSMD
from vsmd.models.toy import ToyAGM, ToyVSMD
from vsmd.models.trajectory import TrajectoryBridge
from vsmd.models.unet import UNet

__all__ = ["AGMModule", "ConditionalConvScoreNet", "GenerativeModule", "ImageAGM", "ImageVSMD", "MLPScoreNet",
           "PhaseSpaceModule", "TimeGradNet", "TimeSeriesAGM", "TimeSeriesVSMD", "ToyAGM", "ToyVSMD",
           "TrajectoryBridge", "UNet", "VSMDModule"]
