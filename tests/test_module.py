"""Every process trains, runs its SA stages and samples through the LightningModule."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from vsmd.datamodules import Toy2DDataModule
from vsmd.diffusion import PROCESSES, SAMPLERS
from vsmd.models import ToyVSMD


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_fits_and_samples(process: str) -> None:
    damping = 0.7 if process in ("uld", "vsuld") else 1.0
    beta = 20.0 if process == "vp" else 5.0
    model = ToyVSMD(hidden=16, depth=1, process=process, beta=beta, damping=damping, sa_every=2, sa_steps=3,
                    sa_paths=16, sa_points=6, sa_lr=0.1, t_levels=50, parametrisation="eps")
    trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, datamodule=Toy2DDataModule(batch_size=32))
    if model.process.adaptive:
        assert model.sa.stages == 2 and model.sa.steps == 6  # stages at steps 2 and 4
        assert model.process.rho.abs().max() > 0
    else:
        assert model.sa is None and model.process.rho.abs().max() == 0
    for sampler in SAMPLERS:
        res = model.generate(64, sampler=sampler, steps=6)
        x = model.process.split(res.state)[0]
        assert x.shape == (64, 2) and torch.isfinite(x).all()
        assert res.nfe == (2 * 6 - 1 if sampler == "heun" else 5 + (sampler == "ei"))  # ei: + the toys' estimate
    res = model.generate(64, sampler="ei", steps=6)
    assert model.process.split(res.state)[0].shape == (64, 2)


@pytest.mark.parametrize("process", ["vsuld", "cld"])
def test_ei_serves_both_parametrisations_and_refuses_dsm(process: str) -> None:
    with pytest.raises(ValueError, match="init_velocity hsm"):
        ToyVSMD(hidden=16, depth=1, process=process, sampler="ei", init_velocity="dsm").generate(8, steps=4)
    old = ToyVSMD(hidden=16, depth=1, process=process, sampler="ei")  # eps_v: the v row is all ei needs
    assert old.generate(8, steps=4).nfe == 3 + 1  # 3 steps to the toys' ei_t_stop, then the data estimate
    model = ToyVSMD(hidden=16, depth=1, process=process, parametrisation="eps", t_stop=0.1)
    res = model.generate(8, steps=4)  # heun on 4 points to t_stop (no final Euler step), then the data estimate
    assert res.nfe == 2 * 3 + 1 and float(res.times[-1]) == pytest.approx(0.1)
    # The score of the full parametrisation is its v half alone: -eps_v / L_vv; so is the flow's data estimate.
    a, t = torch.randn(8, 4), torch.full((8,), 0.4)
    eps = model._eps(model.eval_net, a, t, None)
    torch.testing.assert_close(model.score(a, t), -eps[:, 2:] / model.process.noise_scale(t[:1]))
    torch.testing.assert_close(model.denoise(a, t), model.process.flow_estimate(a, t, eps[:, 2:]))


@pytest.mark.parametrize("kwargs", [{"sampler": "ei"}, {"t_stop": 0.1}, {"sampler": "ei", "ei_t_stop": None}])
def test_ei_and_t_stop_with_dsm_are_refused_at_construction_before_training(kwargs: dict) -> None:
    """Issue 23: init_velocity dsm with sampler ei trained to the end and was refused only at test."""
    with pytest.raises(ValueError, match="init_velocity 'dsm' does not have; use sampler heun"):
        ToyVSMD(hidden=16, depth=1, process="vsuld", init_velocity="dsm", **kwargs)
    ToyVSMD(hidden=16, depth=1, process="vsuld", init_velocity="dsm")  # heun needs no data estimate


def test_overdamped_processes_serve_ei_with_either_parametrisation() -> None:
    for par in ("eps_v", "eps"):
        model = ToyVSMD(hidden=16, depth=1, process="vp", beta=20.0, parametrisation=par, sampler="ei", ei_order=3)
        res = model.generate(16, steps=6)
        assert res.nfe == 5 + 1 and torch.isfinite(res.state).all()


@pytest.mark.parametrize("kwargs, match", [({"parametrisation": "x0"}, "parametrisation"),
                                           ({"ei_order": 4}, "ei_order"), ({"ei_grid": "edm"}, "ei_grid"),
                                           ({"t_stop": 1.5}, "t_stop"),
                                           ({"parametrisation": "eps", "init_velocity": "dsm"}, "hsm")])
def test_bad_ei_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ToyVSMD(hidden=16, depth=1, process="vsuld", **kwargs)


def test_sa_schedule_respects_warmup_and_cooldown() -> None:
    model = ToyVSMD(hidden=16, depth=1, process="vscld", sa_every=2, sa_steps=1, sa_paths=8, sa_points=4,
                    sa_warmup=4, sa_cooldown=3)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, datamodule=Toy2DDataModule(batch_size=16))
    # Due at steps 4, 6, 8 (>= warm-up, <= 12 - 3); 10 is in the cool-down.
    assert model.sa.stages == 3


def test_kernel_cache_follows_rho() -> None:
    model = ToyVSMD(hidden=8, depth=1, process="vsuld", t_levels=20)
    levels = torch.linspace(model.process.t_eps, 1.0, 20)
    before = {k: v.clone() for k, v in model.process.table(levels).items()}
    model.process.rho.data += 0.5
    after = model.process.table(levels)
    fresh = model.process.coefficients(levels)
    assert not torch.equal(before["lvv"], after["lvv"])
    for k in fresh:
        torch.testing.assert_close(after[k], fresh[k])


def test_the_data_moments_come_through_the_datamodules_moment_batches() -> None:
    """The frame and the start of A are computed from the DataModule's moment_batches (handed to the module by the
    DataMoments callback), once for both; without a DataModule, rho_init 'data' says what to do."""
    calls = []

    class Counting(Toy2DDataModule):
        def moment_batches(self):
            calls.append(1)
            return self.train_dataloader()

    model = ToyVSMD(hidden=16, depth=1, rotation="pca", sa_every=2, sa_paths=16, sa_points=6)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, datamodule=Counting(batch_size=32))
    assert len(calls) == 1 and model.process.rho.abs().max() > 0
    loader = Toy2DDataModule(batch_size=32).train_dataloader()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="needs a DataModule"):
        trainer.fit(ToyVSMD(hidden=16, depth=1), train_dataloaders=loader)
