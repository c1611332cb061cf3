"""Exchange side by side (issue 26): the authors' VSMD time-series code against vsmd's ``configs/exchange.yaml``.

The question: how long does the authors' code (KevinRojas1499/Variational-Momentum-SB, ``time_series/``) take to
reach its own best CRPS-Sum on Exchange, and how long does vsmd take to reach the same or better?

Both sides train on the same data (GluonTS ``exchange_rate_nips``, the GP-Copula archive, materialised once with
vsmd's offline converter into ``--data-dir``) and are scored with the same protocol: 100 forecast paths per test
window, GluonTS's ``MultivariateEvaluator`` (quantiles 0.05..0.95, target sum) over the 5 rolling test windows,
``m_sum_mean_wQuantileLoss`` = CRPS-Sum.

- **peer**: the authors' model at their own defaults (``time_series/main.py``: batch 32, LSTM 2 x 64, context
  3 x 30, std scaling, 50 epochs of the estimator's default 50 batches = 2500 steps) with the SDE their paper reports
  best on Exchange (Table 1: CLD 0.0069, against VSULD 0.0098), run as their ``run_experiments.sh`` line for CLD
  (``--sde cld --seed 395``, default beta_max 10). Their ``DiffusionEstimator`` is driven in-process, and a callback
  scores the model every ``--peer-every`` epochs with their own predictor (their sampler: Heun on the probability-flow
  ODE over 125 points) and their ``main.py``'s evaluator settings.
- **vsmd**: ``vsmd fit --config configs/exchange.yaml`` (2000 steps), with the checkpoint callback set to every
  ``--vsmd-every`` steps instead of every 5 epochs (nothing else changes); ``vsmd test`` runs on each checkpoint as
  it appears, with the fit paused (SIGSTOP / SIGCONT) meanwhile, as the peer's evaluation pauses its training.

Wall time is counted from the moment both sides are launched (``EXCHPEER_T0``), evaluation excluded: the peer's
in-process evaluations are timed and subtracted; a vsmd checkpoint's time is its file's modification time less the
pauses before it. The two sides run at the same time, one process each with one thread (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``), so they share the machine's load. Time-to-target: the first wall time at which a
side's CRPS-Sum is at or below the peer's best.

The peer's checkout is never modified; the shims it needs on today's packages are applied at run time and listed in
``PEER_PATCHES`` (and in the results file).

    git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/peers/vmsb      # the authors' repository, outside the tree
    python benchmarks/exchange_peer.py --peer /tmp/peers/vmsb   # both sides: 18 min on 2 lightly loaded cores
    python benchmarks/exchange_peer.py --peer /tmp/peers/vmsb --peer-epochs 2 --peer-every 1 \\
        --vsmd-steps 20 --vsmd-every 10 --num-samples 4 --out /tmp/exchpeer-smoke    # a smoke run, minutes
    python benchmarks/exchange_peer.py --report-only                      # rewrite the tables from the .json

Without ``--peer`` only vsmd's side runs (``--side vsmd``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
PEER_REPO = "KevinRojas1499/Variational-Momentum-SB"
PEER_COMMIT = "65735cb71d7f633545d8f2b9df0bd776360810de"
PEER_PATCHES = [
    "`time_series/module.py` imports `lagged_sequence_values` from `pts.util` (pytorchts, which pins numpy 1 and "
    "pandas 1 and does not install today): a module `pts.util` is put in `sys.modules` whose "
    "`lagged_sequence_values` calls GluonTS's `gluonts.torch.util.lagged_sequence_values` (the same slicing) and "
    "merges its last two axes (series x lags) into one unless `keepdim`, as pts's version does.",
    "`time_series/lightning_module.py` passes `verbose=True` to `ReduceLROnPlateau`, which today's torch no longer "
    "accepts: the module's `ReduceLROnPlateau` name is bound to a wrapper that drops `verbose`.",
    "data: `main.py` calls `get_dataset(name)` (GluonTS's download into ~/.gluonts); the driver calls "
    "`get_dataset('exchange_rate_nips', path=<data dir>)` on the folder vsmd materialised from the same archive, and "
    "groups it with `MultivariateGrouper` as `main.py` does.",
    "CPU: `main.py --cpu` still passes `devices=[device]`; the driver passes `accelerator='cpu', devices=1`.",
    "evaluation during training: a Lightning callback (the driver's) builds the estimator's own predictor "
    "(`create_transformation` + `create_predictor`) from the module being trained every N epochs and scores it with "
    "`main.py`'s evaluator; it puts the module back in training mode afterwards. The draws it makes change the "
    "random stream that training sees afterwards.",
    "threads: `torch.set_num_threads(1)`; Lightning's progress bar and model summary off (their sampler's tqdm "
    "bars still print to the side's log).",
]
QUANTILES = (np.arange(20) / 20.0)[1:]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def materialise(data_dir: Path) -> Path:
    """``data_dir/exchange_rate_nips`` in GluonTS's materialised layout (converted from the archive once)."""
    from vsmd.datamodules.timeseries import convert_gp_copula_archive

    target = data_dir / "exchange_rate_nips"
    if not (target / "metadata.json").is_file():
        archive = data_dir / "exchange_rate_nips.tar.gz"
        if not archive.is_file():
            raise FileNotFoundError(f"{archive} is missing: copy the GP-Copula archive exchange_rate_nips.tar.gz "
                                    f"(../shared/data/) into {data_dir}/")
        convert_gp_copula_archive(archive, "exchange_rate_nips", target)
    return target


