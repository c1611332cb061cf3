"""vsmd side by side with the peers' own code (issue 26): torchcfm's OT-CFM matcher on the EB subset, and the
official AGM sampler (apple/ml-agm) at NFE 10. The peers run from their repositories, fetched outside the project
tree and given by path; nothing of theirs is copied here or into vsmd.

**OT-CFM on EB** (``--torchcfm PATH``, the root of a checkout of atong01/conditional-flow-matching): vsmd's OT-CFM
(configs/eb.yaml with dynamics first_order, sigma 0, sigma_min 0.1, as benchmarks/trajectory.py's OT-CFM row) trains
through Lightning exactly as ``vsmd fit`` builds it; every ``--block`` of its steps a callback runs ``--block`` steps of
the peer: a bare loop around ``torchcfm.conditional_flow_matching.ExactOptimalTransportConditionalFlowMatcher``
(imported from PATH, sigma = sigma_min = 0.1) with the same network (a copy of vsmd's, same initial weights), the same
batch (200 points of each training snapshot, drawn with replacement), AdamW at the config's lr, clipping 1.0 and an
EMA of 0.999 with vsmd's warm-up. The peer calls the matcher once per pair of consecutive training snapshots (an
exact OT plan on the two batches, pairs drawn from it) and, as vsmd does, regresses at one time per batch row,
uniform over [t_0, t_K] (so the interval over the held-out snapshot gets its share by length), with u = (x1 - x0) /
gap; plain mean squared error (vsmd also weights by h / (h + 0.02 gap), a weight of t alone). Both end at the same
step count and are scored by the same code: ``trainer.test`` on vsmd's module, then on the same module with the
peer's weights loaded (W1 at the held-out snapshot, exact, 5 whitened PCs). A third loop, timed in the same rotation,
runs vsmd's own loss (vsmd.diffusion.trajectory.ot_chain and the module's objective) in the same bare loop: what
vsmd's step costs without Lightning, so the table separates the loss from the trainer. One process, 1 thread.

**AGM sampler at NFE 10** (``--agm PATH``, the root of a checkout of apple/ml-agm): time to draw ``--agm-samples``
samples (prior draw included) with their gDDIM sampler (probODE, their toy settings from configs/toy_config.py and
train.py: T 0.999, t0 1e-5, p 3, k 0.2, gDDIM_r 2, Euler grid; the README's toy command at ``--nfe 10``) and with vsmd's
"ei" sampler (configs/spiral8y_agm.yaml's ToyAGM), each with its own toy network and with the other's, alternating,
median of ``--agm-reps``; untrained weights (the time does not depend on them). Their sampler's one-time setup
(Monte Carlo coefficients) is reported apart.

Each row is optional; without a peer path its vsmd side still runs and the peer columns say "not run".

    python benchmarks/peers.py --torchcfm /tmp/peers/torchcfm --agm /tmp/peers/ml-agm     # both rows, 3 seeds
    python benchmarks/peers.py --torchcfm /tmp/peers/torchcfm --seeds 0 1 2 3 4 --steps 2000 --block 50
    python benchmarks/peers.py --agm /tmp/peers/ml-agm --no-otcfm --out /tmp/peers-out

Fetch the peers with ``git clone https://github.com/atong01/conditional-flow-matching /tmp/peers/torchcfm`` and
``git clone https://github.com/apple/ml-agm /tmp/peers/ml-agm``. torchcfm's matcher needs POT (a vsmd dependency);
ml-agm's sampler modules import wandb, prefetch_generator, termcolor and ml_collections at module level, which it
never calls on this path: the script puts stand-ins for them in sys.modules (listed in the results file), and puts
ml-agm's ``edm/`` on sys.path for its ``import dnnlib``. No file of either checkout is edited.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OTCFM = ["--model.init_args.dynamics", "first_order", "--model.init_args.sigma", "0",
         "--model.init_args.sigma_min", "0.1"]  # benchmarks/trajectory.py's OT-CFM row
AGM_SHIMS = ("wandb", "prefetch_generator", "termcolor", "ml_collections")


def _peer_root(path: str | None, name: str, marker: str) -> Path | None:
    if path is None:
        return None
    root = Path(path).expanduser().resolve()
    if not (root / marker).is_file():
        raise FileNotFoundError(f"{root / marker} is missing: --{name} must be the root of a checkout of the peer's "
                                "repository (see the docstring of benchmarks/peers.py for the git clone command)")
    return root


def _git_head(root: Path) -> str:
    """The checkout's commit, and whether its tracked files are edited."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode:
        return "unknown commit (not a git checkout)"
    edits = git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    return head.stdout.strip() + (f", {len(edits)} tracked files edited" if edits else ", no tracked file edited")


