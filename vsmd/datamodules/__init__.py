"""LightningDataModules, one per data family."""

from vsmd.datamodules.images import ImageDataModule
from vsmd.datamodules.series_files import SeriesFileDataModule
from vsmd.datamodules.timeseries import GluonTSDataModule
from vsmd.datamodules.toy import Toy2DDataModule, make_toy
from vsmd.datamodules.trajectory import TrajectoryDataModule, load_snapshots
from vsmd.datamodules.vector_files import load_vectors
from vsmd.datamodules.vectors import VectorDataModule

__all__ = ["GluonTSDataModule", "ImageDataModule", "SeriesFileDataModule", "Toy2DDataModule", "TrajectoryDataModule",
           "VectorDataModule", "load_snapshots", "load_vectors", "make_toy"]
