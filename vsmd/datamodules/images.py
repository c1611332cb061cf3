"""Images (paper section 5.3): CIFAR-10 through torchvision, or any ImageFolder directory, scaled to [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vsmd.settings import SettingsPolicy

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SOURCES = ("cifar10", "folder")


def _transform(train: bool, flip: bool):
    from torchvision import transforms as T

    steps = [T.RandomHorizontalFlip()] if (train and flip) else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])  # [0, 1] -> [-1, 1]


def _check_size(dataset: Dataset, image_size: int, where: str) -> None:
    x, _ = dataset[0]
    if x.ndim != 3 or tuple(x.shape[1:]) != (image_size, image_size):
        raise ValueError(f"images in {where} are {tuple(x.shape)} (C, H, W), but the model needs "
                         f"{image_size}x{image_size}; resize the images or set data.init_args.image_size")


def _load_rgb(path: str):
    """ImageFolder's loader, with the file named when an image cannot be decoded."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ...)
        raise ValueError(f"cannot decode the image {path} ({type(err).__name__}: {err}); remove or replace "
                         "the file") from None


def _check_headers(dataset, image_size: int) -> None:
    """Every image of an ImageFolder opens and has the model's size (read from the headers, without decoding)."""
    from PIL import Image

    for path, _ in dataset.samples:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"cannot read the image {path} ({type(err).__name__}: {err}); remove or replace "
                             "the file") from None
        if size != (image_size, image_size):
            raise ValueError(f"the image {path} is {size[0]}x{size[1]} but the model needs {image_size}x"
                             f"{image_size} (every image must have that size); resize it, or set "
                             "data.init_args.image_size")


class ImageDataModule(pl.LightningDataModule):
    """CIFAR-10 (torchvision) or an ImageFolder tree of RGB images, random horizontal flip, values in [-1, 1].

    Batches are (images (B, 3, H, W), class labels (B,)).

    Args:
        source: "cifar10" (torchvision's CIFAR10 under ``root``) or "folder" (``root`` holds ``train/<class>/*``
            and optionally ``test/<class>/*``, e.g. the JPEG copy of CIFAR-10).
        root: data folder.
        download: let torchvision download CIFAR-10 into ``root`` (in prepare_data, rank 0 only).
        image_size: expected height and width (the U-Net is built for it).
        flip: random horizontal flips of training images.
        batch_size: training batch size per device.
        num_workers: DataLoader workers.
        n_val: fixed images (from the test split, else the train split) for the validation loss.
        n_generate: images ``vsmd test`` (FID) and ``vsmd predict`` generate.
        predict_batch_size: images per sampling batch in predict and test.
    """

    # the options that define the data (a checkpoint refuses others) and how they are read (vsmd.settings)
    DATA_SETTINGS = SettingsPolicy(data=("source", "image_size"),
                                   loading=("root", "download", "flip", "batch_size", "num_workers", "n_val",
                                            "n_generate", "predict_batch_size"))

    def __init__(self, source: str = "cifar10", root: str = "data", download: bool = False, image_size: int = 32,
                 flip: bool = True, batch_size: int = 128, num_workers: int = 4, n_val: int = 512,
                 n_generate: int = 64, predict_batch_size: int = 256) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown image source {source!r}; choose one of {', '.join(SOURCES)}")
        if min(image_size, batch_size, n_val, n_generate, predict_batch_size) < 1 or num_workers < 0:
            raise ValueError("image_size, batch_size, n_val, n_generate and predict_batch_size must be >= 1, "
                             "num_workers >= 0")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (3, self.hparams.image_size, self.hparams.image_size)

    # ----------------------------------------------------------------------------------------------
    def _cifar(self, train: bool, transform, download: bool = False):
        from torchvision.datasets import CIFAR10

        root = Path(self.hparams.root).expanduser()
        try:
            return CIFAR10(str(root), train=train, transform=transform, download=download)
        except RuntimeError as err:  # "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"CIFAR-10 is not in {root} ({err}). Put cifar-10-python.tar.gz (from {CIFAR10_URL}) or its "
                f"extracted folder cifar-10-batches-py/ into {root}/, or set data.init_args.download: true when "
                "online; or use an ImageFolder copy with data.init_args.source: folder") from None
        except OSError as err:  # URLError while downloading
            raise FileNotFoundError(f"downloading CIFAR-10 into {root} failed ({err}); offline, put "
                                    f"cifar-10-python.tar.gz (from {CIFAR10_URL}) into {root}/") from None

    def _folder(self, split: str, transform):
        from torchvision.datasets import ImageFolder

        root = Path(self.hparams.root).expanduser()
        path = root / split
        if not path.is_dir():
            raise FileNotFoundError(f"no image folder {path}: an ImageFolder tree needs {root}/train/<class>/<image> "
                                    f"(for the JPEG copy of CIFAR-10: tar xzf cifar10-jpeg.tar.gz and set "
                                    "data.init_args.root to the extracted cifar10-jpeg folder)")
        try:
            dataset = ImageFolder(str(path), transform=transform, loader=_load_rgb)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path} holds no images in class sub-folders ({err})") from None
        _check_headers(dataset, self.hparams.image_size)
        return dataset

    def _split(self, train: bool, transform):
        h = self.hparams
        if h.source == "cifar10":
            return self._cifar(train, transform)
        split = "train" if train else "test"
        if not train and not (Path(h.root).expanduser() / "test").is_dir():
            split = "train"
        return self._folder(split, transform)

    def prepare_data(self) -> None:
        if self.hparams.source == "cifar10":
            self._cifar(True, None, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            h = self.hparams
            self.train_set = self._split(True, _transform(True, h.flip))
            _check_size(self.train_set, h.image_size, h.root)
            val = self._split(False, _transform(False, False))
            self.val_set = Subset(val, range(min(h.n_val, len(val))))

    def reference_set(self) -> Dataset:
        """The training images without flips: the FID reference (CIFAR-10 train, as papers report)."""
        return self._split(True, _transform(False, False))

    @property
    def num_classes(self) -> int:
        classes = getattr(self.train_set, "classes", None)
        return len(classes) if classes else 0

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        w = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=w,
                          pin_memory=torch.cuda.is_available(), persistent_workers=w > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        # The model generates and scores; the loader only paces the sampling batches (indices of images to make).
        return DataLoader(_Count(self.hparams.n_generate), batch_size=self.hparams.predict_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Count(self.hparams.n_generate), batch_size=self.hparams.predict_batch_size)


class _Count(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i
