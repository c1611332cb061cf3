"""LightningDataModules, one per data family."""

from vsmd.datamodules.toy import Toy2DDataModule, make_toy

__all__ = ["Toy2DDataModule", "make_toy"]