# ------------------------------------------------------------------------------------------------------------------
# OT-CFM on EB.
def load_matcher(root: Path):
    """torchcfm's ExactOptimalTransportConditionalFlowMatcher, imported from the checkout at ``root``."""
    sys.path.insert(0, str(root))
    before = set(sys.modules)
    try:
        from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher as matcher
        src = Path(sys.modules[matcher.__module__].__file__).resolve()
    finally:
        _forget(root, (), before)
        sys.path.remove(str(root))
    if root not in src.parents:
        raise ImportError(f"torchcfm was imported from {src}, not from {root}: uninstall the other copy")
    return matcher


def _forget(root: Path, shims: tuple[str, ...], before: set[str]) -> None:
    """Drop the peer's modules imported since ``before`` and the stand-ins from sys.modules (the objects keep what
    they use), so that nothing else in the process finds them."""
    for name in set(sys.modules) - before:
        mod = sys.modules[name]
        places = [getattr(mod, "__file__", None)]
        with contextlib.suppress(Exception):
            places += list(mod.__path__)  # namespace packages have no __file__
        if name in shims or any(isinstance(p, str) and Path(p).resolve().is_relative_to(root) for p in places):
            del sys.modules[name]


class BareLoop:
    """A training step without Lightning on a copy of vsmd's network: AdamW at the config's lr, clipping and a warm-up
    EMA (as vsmd's bridge); ``loss`` is the subclass's. Batches: ``batch`` points of each training snapshot, drawn with
    replacement (as vsmd's DataModule draws them)."""

    def __init__(self, module, points: list[torch.Tensor], batch: int, clip: float | None) -> None:
        h = module.hparams
        self.net = copy.deepcopy(module.net)
        self.params = list(self.net.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.n_avg, self.decay, self.clip, self.batch = 0, float(h.ema_decay), clip, batch
        self.opt = torch.optim.AdamW(self.params, lr=h.lr, weight_decay=h.weight_decay)
        self.points = points

    def draw(self) -> list[torch.Tensor]:
        return [p[torch.randint(len(p), (self.batch,))] for p in self.points]

    def loss(self) -> torch.Tensor:
        raise NotImplementedError

    def step(self) -> None:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.decay, (1.0 + self.n_avg) / (10.0 + self.n_avg))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - d)
            self.n_avg += 1

    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        return time.perf_counter() - start


class VsmdBareLoop(BareLoop):
    """vsmd's own loss (OT chains by vsmd.diffusion.trajectory.ot_chain, then the module's bridge-matching objective)
    in the bare loop: what vsmd's step costs without Lightning, logging and checkpoints."""

    def __init__(self, module, points: list[torch.Tensor], batch: int, clip: float | None) -> None:
        super().__init__(module, points, batch, clip)
        self.objective = module.objective

    def loss(self) -> torch.Tensor:
        from vsmd.diffusion.trajectory import ot_chain

        return self.objective(ot_chain(self.draw()), {"forward": self.net}, ("forward",))[0]


class PeerLoop(BareLoop):
    """The peer's training step: torchcfm's matcher on each pair of consecutive training snapshots (see the module
    docstring) in the bare loop."""

    def __init__(self, module, points: list[torch.Tensor], matcher_cls, batch: int, clip: float | None) -> None:
        super().__init__(module, points, batch, clip)
        self.pins = torch.tensor(module.pins, dtype=torch.float32)
        self.gaps = self.pins[1:] - self.pins[:-1]
        self.fm = matcher_cls(sigma=float(module.hparams.sigma_min))

    def loss(self) -> torch.Tensor:
        xs = self.draw()
        outs = [self.fm.sample_location_and_conditional_flow(a, b) for a, b in zip(xs[:-1], xs[1:])]
        tau, xt, ut = (torch.stack(z) for z in zip(*outs))  # (K, B), (K, B, d), (K, B, d)
        k = torch.multinomial(self.gaps, self.batch, replacement=True)  # the interval of each row, by length
        rows = torch.arange(self.batch)
        t = self.pins[k] + tau[k, rows] * self.gaps[k]
        c = 999.0 * (t - self.pins[0]) / (self.pins[-1] - self.pins[0])  # vsmd's network time input
        u = ut[k, rows] / self.gaps[k][:, None]
        return (self.net(xt[k, rows], c) - u).pow(2).sum(1).mean()


