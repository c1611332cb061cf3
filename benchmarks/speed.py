"""Speed of vsmd's training step against a bare PyTorch loop of the same work (issue 26), interleaved in one process.

For each row (a shipped config), vsmd trains through Lightning exactly as ``vsmd fit --config ...`` builds it (the
config's network, batch, loss, AdamW, clipping, EMA, logger, checkpoints, validation and SA stages), and every
``--block`` vsmd steps a callback runs ``--block`` steps of the *floor*: a bare loop with a copy of the same network,
the same batch shape, loss, AdamW, gradient clipping and EMA, with no Lightning and no vsmd code on its hot path:

- diffusion rows (toys, AGM toy, forecasting, images): the perturbation re-stated in plain torch on a coefficient
  table computed once at the start (vsmd's process gives the table, off the hot path), the data cycled from batches
  drawn once from the row's DataModule, the forecasting scaling re-stated in plain torch (the RNN is the network's
  own ``encode``), the EMA as one ``torch._foreach_lerp_`` over the parameters;
- trajectory rows (petal, EB): the network calls of one vsmd loss are recorded once (inputs and output shapes); the
  floor replays them (same networks, same inputs, a squared error against a fixed target of the output's shape).
  This floor has no OT pairing and no bridge sampling: that is the work it separates out. A second floor, "floor +
  pairing", runs in its own blocks: the same replay plus, every step, the minibatch OT chain of a fresh batch (one
  batch per snapshot, the row's batch size) done with POT directly in the loop (``ot.dist`` and ``ot.emd`` between
  consecutive snapshots), as a bare script would pair; vsmd pairs in its DataLoader, in a worker process in parallel
  with the step when a CPU is left beside torch's threads (``--data.init_args.num_workers``; the table says how many),
  so it can be faster than this floor.

Times are wall clock per block; the table gives the median over blocks (steady state) and the whole run (every block
but the first, SA stages, validation and checkpoints included at the config's cadence when the run reaches them), each
as vsmd / floor. FLOPs per step are counted on the floor's step with torch.utils.flop_counter.FlopCounterMode (the
GRU is not counted by it) and set against this machine's fp32 matmul rate, measured in the same run. Sampling speed:
samples per second at NFE 10 and 20 with the "ei" sampler (one network call per step) for the toys, Exchange and the
image U-Net.

Two more tables split the gap. "Where the gap is": after vsmd's fit, the floor's own step is trained by a bare
Lightning Trainer (benchmarks/lightning_floor.py), in blocks alternating with the floor, so Lightning / floor is
what Lightning's loop costs by itself and vsmd / Lightning floor what vsmd adds on top (``--no-lightning-floor`` skips
it). "Memory traffic": the bytes a floor step reads and writes, counted op by op (``traffic_of``), over its time,
against this machine's copy rate (``memory_rate``): a step near that rate is memory-bound, whatever its FLOPs.

    python benchmarks/speed.py                                  # every row, 2 threads
    python benchmarks/speed.py --rows spiral8y exchange --steps 200 --threads 1 --out /tmp/speed
    python benchmarks/speed.py --rows petal --steps 100 --profile   # + per-op tables of one more block per side
    python benchmarks/speed.py --rows spiral8y --set model.init_args.hidden 8   # an option for vsmd's fit

A row that fails is reported as an error in the table; the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import shutil
import statistics
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lightning_floor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Row:
    name: str
    config: str
    kind: str  # score | agm | series | image | trajectory
    steps: int  # default measured steps per side (a multiple of block)
    block: int
    nfe: bool = False  # samples per second at NFE 10 and 20
    data: str = ""  # how the data are made: toy | exchange | solar | electricity | images | eb
    extra: list[str] = field(default_factory=list)


ROWS = {r.name: r for r in [
    Row("spiral8y", "configs/spiral8y.yaml", "score", 1000, 50, nfe=True),
    Row("checkerboard6x", "configs/checkerboard6x.yaml", "score", 1000, 50, nfe=True),
    Row("spiral8y_agm", "configs/spiral8y_agm.yaml", "agm", 1000, 50, nfe=True),
    Row("exchange", "configs/exchange.yaml", "series", 500, 25, nfe=True, data="exchange"),
    Row("solar", "configs/solar.yaml", "series", 12, 3, data="solar"),
    Row("electricity", "configs/electricity.yaml", "series", 4, 1, data="electricity"),
    # blocks of 3: the SA stages, checkpoints (every 10 steps) and validation (step 20) fall in 2 of 8 timed blocks, so
    # the median block is a step without them (in blocks of 5 half the blocks had one, and the median mixed them in)
    Row("cifar10_tiny", "configs/cifar10_tiny.yaml", "image", 24, 3, nfe=True, data="images"),
    Row("petal", "configs/petal.yaml", "trajectory", 1000, 50),
    Row("eb", "configs/eb.yaml", "trajectory", 1000, 50, data="eb"),
]}


# ------------------------------------------------------------------------------------------------------------------
# Data the rows need, made offline under a scratch folder.
def make_data(row: Row, scratch: Path) -> list[str]:
    """Command-line overrides pointing the row's DataModule at data made (or copied) under ``scratch``."""
    if row.data == "exchange":
        src = SHARED / "exchange_rate_nips.tar.gz"
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: the exchange row needs the GP-Copula archive; point "
                                    "--shared-data at the folder that has it (../shared/data/README.md)")
        d = scratch / "exchange"
        d.mkdir(parents=True, exist_ok=True)
        if not (d / src.name).exists():
            shutil.copy(src, d / src.name)
        return ["--data.init_args.data_dir", str(d), "--data.init_args.download", "false"]
    if row.data in ("solar", "electricity"):
        from vsmd.datamodules.timeseries import DATASETS, write_materialised

        name = f"{row.data}_nips"
        freq, dim, horizon, windows = DATASETS[name]
        d = scratch / "series"
        if not (d / name).is_dir():
            rng = np.random.default_rng(0)
            length = 1500 + horizon * windows
            day = np.sin(2 * np.pi * np.arange(length) / 24)
            values = np.abs(1.0 + 0.5 * day + np.cumsum(rng.normal(0, 0.02, (dim, length)), axis=1))
            write_materialised(values, d / name, "2014-01-01 00:00", freq, horizon, windows)
        return ["--data.init_args.data_dir", str(d), "--data.init_args.download", "false"]
    if row.data == "images":
        from PIL import Image

        d = scratch / "images"
        if not d.is_dir():
            rng = np.random.default_rng(0)
            for split, n in (("train", 64), ("test", 16)):
                for c in range(2):
                    (d / split / f"c{c}").mkdir(parents=True, exist_ok=True)
                    for i in range(n // 2):
                        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                            d / split / f"c{c}" / f"{i:04d}.png")
        return ["--data.init_args.root", str(d)]
    if row.data == "eb":
        src = SHARED / "eb_nlsb_val_rna.npz"
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: the eb row needs the EB subset; point --shared-data at the "
                                    "folder that has it (../shared/data/README.md)")
        return ["--data.init_args.path", str(src)]
    return []


