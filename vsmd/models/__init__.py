"""Score networks and LightningModules."""

from vsmd.models.base import VSMDModule
from vsmd.models.nets import ConditionalConvScoreNet, MLPScoreNet, TimeGradNet
from vsmd.models.timeseries import TimeSeriesVSMD
from vsmd.models.toy import ToyVSMD

__all__ = ["ConditionalConvScoreNet", "MLPScoreNet", "TimeGradNet", "TimeSeriesVSMD", "ToyVSMD", "VSMDModule"]
