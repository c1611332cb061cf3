"""Run folders and how a run ends: what ``vsmd`` guarantees about ``runs/<name>/version_N``.

- :func:`reserve_run_folder` gives every call a ``version_N`` of its own, taken atomically with ``mkdir`` (runs
  started together never share one). An explicit version whose folder exists is refused: nothing is ever written
  into an earlier run's folder.
- :func:`unpin_version` makes the saved ``config.yaml`` record ``version: null`` (the folder's name is the version),
  so that the run's own config reproduces or resumes it into a new ``version_N``. A config saved by an older vsmd
  (which pinned the version) is recognised when it is given from its own run folder.
- :class:`RunGuard` refuses a fit that could never end, saves a checkpoint at the step reached on SIGTERM, and
  records a stop by SIGTERM or Ctrl-C for :func:`stop_message`.
- :func:`cleanup` removes the empty run folder of a command that failed; :func:`resume_hint` names the newest
  loadable checkpoint and the command that resumes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from lightning.fabric.utilities.data import has_len
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vsmd.checkpointing import newest_checkpoint

RESERVED: list[Path] = []  # run folders this process made (removed again if the command fails before any output)
RESUMED_FROM: list[str] = []  # the checkpoint a fit resumes from
STOP: dict = {}  # a stop by signal: {"signal": "SIGTERM", "step": 16}
VERSION_ENV = "VSMD_RUN_VERSION"  # rank 0's version, inherited by the DDP ranks it launches
VERSION_FLAG = "--trainer.logger.init_args.version"


def reset() -> None:
    RESERVED.clear()
    RESUMED_FROM.clear()
    STOP.clear()


def logger_args(trainer: dict) -> dict | None:
    """The init_args of a TensorBoard/CSV logger in the parsed trainer config (None for another or no logger)."""
    logger = trainer.get("logger")
    if logger is None or isinstance(logger, (bool, list)) or not hasattr(logger, "get"):
        return None
    if str(logger.get("class_path", "")).rsplit(".", 1)[-1] not in ("TensorBoardLogger", "CSVLogger"):
        return None
    return logger.get("init_args")


def _folder(root: Path, version: int | str) -> Path:
    return root / (version if isinstance(version, str) else f"version_{version}")


def _from_own_config(folder: Path, config_files: list, argv: list[str]) -> bool:
    """Whether a pinned version came from the config.yaml inside that very run folder (saved by a vsmd that pinned
    versions) rather than from the command line."""
    if any(a.startswith("--trainer.logger") and "version" in a for a in argv):
        return False
    own = (folder / "config.yaml").resolve()
    return any(Path(str(getattr(c, "absolute", c))).resolve() == own for c in config_files or [])


def reserve_run_folder(trainer: dict, config_files: list | None = None, argv: list[str] | None = None) -> None:
    """Take the run folder atomically: the next free version_N, or the explicit version if its folder is new."""
    init = logger_args(trainer)
    if init is None:
        return
    if os.environ.get(VERSION_ENV) is not None and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        init["version"] = json.loads(os.environ[VERSION_ENV])  # a DDP rank launched by rank 0: rank 0's folder
        return
    root = Path(str(init.get("save_dir") or ".")).expanduser() / str(init.get("name") or "lightning_logs")
    version = init.get("version")
    if isinstance(version, bool) or (isinstance(version, int) and version < 0) or (
            isinstance(version, str) and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", version)):
        raise ValueError(f"{VERSION_FLAG} {version!r}: a version is a number >= 0 (the folder version_N) or a plain "
                         f"folder name (letters, digits, _ . -); leave it out (or pass {VERSION_FLAG} null) to take "
                         "the next free version_N")
    if version is not None and _folder(root, version).exists() and _from_own_config(_folder(root, version),
                                                                                   config_files, argv or []):
        print(f"run folder: {_folder(root, version)} is the run whose config was given; this run takes the next "
              "free version", file=sys.stderr)
        version = None
    root.mkdir(parents=True, exist_ok=True)
    if version is not None:
        try:
            _folder(root, version).mkdir()
        except FileExistsError:
            raise ValueError(
                f"{VERSION_FLAG} {version}: the run folder {_folder(root, version)} exists already (an earlier run), "
                "and vsmd never writes into an earlier run's folder. Leave the version out (or pass "
                f"{VERSION_FLAG} null) to take the next free version_N, or name a version that does not exist "
                "yet.") from None
    else:
        taken = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
        version = max(taken, default=-1) + 1
        while True:
            try:
                _folder(root, version).mkdir()
                break
            except FileExistsError:
                version += 1
    init["version"] = version
    os.environ[VERSION_ENV] = json.dumps(version)
    RESERVED.append(_folder(root, version))
    print(f"run folder: {_folder(root, version)}", file=sys.stderr)


def unpin_version(trainer: dict) -> None:
    """After the logger exists: the config that is saved into the run folder records ``version: null``."""
    init = logger_args(trainer)
    if init is not None:
        init["version"] = None


def has_output(run: Path) -> bool:
    """Whether a run folder holds anything of value: a checkpoint, metrics, samples, figures, or TensorBoard
    events with logged values (training that ran, even if its first checkpoint write failed)."""
    files = [p for p in run.rglob("*") if p.is_file()]
    return (any(p.suffix in (".ckpt", ".json", ".npz", ".png") for p in files)
            or any(p.name.startswith("events.out.tfevents") and _logged_values(p) for p in files))


def _logged_values(events: Path) -> bool:
    """Whether a TensorBoard event file holds any logged value (beyond the header and hyper-parameters a fresh
    logger writes)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        tags = (v.tag for e in EventFileLoader(str(events)).Load() for v in e.summary.value)
        return any(not tag.startswith("_hparams_") and tag != "hp_metric" for tag in tags)
    except Exception:  # unreadable or truncated: keep the folder rather than guess
        return True