def _interleave_class():
    from lightning.pytorch import Callback

    class Interleave(Callback):
        """Times vsmd in blocks of ``block`` steps; after each, ``block`` steps of vsmd's loss in the bare loop, then
        (when there is one) ``block`` steps of the peer."""

        def __init__(self, block: int, matcher_cls) -> None:
            self.block, self.matcher_cls = block, matcher_cls
            self.vsmd, self.bare_t, self.peer_t, self.bare, self.peer, self.t0 = [], [], [], None, None, 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            dm = trainer.datamodule
            snaps = dm.snapshots("train")
            points, clip = [snaps.points[i] for i in dm.train_indices], trainer.gradient_clip_val
            self.bare = VsmdBareLoop(pl_module, points, dm.batch_size, clip)
            if self.matcher_cls is not None:
                self.peer = PeerLoop(pl_module, points, self.matcher_cls, dm.batch_size, clip)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step % self.block:
                return
            self.vsmd.append(time.perf_counter() - self.t0)
            self.bare_t.append(self.bare.run(self.block))
            if self.peer is not None:
                self.peer_t.append(self.peer.run(self.block))
            self.t0 = time.perf_counter()

    return Interleave


def _held_out_w1(trainer, model, dm) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.test(model, datamodule=dm, verbose=False)
    m = model._test["metrics"]
    return {"w1": m["w1_mean_holdout"], "mmd": m[next(k for k in m if k.startswith("mmd_holdout_t"))],
            "baseline_w1": m["baseline_w1_mean_holdout"]}


def run_otcfm(seed: int, steps: int, block: int, matcher_cls, scratch: Path, data: Path,
              extra: list[str] = ()) -> dict[str, Any]:
    """One seed: vsmd's OT-CFM fit interleaved with the peer's loop, then both scored on the held-out snapshot."""
    from lightning.pytorch import LightningDataModule

    from vsmd.cli import VSMDCLI, VSMDArgumentParser
    from vsmd.models.base import PhaseSpaceModule

    if not data.is_file():
        raise FileNotFoundError(f"{data} is missing: the OT-CFM row needs the EB subset eb_nlsb_val_rna.npz; point "
                                "--shared-data at the folder that has it (../shared/data/README.md)")
    steps = max(block, steps - steps % block)
    args = ["--config", str(ROOT / "configs" / "eb.yaml"), *OTCFM, "--trainer.max_steps", str(steps),
            "--seed_everything", str(seed), "--data.init_args.path", str(data),
            "--trainer.logger.init_args.save_dir", str(scratch / f"seed{seed}"), "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false", *extra]
    argv0, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads sys.argv too
    try:
        cli = VSMDCLI(PhaseSpaceModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=args, parser_class=VSMDArgumentParser, run=False)
    finally:
        sys.argv = argv0
    cb = _interleave_class()(block, matcher_cls)
    cli.trainer.callbacks.append(cb)
    with contextlib.redirect_stdout(io.StringIO()):
        cli.trainer.fit(cli.model, cli.datamodule)
    model, dm = cli.model, cli.datamodule
    out = {"seed": seed, "steps": model.global_step, "block": block, "vsmd_blocks_s": cb.vsmd,
           "vsmd_ms_median": 1e3 * statistics.median(cb.vsmd[1:] or cb.vsmd) / block,
           "vsmd_ms_whole": 1e3 * sum(cb.vsmd) / (block * len(cb.vsmd)), "bare_blocks_s": cb.bare_t,
           "bare_ms_median": 1e3 * statistics.median(cb.bare_t[1:] or cb.bare_t) / block,
           "vsmd": _held_out_w1(cli.trainer, model, dm)}
    if cb.peer is not None:
        with torch.no_grad():
            model.net.load_state_dict(cb.peer.net.state_dict())
            for p, e in zip(model.net_ema.module.parameters(), cb.peer.ema):
                p.copy_(e)
        out |= {"peer_blocks_s": cb.peer_t, "peer_steps": cb.peer.n_avg,
                "peer_ms_median": 1e3 * statistics.median(cb.peer_t[1:] or cb.peer_t) / block,
                "peer_ms_whole": 1e3 * sum(cb.peer_t) / (block * len(cb.peer_t)),
                "peer": _held_out_w1(cli.trainer, model, dm)}
        out["ratio_median"] = out["vsmd_ms_median"] / out["peer_ms_median"]
        out["bare_ratio_median"] = out["bare_ms_median"] / out["peer_ms_median"]
    return out


