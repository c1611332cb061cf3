"""Images: the DataModule on a tiny ImageFolder and a fake CIFAR-10 layout, the U-Net, FID plumbing, the CLI."""

from __future__ import annotations

import json
import pickle
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsmd.cli import main
from vsmd.datamodules import ImageDataModule
from vsmd.metrics import fid as fidlib
from vsmd.models import ImageAGM, ImageVSMD, UNet

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "cifar10_tiny.yaml")


def make_folder(root: Path, size: int = 32, per_class: int = 6, splits=("train", "test")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def make_fake_cifar(root: Path, per_batch: int = 4) -> Path:
    """The torchvision CIFAR-10 layout (cifar-10-batches-py pickles) with random images."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return root


def make_inception_weights(path: Path) -> Path:
    """Random weights of torch-fidelity's Inception-v3 (Kaiming-initialised convs so that features vary).
    An FID computed with them is NOT a meaningful number; it only exercises the plumbing."""
    import unittest.mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with unittest.mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            unittest.mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    return make_inception_weights(tmp_path_factory.mktemp("fid") / "random-inception.pth")


# ------------------------------------------------------------------------------------------------
def test_image_folder(tmp_path: Path) -> None:
    dm = ImageDataModule(source="folder", root=str(make_folder(tmp_path)), batch_size=4, num_workers=0, n_val=5)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
    assert len(dm.val_set) == 5 and dm.num_classes == 2 and dm.data_shape == (3, 32, 32)
    # Validation images are the test split, unflipped: exactly the file's pixels scaled to [-1, 1].
    xv, _ = dm.val_set[0]
    raw = np.asarray(Image.open(tmp_path / "test" / "cat" / "0.png"), dtype=np.float32) / 127.5 - 1
    np.testing.assert_allclose(xv.permute(1, 2, 0).numpy(), raw, atol=1e-6)


def test_flip_is_random_per_draw(tmp_path: Path) -> None:
    dm = ImageDataModule(source="folder", root=str(make_folder(tmp_path, per_class=1)), num_workers=0)
    dm.setup()
    torch.manual_seed(0)
    draws = [dm.train_set[0][0] for _ in range(20)]
    flipped = [torch.equal(d, draws[0].flip(-1)) for d in draws]
    assert any(flipped) and not all(flipped)


def test_wrong_image_size(tmp_path: Path) -> None:
    dm = ImageDataModule(source="folder", root=str(make_folder(tmp_path, size=28)), num_workers=0)
    with pytest.raises(ValueError, match=r"is 28x28 but the model needs 32x32"):
        dm.setup()


def test_fake_cifar10_layout(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # md5s of the real files cannot be faked
    dm = ImageDataModule(source="cifar10", root=str(make_fake_cifar(tmp_path)), batch_size=8, num_workers=0, n_val=3)
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and len(dm.train_set) == 20 and len(dm.val_set) == 3 and dm.num_classes == 10


def test_missing_data_offline(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        ImageDataModule(source="cifar10", root=str(tmp_path)).prepare_data()
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="downloading CIFAR-10.*failed"):
        ImageDataModule(source="cifar10", root=str(tmp_path), download=True).prepare_data()
    with pytest.raises(FileNotFoundError, match="train/<class>/<image>"):
        ImageDataModule(source="folder", root=str(tmp_path / "nowhere")).setup()
    with pytest.raises(ValueError, match="unknown image source"):
        ImageDataModule(source="imagenet")


# ------------------------------------------------------------------------------------------------
def test_unet_shapes() -> None:
    net = UNet(6, 3, 32, channels=16, channel_mult=(1, 2), num_res_blocks=1)
    out = net(torch.randn(2, 6, 32, 32), torch.tensor([10.0, 500.0]))
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer
    cond = UNet(3, 3, 32, channels=16, channel_mult=(1, 2), num_res_blocks=1, num_classes=10)
    assert cond(torch.randn(2, 3, 32, 32), torch.tensor(5.0), torch.tensor([1, 7])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="pass labels"):
        cond(torch.randn(2, 3, 32, 32), torch.tensor(5.0))
    paper = UNet(6, 3, 32)  # the configs/cifar10.yaml network
    assert 35e6 < sum(p.numel() for p in paper.parameters()) < 37e6


def test_per_pixel_variational_scores_and_a_training_step() -> None:
    torch.manual_seed(0)
    model = ImageVSMD(channels=8, channel_mult=[1, 2], num_res_blocks=1, process="vscld", beta=10.0,
                      sa_paths=2, sa_points=4, sa_steps=2, num_classes=10)
    assert model.process.rho.shape == (3, 32, 32)
    batch = (torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 4]))
    loss = model.batch_loss(batch, model.net)
    assert torch.isfinite(loss)
    gen = torch.Generator().manual_seed(0)
    model.sa.stage(model.sa_score_fn(batch, model.net, gen), gen)
    assert not torch.equal(model.process.rho, torch.zeros(3, 32, 32))
    x, nfe = model.generate_images(2, seed=0, steps=3)
    assert x.shape == (2, 3, 32, 32) and nfe == 5 and x.abs().max() <= 1
    with pytest.raises(ValueError, match="expected images"):
        model.batch_loss((torch.zeros(2, 3, 16, 16), torch.tensor([0, 1])), model.net)


def test_agm_on_images_a_training_step_and_sampling() -> None:
    torch.manual_seed(0)
    model = ImageAGM(channels=8, channel_mult=[1, 2], num_res_blocks=1,
                     sample_steps=5, t_stop=0.9, num_classes=10)
    assert model.sa is None
    batch = (torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([3, 4]))
    assert torch.isfinite(model.batch_loss(batch, model.net))
    x, nfe = model.generate_images(2, seed=0, steps=4)
    assert x.shape == (2, 3, 32, 32) and nfe == 4 and x.abs().max() <= 1


# ------------------------------------------------------------------------------------------------
def test_fid_plumbing(tmp_path: Path, inception: Path) -> None:
    """FID with random Inception weights: the number means nothing, but identical sets give ~0, different
    sets give > 0, and the reference statistics round-trip through the cache."""
    torch.manual_seed(0)
    real = torch.rand(12, 3, 32, 32) * 2 - 1
    dataset = [(img, 0) for img in real]
    fid = fidlib.make_fid(inception)
    cache = tmp_path / "ref.pt"
    assert fidlib.load_or_compute_reference(fid, dataset, 12, cache, "k1", batch_size=6, progress=False) == 12
    fid.update(fidlib.to_uint8(real), real=False)
    assert abs(float(fid.compute())) < 1e-3
    fid.reset()
    fid.update(fidlib.to_uint8(torch.zeros(12, 3, 32, 32)), real=False)
    far = float(fid.compute())
    assert far > 1e-3
    again = fidlib.make_fid(inception)
    fidlib.load_or_compute_reference(again, [], 12, cache, "k1", progress=False)  # from the cache, no images
    again.update(fidlib.to_uint8(torch.zeros(12, 3, 32, 32)), real=False)
    assert float(again.compute()) == pytest.approx(far, rel=1e-6)
    assert not any("inception" in k for k in ImageVSMD(channels=8, channel_mult=[1, 2]).state_dict())


def test_missing_inception_weights(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth.*does not exist"):
        fidlib.resolve_weights(str(tmp_path / "nope.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match=r"download failed.*put it at .*hub/checkpoints"):
        fidlib.resolve_weights(None)


# ------------------------------------------------------------------------------------------------
def tiny(save_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--model.init_args.channels", "8", "--model.init_args.sa_every", "1", "--model.init_args.sa_paths", "2",
            "--model.init_args.sa_points", "4", "--model.init_args.sample_steps", "3",
            "--model.init_args.grid_size", "2", "--model.init_args.val_sample_steps", "2",
            "--model.init_args.fid_reference_images", "8",
            "--data.init_args.root", str(root), "--data.init_args.batch_size", "4", "--data.init_args.n_val", "4",
            "--data.init_args.n_generate", "4", "--data.init_args.predict_batch_size", "4", *extra]


def test_cli_fit_predict_test(tmp_path: Path, inception: Path, capsys) -> None:
    root = make_folder(tmp_path / "imgs", per_class=4)
    main(["fit", *tiny(tmp_path, root)])
    ckpt = tmp_path / "cifar10_tiny" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["vsmd_sa"]["stages"] == 1
    assert state["state_dict"]["process.rho"].shape == (3, 32, 32)
    assert not any("inception" in k or "fid" in k for k in state["state_dict"])
    capsys.readouterr()
    main(["predict", *tiny(tmp_path, root), "--ckpt_path", str(ckpt), "--model.init_args.sampler", "ei"])
    assert re.search(r"\(ei, NFE 2, [0-9.]+ s of sampling on rank 0\)", capsys.readouterr().out)
    out = tmp_path / "cifar10_tiny" / "version_1"
    with np.load(out / "samples.npz") as f:
        assert f["images"].shape == (4, 32, 32, 3) and f["images"].dtype == np.uint8
        assert str(f["sampler"]) == "ei" and int(f["nfe"]) == 2
    assert (out / "samples_000.png").is_file()
    main(["test", *tiny(tmp_path, root), "--ckpt_path", str(ckpt), "--model.init_args.fid_weights", str(inception),
          "--model.init_args.fid_cache", str(tmp_path / "fidcache")])
    report = json.loads((tmp_path / "cifar10_tiny" / "version_2" / "test_metrics.json").read_text())
    assert np.isfinite(report["metrics"]["fid"]) and report["n_images"] == 4 and report["nfe"] == 2  # sscs, 3 points
    assert report["reference_images"] == 8 and report["sample_steps"] == 3  # eval settings from the command line
    assert "FID" in capsys.readouterr().out
    # Bad input: image size that does not match the data; missing weights offline.
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path, root), "--model.init_args.image_size", "16"])
    assert "images of shape (3, 32, 32) but the model was built for (3, 16, 16)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path, root), "--ckpt_path", str(ckpt),
              "--model.init_args.fid_weights", str(tmp_path / "missing.pth")])
    assert "missing.pth does not exist" in capsys.readouterr().err


def test_the_smoke_config_as_shipped_gives_a_finite_grid(tmp_path: Path, capsys) -> None:
    """Issue 23, item 2: the README's image quick start (cifar10_tiny as it is: 20 steps, its sampler) ends with a
    grid, not with "the generated images are unusable" (5-point Heun on the barely trained network exploded)."""
    root = make_folder(tmp_path / "imgs", per_class=16)
    common = ["--config", TINY, "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.root",
              str(root), "--trainer.enable_progress_bar", "false"]
    main(["fit", *common])
    ckpt = tmp_path / "cifar10_tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 20
    main(["predict", *common, "--ckpt_path", str(ckpt)])
    assert "wrote 16 images" in capsys.readouterr().out
    assert (tmp_path / "cifar10_tiny" / "version_1" / "samples_000.png").stat().st_size > 0


def test_agm_velocity_guidance_toward_a_target_image(tmp_path: Path) -> None:
    """guide_image redraws v from the bridge's p(v | x; x1 = image) in the first quarter of the steps: the samples
    end nearer the image than unguided ones from the same seed; bad input is a clear error. The network predicts
    zero force, so only the velocity steers; with the quadratic grid the guided steps end at t = 0.07, where the
    bridge's v still depends little on x1 (test_agm checks the size of the effect with the exact force)."""
    target = np.zeros((20, 20, 3), dtype=np.uint8)
    target[:, :10, 0], target[:, 10:, 2] = 255, 255  # red left half, blue right half
    Image.fromarray(target).save(tmp_path / "target.png")
    kw = dict(image_size=16, channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
              sample_steps=12, t_stop=0.9)
    torch.manual_seed(0)
    plain = ImageAGM(**kw)
    with torch.no_grad():
        for p in plain.parameters():
            p.zero_()
    guided = ImageAGM(**kw, guide_image=str(tmp_path / "target.png"))
    guided.load_state_dict(plain.state_dict())
    goal = guided.guide_target()
    assert goal.shape == (3, 16, 16) and float(goal[0, :, :4].min()) > 0.9 and float(goal[2, :, :4].max()) < -0.9
    dist = {}
    for name, model in (("plain", plain), ("guided", guided)):
        x, _ = model.generate_images(16, seed=0)
        dist[name] = float((x - goal).pow(2).mean())
    assert dist["guided"] < 0.95 * dist["plain"], dist  # measured: 1.43 against 1.59
    with pytest.raises(TypeError, match="guide_image"):  # guidance is AGM's: a VSMD model has no such option
        ImageVSMD(image_size=16, channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                  process="vscld", guide_image=str(tmp_path / "target.png"))
    missing = ImageAGM(**kw, guide_image=str(tmp_path / "nothing.png"))
    with pytest.raises(FileNotFoundError, match="no file at .*nothing.png"):
        missing.generate_images(1, seed=0)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        ImageAGM(**kw, guide_image=str(tmp_path / "bad.png")).generate_images(1, seed=0)