def cleanup() -> None:
    """After a failed command: remove the run folders it made that hold no output, and say so."""
    for run in RESERVED:
        if run.is_dir() and not has_output(run):
            shutil.rmtree(run, ignore_errors=True)
            print(f"run folder: {run} removed (the command failed before writing any output)", file=sys.stderr)
        elif run.is_dir():
            print(f"run folder: {run} (kept: it holds output of this run)", file=sys.stderr)


def _resume_command(ckpt: Path) -> str:
    """The command that resumes ``ckpt``, with the config of its run when it sits in <run>/checkpoints/."""
    config = ckpt.parent.parent / "config.yaml" if ckpt.parent.name == "checkpoints" else None
    return f"vsmd fit {f'--config {config} ' if config and config.is_file() else ''}--ckpt_path {ckpt}"


def resume_hint(argv: list[str]) -> str:
    """After a fit that stopped: the newest loadable checkpoint of its run folder, and the command that resumes it."""
    if not argv or argv[0] != "fit":
        return ""
    for run in RESERVED:
        newest = newest_checkpoint(run) if run.is_dir() else None
        if newest:
            return (f"\nThe newest loadable checkpoint of this run is {newest[0]} (step {newest[1]}); resume it "
                    f"with: {_resume_command(newest[0])} (learning rates and SA settings given on the command line "
                    "take effect)")
    if RESUMED_FROM:
        return (f"\nThis fit wrote no checkpoint; the one it resumed from is untouched, resume it again with: "
                f"{_resume_command(Path(RESUMED_FROM[0]))}")
    runs = [run for run in RESERVED if run.is_dir()]
    return f"\nNo checkpoint of this run ({runs[0]}) was written; a new fit starts from scratch." if runs else ""


def stop_message(err: BaseException, argv: list[str]) -> tuple[str, int] | None:
    """(message, exit status) for a command stopped by SIGTERM or Ctrl-C, else None."""
    name = "SIGTERM" if isinstance(err, SIGTERMException) else STOP.get("signal")
    if isinstance(err, KeyboardInterrupt):
        name = "SIGINT"
    if name is None:
        return None
    what = "stopped by SIGTERM" if name == "SIGTERM" else "interrupted (Ctrl-C)"
    step = f" at step {STOP['step']}" if "step" in STOP and argv[:1] == ["fit"] else ""
    hint = resume_hint(argv) or ("" if argv[:1] == ["fit"] else f"\nThe {argv[0] if argv else 'command'} did not "
                                 "finish; run it again.")
    return f"vsmd: {what}{step}.{hint}", 128 + getattr(signal, name)


class RunGuard(Callback):
    """Refuses a fit that could never end; on SIGTERM saves a checkpoint at the step reached; records the stop."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or trainer.max_steps not in (-1, None) or isinstance(trainer.limit_train_batches, int) \
                or any(isinstance(c, Timer) for c in trainer.callbacks):
            return
        try:
            loader = (trainer.datamodule or pl_module).train_dataloader()
        except Exception:  # noqa: BLE001 (Lightning reports a missing or broken loader itself)
            return
        if not has_len(loader):
            raise ValueError(
                "the training data are an endless stream, so an epoch never ends, and --trainer.max_steps "
                f"{trainer.max_steps} sets no step limit: this fit would never stop. Give --trainer.max_steps N (or "
                "--trainer.limit_train_batches N, which makes an epoch of N batches for --trainer.max_epochs, or "
                "--trainer.max_time).")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        STOP.update(signal="SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM",
                    step=trainer.global_step)
        # SIGTERM is acted on between steps, so the state is whole; Ctrl-C can land anywhere, also halfway through
        # an optimiser step or an SA stage, so it saves nothing (the newest checkpoint is named instead).
        if isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit" or trainer.sanity_checking \
                or trainer.global_step == 0:
            return
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb._last_global_step_saved != trainer.global_step:
                candidates = cb._monitor_candidates(trainer)
                if cb.save_last:
                    cb._save_last_checkpoint(trainer, candidates)
                else:
                    cb._save_checkpoint(trainer, cb.format_checkpoint_name(candidates))