# ------------------------------------------------------------------------------------------------------------------
# The AGM sampler at NFE 10.
class _ConfigDict(dict):
    """Stand-in for ml_collections.ConfigDict (attribute access to a dict), for ml-agm's configs/toy_config.py."""

    __getattr__ = dict.__getitem__

    def __setattr__(self, key, value):
        self[key] = value


def load_agm(root: Path) -> dict[str, Any]:
    """ml-agm's sampler, dynamics, toy network and toy configuration, imported from the checkout at ``root``."""
    stand_ins = {"wandb": {}, "prefetch_generator": {"BackgroundGenerator": iter},
                 "termcolor": {"colored": lambda text, *a, **k: text}, "ml_collections": {"ConfigDict": _ConfigDict}}
    shims = tuple(name for name in AGM_SHIMS if name not in sys.modules)  # an installed module is used as it is
    for name in shims:
        sys.modules[name] = types.ModuleType(name)
        for attr, value in stand_ins[name].items():
            setattr(sys.modules[name], attr, value)
    paths = [str(root), str(root / "edm")]  # edm/torch_utils/persistence.py does `import dnnlib`
    sys.path[:0] = paths
    before = set(sys.modules) - set(shims)
    try:
        from AM.dynamics import TVgMPC
        from AM.samplers import SamplerWrapper
        from configs.toy_config import get_toy_default_configs
        from networks.get_network import network_wrapper
        from networks.network import ResNet
    finally:
        _forget(root, shims, before)  # first: a namespace package's path follows sys.path
        for p in paths:
            sys.path.remove(p)
    return {"TVgMPC": TVgMPC, "SamplerWrapper": SamplerWrapper, "network_wrapper": network_wrapper,
            "ResNet": ResNet, "config": get_toy_default_configs()[0]}


class _NoEMA:
    """Their SamplerWrapper.solve swaps in torch_ema's averaged weights; the timed network is used as it is."""

    def average_parameters(self):
        return contextlib.nullcontext()


class _VSMDNetForAGM(nn.Module):
    """vsmd's MLPScoreNet behind ml-agm's network call net(u, t, class_labels)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, u, t, class_labels=None):
        return self.net(u, 999.0 * t)


class _AGMNetForVSMD(nn.Module):
    """ml-agm's toy ResNet behind vsmd's network call net(a, c_noise) (c_noise in [0, 999]; ResNet takes log t)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, a, c):
        return self.net(a, (c / 999.0).clamp_min(1e-5))


