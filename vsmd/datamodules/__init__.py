"""LightningDataModules, one per data family."""

from vsmd.datamodules.images import ImageDataModule
from vsmd.datamodules.series_files import SeriesFileDataModule
from vsmd.datamodules.timeseries import GluonTSDataModule
from vsmd.datamodules.toy import Toy2DDataModule, make_toy
from vsmd.datamodules.trajectory import TrajectoryDataModule, load_snapshots

__all__ = ["GluonTSDataModule", "ImageDataModule", "SeriesFileDataModule", "Toy2DDataModule", "TrajectoryDataModule",
           "load_snapshots", "make_toy"]
