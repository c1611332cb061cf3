"""LightningDataModules, one per data family."""

from vsmd.datamodules.images import ImageDataModule
from vsmd.datamodules.timeseries import GluonTSDataModule
from vsmd.datamodules.toy import Toy2DDataModule, make_toy

__all__ = ["GluonTSDataModule", "ImageDataModule", "Toy2DDataModule", "make_toy"]
