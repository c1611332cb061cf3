"""Per-step costs removed for issue 26 keep their numbers: the warm-up EMA's foreach update is exactly the per-tensor
formula averaged + (current - averaged) * (1 - min(decay, (1 + n) / (10 + n))); AGM's coefficient table, now
computed once per grid, is exactly the coefficients at those levels; the EMA update without AveragedModel's walk is
its update bit for bit; the trajectory bridge's OT chains made in the DataLoader's workers are the chains the step
made; training values logged only at the logger's steps are the values every-step logging wrote there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vsmd.diffusion.agm import AGMProcess
from vsmd.models import ema as ema_lib
from vsmd.models.nets import MLPScoreNet


def test_warmup_ema_is_the_per_tensor_formula_bit_for_bit() -> None:
    torch.manual_seed(0)
    net = MLPScoreNet(2, 2, hidden=16, depth=2)
    ema = ema_lib.make_ema(net, 0.99, warmup=True)
    want = [p.detach().clone() for p in net.parameters()]
    for n in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ema.update_parameters(net)
        d = min(0.99, (1.0 + n) / (10.0 + n))
        want = ([p.detach().clone() for p in net.parameters()] if n == 0
                else [a + (p.detach() - a) * (1.0 - d) for a, p in zip(want, net.parameters())])
    assert int(ema.n_averaged) == 40
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), want))
    assert not any(torch.equal(a, p) for a, p in zip(ema.module.parameters(), net.parameters()))


def test_agm_table_is_computed_once_per_grid_and_equals_the_coefficients() -> None:
    path = AGMProcess((2,), p=3.0, k=0.2)
    levels = torch.linspace(path.t_eps, path.t_max, 1000)
    first = path.table(levels)
    assert path.table(levels.clone()) is first  # the same grid: reused
    want = path.coefficients(levels)
    assert first.keys() == want.keys() and all(torch.equal(first[k], want[k]) for k in want)
    other = torch.linspace(path.t_eps, path.t_max, 10)
    assert all(torch.equal(path.table(other)[k], path.coefficients(other)[k]) for k in want)


# ------------------------------------------------------------------------------------------------------------------
# Trajectory bridges: the minibatch OT chains are made by the DataLoader (its worker processes), not in the step.
def _stream(workers: int, pair=None, until=None, position: int = 0, n: int = 6) -> list:
    from vsmd.datamodules.trajectory import TrajectoryDataModule

    dm = TrajectoryDataModule("petal", n_per_snapshot=200, batch_size=48, seed=3, num_workers=workers)
    dm.set_pairing(pair, until)
    loader = dm.train_dataloader()
    loader.load_state_dict({"position": position})
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_the_loaders_ot_chains_are_the_steps_chains_for_any_number_of_workers() -> None:
    from vsmd.diffusion.trajectory import ot_chain

    raw = _stream(0, n=7)
    want = [ot_chain(b) for b in raw]
    for workers in (0, 1, 2):
        got = _stream(workers, ot_chain)
        assert all(torch.equal(a, b) for a, b in zip(got, want[:6])), workers
    resumed = _stream(2, ot_chain, position=4, n=3)  # a resumed stream: batch 4 first, in either worker count
    assert all(torch.equal(a, b) for a, b in zip(resumed, want[4:]))
    staged = _stream(1, ot_chain, until=3)  # stage models: only stage 0's batches are paired
    assert all(torch.equal(s, w) for s, w in zip(staged[:3], want[:3]))
    assert all(isinstance(s, list) and all(torch.equal(x, y) for x, y in zip(s, r))
               for s, r in zip(staged[3:], raw[3:6]))


def test_a_bridge_fit_is_bit_identical_with_and_without_loader_workers(tmp_path) -> None:
    import lightning.pytorch as pl

    from vsmd.datamodules.trajectory import TrajectoryDataModule
    from vsmd.models import TrajectoryBridge

    states = []
    for workers in (0, 1):
        torch.manual_seed(0)
        model = TrajectoryBridge(hidden=16, depth=1, sample_steps=10)
        dm = TrajectoryDataModule("petal", n_per_snapshot=100, batch_size=32, num_workers=workers)
        pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path).fit(model, datamodule=dm)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _pair_first(batches):
    return batches[0]


def test_by_default_the_loader_pairs_in_a_worker_on_a_cpu_of_its_own() -> None:
    import os

    from vsmd.datamodules.trajectory import TrajectoryDataModule

    dm = TrajectoryDataModule("petal", n_per_snapshot=50)
    cpus = len(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    try:
        for n in (1, cpus):
            torch.set_num_threads(n)
            assert dm.loader_workers() == (1 if cpus > n else 0)  # no pairing set: torch keeps its threads
            assert torch.get_num_threads() == n
        if cpus >= 2:  # with the bridge's pairing set, a worker gets one of torch's CPUs for the fit, then it is back
            dm.set_pairing(_pair_first)
            torch.set_num_threads(cpus)
            assert dm.loader_workers() == 1 and torch.get_num_threads() == cpus - 1
            dm.teardown("fit")
            assert torch.get_num_threads() == cpus
            assert dm.loader_workers() == 1 and torch.get_num_threads() == cpus - 1
            dm.on_exception(RuntimeError("a fit that stops on an error"))  # Lightning's hook then, not teardown
            assert torch.get_num_threads() == cpus
    finally:
        torch.set_num_threads(threads)
    assert TrajectoryDataModule("petal", n_per_snapshot=50, num_workers=3).loader_workers() == 3


def test_a_negative_number_of_loader_workers_is_refused() -> None:
    from vsmd.datamodules.trajectory import TrajectoryDataModule

    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        TrajectoryDataModule("petal", num_workers=-1)


@pytest.mark.parametrize("warmup", [False, True])
def test_update_ema_is_averaged_models_update_bit_for_bit(warmup) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(MLPScoreNet(2, 2, hidden=16, depth=2), torch.nn.BatchNorm1d(4))  # buffers too
    ours, theirs = ema_lib.make_ema(net, 0.9, warmup=warmup), ema_lib.make_ema(net, 0.9, warmup=warmup)
    for _ in range(25):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
            net[1].running_mean.add_(torch.randn(4))
        ema_lib.update_ema([(net, ours), (None, None)])
        theirs.update_parameters(net)
    assert int(ours.n_averaged) == int(theirs.n_averaged) == 25
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert not torch.equal(ours.module[0].inp.weight, net[0].inp.weight)


def test_update_ema_follows_parameters_replaced_between_updates() -> None:
    """update_ema finds each network's tensors once; a parameter or buffer replaced later (a new tensor object, as
    load_state_dict(..., assign=True) makes) is found again, so the copy averages the network as it is now."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(MLPScoreNet(2, 2, hidden=16, depth=2), torch.nn.BatchNorm1d(4))
    ours, theirs = ema_lib.make_ema(net, 0.9), ema_lib.make_ema(net, 0.9)
    for step in range(6):
        if step in (2, 4):  # new Parameter and buffer objects on the network, then on both copies
            net.load_state_dict({k: v + 0.5 for k, v in net.state_dict().items()}, assign=True)
        if step == 4:
            state = {k: v.clone() for k, v in theirs.module.state_dict().items()}
            ours.module.load_state_dict(state, assign=True)
            theirs.module.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
        ema_lib.update_ema([(net, ours)])
        theirs.update_parameters(net)
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items()), step
    assert int(ours.n_averaged) == 6