def agm_rows(root: Path | None, n: int, nfe: int, reps: int) -> dict[str, Any]:
    """Seconds to draw n samples at NFE ``nfe``: vsmd's ei sampler and (with ``root``) ml-agm's gDDIM sampler, each
    with its own toy network and the other's; alternating, median over ``reps``."""
    from vsmd.models import ToyAGM

    init = yaml.safe_load((ROOT / "configs" / "spiral8y_agm.yaml").read_text())["model"]["init_args"]
    vsmd_model = ToyAGM(**init).eval()
    variants: dict[str, Any] = {}
    info: dict[str, Any] = {"n": n, "nfe": nfe, "reps": reps, "vsmd_config": "configs/spiral8y_agm.yaml"}

    def vsmd_sampler(model):
        def draw():
            res = model.generate(n, sampler="ei", steps=nfe)
            assert res.nfe == nfe
            return res
        return draw

    def params(net):
        return sum(p.numel() for p in net.parameters())

    variants["vsmd ei sampler, vsmd's toy net (the config's)"] = (vsmd_sampler(vsmd_model), params(vsmd_model.net))
    if root is not None:
        agm = load_agm(root)
        cfg = dict(agm["config"])
        opt = types.SimpleNamespace(data_dim=cfg["data_dim"], varx=cfg["varx"], varv=cfg["varv"], p=cfg["p"],
                                    precond=False)
        dyn = agm["TVgMPC"](cfg["p"], cfg["k"], cfg["varx"], cfg["varv"], cfg["data_dim"], "cpu", "probODE")
        start = time.perf_counter()
        sampler = agm["SamplerWrapper"](solver_name="gDDIM", diz="Euler", t0=cfg["t0"], T=cfg["T"], interval=nfe,
                                        dyn=dyn, device="cpu", snap=10, local_rank=1, diz_order=2, gDDIM_r=2,
                                        cond_opt=None)
        info["agm_setup_s"] = time.perf_counter() - start
        info["agm_settings"] = {"solver": "gDDIM", "DE_type": "probODE", "t0": cfg["t0"], "T": cfg["T"], "p": cfg["p"],
                                "k": cfg["k"], "gDDIM_r": 2, "diz": "Euler", "nfe": nfe}
        calls = {"n": 0}

        def agm_sampler(net, count=False):
            wrapped = agm["network_wrapper"](opt, net, dyn)
            if count:
                wrapped.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))

            def draw():
                with torch.no_grad():
                    return sampler.solve(_NoEMA(), wrapped, dyn.get_m0(n))
            return draw

        resnet = agm["ResNet"](opt)  # their toy network: hidden 128, 20 residual layers (the defaults)
        variants["ml-agm gDDIM sampler, their toy net (ResNet)"] = (agm_sampler(resnet), params(resnet))
        variants["ml-agm gDDIM sampler, vsmd's toy net"] = (agm_sampler(_VSMDNetForAGM(copy.deepcopy(
            vsmd_model.net))), params(vsmd_model.net))
        swapped = ToyAGM(**(init | {"ema_decay": 0.0})).eval()
        swapped.net = _AGMNetForVSMD(copy.deepcopy(resnet))
        variants["vsmd ei sampler, their toy net (ResNet)"] = (vsmd_sampler(swapped), params(resnet))
        agm_sampler(resnet, count=True)()  # the network calls of one draw
        info["agm_network_calls"] = calls["n"]
    times: dict[str, list[float]] = {k: [] for k in variants}
    for draw, _ in variants.values():
        draw()  # warm-up
    for _ in range(reps):
        for name, (draw, _) in variants.items():
            start = time.perf_counter()
            draw()
            times[name].append(time.perf_counter() - start)
    info["rows"] = [{"variant": k, "params": p, "seconds": times[k], "median_s": statistics.median(times[k]),
                     "us_per_sample": 1e6 * statistics.median(times[k]) / n} for k, (_, p) in variants.items()]
    return info


