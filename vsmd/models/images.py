"""The image task (paper section 5.3) for both generative families: U-Net network, per-pixel variational scores,
FID, sample grids. ImageVSMD and ImageAGM are the task mixed with a family."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from vsmd.metrics.health import DivergedSamplesError, sample_problem, unusable_advice_for, write_json
from vsmd.metrics.fid import file_fingerprint, load_or_compute_reference, make_fid, resolve_weights, to_uint8
from vsmd.models.agm import AGMModule
from vsmd.models.score import VSMDModule
from vsmd.models.unet import UNet


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """uint8 (B, 3, H, W) -> one uint8 grid (3, H', W') with a 2-pixel border."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    return make_grid(images, nrow=nrow, padding=2, pad_value=255)


def save_png(grid: Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(grid.permute(1, 2, 0).cpu().numpy()).save(path)


def variational_scores_figure(alpha: Tensor, nu: Tensor | None):
    """The learned A per pixel, one panel per channel (rows: A_x, then A_v)."""
    rows = [("A_x", alpha)] + ([("A_v", nu)] if nu is not None else [])
    fig, axes = plt.subplots(len(rows), alpha.shape[0], figsize=(3 * alpha.shape[0], 2.8 * len(rows)), squeeze=False)
    for r, (name, a) in enumerate(rows):
        for c in range(a.shape[0]):
            im = axes[r, c].imshow(a[c].float().cpu().numpy(), cmap="coolwarm")
            axes[r, c].set_title(f"{name}, channel {c}")
            axes[r, c].axis("off")
            fig.colorbar(im, ax=axes[r, c], fraction=0.046)
    fig.tight_layout()
    return fig


IMAGE_SETTINGS = dict(
    weights=("image_size", "channels", "channel_mult", "num_res_blocks", "attn_resolutions", "num_classes"),
    resume=("lr_warmup", "lr_decay", "lr_decay_every", "dropout"),
    evaluation=("compile", "grid_size", "val_sample_steps", "fid_weights", "fid_reference_images", "fid_cache"))


def check_images(image_size: int, channels: int, num_res_blocks: int, num_classes: int, grid_size: int,
                 lr_warmup: int, lr_decay: float, lr_decay_every: int) -> None:
    if image_size < 4 or channels < 1 or num_res_blocks < 1 or num_classes < 0 or grid_size < 1:
        raise ValueError("need image_size >= 4, channels >= 1, num_res_blocks >= 1, num_classes >= 0 and "
                         f"grid_size >= 1; got {image_size}, {channels}, {num_res_blocks}, {num_classes}, "
                         f"{grid_size}")
    if lr_warmup < 0 or not 0 < lr_decay <= 1 or lr_decay_every < 1:
        raise ValueError(f"need lr_warmup >= 0, lr_decay in (0, 1], lr_decay_every >= 1; got {lr_warmup}, "
                         f"{lr_decay}, {lr_decay_every}")


class ImageTask:
    """The image task, mixed into a generative family (ImageVSMD, ImageAGM); its options are read from
    ``self.hparams``."""

    def __init__(self, image_size: int = 32, channels: int = 128, channel_mult: list[int] = [1, 2, 2, 2],
                 num_res_blocks: int = 2, attn_resolutions: list[int] = [16], dropout: float = 0.1,
                 num_classes: int = 0, lr_warmup: int = 5000, lr_decay: float = 0.99, lr_decay_every: int = 10000,
                 compile: bool = False, grid_size: int = 64, val_sample_steps: int = 25,
                 fid_weights: str | None = None, fid_reference_images: int = 50000,
                 fid_cache: str = "~/.cache/vsmd/fid", **kwargs: Any) -> None:
        check_images(image_size, channels, num_res_blocks, num_classes, grid_size, lr_warmup, lr_decay, lr_decay_every)
        super().__init__(**kwargs)
        self.init_task_state()

    def init_task_state(self) -> None:
        self._compiled: list[nn.Module] = []   # a list, so the compiled wrapper is not a registered sub-module
        self._fid: list = []                   # likewise: the Inception network never enters state_dict or EMA
        self._test: dict[str, Any] = {}
        self._images: list[Tensor] = []
        self._predict_cost: list[tuple[int, float]] = []  # (NFE, sampling seconds) per predict batch
        self._problems: list[str] = []  # non-finite or exploded samples met by test/predict

    @property
    def _image_size(self) -> int:
        return self.hparams.image_size

    def data_shape(self) -> tuple[int, ...]:
        return (3, self._image_size, self._image_size)

    def build_net(self) -> nn.Module:
        h = self.hparams
        return UNet(3 * self.process.n_state, 3 * self.out_state, h.image_size, channels=h.channels,
                    channel_mult=tuple(h.channel_mult), num_res_blocks=h.num_res_blocks,
                    attn_resolutions=tuple(h.attn_resolutions), dropout=h.dropout, num_classes=h.num_classes)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        shape = getattr(dm, "data_shape", None)
        if shape is not None and tuple(shape) != self.data_shape():
            raise ValueError(f"the data are images of shape {tuple(shape)} but the model was built for "
                             f"{self.data_shape()}; set model.init_args.image_size to match data.init_args.image_size")
        if self.hparams.compile and not self._compiled:
            self._compiled.append(torch.compile(self.net))

    # ----------------------------------------------------------------------------------------------
    def _labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        k = self.hparams.num_classes
        return torch.randint(0, k, (n,), generator=generator, device=self.device) if k else None

    def batch_loss(self, batch: Any, net: nn.Module) -> Tensor:
        x, y = batch
        if x.ndim != 4 or tuple(x.shape[1:]) != self.data_shape():
            raise ValueError(f"expected images (B, {', '.join(map(str, self.data_shape()))}), got {tuple(x.shape)}")
        if net is self.net and self._compiled:
            net = self._compiled[0]
        return self.score_loss(x, net, y if self.hparams.num_classes else None)

    def stats_x0(self, batch: Any) -> Tensor:
        return batch[0]

    def sa_score_fn(self, batch: Any, net: nn.Module, generator: torch.Generator):
        labels = self._labels(self.hparams.sa_paths, generator)
        return lambda a, t: self.score(a, t, net, labels)

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=h.lr, weight_decay=h.weight_decay, foreach=True)

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / h.lr_warmup) if h.lr_warmup else 1.0
            return warm * h.lr_decay ** (step // h.lr_decay_every)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def log_variational_scores(self) -> None:
        alpha, nu = self.process.variational_scores()
        values = {"A_x/mean": alpha.mean(), "A_x/min": alpha.min(), "A_x/max": alpha.max()}
        if nu is not None:
            values |= {"A_v/mean": nu.mean(), "A_v/min": nu.min(), "A_v/max": nu.max()}
        self.log_dict({k: float(v) for k, v in values.items()}, on_step=True, on_epoch=False)

    # ----------------------------------------------------------------------------------------------
    def generate_images(self, n: int, seed: int, steps: int | None = None,
                        progress: bool = False) -> tuple[Tensor, int]:
        """n images in [-1, 1] (n, 3, H, W) with the EMA network, and the sampler's NFE."""
        gen = torch.Generator(self.device).manual_seed(seed + 1)
        res = self.generate(n, steps=steps, seed=seed, progress=progress, cond=self._labels(n, gen))
        x = self.process.split(res.state)[0]
        problem = sample_problem(x, 1.0)  # images live in [-1, 1]; clamping would hide a divergence
        if problem:
            self._problems.append(problem)
        return x.clamp(-1, 1), res.nfe

    def on_validation_epoch_end(self) -> None:
        tb = self.tensorboard()
        if tb is None or self.trainer.sanity_checking:
            return
        x, _ = self.generate_images(self.hparams.grid_size, self.hparams.seed, self.hparams.val_sample_steps)
        self._problems = []  # the grid shows it; only test and predict refuse diverged samples
        tb.add_image("samples", image_grid(to_uint8(x)), self.global_step)
        if self.process.adaptive:
            alpha, nu = self.process.variational_scores()
            fig = variational_scores_figure(alpha, nu)
            tb.add_figure("variational_scores", fig, self.global_step)
            plt.close(fig)

    # ----------------------------------------------------------------------------------------------
    def on_predict_start(self) -> None:
        self._problems = []

    def on_test_start(self) -> None:
        self._problems = []
        h = self.hparams
        weights = resolve_weights(h.fid_weights)
        fid = make_fid(weights).to(self.device)
        dm = self.trainer.datamodule
        ref = dm.reference_set()
        n_ref = min(h.fid_reference_images, len(ref))
        key = (f"{dm.hparams.source}|{Path(dm.hparams.root).expanduser().resolve()}|{n_ref}|"
               f"{weights.name}|{file_fingerprint(weights)}")
        name = f"ref-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
        cache = Path(h.fid_cache).expanduser() / name if h.fid_cache else None
        start = time.perf_counter()
        n_ref = load_or_compute_reference(fid, ref, n_ref, cache, key, device=self.device,
                                          progress=self.show_progress)
        self._fid = [fid]
        self._test = {"reference_images": n_ref, "reference_seconds": time.perf_counter() - start,
                      "fid_weights": str(weights), "sampling_seconds": 0.0, "n_images": 0}

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        start = time.perf_counter()
        seed = self.hparams.seed + 1000 * self.global_rank + batch_idx
        x, nfe = self.generate_images(len(batch), seed, progress=self.show_progress)
        self._test["sampling_seconds"] += time.perf_counter() - start
        self._test["n_images"] += len(x)
        self._test["nfe"] = nfe
        images = to_uint8(x)
        self._fid[0].update(images, real=False)
        if sum(len(i) for i in self._images) < 100:
            self._images.append(images.cpu())

    def on_test_epoch_end(self) -> None:
        problems, self._problems = self._problems, []
        fid = float(self._fid[0].compute()) if not problems else float("nan")
        self.log("test/fid", fid, rank_zero_only=True)
        h = self.hparams
        if not self.trainer.is_global_zero:
            return
        out = self.run_dir()
        grid = image_grid(torch.cat(self._images)[:100], nrow=10)
        self._images = []
        save_png(grid, out / "test_samples.png")
        tb = self.tensorboard()
        if tb is not None:
            tb.add_image("test/samples", grid, self.global_step)
        n = self._test["n_images"]
        self._test |= {"metrics": {"fid": fid}, "fid_note": "FID against CIFAR-10 train features (torchmetrics, "
                       "antialias off); only meaningful with the real Inception weights and >= 10k images",
                       "sampler": h.sampler, "sample_steps": h.sample_steps,
                       "seconds_per_image": self._test["sampling_seconds"] / max(n, 1),
                       "process": self.process.name, "beta": h.get("beta"), "damping": h.get("damping"),
                       "trained_steps": max(self.trained_steps, self.global_step)}
        alpha, nu = self.process.variational_scores()
        self._test["A_summary"] = {"A_x_mean": float(alpha.mean()),
                                   "A_v_mean": float(nu.mean()) if nu is not None else None}
        self._test["samples_problem"] = "; ".join(problems) or None
        path = write_json(out / "test_metrics.json", self._test)
        self._fid = []
        if problems:
            raise DivergedSamplesError(f"the generated images are unusable: {problems[0]}. The FID in {path} is "
                                       "null. " + unusable_advice_for(self))
        print(f"test: FID {fid:.3f} from {n} images ({h.sampler}, NFE {self._test.get('nfe')}, "
              f"{self._test['sampling_seconds']:.1f} s of sampling); written to {out / 'test_metrics.json'}")

    # ----------------------------------------------------------------------------------------------
    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        start = time.perf_counter()
        x, nfe = self.generate_images(len(batch), self.hparams.seed + 2 + 1000 * self.global_rank + batch_idx,
                                      progress=self.show_progress)
        self._predict_cost.append((nfe, time.perf_counter() - start))
        images = to_uint8(x).cpu()
        self._images.append(images)
        return images

    def on_predict_epoch_end(self) -> None:
        images, self._images = torch.cat(self._images), []
        nfe, seconds = self._predict_cost[0][0], sum(c[1] for c in self._predict_cost)  # this rank's
        self._predict_cost = []
        if self.trainer.world_size > 1:  # every rank made its share (DistributedSampler pads to equal shares)
            images = self.all_gather(images.to(self.device)).flatten(0, 1).cpu()
        if not self.trainer.is_global_zero:
            return
        out = self.run_dir()
        np.savez_compressed(out / "samples.npz", images=images.permute(0, 2, 3, 1).numpy(),
                            process=self.process.name, sampler=self.hparams.sampler,
                            sample_steps=self.hparams.sample_steps, nfe=nfe, sampling_seconds=seconds)
        problems, self._problems = self._problems, []
        if problems:
            raise DivergedSamplesError(f"the generated images are unusable: {problems[0]} (written clamped to "
                                       f"{out / 'samples.npz'}). " + unusable_advice_for(self))
        for k in range(0, len(images), 100):
            save_png(image_grid(images[k:k + 100], nrow=10), out / f"samples_{k // 100:03d}.png")
        print(f"wrote {len(images)} images to {out / 'samples.npz'} and {math.ceil(len(images) / 100)} PNG grid(s) "
              f"({self.hparams.sampler}, NFE {nfe}, {seconds:.1f} s of sampling on rank 0)")


class ImageVSMD(ImageTask, VSMDModule):
    """VSMD and its relatives on images, with per-pixel diagonal A (d = C x H x W).

    Args:
        image_size: height = width (32 for CIFAR-10); must match the data.
        channels: U-Net base width (128: the paper-size, 35.7 M parameter network).
        channel_mult: U-Net width multipliers per resolution.
        num_res_blocks: residual blocks per resolution.
        attn_resolutions: resolutions with self-attention.
        dropout: dropout in the residual blocks.
        num_classes: > 0 trains a class-conditional model (labels from the data; sampling draws random labels).
        lr_warmup: linear learning-rate warm-up over this many steps ...
        lr_decay: ... then multiply the rate by this ...
        lr_decay_every: ... every this many steps (VSMD code: 0.99 every 10 000).
        compile: train through ``torch.compile`` of the network (the checkpoint keeps the plain weights).
        grid_size: images in the sample grid logged at each validation.
        val_sample_steps: sampler grid points for that grid (cheaper than the test sampler).
        fid_weights: path of torch-fidelity's Inception-v3 weights (None: torch hub's cache, downloaded if online).
        fid_reference_images: training images for the FID reference statistics (50 000: all of CIFAR-10 train).
        fid_cache: folder of cached reference statistics ("" disables the cache).
        **kwargs: the process, optimisation, SA and sampler options of ``VSMDModule``.
    """

    SETTINGS = VSMDModule.SETTINGS.extend(**IMAGE_SETTINGS)


class ImageAGM(ImageTask, AGMModule):
    """The AGM bridge on images (configs/cifar10_agm.yaml).

    Args:
        image_size to fid_cache: the task's options, as for ImageVSMD (image_size, channels, channel_mult,
            num_res_blocks, attn_resolutions, dropout, num_classes, lr_warmup, lr_decay, lr_decay_every, compile,
            grid_size, val_sample_steps, fid_weights, fid_reference_images, fid_cache).
        guide_image: velocity guidance toward this image (a PNG or JPEG path, resized to
            image_size) in sampling (test, predict): in the first quarter of the steps v is redrawn from the
            bridge's p(v | x; x1 = image); the network is not changed. None: unguided.
        **kwargs: the bridge, optimisation and sampler options of ``AGMModule``.
    """

    SETTINGS = AGMModule.SETTINGS.extend(**(IMAGE_SETTINGS | {
        "evaluation": (*IMAGE_SETTINGS["evaluation"], "guide_image")}))

    def __init__(self, guide_image: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def guide_target(self) -> Tensor | None:
        """The guide image (3, H, W) in [-1, 1], resized to the model's image size (None: unguided)."""
        from PIL import Image
        if not self.hparams.get("guide_image"):
            return super().guide_target()
        path = Path(self.hparams.guide_image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"guide_image: no file at {path}; give the path of a PNG or JPEG image")
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((self._image_size, self._image_size), Image.BICUBIC)
                pixels = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
        except OSError as err:
            raise ValueError(f"guide_image: {path} is not a readable image ({err})") from None
        return (pixels.permute(2, 0, 1) / 127.5 - 1).to(self.device)