# ------------------------------------------------------------------------------------------------------------------
# The floor: a bare loop of the same work.
class Floor:
    """One training step of the row's work in plain torch (see the module docstring)."""

    def __init__(self, row: Row, module, batches: list[Any], clip: float | None,
                 raw: list[list[Tensor]] | None = None) -> None:
        h = module.hparams
        self.raw, self.pairing = raw or [], False  # trajectory rows: snapshot batches for floor + pairing
        self.kind, self.clip = row.kind, clip
        self.batches, self.i = batches, 0
        self.nets = self._copy_nets(module)
        params = [p for n in self.nets for p in n.parameters()]
        self.params = params
        self.ema = [p.detach().clone() for p in params] if h.ema_decay > 0 else None
        warmup = row.kind == "trajectory" or bool(h.get("ema_warmup", False))  # the bridge's EMA always warms up
        self.decay, self.warmup, self.n_avg = float(h.ema_decay), warmup, 0
        # vsmd's AdamW is foreach (every module): so is the floor's, so that the ratio is vsmd's overhead, not the
        # optimiser's implementation
        self.opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.get("weight_decay", 0.0), foreach=True)
        self.sched = None
        if row.kind == "image":  # vsmd's images use a LambdaLR (warmup, decay): the same per-step call
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        if row.kind == "trajectory":
            self._record(module, batches[0])
            return
        p = module.process
        levels = torch.linspace(p.t_eps, p.t_max, h.t_levels) if h.t_levels else None
        if levels is None:
            raise ValueError("the floor re-states the fixed-level training times only (t_levels > 0)")
        self.levels = levels
        self.table = {k: v.detach().float().clone() for k, v in p.table(levels).items()}
        self.net = self.nets[0]
        if row.kind == "series":
            self.max_lag, self.context, self.horizon = module.max_lag, module.context(module.prediction_length), \
                module.prediction_length
            self.scaling = h.scaling
        if module.has_frame:  # the data in the process's frame, once (an elementwise map per batch in vsmd)
            if row.kind in ("score", "agm"):
                self.batches = [module.to_frame(b) for b in batches]

    @staticmethod
    def _copy_nets(module) -> list[nn.Module]:
        if hasattr(module, "_nets"):  # the trajectory bridge: every network it trains
            return [copy.deepcopy(n) for n, _ in module._nets()]
        return [copy.deepcopy(module.net)]

    def _record(self, module, batch) -> None:
        """The network calls of one vsmd loss: (copy index, args); replayed by the floor."""
        originals = [n for n, _ in module._nets()]
        calls, hooks = [], []
        for i, net in enumerate(originals):
            hooks.append(net.register_forward_hook(
                lambda m, args, out, i=i: calls.append((i, tuple(a.detach().clone() for a in args),
                                                        torch.randn_like(out)))))
        try:
            with torch.no_grad():
                module.loss(batch)
        finally:
            for hk in hooks:
                hk.remove()
        self.calls = calls

    def _next(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def _times(self, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        idx = torch.randint(0, len(self.levels), (n,))
        return self.levels[idx], {k: v[idx] for k, v in self.table.items()}

    def _diffusion_loss(self, x0: Tensor, cond: Tensor | None = None) -> Tensor:
        t, k = self._times(x0.shape[0])
        ex, ev = torch.randn_like(x0), torch.randn_like(x0)
        if self.kind == "agm":
            x = k["mx"] * x0 + k["lxx"] * ex
            v = k["mv"] * x0 + k["lvx"] * ex + k["lvv"] * ev
            target = (4 * k["h"] ** 2 * x0 - k["cx"] * ex + k["cv"] * ev) / k["scale"]
        else:  # a momentum process (cld, uld, vscld, vsuld) with Sigma_0 = diag(0, s^2)
            x = k["p11"] * x0 + k["lxx"] * ex
            v = k["p21"] * x0 + k["lvx"] * ex + k["lvv"] * ev
            target = ev
        a = torch.cat([x, v], 1)
        out = self.net(a, 999.0 * t) if cond is None else self.net(a, 999.0 * t, cond)
        err = (out - target).pow(2).flatten(1).sum(1)
        return (err / (1 - t)).mean() if self.kind == "agm" else err.mean()

    def _series_loss(self, batch: dict[str, Tensor]) -> Tensor:
        target, feat = batch["target"], batch["time_feat"]
        history = target.shape[1] - self.horizon
        ctx = target[:, history - self.context:history]
        if self.scaling == "std":
            loc, scale = ctx.mean(1, keepdim=True), (ctx.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
            values = (target - loc) / scale
        elif self.scaling == "mean":
            values = target / ctx.abs().mean(1, keepdim=True).clamp_min(1e-10)
        else:
            values = target
        cond, _ = self.net.encode(values, feat, torch.arange(self.max_lag, target.shape[1]))
        return self._diffusion_loss(values[:, self.max_lag:].flatten(0, 1), cond.flatten(0, 1))

    @staticmethod
    def pair(batches: list[Tensor]) -> Tensor:
        """The minibatch OT chain of one batch per snapshot, with POT directly (squared Euclidean cost, exact)."""
        import ot

        out = [batches[0]]
        for nxt in batches[1:]:
            w = np.full(len(nxt), 1.0 / len(nxt))
            plan = ot.emd(w, w, ot.dist(out[-1].double().numpy(), nxt.double().numpy()))
            out.append(nxt[torch.from_numpy(plan.argmax(1))])
        return torch.stack(out, dim=1)

    def loss(self) -> Tensor:
        if self.kind == "trajectory":
            if self.pairing:  # floor + pairing: the chain is made (and not used: the replay has fixed inputs)
                self.pair(self.raw[self.i % len(self.raw)])
                self.i += 1
            total = 0.0
            for i, args, target in self.calls:
                total = total + (self.nets[i](*args) - target).pow(2).sum(1).mean()
            return total
        batch = self._next()
        if self.kind == "series":
            return self._series_loss(batch)
        if self.kind == "image":
            return self._diffusion_loss(batch[0])
        return self._diffusion_loss(batch)

    def step(self) -> None:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.update_ema()

    def update_ema(self) -> None:
        if self.ema is not None:
            with torch.no_grad():
                d = min(self.decay, (1.0 + self.n_avg) / (10.0 + self.n_avg)) if self.warmup else self.decay
                if self.n_avg == 0:
                    torch._foreach_copy_(self.ema, [p.detach() for p in self.params])
                else:
                    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - d)
                self.n_avg += 1

    def run(self, n: int, pairing: bool = False) -> float:
        self.pairing = pairing
        start = time.perf_counter()
        try:
            for _ in range(n):
                self.step()
        finally:
            self.pairing = False
        return time.perf_counter() - start

    def flops(self) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loss = self.loss()
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def traffic(self) -> int:
        """Bytes one whole step (loss, backward, clipping, AdamW, EMA) reads and writes (``traffic_of``)."""
        return traffic_of(self.step)


# ------------------------------------------------------------------------------------------------------------------
# The interleaving callback.
def _start():
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    prof.__enter__()
    return prof


def _stop(prof) -> str:
    """The per-op tables of a profiled block: by self CPU time, and by input shape."""
    prof.__exit__(None, None, None)
    ops = prof.key_averages()
    return (ops.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60) + "\n"
            + prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                                 max_name_column_width=40, max_shapes_column_width=90))