# ------------------------------------------------------------------------------------------------------------------
def _mean_sd(vals: list[float], digits: int = 3) -> str:
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def report(meta: dict, otcfm: list[dict] | None, agm: dict | None) -> str:
    lines = ["# vsmd side by side with the peers' own code (issue 26)", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; torch {meta['torch']}, 1 thread (torch.set_num_threads(1)); total "
             f"{meta['seconds']:.0f} s.  ", meta["note"], ""]
    if otcfm is not None:
        peer = meta.get("torchcfm")
        lines += ["## OT-CFM on the EB subset: torchcfm's matcher against vsmd's OT-CFM", "",
                  f"Peer: {peer['repo']} at {peer['head']}, from `{peer['path']}`"
                  if peer else "Peer: not run (no --torchcfm); the vsmd side alone.", "",
                  "vsmd fit: `vsmd fit --config configs/eb.yaml " + " ".join(OTCFM) + "` (Lightning, the config's "
                  "checkpoints every 1000 steps included). vsmd bare: vsmd's loss (its OT chains and objective) in a "
                  "loop without Lightning. torchcfm: the same bare loop around the peer's matcher (benchmarks/peers.py"
                  "'s docstring). Both bare loops train copies of vsmd's network (same initial weights) with the same "
                  "optimiser, clipping and EMA. The three alternate in blocks in one process, 1 thread; ms/step: the "
                  "median block. W1 and MMD at the held-out snapshot (t2) of the vsmd fit and of the torchcfm loop, "
                  "exact, by vsmd's test code for both; the README's floor for W1 there: 0.89 (two halves of t2).",
                  "",
                  "| seed | steps (each) | vsmd fit ms/step | vsmd bare ms/step | torchcfm ms/step | fit / torchcfm "
                  "| bare / torchcfm | vsmd W1 | torchcfm W1 | vsmd MMD | torchcfm MMD |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in otcfm:
            if "error" in r:
                lines.append(f"| {r['seed']} | error: {r['error']} |" + " |" * 9)
                continue
            p = r.get("peer")
            lines.append(f"| {r['seed']} | {r['steps']} | {r['vsmd_ms_median']:.2f} | {r['bare_ms_median']:.2f} | "
                         + (f"{r['peer_ms_median']:.2f} | {r['ratio_median']:.2f} | {r['bare_ratio_median']:.2f} | "
                            if p else "not run | - | - | "))
            lines[-1] += (f"{r['vsmd']['w1']:.3f} | {p['w1']:.3f} | {r['vsmd']['mmd']:.4f} | {p['mmd']:.4f} |" if p
                          else f"{r['vsmd']['w1']:.3f} | not run | {r['vsmd']['mmd']:.4f} | not run |")
        ok = [r for r in otcfm if "error" not in r]
        if len(ok) > 1:
            both = [r for r in ok if r.get("peer")]
            lines.append(f"| mean ± sd | - | {_mean_sd([r['vsmd_ms_median'] for r in ok], 1)} | "
                         f"{_mean_sd([r['bare_ms_median'] for r in ok], 1)} | "
                         f"{_mean_sd([r['peer_ms_median'] for r in both], 1)} | "
                         f"{_mean_sd([r['ratio_median'] for r in both], 2)} | "
                         f"{_mean_sd([r['bare_ratio_median'] for r in both], 2)} | "
                         f"{_mean_sd([r['vsmd']['w1'] for r in ok])} | {_mean_sd([r['peer']['w1'] for r in both])} | "
                         f"{_mean_sd([r['vsmd']['mmd'] for r in ok], 4)} | "
                         f"{_mean_sd([r['peer']['mmd'] for r in both], 4)} |")
        lines += [""] + ([f"Nothing moves (the t1 cells at t2): W1 {ok[0]['vsmd']['baseline_w1']:.3f}.", ""]
                         if ok else [])
    if agm is not None:
        peer = meta.get("agm")
        lines += ["## AGM sampling at NFE %d: the official sampler against vsmd's" % agm["nfe"], "",
                  f"Peer: {peer['repo']} at {peer['head']}, from `{peer['path']}`; settings {agm['agm_settings']}, "
                  f"{agm['agm_network_calls']} network calls per draw; its one-time setup (Monte Carlo coefficients "
                  f"of the gDDIM steps): {agm['agm_setup_s']:.2f} s."
                  if peer else "Peer: not run (no --agm); the vsmd side alone.", "",
                  f"Seconds to draw {agm['n']} samples from the prior to the data (2-D toy, untrained weights: the "
                  f"time does not depend on them), median of {agm['reps']} alternating draws, 1 thread. vsmd: "
                  f"ToyAGM from {agm['vsmd_config']} (ei sampler, order 3, quadratic grid, t_stop 0.9).", "",
                  "| sampler, network | parameters | s per draw (median) | µs per sample |", "|---|---|---|---|"]
        for r in agm["rows"]:
            lines.append(f"| {r['variant']} | {r['params']} | {r['median_s']:.3f} | {r['us_per_sample']:.1f} |")
        lines.append("")
    if meta.get("patches"):
        lines += ["## Patches to the peers", ""] + [f"- {p}" for p in meta["patches"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torchcfm", default=None, help="root of a checkout of atong01/conditional-flow-matching")
    ap.add_argument("--agm", default=None, help="root of a checkout of apple/ml-agm")
    ap.add_argument("--no-otcfm", action="store_true", help="skip the OT-CFM row (vsmd side too)")
    ap.add_argument("--no-agm", action="store_true", help="skip the AGM row (vsmd side too)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2000, help="training steps of each side (a multiple of --block)")
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("OPTION", "VALUE"),
                    help="an option for vsmd's fit, e.g. --set model.init_args.hidden 8 (repeatable)")
    ap.add_argument("--agm-samples", type=int, default=1000)
    ap.add_argument("--agm-nfe", type=int, default=10)
    ap.add_argument("--agm-reps", type=int, default=11)
    ap.add_argument("--shared-data", default=str(SHARED), help="folder with eb_nlsb_val_rna.npz")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of peers.md and peers.json")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    tcfm = _peer_root(args.torchcfm, "torchcfm", "torchcfm/conditional_flow_matching.py")
    agm_root = _peer_root(args.agm, "agm", "AM/samplers.py")
    torch.set_num_threads(1)
    start = time.perf_counter()
    meta = {"command": "python benchmarks/peers.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
            "torch": torch.__version__, "note": args.note, "patches": []}
    otcfm = agm = None
    if not args.no_otcfm:
        matcher = None
        if tcfm is not None:
            matcher = load_matcher(tcfm)
            meta["torchcfm"] = {"repo": "atong01/conditional-flow-matching", "path": str(tcfm),
                                "head": _git_head(tcfm), "matcher": f"{matcher.__module__}.{matcher.__name__}"}
            meta["patches"].append("torchcfm: none (its matcher imports and runs on today's torch, numpy and POT "
                                   "as it is)")
        otcfm = []
        extra = [x for k, v in args.set for x in (f"--{k.lstrip('-')}", v)]
        with tempfile.TemporaryDirectory(prefix="vsmd-peers-") as scratch:
            for seed in args.seeds:
                print(f"[peers] OT-CFM seed {seed}: {args.steps} steps each ...", flush=True)
                try:
                    otcfm.append(run_otcfm(seed, args.steps, args.block, matcher, Path(scratch),
                                           Path(args.shared_data) / "eb_nlsb_val_rna.npz", extra))
                except Exception as err:  # one failing seed does not lose the others
                    otcfm.append({"seed": seed, "error": f"{type(err).__name__}: {err}".replace("|", "/")[:300]})
                r = otcfm[-1]
                line = r.get("error") or f"vsmd {r['vsmd_ms_median']:.2f} ms/step, W1 {r['vsmd']['w1']:.3f}"
                if "peer" in r:
                    line += f"; torchcfm {r['peer_ms_median']:.2f} ms/step, W1 {r['peer']['w1']:.3f}"
                print(f"[peers] seed {seed}: {line}", flush=True)
    if not args.no_agm:
        if agm_root is not None:
            meta["agm"] = {"repo": "apple/ml-agm", "path": str(agm_root), "head": _git_head(agm_root)}
            meta["patches"] += [
                "ml-agm: no file edited. AM/util.py imports wandb, prefetch_generator and termcolor, and "
                "configs/toy_config.py imports ml_collections, at module level; none is installed here and the "
                "sampling path never calls wandb: stand-in modules in sys.modules (prefetch_generator."
                "BackgroundGenerator = iter, termcolor.colored = the text unchanged, ml_collections.ConfigDict = a "
                "dict with attribute access).",
                "ml-agm: its `edm/` folder is put on sys.path (edm/torch_utils/persistence.py does `import dnnlib`, "
                "which resolves only from there).",
                "ml-agm: SamplerWrapper.solve is given a stand-in for torch_ema's ExponentialMovingAverage whose "
                "average_parameters() is a null context (torch_ema is not installed; the timed network is used as "
                "it is); device 'cpu' and local_rank 1 (no progress bar) are passed as arguments.",
            ]
        print("[peers] AGM sampling ...", flush=True)
        agm = agm_rows(agm_root, args.agm_samples, args.agm_nfe, args.agm_reps)
    meta["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report(meta, otcfm, agm)
    (out / "peers.md").write_text(text)
    (out / "peers.json").write_text(json.dumps({"meta": meta, "otcfm": otcfm, "agm": agm}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