@pytest.mark.parametrize("change", ["new submodule", "untied weights"])
def test_update_ema_follows_a_replaced_submodule_and_untied_weights(change) -> None:
    """The cached tensors are found again when a submodule is replaced, or when a tensor that two modules shared is
    given to one of them anew (the one it was found through still holds the old one)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    if change == "untied weights":
        net[1].weight = net[0].weight
    ours, theirs = ema_lib.make_ema(net, 0.5), ema_lib.make_ema(net, 0.5)
    for step in range(4):
        if step == 2 and change == "new submodule":
            net[1] = torch.nn.Linear(3, 3)
        if step == 2 and change == "untied weights":
            net[1].weight = torch.nn.Parameter(net[0].weight.detach() + 3.0)
        if step >= 2 and change == "untied weights":  # the network has one tensor more than its copies now:
            with pytest.raises(RuntimeError):  # AveragedModel fails on that, and so does update_ema, rather than
                theirs.update_parameters(net)  # average the three tensors it found before
            with pytest.raises(RuntimeError):
                ema_lib.update_ema([(net, ours)])
            continue
        ema_lib.update_ema([(net, ours)])
        theirs.update_parameters(net)
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items()), step


def test_the_ema_cache_keeps_no_network_alive() -> None:
    import gc
    import weakref

    from vsmd.models.nets import TimeGradNet

    net = TimeGradNet(4, 2, [1, 2], 3, hidden=8, cond_dim=8, residual_layers=2)  # a buffer on the module itself
    ema = ema_lib.make_ema(net, 0.9)
    ema_lib.update_ema([(net, ema)])
    ema_lib.update_ema([(net, ema)])
    refs = [weakref.ref(net), weakref.ref(ema), weakref.ref(ema.module)]
    del net, ema
    gc.collect()
    assert all(r() is None for r in refs)


# ------------------------------------------------------------------------------------------------------------------
# Training values are logged only at the steps the logger writes: the same values at the same steps.
def _logged(tmp_path, every_step: bool, log_every: int, steps: int = 10) -> list[tuple[int, str]]:
    import csv

    import lightning.pytorch as pl

    from vsmd.datamodules import Toy2DDataModule
    from vsmd.models import ToyVSMD

    class EveryStep(ToyVSMD):  # what the training step did before: self.log at every step
        def log_train_step(self, values, prog_bar="train/loss"):
            for key, value in values.items():
                self.log(key, value, prog_bar=key == prog_bar, on_step=True, on_epoch=False)

    torch.manual_seed(0)
    model = (EveryStep if every_step else ToyVSMD)(hidden=16, depth=1, sa_every=1000)
    logger = pl.loggers.CSVLogger(tmp_path, name=f"{every_step}_{log_every}")
    pl.Trainer(max_steps=steps, logger=logger, log_every_n_steps=log_every, enable_checkpointing=False,
               enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False).fit(
        model, datamodule=Toy2DDataModule(batch_size=32))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("log_every", [1, 3])
def test_training_loss_is_logged_at_the_logger_steps_with_the_values_of_every_step_logging(tmp_path, log_every):
    ours, before = _logged(tmp_path, False, log_every), _logged(tmp_path, True, log_every)
    assert ours == before and len(ours) == 10 // log_every


def test_foreach_adamw_is_the_per_parameter_adamw_bit_for_bit() -> None:
    """vsmd's AdamW runs foreach (one call per operation over all parameters, the default on GPUs): on CPU, with
    weight decay and clipping, the weights are those of the per-parameter loop, bit for bit."""
    import copy

    torch.manual_seed(0)
    nets = [MLPScoreNet(2, 2, hidden=32, depth=2)]
    nets.append(copy.deepcopy(nets[0]))
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2, weight_decay=0.01, foreach=False),
            torch.optim.AdamW(nets[1].parameters(), lr=1e-2, weight_decay=0.01, foreach=True)]
    for _ in range(30):
        x, t = torch.randn(64, 4), torch.rand(64)
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x, 999 * t).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert not torch.equal(nets[0].inp.weight, MLPScoreNet(2, 2, hidden=32, depth=2).inp.weight)


def test_the_modules_optimisers_are_foreach() -> None:
    from vsmd.models import ImageVSMD, ToyVSMD, TrajectoryBridge

    image = ImageVSMD(image_size=8, channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[])
    for module in (ToyVSMD(hidden=16, depth=1), TrajectoryBridge(hidden=16, depth=1), image):
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"] is True


def test_a_bridge_fit_that_stops_on_an_error_gives_torch_its_thread_back(tmp_path) -> None:
    """Where torch holds every CPU, the fit hands one to the pairing worker; an error in the fit gives it back."""
    import os

    import lightning.pytorch as pl

    from vsmd.datamodules.trajectory import TrajectoryDataModule
    from vsmd.models import TrajectoryBridge

    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("the handoff needs 2 CPUs or more")

    class Stop(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            assert torch.get_num_threads() == cpus - 1  # the worker has a CPU of its own during the fit
            raise RuntimeError("stopped on purpose")

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cpus)
        model = TrajectoryBridge(hidden=16, depth=1, sample_steps=10)
        dm = TrajectoryDataModule("petal", n_per_snapshot=100, batch_size=32)
        trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Stop()])
        with pytest.raises(RuntimeError, match="stopped on purpose"):
            trainer.fit(model, datamodule=dm)
        assert torch.get_num_threads() == cpus
    finally:
        torch.set_num_threads(threads)
