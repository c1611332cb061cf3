"""The Python API, the ``vsmd`` command's twin: ``load`` a checkpoint, ``fit`` from a config, ``evaluate``
with the metric bundle of ``vsmd test``; the loaded ``vsmd.model.Model`` samples, forecasts and simulates
trajectories in the data's own coordinates.

Every call goes through the code of the command: ``load`` through the checkpoint check of ``vsmd test`` (CRC,
``weights_only``, Lightning's keys) and the 0.1 upgrade, ``fit`` through ``vsmd fit`` itself (the same run folder
and checkpoints), ``evaluate`` through ``trainer.test``, so ``test_step`` computes its metrics and writes its
``test_metrics.json`` exactly as for ``vsmd test``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningDataModule

from vsmd.caller import called_from, python_api
from vsmd.checkpointing import CheckpointError, check_checkpoint, loaded, newest_checkpoint
from vsmd.cli import _split, main
from vsmd.legacy import upgrade_hparams
from vsmd.model import Model, evaluation_settings, quiet_lightning
from vsmd.models import PhaseSpaceModule
from vsmd.runs import RESERVED
from vsmd.settings import resolve

__all__ = ["Model", "evaluate", "fit", "load"]


@python_api
def load(path: str | Path, map_location: str | torch.device = "cpu", datamodule: LightningDataModule | None = None,
         model_class: type[PhaseSpaceModule] | None = None) -> Model:
    """The model of a checkpoint, with its data settings.

    The checkpoint passes the check of ``vsmd test`` (a clear error for a missing file, a folder, a damaged file,
    pickled code, a file that is not a checkpoint); its module class comes from the checkpoint
    (``hyper_parameters["_class_path"]``; a vsmd 0.1 AGM checkpoint loads into its AGM class), built with the
    checkpoint's options and weights as ``load_from_checkpoint`` builds it.

    Args:
        path: a ``.ckpt`` written by ``vsmd fit`` or ``fit``.
        map_location: the device the model is put on.
        datamodule: the data to use; None: the DataModule the checkpoint was trained with, built from its saved
            options when first needed (``Model.datamodule``). One that differs in an option that defines the data
            is refused, as ``vsmd test`` refuses it.
        model_class: the module class (e.g. ``vsmd.models.ToyVSMD``) of a checkpoint that does not record one: one
            written by your own ``pl.Trainer`` rather than by ``vsmd fit``.

    Returns:
        The model, in eval mode, on ``map_location``.
    """
    p = Path(path).expanduser()
    check_checkpoint(p)
    ckpt = loaded(p, take=True)
    if ckpt is None:  # replaced between the check and now: the check reads it again
        check_checkpoint(p)
        ckpt = loaded(p, take=True)
    class_path, hparams = upgrade_hparams(*_split(ckpt.get("hyper_parameters") or {}))
    cls = resolve(class_path) if class_path else model_class
    if not (isinstance(cls, type) and issubclass(cls, PhaseSpaceModule)):
        what = f"its model class is {class_path}" if class_path else "it records no model class"
        raise CheckpointError(f"{p} is a Lightning checkpoint, but not one of vsmd ({what}); vsmd.load reads the "
                              "checkpoints that vsmd fit writes (runs/<name>/version_N/checkpoints/*.ckpt), and those "
                              "of your own pl.Trainer with model_class=<the vsmd module class>")
    module = cls(**hparams)
    module.on_load_checkpoint(ckpt)  # as load_from_checkpoint: the module's own state, then the weights
    module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    module.to(map_location).eval()
    data = _split(ckpt.get("datamodule_hyper_parameters") or {})
    model = Model(module, p, data[0], data[1])
    if datamodule is not None:
        model.datamodule = datamodule
    return model


@python_api
def evaluate(model: Model, datamodule: LightningDataModule | None = None, save_dir: str | Path | None = None,
             **settings: Any) -> dict[str, float | None]:
    """The metric bundle of ``vsmd test``: the module's ``test_step`` on the test data, run by a quiet Trainer.

    Args:
        model: a ``Model`` (from ``load`` or ``fit``).
        datamodule: the test data; None: the model's (``model.datamodule``).
        save_dir: where the run folder ``version_N`` with ``test_metrics.json`` and the figures goes (as
            ``--trainer.logger.init_args.save_dir``); None: a temporary folder, deleted afterwards.
        **settings: evaluation settings of the model class for this call, e.g. ``sampler="ei", sample_steps=20``
            or ``num_samples=50`` (those ``vsmd test`` takes from the command line; others are refused); ``nfe``
            in place of ``sample_steps`` picks the grid with that many network evaluations (``Model.sample``).

    Returns:
        The metrics of ``test_metrics.json`` (None where a metric is NaN, as in the file).
    """
    module = model.module
    if datamodule is not None:
        model.check_data(datamodule)
    dm = datamodule if datamodule is not None else model.datamodule
    if "nfe" in settings:
        if "sample_steps" in settings:
            raise ValueError("give nfe or sample_steps, not both")
        settings = dict(settings)
        nfe = settings.pop("nfe")
        settings["sample_steps"] = model.steps_for_nfe(nfe, **settings)
    cuda = module.device.type == "cuda"
    policy = getattr(type(module), "SETTINGS", None)
    notes = policy.evaluation_notes(dict(module.hparams), settings) if policy is not None else []
    with contextlib.ExitStack() as stack:
        root = save_dir if save_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(evaluation_settings(module, settings))
        for note in notes:  # settings other than the training run's, as vsmd test says them
            print(note, file=sys.stderr)
        stack.enter_context(quiet_lightning())
        logger = pl.loggers.TensorBoardLogger(str(root), name="")
        trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=[module.device.index or 0] if cuda else 1,
                             logger=logger, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False)
        trainer.test(module, datamodule=dm, verbose=False)
        report = json.loads((Path(trainer.log_dir) / "test_metrics.json").read_text())
    module.eval()
    return report["metrics"]


def _flags(prefix: str, options: Mapping[str, Any] | None, init_args: bool) -> list[str]:
    """Command-line flags of nested options: {"max_steps": 3} -> --trainer.max_steps 3; for the model and the data
    the names are init_args (class_path aside)."""
    out: list[str] = []
    for key, value in (options or {}).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if init_args and key not in ("class_path", "init_args", "dict_kwargs"):
            name = f"{prefix}.init_args.{key}"
        if isinstance(value, Mapping) and value and key != "dict_kwargs":
            out += _flags(name, value, False)
            continue
        text = str(value) if isinstance(value, (str, Path)) else json.dumps(value)
        out += [f"--{name}", text]
    return out


class _Tee:
    """A text stream that writes to ``stream`` and keeps a copy (what the parser printed before it exited)."""

    def __init__(self, stream) -> None:
        self.stream, self.kept = stream, []

    def write(self, text: str) -> int:
        self.kept.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.kept)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _own_argv():
    """sys.argv without the calling script's arguments (LightningCLI warns when it sees both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def fit(config: str | Path | Sequence[str] | None = None, *, model: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None, **options: Any) -> Model:
    """Train as ``vsmd fit`` does (it runs in this process): the same config, objects, run folder and checkpoints.

    Args:
        config: a config file (``configs/vectors.yaml``), or the arguments of ``vsmd fit`` as a list
            (``["--config", "configs/spiral8y.yaml", "--trainer.max_steps", "100"]``).
        model: options of the model, as under ``model.init_args`` of the config (``{"data_dim": 5}``).
        data: options of the DataModule, as under ``data.init_args`` (``{"path": "my_vectors.csv"}``).
        trainer: options of the Trainer (``{"max_steps": 200, "logger": {"init_args": {"save_dir": "runs"}}}``).
        **options: other top-level options: ``seed_everything``, ``ckpt_path`` (resume).

    Returns:
        The trained model, loaded from the newest checkpoint of the run (``Model.run_dir`` is the run folder).

    Raises:
        ValueError: the error ``vsmd fit`` would print, naming the option or file and what to change
            (``FileNotFoundError`` for a missing file, ``CheckpointError`` for a checkpoint), raised after a run
            folder that holds no output is removed.
    """
    argv = ["fit"]
    if isinstance(config, (str, Path)):
        argv += ["--config", str(config)]
    elif config is not None:
        argv += [str(a) for a in config]
    argv += _flags("model", model, True) + _flags("data", data, True) + _flags("trainer", trainer, False)
    argv += _flags("", options, False)
    said = _Tee(sys.stderr)
    try:
        with _own_argv(), contextlib.redirect_stderr(said), called_from("fit"):
            main(argv, raise_errors=True)
    except SystemExit as err:  # the parser's refusal (an unknown or mistyped option) exits; a call raises
        if err.code in (0, None):
            raise
        text = said.text()
        reason = text[text.rfind("error:") + len("error:"):].strip() if "error:" in text else text.strip()
        raise ValueError(f"vsmd.fit: the options were refused: {reason or f'exit status {err.code}'}") from None
    run = next((r for r in RESERVED if r.is_dir()), None)
    newest = newest_checkpoint(run) if run is not None else None
    if newest is None:
        raise CheckpointError(f"the fit ran but wrote no checkpoint{f' under {run}' if run else ''}: keep a "
                              "ModelCheckpoint callback and a logger in the config (as configs/*.yaml have) to get a "
                              "model back")
    out = load(newest[0])
    out.run_dir = run
    return out