def crps_sum_of(agg: dict) -> dict:
    return {"crps_sum": agg["m_sum_mean_wQuantileLoss"], "crps": agg["mean_wQuantileLoss"],
            "nd_sum": agg["m_sum_ND"], "nrmse_sum": agg["m_sum_NRMSE"]}


# ----------------------------------------------------------------------------------------------- the peer's side
def _peer_shims() -> None:
    """The run-time patches of PEER_PATCHES that must exist before their modules are imported."""
    from gluonts.torch.util import lagged_sequence_values

    def pts_lagged_sequence_values(indices, prior_sequence, sequence, dim=1, keepdim=False):
        if prior_sequence.dim() == 2:  # pts treats a (B, T) sequence as (B, T, 1)
            prior_sequence, sequence = prior_sequence.unsqueeze(-1), sequence.unsqueeze(-1)
        lags = lagged_sequence_values(indices, prior_sequence, sequence, dim)
        return lags if keepdim else lags.reshape(*lags.shape[:-2], -1)

    pts, util = types.ModuleType("pts"), types.ModuleType("pts.util")
    util.lagged_sequence_values = pts_lagged_sequence_values
    pts.util = util
    sys.modules.setdefault("pts", pts)
    sys.modules.setdefault("pts.util", util)


def run_peer(args) -> dict:
    """Train the authors' model with their defaults; score it every ``args.peer_every`` epochs."""
    started = float(os.environ.get("EXCHPEER_T0", time.time()))
    peer_ts = Path(args.peer).resolve() / "time_series"
    if not (peer_ts / "estimator.py").is_file():
        raise FileNotFoundError(f"{peer_ts}/estimator.py is missing: --peer must name a checkout of {PEER_REPO}")
    import torch

    torch.set_num_threads(1)
    _peer_shims()
    sys.path.insert(0, str(peer_ts))
    import lightning.pytorch as pl
    import lightning_module  # the authors'
    from estimator import DiffusionEstimator  # the authors'
    from gluonts.dataset.multivariate_grouper import MultivariateGrouper
    from gluonts.dataset.repository import get_dataset
    from gluonts.evaluation import MultivariateEvaluator
    from gluonts.evaluation.backtest import make_evaluation_predictions
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    plateau = lightning_module.ReduceLROnPlateau

    def reduce_lr_on_plateau(*a, verbose=None, **kw):
        return plateau(*a, **kw)

    lightning_module.ReduceLROnPlateau = reduce_lr_on_plateau

    seed = args.peer_seed  # main.py's set_seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dataset = get_dataset("exchange_rate_nips", path=Path(args.data_dir), regenerate=False)
    dim = int(dataset.metadata.feat_static_cat[0].cardinality)
    train = MultivariateGrouper(max_target_dim=dim)(dataset.train)
    test = MultivariateGrouper(num_test_dates=len(dataset.test) // len(dataset.train), max_target_dim=dim)(dataset.test)
    curve: list[dict] = []
    spent = {"eval": 0.0}
    out = Path(args.work) / "peer"
    out.mkdir(parents=True, exist_ok=True)

    class Scorer(pl.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            epoch = trainer.current_epoch + 1
            if epoch % args.peer_every and epoch != args.peer_epochs:
                return
            t0 = time.time()
            train_s = time.time() - started - spent["eval"]
            predictor = estimator.create_predictor(estimator.create_transformation(), module)
            forecasts, targets = make_evaluation_predictions(dataset=test, predictor=predictor,
                                                             num_samples=args.num_samples)
            evaluator = MultivariateEvaluator(quantiles=QUANTILES, target_agg_funcs={"sum": np.sum})
            agg, _ = evaluator(list(targets), list(forecasts), num_series=len(test))
            module.train()
            eval_s = time.time() - t0
            spent["eval"] += eval_s
            row = {"epoch": epoch, "step": epoch * estimator.num_batches_per_epoch,  # global_step counts both
                   "train_seconds": train_s, "eval_seconds": eval_s,  # of their two optimizers' steps
                   **crps_sum_of(agg)}
            curve.append(row)
            (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
            log(f"peer epoch {epoch}: CRPS-Sum {row['crps_sum']:.5f}, train {train_s:.0f} s, eval {eval_s:.0f} s")

    estimator = DiffusionEstimator(  # main.py's arguments at their defaults, CLD as run_experiments.sh runs it
        freq=dataset.metadata.freq, input_size=dim, prediction_length=dataset.metadata.prediction_length,
        context_length=dataset.metadata.prediction_length * 3, batch_size=32, sde=args.peer_sde,
        damp_coef=args.peer_damp_coef, beta_max=args.peer_beta_max, dsm_warm_up=500, dsm_cool_down=1000,
        forward_opt_steps=50, backward_opt_steps=250, num_layers=2, hidden_size=64, lags_seq=None, scaling="std",
        num_parallel_samples=args.num_samples,
        trainer_kwargs=dict(max_epochs=args.peer_epochs, accelerator="cpu", devices=1,
                            callbacks=[ModelCheckpoint(monitor=None), Scorer()],
                            logger=CSVLogger(str(out), name="logs"), enable_progress_bar=False,
                            enable_model_summary=False))
    estimator.train(train, cache_data=True, shuffle_buffer_length=1024)
    return {"sde": args.peer_sde, "beta_max": args.peer_beta_max, "damp_coef": args.peer_damp_coef,
            "seed": seed, "epochs": args.peer_epochs, "batches_per_epoch": estimator.num_batches_per_epoch,
            "batch_size": estimator.batch_size, "num_samples": args.num_samples, "curve": curve,
            "process_seconds": time.time() - started, "complete": True}


# ------------------------------------------------------------------------------------------------- vsmd's side
def vsmd_config(args, work: Path) -> Path:
    """configs/exchange.yaml with its checkpoints every ``args.vsmd_every`` steps (the only change)."""
    cfg = yaml.safe_load((ROOT / "configs" / "exchange.yaml").read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"] = {"save_last": False, "save_top_k": -1, "every_n_train_steps": args.vsmd_every,
                               "filename": "{step}"}
    cfg["trainer"]["max_steps"] = args.vsmd_steps
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"]["enable_model_summary"] = False
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(work), name="fit")
    cfg["data"]["init_args"]["data_dir"] = str(args.data_dir)
    cfg["model"]["init_args"]["num_samples"] = args.num_samples
    path = work / "exchange.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _vsmd(argv: list[str], env: dict) -> None:
    cmd = [sys.executable, "-c", "import sys; from vsmd.cli import main; main(sys.argv[1:])", *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vsmd {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def test_checkpoint(ckpt: Path, config: Path, work: Path, env: dict) -> dict:
    """``vsmd test`` of one checkpoint: its metrics and the test's wall time."""
    step = int(ckpt.stem.split("=")[1])
    t0 = time.time()
    _vsmd(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.logger.init_args.name",
           f"test_{step}"], env)
    eval_s = time.time() - t0
    report = json.loads(sorted((work / f"test_{step}").glob("version_*/test_metrics.json"))[-1].read_text())
    m = report["metrics"]
    return {"step": step, "eval_seconds": eval_s, "crps_sum": m["crps_sum"], "crps": m["crps"],
            "nd_sum": m["nd_sum"], "nrmse_sum": m["nrmse_sum"], "sampling_seconds": report["sampling_seconds"],
            "nfe_per_step": report["nfe_per_step"]}


def test_while_fitting(fit: subprocess.Popen, ckpt_dir: Path, config: Path, work: Path, env: dict,
                       started: float) -> list[dict]:
    """Test each checkpoint as it appears, the fit paused meanwhile (as the peer's in-process evaluation pauses its
    training); train_seconds = the checkpoint's write time since ``started``, less the pauses before it."""
    curve: list[dict] = []
    paused = 0.0
    while True:
        running = fit.poll() is None
        new = sorted((p for p in ckpt_dir.glob("step=*.ckpt") if int(p.stem.split("=")[1]) not in
                      {r["step"] for r in curve}), key=lambda p: int(p.stem.split("=")[1]))
        for ckpt in new:
            written = ckpt.stat().st_mtime
            if running:
                os.kill(fit.pid, signal.SIGSTOP)
            try:
                row = test_checkpoint(ckpt, config, work, env)
            finally:
                if running:
                    os.kill(fit.pid, signal.SIGCONT)
            row["train_seconds"] = written - started - paused
            paused += row["eval_seconds"] if running else 0.0
            curve.append(row)
            (work / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
            log(f"vsmd step {row['step']}: CRPS-Sum {row['crps_sum']:.5f}, train {row['train_seconds']:.0f} s, "
                f"eval {row['eval_seconds']:.0f} s")
        if not running and not new:
            return curve
        time.sleep(1.0)


def run_vsmd(args) -> dict:
    started = float(os.environ.get("EXCHPEER_T0", time.time()))
    work = Path(args.work) / "vsmd"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = vsmd_config(args, work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    fit_log = open(work / "fit.log", "w")
    fit = subprocess.Popen([sys.executable, "-c", "import sys; from vsmd.cli import main; main(sys.argv[1:])",
                            "fit", "--config", str(config)], env=env, stdout=fit_log, stderr=subprocess.STDOUT)
    ckpt_dir = work / "fit" / "version_0" / "checkpoints"
    curve = test_while_fitting(fit, ckpt_dir, config, work, env, started)
    fit_log.close()
    if fit.returncode:
        raise RuntimeError(f"vsmd fit failed ({fit.returncode}); see {work / 'fit.log'}")
    cfg = yaml.safe_load(config.read_text())
    return {"config": "configs/exchange.yaml", "process": cfg["model"]["init_args"]["process"],
            "seed": cfg["seed_everything"], "steps": args.vsmd_steps,
            "batch_size": cfg["data"]["init_args"]["batch_size"],
            "num_samples": args.num_samples, "fit_seconds": curve[-1]["train_seconds"] if curve else None,
            "curve": curve}


# ------------------------------------------------------------------------------------------------ the comparison
def time_to_target(curve: list[dict], target: float) -> dict | None:
    """The first point of ``curve`` (in training order) whose CRPS-Sum is at or below ``target``, or None."""
    for row in curve:
        if row["crps_sum"] <= target:
            return row
    return None


def compare(results: dict) -> dict:
    peer, ours = results.get("peer"), results.get("vsmd")
    if not peer or not peer["curve"] or not ours or not ours["curve"]:
        return {}
    best = min(peer["curve"], key=lambda r: r["crps_sum"])
    target = best["crps_sum"]
    hit = time_to_target(ours["curve"], target)
    out = {"target_crps_sum": target, "peer_seconds": best["train_seconds"], "peer_step": best["step"],
           "vsmd_seconds": hit["train_seconds"] if hit else None, "vsmd_step": hit["step"] if hit else None}
    out["ratio"] = out["peer_seconds"] / out["vsmd_seconds"] if hit else None
    return out


def write_tables(results: dict, out: Path) -> None:
    results["comparison"] = compare(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    peer, ours, c = results.get("peer"), results.get("vsmd"), results["comparison"]
    lines = ["# Exchange side by side: the authors' code against vsmd (`python benchmarks/exchange_peer.py`)", "",
             f"Machine: {results['machine']}. {results['load_note']}", ""]
    if c:
        vs = (f"{c['vsmd_seconds']:.0f} s (step {c['vsmd_step']})" if c["vsmd_seconds"] is not None
              else "not reached")
        ratio = f"{c['ratio']:.1f}x" if c["ratio"] else "-"
        lines += ["| target: the peer's best CRPS-Sum | peer's wall time to it | vsmd's wall time to it | ratio |",
                  "|---|---|---|---|",
                  f"| {c['target_crps_sum']:.5f} | {c['peer_seconds']:.0f} s (step {c['peer_step']}) | {vs} | "
                  f"{ratio} |", "",
                  "Wall time: seconds since the sides were launched (imports, data, checkpoints and the model's "
                  "own validation included), evaluation excluded. Each side's time is that of its first scored "
                  "checkpoint at or below the target, so the crossing itself lies at or before it.", ""]
    if peer:
        lines += [f"## The authors' code ({PEER_REPO} at {PEER_COMMIT[:7]}, `time_series/`)", "",
                  f"SDE `{peer['sde']}` (beta_max {peer['beta_max']}, damp_coef {peer['damp_coef']}), seed "
                  f"{peer['seed']}, {peer['epochs']} epochs x {peer['batches_per_epoch']} batches of "
                  f"{peer['batch_size']}, {peer['num_samples']} paths per test window.", "",
                  "| epoch | step | CRPS-Sum | CRPS | ND-Sum | train wall s | eval s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['step']} | {r['crps_sum']:.5f} | {r['crps']:.5f} | {r['nd_sum']:.5f} | "
                  f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |" for r in peer["curve"]]
        if not peer.get("complete", True):
            lines += ["", f"Partial: the run stopped after epoch {peer['curve'][-1]['epoch'] if peer['curve'] else 0}"
                          f" of {peer['epochs']}."]
        lines += ["", "Patches (run-time shims; the checkout is not modified):", ""]
        lines += [f"- {p}" for p in PEER_PATCHES]
        lines += [""]
    if ours:
        lines += ["## vsmd (`configs/exchange.yaml`)", "",
                  f"Process {ours['process']}, seed {ours['seed']}, {ours['steps']} steps of {ours['batch_size']}, "
                  f"{ours['num_samples']} paths per test window"
                  + (f"; fit {ours['fit_seconds']:.0f} s in all." if ours.get("fit_seconds") else "."), "",
                  "| step | CRPS-Sum | CRPS | ND-Sum | train wall s | eval s (vsmd test) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['crps_sum']:.5f} | {r['crps']:.5f} | {r['nd_sum']:.5f} | "
                  f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |" for r in ours["curve"] if "crps_sum" in r]
        if not ours.get("complete", True):
            lines += ["", f"Partial: the run stopped after step {ours['curve'][-1]['step'] if ours['curve'] else 0} "
                          f"of {ours['steps']}."]
        lines += [""]
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    lines += ["Commands:", "", "```", *results["commands"], "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", type=Path, help=f"a checkout of {PEER_REPO} (outside this repository)")
    ap.add_argument("--side", choices=["both", "peer", "vsmd"], default="both")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "exchpeer-data",
                    help="holds exchange_rate_nips.tar.gz (copied from ../shared/data when missing)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "exchpeer-work")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exchange_peer")
    ap.add_argument("--num-samples", type=int, default=100, help="forecast paths per test window (both sides)")
    ap.add_argument("--peer-epochs", type=int, default=50)
    ap.add_argument("--peer-every", type=int, default=10, help="score the peer every N epochs")
    ap.add_argument("--peer-sde", default="cld")
    ap.add_argument("--peer-beta-max", type=float, default=10.0)
    ap.add_argument("--peer-damp-coef", type=float, default=1.0)
    ap.add_argument("--peer-seed", type=int, default=395)
    ap.add_argument("--vsmd-steps", type=int, default=2000)
    ap.add_argument("--vsmd-every", type=int, default=125, help="checkpoint (and test) vsmd every N steps")
    ap.add_argument("--report-only", action="store_true", help="rewrite the tables from <out>.json")
    ap.add_argument("--collect", action="store_true",
                    help="write the tables from what <work> holds (a run cut short: the curves so far)")
    ap.add_argument("--note", action="append", default=[], help="a line for the results file's notes")
    args = ap.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.report_only:
        write_tables(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return
    if args.collect:
        finish(args, ["peer", "vsmd"])
        return
    if args.side in ("both", "peer") and args.peer is None:
        ap.error(f"--side {args.side} needs --peer PATH (a checkout of {PEER_REPO}, outside this repository); "
                 "or use --side vsmd")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    shared = ROOT.parent / "shared" / "data" / "exchange_rate_nips.tar.gz"
    if not (args.data_dir / "exchange_rate_nips.tar.gz").is_file() and shared.is_file():
        shutil.copy(shared, args.data_dir)
    materialise(args.data_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.side == "peer":
        (args.work / "peer.json").write_text(json.dumps(run_peer(args), indent=1) + "\n")
        return
    if args.side == "vsmd":
        (args.work / "vsmd.json").write_text(json.dumps(run_vsmd(args), indent=1) + "\n")
        if args.peer is None:
            finish(args, [])
        return
    sides = []
    (args.work / "command.txt").write_text(f"python benchmarks/exchange_peer.py {' '.join(args.argv)}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EXCHPEER_T0": repr(time.time())}
    for side in ("peer", "vsmd"):  # started together: they see the same load
        (args.work / f"{side}.json").unlink(missing_ok=True)
        cmd = [sys.executable, __file__, *args.argv, "--side", side]
        logf = open(args.work / f"{side}.log", "w")
        sides.append((side, subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT), logf))
        log(f"{side}: pid {sides[-1][1].pid}, log {args.work / f'{side}.log'}")
    for side, proc, logf in sides:
        proc.wait()
        logf.close()
        log(f"{side} finished ({proc.returncode})")
    finish(args, [s for s, p, _ in sides])


def finish(args, sides: list[str]) -> None:
    """Gather the sides' results from ``args.work`` (a side cut short: its curve so far) and write the tables."""
    import torch

    command = args.work / "command.txt"
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
                          f"{torch.__version__}",
               "load_note": "Both sides ran at the same time, one process each with one thread (OMP_NUM_THREADS=1, "
                            "torch.set_num_threads(1)), on a machine shared with other work: absolute times move "
                            "with the load, the two sides saw the same load.",
               "commands": [command.read_text().strip() if command.is_file() else
                            f"python benchmarks/exchange_peer.py {' '.join(args.argv)}".strip()],
               "notes": list(args.note)}
    for side in ("peer", "vsmd"):
        path, partial = args.work / f"{side}.json", args.work / side / "curve.json"
        if path.is_file():
            results[side] = json.loads(path.read_text())
        elif side in sides and partial.is_file():
            curve = json.loads(partial.read_text())
            if side == "peer":
                results[side] = {"sde": args.peer_sde, "beta_max": args.peer_beta_max,
                                 "damp_coef": args.peer_damp_coef, "seed": args.peer_seed, "epochs": args.peer_epochs,
                                 "batches_per_epoch": 50, "batch_size": 32, "num_samples": args.num_samples,
                                 "curve": curve, "complete": False}
            else:
                cfg = yaml.safe_load((args.work / side / "exchange.yaml").read_text())
                results[side] = {"config": "configs/exchange.yaml", "process": cfg["model"]["init_args"]["process"],
                                 "seed": cfg["seed_everything"], "steps": cfg["trainer"]["max_steps"],
                                 "batch_size": cfg["data"]["init_args"]["batch_size"],
                                 "num_samples": cfg["model"]["init_args"]["num_samples"],
                                 "fit_seconds": None, "curve": curve, "complete": False}
    write_tables(results, args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
