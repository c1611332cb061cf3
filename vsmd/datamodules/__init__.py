"""LightningDataModules, one per data family."""

from vsmd.datamodules.file_source import FileSource
from vsmd.datamodules.images import ImageDataModule
from vsmd.datamodules.series_files import SeriesFileDataModule
from vsmd.datamodules.timeseries import GluonTSDataModule
from vsmd.datamodules.toy import Toy2DDataModule
from vsmd.datamodules.toy_source import ToySource, make_toy
from vsmd.datamodules.trajectory import TrajectoryDataModule, load_snapshots
from vsmd.datamodules.vector_files import load_vectors
from vsmd.datamodules.vectors import VectorDataModule

__all__ = ["FileSource", "GluonTSDataModule", "ImageDataModule", "SeriesFileDataModule", "Toy2DDataModule", "ToySource",
           "TrajectoryDataModule", "VectorDataModule", "load_snapshots", "load_vectors", "make_toy"]