def _callback_class():
    from lightning.pytorch import Callback

    class Interleave(Callback):
        """Times vsmd in blocks of ``block`` steps and runs a floor block after each (not counted for vsmd)."""

        def __init__(self, row: Row, block: int, n_floor_batches: int = 8, profile_at: int | None = None) -> None:
            self.row, self.block, self.n_floor_batches = row, block, n_floor_batches
            self.profile_at, self.profiler, self.profiles = profile_at, None, {}
            self.vsmd, self.floor_t, self.pair_t = [], [], []
            self.events = {"validation": 0, "checkpoint": 0}
            self.floor: Floor | None = None
            self.t0 = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            loader = trainer.train_dataloader
            # the threads both sides run with, and vsmd's loader workers (a trajectory fit may hand a thread to one)
            self.threads, self.workers = torch.get_num_threads(), int(getattr(loader, "num_workers", 0) or 0)
            batches = []
            for b in loader:
                batches.append(b)
                if len(batches) >= self.n_floor_batches:
                    break
            clip = trainer.gradient_clip_val
            raw = _raw_snapshot_batches(trainer.datamodule, self.n_floor_batches) if self.row.kind == "trajectory" \
                else None
            self.floor = Floor(self.row, pl_module, batches, clip, raw)
            self.floor.run(1)  # warm-up
            if raw:
                self.floor.run(1, pairing=True)
            self.t0 = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.events["validation"] += 1

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self.events["checkpoint"] += 1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step % self.block:
                return
            self.vsmd.append(time.perf_counter() - self.t0)
            if self.profiler is not None:  # the profiled block (after the timed ones): vsmd's, then the floor's
                self.profiles["vsmd"] = _stop(self.profiler)
                self.profiler = _start()
                self.floor_t.append(self.floor.run(self.block))
                self.profiles["floor"], self.profiler = _stop(self.profiler), None
            else:
                self.floor_t.append(self.floor.run(self.block))
            if self.floor.raw:  # trajectory rows: the floor + pairing block
                self.pair_t.append(self.floor.run(self.block, pairing=True))
            if self.profile_at is not None and len(self.vsmd) == self.profile_at:
                self.profiler = _start()
            self.t0 = time.perf_counter()

    return Interleave


