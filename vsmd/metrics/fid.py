"""FID with torchmetrics' FrechetInceptionDistance (torch-fidelity's Inception-v3, TF1 bilinear resize without
antialiasing, as papers report), a configurable weights file and cached reference statistics.

The Inception network lives only in the metric object the caller holds; it is never a sub-module of a
LightningModule, so it never lands in a checkpoint or in the EMA copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _missing(why: str) -> str:
    return (f"FID needs torch-fidelity's Inception-v3 weights {INCEPTION_FILE} ({why}). Download it from "
            f"{INCEPTION_URL} and put it at {default_weights_path()}, or anywhere and set "
            "model.init_args.fid_weights to its path")


def resolve_weights(path: str | None, download: bool = True) -> Path:
    """The weights file: ``path`` if given, else torch hub's cached copy, downloaded there when online."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(_missing(f"{p} does not exist"))
        return p
    p = default_weights_path()
    if p.is_file():
        return p
    if not download:
        raise FileNotFoundError(_missing(f"not found at {p}"))
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(p), progress=True)
    except OSError as err:  # URLError: offline
        raise FileNotFoundError(_missing(f"the download failed: {err}")) from None
    return p


def make_fid(weights: Path):
    """A FrechetInceptionDistance on 2048-d pool features that keeps its reference statistics across resets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=2048, reset_real_features=False, normalize=False, antialias=False,
                                        feature_extractor_weights_path=str(weights))
    except RuntimeError as err:  # a file that is not Inception-v3 weights
        raise ValueError(f"{weights} is not a valid Inception-v3 weights file for torch-fidelity ({err}); "
                         f"{_missing('replace it')}") from None


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] (B, 3, H, W) to uint8 [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


@torch.no_grad()
def load_or_compute_reference(fid, dataset, n: int, cache: Path | None, key: str, batch_size: int = 250,
                              device: torch.device | str = "cpu", progress: bool = True) -> int:
    """Fill ``fid``'s real-image statistics from the first ``n`` images of ``dataset`` ((image in [-1, 1], label)
    pairs), through the cache file ``cache`` when given (it is rewritten only when ``key`` differs).
    Returns the number of reference images."""
    if cache is not None and cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        if state.get("key") == key:
            for name in _REAL_STATES:
                getattr(fid, name).copy_(state[name])
            return int(state["real_features_num_samples"])
    n = min(n, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size)
    for images, _ in tqdm(loader, desc="FID reference statistics", disable=not progress, leave=False):
        fid.update(to_uint8(images).to(device), real=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, **{name: getattr(fid, name).cpu() for name in _REAL_STATES}}, tmp)
        tmp.replace(cache)
    return n