def _raw_snapshot_batches(dm, n: int, seed: int = 12345) -> list[list[Tensor]]:
    """``n`` unpaired training batches of a TrajectoryDataModule (one per training snapshot), for floor + pairing."""
    snaps = dm.snapshots("train")
    sets = [snaps.points[i] for i in dm.train_indices]
    gen = torch.Generator().manual_seed(seed)
    return [[s[torch.randint(len(s), (dm.batch_size,), generator=gen)] for s in sets] for _ in range(n)]


# ------------------------------------------------------------------------------------------------------------------
def matmul_rate(n: int = 1024, reps: int = 10) -> float:
    """This machine's fp32 matmul rate (FLOP/s) at the current thread count: the best of ``reps`` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: a @ b, reps)


def _best_seconds(fn, reps: int) -> float:
    """The shortest of ``reps`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def traffic_of(fn) -> int:
    """The bytes ``fn()`` reads and writes, counted op by op: every tensor argument of an aten op is read once, and
    written once more where the op writes into it (in-place ops, ``out=``, the ``_foreach_*_`` ops, ``copy_``,
    whose destination is then counted as read too); every new tensor an op returns is written once. Views move
    nothing. Nothing is assumed to stay in a cache, so this is the memory traffic where the tensors are larger than
    the caches (the forecasting rows), and an upper bound where they are not (the toys)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def nbytes(value) -> int:
        return sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, Tensor))

    total = 0

    class Traffic(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            schema = func._schema
            if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
                return out  # a view
            for i, arg in enumerate(schema.arguments):
                value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
                written = arg.alias_info is not None and arg.alias_info.is_write
                total += nbytes(value) * (2 if written else 1)
            outs = out if isinstance(out, (tuple, list)) and len(schema.returns) > 1 else (out,)
            total += sum(nbytes(v) for r, v in zip(schema.returns, outs) if r.alias_info is None)
            return out

    with Traffic():
        fn()
    return total


def memory_rate(n: int = 2**26, reps: int = 10) -> float:
    """This machine's memory bandwidth (bytes/s) at the current thread count: the best of ``reps`` copies of n float32
    (256 MB read and 256 MB written), with vsmd's malloc setting in force as for the rows."""
    a, b = torch.randn(n), torch.empty(n)
    return 2 * 4 * n / _best_seconds(lambda: b.copy_(a), reps)


def sampling_rates(row: Row, module, datamodule, batch) -> dict[str, float]:
    """Samples per second at NFE 10 and 20 with the "ei" sampler (one network call per step)."""
    out = {}
    module.eval()
    for nfe in (10, 20):
        if row.kind == "series":
            history = batch["target"].shape[1] - module.prediction_length
            target, feat = batch["target"][:1, :history], batch["time_feat"][:1]
            module.forecast(target, feat, num_samples=10, sampler="ei", steps=nfe)  # warm-up
            start = time.perf_counter()
            _, used = module.forecast(target, feat, num_samples=100, sampler="ei", steps=nfe)
            out[f"nfe{nfe}"] = 100 / (time.perf_counter() - start)
            out[f"nfe{nfe}_per_path"] = used
            continue
        n = 16 if row.kind == "image" else 1000
        module.generate(min(n, 16), sampler="ei", steps=nfe)
        start = time.perf_counter()
        res = module.generate(n, sampler="ei", steps=nfe)
        out[f"nfe{nfe}"] = n / (time.perf_counter() - start)
        out[f"nfe{nfe}_used"] = res.nfe
    return out


def run_row(row: Row, steps: int, block: int, threads: int, scratch: Path, nfe: bool,
            overrides: list[str] = (), profile: bool = False, lightning: bool = True) -> dict[str, Any]:
    from vsmd.cli import VSMDCLI, VSMDArgumentParser
    from lightning.pytorch import LightningDataModule
    from vsmd.models.base import PhaseSpaceModule

    steps = max(block, steps - steps % block)
    n_blocks = steps // block
    # One extra block, so that what runs after the last timed step (validation, checkpoints) lands in a timed block.
    max_steps = steps + block + (block if profile else 0)  # and one more, profiled, when asked
    args = ["--config", str(ROOT / row.config), "--trainer.max_steps", str(max_steps),
            "--trainer.logger.init_args.save_dir", str(scratch / "runs"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *make_data(row, scratch), *row.extra, *overrides]
    argv0, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads sys.argv too
    try:
        cli = VSMDCLI(PhaseSpaceModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=args, parser_class=VSMDArgumentParser, run=False)
        cb = _callback_class()(row, block, profile_at=n_blocks + 1 if profile else None)
        cli.trainer.callbacks.append(cb)
        torch.set_num_threads(threads)
        with contextlib.redirect_stdout(io.StringIO()):
            cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        sys.argv = argv0
    vsmd, floor = cb.vsmd[:n_blocks + 1], cb.floor_t[:n_blocks + 1]
    med_v, med_f = statistics.median(vsmd[1:] or vsmd), statistics.median(floor[1:] or floor)
    whole_v, whole_f = sum(vsmd[1:] or vsmd), sum(floor[1:] or floor)
    flops = cb.floor.flops()
    traffic = cb.floor.traffic()
    out = {"row": row.name, "config": row.config, "steps": steps + block, "block": block, "blocks": len(vsmd),
           "vsmd_ms_median": 1e3 * med_v / block, "floor_ms_median": 1e3 * med_f / block,
           "ratio_median": med_v / med_f, "vsmd_ms_whole": 1e3 * whole_v / (block * max(len(vsmd) - 1, 1)),
           "floor_ms_whole": 1e3 * whole_f / (block * max(len(floor) - 1, 1)), "ratio_whole": whole_v / whole_f,
           "vsmd_blocks_s": vsmd, "floor_blocks_s": floor, "flops_per_step": flops, "bytes_per_step": traffic,
           "threads_in_fit": cb.threads, "sa_stages": int(getattr(cli.model.sa, "stages", 0) or 0) if getattr(cli.model, "sa", None) else 0,
           **cb.events, "floor_note": ("recorded network calls (no OT pairing, no bridge sampling)"
                                       if row.kind == "trajectory" else "re-stated perturbation and loss")}
    if cb.pair_t:
        pair = cb.pair_t[:n_blocks + 1]
        med_p, whole_p = statistics.median(pair[1:] or pair), sum(pair[1:] or pair)
        out.update({"pair_blocks_s": pair, "floor_pair_ms_median": 1e3 * med_p / block,
                    "loader_workers": cb.workers,
                    "ratio_pair_median": med_v / med_p, "ratio_pair_whole": whole_v / whole_p})
    if cb.profiles:
        out["profile"] = cb.profiles
    if lightning:  # the floor's step under a bare Trainer, against the floor again (benchmarks/lightning_floor.py)
        light, light_floor = lightning_floor.run(cb.floor, block, n_blocks, cli.trainer.gradient_clip_val, cb.threads)
        med_l, med_lf = statistics.median(light[1:] or light), statistics.median(light_floor[1:] or light_floor)
        out.update({"lightning_blocks_s": light, "lightning_floor_blocks_s": light_floor,
                    "lightning_ms_median": 1e3 * med_l / block, "lightning_floor_ms_median": 1e3 * med_lf / block,
                    "ratio_lightning": med_l / med_lf, "ratio_vsmd_lightning": (med_v / med_f) / (med_l / med_lf)})
    out["floor_gflops"] = flops / (out["floor_ms_median"] * 1e-3) / 1e9
    out["vsmd_gflops"] = flops / (out["vsmd_ms_median"] * 1e-3) / 1e9
    out["floor_gbps"] = traffic / (out["floor_ms_median"] * 1e-3) / 1e9
    if nfe and row.nfe:
        batch = cb.floor.batches[0]
        out["sampling"] = sampling_rates(row, cli.model, cli.datamodule, batch)
    return out


def config_max_steps(config: str) -> int | None:
    """The trainer.max_steps of a shipped config (None when it sets none)."""
    import yaml

    with open(ROOT / config) as f:
        steps = (yaml.safe_load(f) or {}).get("trainer", {}).get("max_steps")
    return int(steps) if steps and int(steps) > 0 else None


def _section(intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of one more table of speed.md: a paragraph, then the table."""
    return ["", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def table(results: list[dict], meta: dict) -> str:
    lines = [
        "# Training step: vsmd against a bare PyTorch loop of the same work (issue 26)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s) "
        f"(torch.set_num_threads); malloc: {meta['malloc']}; "
        f"fp32 matmul rate {meta['matmul_gflops']:.1f} GFLOP/s "
        f"(1024 x 1024, best of 10); CUDA check: {meta.get('nvml', 'as torch has it')}; total {meta['seconds']:.0f} s.  ",
        f"{meta['note']}",
        "",
        "vsmd and its floor alternate in blocks of steps in one process; median: the median block (steady state); "
        "whole: every block after the first, with the SA stages, validations and checkpoints that fell in them. "
        "SA / val / ckpt in fit: the events of the whole fit (the checkpoint after the last block is not timed). "
        "GFLOP/s: model FLOPs of a step (FlopCounterMode; the GRU is not counted) over the median step time.",
        "",
        "| row | steps x block | vsmd ms/step (median) | floor ms/step (median) | ratio median | ratio whole "
        "| SA / val / ckpt in fit | MFLOP/step | floor GFLOP/s | vsmd GFLOP/s | samples/s NFE 10 | NFE 20 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |" + " |" * 10)
            continue
        s = r.get("sampling", {})
        lines.append(
            f"| {r['row']} | {r['blocks']} x {r['block']} | {r['vsmd_ms_median']:.2f} | {r['floor_ms_median']:.2f} | "
            f"{r['ratio_median']:.2f} | {r['ratio_whole']:.2f} | {r['sa_stages']} / {r['validation']} / "
            f"{r['checkpoint']} | {r['flops_per_step'] / 1e6:.1f} | {r['floor_gflops']:.2f} | {r['vsmd_gflops']:.2f} | "
            f"{s.get('nfe10', float('nan')):.0f} | {s.get('nfe20', float('nan')):.0f} |")
    split = [r for r in results if "ratio_lightning" in r]
    if split:
        lines += _section(
            "Where the gap is: the floor's own step run by a bare Lightning Trainer (benchmarks/lightning_floor.py: "
            "automatic optimisation, the config's gradient clipping, no logger, callbacks or checkpoints), in "
            "blocks alternating with the floor after vsmd's fit, with the same threads. Lightning / floor is what "
            "Lightning's loop costs by itself; vsmd / Lightning floor, the ratio of the two ratios (vsmd / floor "
            "in vsmd's blocks over Lightning / floor in these), is what vsmd adds on top of it (its data, loss code, "
            "callbacks, logging, checkpoints and events; medians, steady state). Each ratio comes from its own "
            "alternating blocks: the floor's time can drift between the two phases (the big rows), the ratios "
            "less.",
            ["row", "floor ms/step (beside the Lightning floor)", "Lightning floor ms/step", "Lightning / floor",
             "vsmd ms/step (beside its floor)", "vsmd / Lightning floor", "vsmd / floor"],
            [[r["row"], f"{r['lightning_floor_ms_median']:.2f}", f"{r['lightning_ms_median']:.2f}",
              f"{r['ratio_lightning']:.2f}", f"{r['vsmd_ms_median']:.2f}", f"{r['ratio_vsmd_lightning']:.2f}",
              f"{r['ratio_median']:.2f}"] for r in split])
    moved = [r for r in results if "bytes_per_step" in r]
    if moved and "memory_gbps" in meta:
        lines += _section(
            "Memory traffic: the bytes one floor step reads and writes, counted op by op (the tensor inputs and "
            "outputs of every aten op but views, nothing assumed to stay in a cache: the real traffic where the "
            "activations outgrow the caches, as in the forecasting rows, an upper bound where they do not), over "
            "the floor's median step, against this machine's copy rate measured in the same run "
            f"({meta['memory_gbps']:.1f} GB/s: 256 MB read and written). A step near the copy rate is "
            "memory-bound: it costs what its traffic costs, whatever its FLOPs.",
            ["row", "GB moved per step", "floor GB/s", "of the copy rate", "FLOP per byte"],
            [[r["row"], f"{r['bytes_per_step'] / 1e9:.3f}", f"{r['floor_gbps']:.1f}",
              f"{r['floor_gbps'] / meta['memory_gbps']:.2f}", f"{r['flops_per_step'] / r['bytes_per_step']:.2f}"]
             for r in moved])
    paired = [r for r in results if "floor_pair_ms_median" in r]
    if paired:
        lines += _section(
            "Trajectory rows against a floor that also pairs: the recorded network calls plus, every step, the "
            "minibatch OT chain of a fresh batch done with POT in the loop (ot.dist, ot.emd), in its own blocks. "
            "vsmd pairs in its DataLoader: in its worker processes (in parallel with the step) if it has some, "
            "by default one, on a CPU of its own: where torch holds every CPU, the fit gives one of its threads to "
            "the worker (both sides then run with the threads in the last column).",
            ["row", "vsmd ms/step (median)", "floor ms/step (median)", "floor + pairing ms/step (median)",
             "ratio to floor + pairing, median", "whole", "vsmd's loader workers", "torch threads in the fit"],
            [[r["row"], f"{r['vsmd_ms_median']:.2f}", f"{r['floor_ms_median']:.2f}", f"{r['floor_pair_ms_median']:.2f}",
              f"{r['ratio_pair_median']:.2f}", f"{r['ratio_pair_whole']:.2f}", str(r["loader_workers"]),
              str(r.get("threads_in_fit", ""))] for r in paired])
    fits = [r for r in results if r.get("config_max_steps")]
    if fits:
        lines += ["", "A fit of each config at this run's speed (estimated: the config's trainer.max_steps times vsmd's "
                  "whole-run ms/step; the test afterwards not included; a trajectory config's later stages train on simulated "
                  "pools, whose steps this run does not time):", "",
                  "| config | max_steps | vsmd ms/step (whole) | fit, minutes |", "|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['config_max_steps']} | {r['vsmd_ms_whole']:.1f} | "
                  f"{r['config_max_steps'] * r['vsmd_ms_whole'] / 6e4:.1f} |" for r in fits]
    lines += ["", "Floors: " + "; ".join(sorted({f"{r['row']}: {r.get('floor_note', '')}" for r in results
                                                 if 'error' not in r})), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    global SHARED
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side (default: each row's own)")
    ap.add_argument("--block", type=int, default=None, help="steps per block (default: each row's own)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--no-sampling", action="store_true", help="skip samples per second")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of speed.md and speed.json")
    ap.add_argument("--note", default="", help="a line under the header (e.g. 'development run under contention')")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("OPTION", "VALUE"),
                    help="an option for every row's vsmd fit, e.g. --set model.init_args.hidden 8 (repeatable)")
    ap.add_argument("--no-lightning-floor", action="store_true",
                    help="skip the floor's step under a bare Lightning Trainer (the 'where the gap is' table)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one more block of each side (torch.profiler): speed_profile_<row>.txt")
    ap.add_argument("--system-malloc", action="store_true",
                    help="keep the C library's malloc setting; by default the run applies vsmd fit's own "
                         "(vsmd/allocator.py: freed memory kept for reuse, so big tensors are not mapped and zeroed "
                         "by the kernel at every step), as VSMD_MALLOC=system does for vsmd fit")
    ap.add_argument("--shared-data", default=str(SHARED),
                    help="folder with exchange_rate_nips.tar.gz and eb_nlsb_val_rna.npz (default: ../shared/data)")
    ap.add_argument("--scratch", default=None, help="folder for data and runs (default: a temporary one)")
    args = ap.parse_args(argv)
    SHARED = Path(args.shared_data)
    torch.set_num_threads(args.threads)
    from vsmd.allocator import keep_freed_memory

    malloc = "system" if args.system_malloc else ("vsmd's (freed memory kept)" if keep_freed_memory()
                                                  else "system (vsmd's setting does not apply here)")
    import lightning.pytorch  # noqa: F401  (sets PYTORCH_NVML_BASED_CUDA_CHECK, which vsmd then checks)
    from vsmd.nvml import skip_missing_nvml

    skipped = skip_missing_nvml()  # as vsmd fit does at start-up: both sides run without a dlopen per AdamW step
    start = time.perf_counter()
    results = []
    own = tempfile.TemporaryDirectory(prefix="vsmd-speed-") if args.scratch is None else None
    scratch = Path(args.scratch or own.name)
    meta = {"command": "python benchmarks/speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
            "torch": torch.__version__, "threads": args.threads, "note": args.note, "malloc": malloc,
            "matmul_gflops": matmul_rate() / 1e9, "memory_gbps": memory_rate() / 1e9,
            "nvml": "NVML not loadable: the CUDA check skips it (vsmd/nvml.py)" if skipped else "as torch has it"}
    try:
        for name in args.rows:
            row = ROWS[name]
            block = args.block or row.block
            steps = args.steps or row.steps
            t = time.perf_counter()
            print(f"[speed] {name}: {steps} + {block} steps per side in blocks of {block} ...", flush=True)
            try:
                r = run_row(row, steps, block, args.threads, scratch / name, not args.no_sampling,
                            [x for k, v in args.set for x in (f"--{k.lstrip('-')}", v)], args.profile,
                            not args.no_lightning_floor)
            except Exception as err:  # one failing row does not lose the others
                r = {"row": name, "error": f"{type(err).__name__}: {err}".replace("|", "/")[:300]}
            r["seconds"] = time.perf_counter() - t
            if "error" not in r:
                r["config_max_steps"] = config_max_steps(row.config)
            results.append(r)
            print(f"[speed] {name}: " + (r.get("error") or f"ratio median {r['ratio_median']:.2f}, whole "
                                         f"{r['ratio_whole']:.2f}") + f" ({r['seconds']:.0f} s)", flush=True)
    finally:
        if own is not None:
            own.cleanup()
    meta["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        prof = r.pop("profile", None)
        if prof:
            (out / f"speed_profile_{r['row']}.txt").write_text(
                f"{meta['command']}\n{r['block']} steps of each side, {args.threads} thread(s)\n\n"
                + "".join(f"== {side} ==\n{text}\n" for side, text in prof.items()))
    (out / "speed.md").write_text(table(results, meta))
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    print(table(results, meta))


if __name__ == "__main__":
    main()
