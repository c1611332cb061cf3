"""The ``vsmd`` command: LightningCLI with fit / validate / test / predict and YAML configs under configs/."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch  # noqa: E402
from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.plugins import CheckpointIO  # noqa: E402

import vsmd.datamodules  # noqa: E402,F401  (registers the DataModules for class_path short names)
from vsmd.allocator import keep_freed_memory  # noqa: E402
from vsmd.checkpointing import (  # noqa: E402
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    FinalCheckpoint,
    check_checkpoint,
    forget_loaded,
    loaded,
    newest_checkpoint,
)
from vsmd.legacy import check_legacy_config, upgrade_hparams  # noqa: E402
from vsmd.models import PhaseSpaceModule  # noqa: E402
from vsmd.nvml import skip_missing_nvml  # noqa: E402
from vsmd.progress_bar import RICH, SteadyProgressBar  # noqa: E402
from vsmd.runs import (  # noqa: E402
    RESERVED,
    RESUMED_FROM,
    RunGuard,
    cleanup,
    logger_args,
    reserve_run_folder,
    reset,
    resume_hint,
    stop_message,
    unpin_version,
)
from vsmd.settings import policy_for, resolve, same_value  # noqa: E402

_CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}
UNTRAINED = "untrained"  # --ckpt_path value that asks validate/test/predict for the freshly initialised network


# Settings that may differ from a checkpoint's are declared per class in vsmd.settings (``SETTINGS`` on each module
# class, ``DATA_SETTINGS`` on each DataModule): evaluation settings (every subcommand) and training settings (fit
# --ckpt_path, where they take effect on resume) come from the config and command line; the options that define
# the weights come from the checkpoint (a different value on the command line is an error for fit and a printed
# note for validate/test/predict); the options that define the data must match. Lightning alone would let the
# checkpoint's values silently win.
def _from_config(model_cls: str | None, sub: str) -> frozenset[str]:
    """The model options that ``sub`` takes from the config: the class's own declaration, and for names it does
    not declare (a checkpoint of another vsmd) what any vsmd module class declares."""
    own = policy_for(model_cls, PhaseSpaceModule)
    every = policy_for(None, PhaseSpaceModule)
    return own.from_config(sub) | {n for n in every.from_config(sub) if own.role(n) is None}


def _data_view(cls: type | None, settings: dict) -> dict:
    """A DataModule's options as its class compares them (its ``data_view``: defaults filled in), or as they are."""
    view = getattr(cls, "data_view", None)
    return view(settings) if view is not None else settings


def _split(hparams: dict) -> tuple[str | None, dict]:
    h = {k: v for k, v in hparams.items() if k != "_instantiator"}
    return h.pop("_class_path", None), h


def _given(node) -> tuple[str | None, dict]:
    """(class_path, init_args as a dict) of a model or data entry of the parsed config."""
    if node is None:
        return None, {}
    d = node.as_dict() if hasattr(node, "as_dict") else dict(node)
    return d.get("class_path"), dict(d.get("init_args") or {}) | dict(d.get("dict_kwargs") or {})


def check_same_data(ckpt_path, trained: tuple[str | None, dict], given: tuple[str | None, dict], hint: str) -> None:
    """Refuse data other than a checkpoint's: another DataModule class, or another value of an option that defines
    the data (its class's ``DATA_SETTINGS``). ``trained`` and ``given`` are (class_path, init args); ``hint`` says
    what to do."""
    (data_cls, data_hparams), (given_data_cls, given_data) = trained, given
    trained_cls, given_cls = resolve(data_cls), resolve(given_data_cls)
    related = isinstance(trained_cls, type) and isinstance(given_cls, type) and (
        issubclass(trained_cls, given_cls) or issubclass(given_cls, trained_cls))  # Toy2DDataModule: VectorDataModule's
    if data_cls and given_data_cls and data_cls.rsplit(".", 1)[-1] != given_data_cls.rsplit(".", 1)[-1] and not related:
        raise CheckpointError(f"{ckpt_path} was trained on a {data_cls.rsplit('.', 1)[-1]} but the config gives a "
                              f"{given_data_cls.rsplit('.', 1)[-1]}: the checkpoint belongs to another task {hint}")
    data_defining = set(policy_for(data_cls or given_data_cls, LightningDataModule, "DATA_SETTINGS").data)
    data_hparams, given_data = _data_view(trained_cls, data_hparams), _data_view(given_cls, given_data)
    for k in sorted(data_defining & data_hparams.keys() & given_data.keys()):
        if not same_value(data_hparams[k], given_data[k]):
            raise CheckpointError(f"{ckpt_path} was trained on data with {k}={data_hparams[k]!r}, but the config "
                                  f"gives data {k}={given_data[k]!r}; the metrics would be meaningless {hint}")


class VSMDArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with short errors: the problem, not a 50-line usage block and a dump of the input."""

    _NOISE = ("Does not validate against any of the Union subtypes", "Subtypes: [", "Expected a <class 'NoneType'>",
              "Given value type:", "Given value:", "Errors:")

    def print_usage(self, file=None) -> None:
        print(f"usage: {self.prog.replace(' [options]', '')} [options]", file=file or sys.stderr)

    def error(self, message: str, ex: Exception | None = None):
        lines = [ln for ln in str(message).splitlines() if not any(n in ln for n in self._NOISE)]
        return super().error("\n".join(lines), ex)


def _listed(value) -> list:
    """A Trainer option that takes one item or several (plugins, callbacks) as a list: [] for None."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class VSMDCLI(LightningCLI):
    def _instantiate_trainer(self, config, callbacks):
        # Atomic checkpoint writes and a last.ckpt at the final step, unless the user brought their own CheckpointIO.
        plugins = _listed(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        extra = [FinalCheckpoint(), RunGuard()]
        if config.get("enable_progress_bar") is not False and not config.get("barebones") and not RICH \
                and not any(isinstance(c, ProgressBar) for c in [*_listed(config.get("callbacks")), *callbacks]):
            extra.append(SteadyProgressBar())  # redrawn ten times a second, not at every step (vsmd/progress_bar.py)
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (TypeError, ValueError) as err:
            short = _unwrapped(err)
            if short is err:
                raise
            raise short from None
        sub = self.config.get("subcommand")
        if sub:  # the saved config.yaml reproduces or resumes the run into a new version_N, never into this one
            unpin_version(self.config[sub].get("trainer") or {})
        trained = getattr(self, "_trained", None)
        if trained is not None:  # evaluation settings other than the training run's: said, so that numbers are
            for note in trained[0].evaluation_notes(trained[1], dict(self.model.hparams)):  # compared knowingly
                print(note, file=sys.stderr)

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = loaded(ckpt_path)  # as check_checkpoint loaded it
        if ckpt is None:
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        cls, hparams = upgrade_hparams(*_split(ckpt.get("hyper_parameters", {})))
        data_cls, data_hparams = _split(ckpt.get("datamodule_hyper_parameters", {}))
        given_cls, given = _given(self.config[sub].get("model"))
        given_data_cls, given_data = _given(self.config[sub].get("data"))
        own = Path(ckpt_path).resolve().parent.parent / "config.yaml"
        hint = f"(use the run's own config: --config {own})" if own.is_file() else "(use the config of its run)"
        if cls and given_cls and cls.rsplit(".", 1)[-1] != given_cls.rsplit(".", 1)[-1]:
            raise CheckpointError(f"{ckpt_path} holds a {cls.rsplit('.', 1)[-1]} model but the config asks for "
                                  f"{given_cls.rsplit('.', 1)[-1]}: the checkpoint belongs to another task {hint}")
        check_same_data(ckpt_path, (data_cls, data_hparams), (given_data_cls, given_data), hint)
        step, max_steps = int(ckpt.get("global_step", 0)), (self.config[sub].get("trainer") or {}).get("max_steps")
        if sub == "fit" and max_steps not in (None, -1) and step >= max_steps:
            raise CheckpointError(f"{ckpt_path} is already at step {step}, and --trainer.max_steps is {max_steps} (the "
                                  "total count of steps, the resumed ones included): there is nothing to train. Pass "
                                  f"--trainer.max_steps larger than {step} to train on, or evaluate it with vsmd test.")
        keep = _from_config(cls or given_cls, sub)
        fixed = {k: v for k, v in hparams.items() if k not in keep}
        differ = [k for k in sorted(fixed) if k in given and not same_value(fixed[k], given[k])]
        if differ and sub == "fit":
            both = "; ".join(f"{k}: checkpoint {fixed[k]!r}, config {given[k]!r}" for k in differ)
            raise CheckpointError(f"fit --ckpt_path cannot change what the weights mean ({both}). Resume with the "
                                  f"checkpoint's values {hint}, or start a new fit without --ckpt_path.")
        if differ:
            both = ", ".join(f"{k} {fixed[k]!r} (config {given[k]!r})" for k in differ)
            print(f"vsmd: from the checkpoint: {both}", file=sys.stderr)
        if sub != "fit":  # the evaluation settings are compared once the model is built (instantiate_classes)
            self._trained = (policy_for(cls or given_cls, PhaseSpaceModule), hparams)
        if fixed:
            self.config = self.parser.parse_object({sub: {"model": {"class_path": cls or given_cls,
                                                                    "dict_kwargs": fixed}}}, self.config)

    def parse_arguments(self, parser, args) -> None:
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        _check_config_files(self._argv)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub:
            _check_trainer(self.config[sub].get("trainer") or {})
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if sub in ("validate", "test", "predict"):
            if ckpt == UNTRAINED:
                self.config[sub]["ckpt_path"] = None  # asked for explicitly: evaluate the freshly initialised network
                return
            if not ckpt:
                raise CheckpointError(
                    f"vsmd {sub} needs --ckpt_path: the checkpoint to evaluate, e.g. "
                    "runs/<name>/version_N/checkpoints/last.ckpt (without it the untrained network would be "
                    f"scored). To evaluate the untrained network on purpose, pass --ckpt_path {UNTRAINED}.")
            _check_resumed_from(sub, str(ckpt), self.config[sub].get("config"), self._argv)
        if ckpt and str(ckpt) in _CKPT_KEYWORDS:
            ckpt = self._resolve_keyword(sub, str(ckpt))
            self.config[sub]["ckpt_path"] = ckpt
        if ckpt:
            check_checkpoint(ckpt, resume=sub == "fit")  # every load, keywords included, passes this check

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub:
            reserve_run_folder(self.config[sub].get("trainer") or {}, self.config[sub].get("config"), self._argv)
            if sub == "fit" and self.config[sub].get("ckpt_path"):
                RESUMED_FROM.append(str(self.config[sub]["ckpt_path"]))

    def _resolve_keyword(self, sub: str, keyword: str) -> str:
        """Lightning's checkpoint keywords would skip the check above: ``last`` becomes the newest loadable
        checkpoint of the newest run folder of the configured logger; the others are refused."""
        if keyword != "last":
            raise CheckpointError(f"--ckpt_path {keyword} is not supported by vsmd; pass the checkpoint file, e.g. "
                                  "runs/<name>/version_N/checkpoints/last.ckpt")
        logger = self.config[sub].get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None) if logger is not None and not isinstance(logger, bool) else None
        root = Path(str(init.get("save_dir", "runs")), str(init.get("name", "") or "")) if init is not None else None
        runs = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1]
                      .isdigit() else -1, reverse=True) if root is not None and root.is_dir() else []
        for run in runs:
            newest = newest_checkpoint(run)
            if newest:
                print(f"--ckpt_path last: using {newest[0]} (step {newest[1]})", file=sys.stderr)
                return str(newest[0])
        raise CheckpointError(f"--ckpt_path last: no loadable checkpoint under {root or 'the logger folder'}; "
                              "pass the checkpoint file")


def _unwrapped(err: Exception) -> Exception:
    """A constructor's own error instead of jsonargparse's wrapper around it ("Does not validate against any of the
    Union subtypes ..." and a dump of every init argument); any other error unchanged."""
    if "Union subtypes" not in str(err):
        return err
    cause = err
    while "Union subtypes" in str(cause) and cause.__cause__ is not None:
        cause = cause.__cause__
    if "Union subtypes" not in str(cause) and isinstance(cause, ERRORS):
        return cause
    lines = [ln.strip()[2:] for ln in str(err).splitlines() if ln.strip().startswith("- ") and "NoneType" not in ln]
    return ValueError("; ".join(lines) or str(err).splitlines()[0])


def _check_resumed_from(sub: str, ckpt: str, config_files: list | None, argv: list[str]) -> None:
    """A run's saved config.yaml of a resumed fit records the checkpoint that fit resumed from; without
    --ckpt_path, validate/test/predict would silently evaluate that earlier checkpoint instead of the run."""
    if ckpt in _CKPT_KEYWORDS or any(a == "--ckpt_path" or a.startswith("--ckpt_path=") for a in argv):
        return
    for cfg in config_files or []:
        run = Path(str(getattr(cfg, "absolute", cfg))).resolve().parent
        if (run / "checkpoints").is_dir() and run not in Path(ckpt).resolve().parents:
            raise CheckpointError(
                f"the config {cfg} is the saved config of the run {run}, whose fit resumed from {ckpt}: without "
                f"--ckpt_path, vsmd {sub} would evaluate that earlier checkpoint, not this run. Pass the checkpoint "
                f"to evaluate, e.g. --ckpt_path {run / 'checkpoints' / 'last.ckpt'}")


def _check_config_files(argv: list[str]) -> None:
    """Name an empty config file (jsonargparse says only "Unexpected config:"), and refuse a vsmd 0.1 AGM config."""
    import yaml

    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("-c", "--config") and i + 1 < len(argv) else arg[9:] if arg.startswith(
            "--config=") else None
        try:
            loaded = yaml.safe_load(Path(path).read_text()) if path and Path(path).is_file() else False
        except Exception:  # noqa: BLE001 (unreadable or not YAML: jsonargparse reports it)
            loaded = False
        empty = loaded is None
        check_legacy_config(path, loaded)
        if empty:
            raise ValueError(f"the config file {path} is empty (no settings, at most comments); a config has the "
                             "sections model:, data: and trainer: (see configs/spiral8y.yaml), or leave --config out "
                             "and give the options on the command line")


def _check_trainer(trainer: dict) -> None:
    """Refuse settings that cannot work, before any work, with what to do."""
    precision = str(trainer.get("precision") or "32")
    if precision in ("16-true", "bf16-true", "half", "bfloat16"):
        raise ValueError(f"--trainer.precision {precision} is not supported: the network's weights and the SA "
                         "would run in half precision, where A and the loss lose their accuracy. Use 16-mixed or "
                         "bf16-mixed (mixed precision, float32 weights), or 32.")
    init = logger_args(trainer)
    if init is None:
        return
    save_dir = Path(str(init.get("save_dir") or ".")).expanduser()
    existing = save_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"the run folder cannot be made: {existing} is a file, not a folder; choose another "
                         "--trainer.logger.init_args.save_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"the run folder cannot be made: {existing} is not writable; choose another "
                         "--trainer.logger.init_args.save_dir")


def _quiet_lightning() -> None:
    """Drop output a user has to read past: Lightning's cloud tip, and warnings that are not about their run."""
    import logging
    import warnings

    class _NoTip(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in str(record.msg)

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.addFilter(_NoTip())
        for handler in lg.handlers:
            handler.addFilter(_NoTip())
    # vsmd checks the checkpoint itself; a run folder that moved does not matter for validate/test/predict.
    warnings.filterwarnings("ignore", message=r".*dirpath has changed.*")
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|TreeSpec|tree_flatten|pytree).*deprecat.*")


def _quiet_full_disk_in_threads() -> None:
    """TensorBoard writes its events in a thread; on a full disk that thread printed a long traceback before the
    main thread (which meets the same error at the next write or flush) gave vsmd's one-paragraph message."""
    import threading

    default = threading.excepthook
    if getattr(default, "_vsmd", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        default(args)

    hook._vsmd = True
    threading.excepthook = hook


def main(args: list[str] | None = None, raise_errors: bool = False) -> None:
    """Entry point of the ``vsmd`` console command (``args`` lets tests call it in-process; ``raise_errors``: an error
    is raised as it is, after the cleanup, instead of printed as one line with exit status 1, as for vsmd.fit)."""
    _quiet_lightning()
    _quiet_full_disk_in_threads()
    reset()
    forget_loaded()
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    try:
        keep_freed_memory()  # big activations reused, not mapped and zeroed again at every step (vsmd/allocator.py)
        skip_missing_nvml()  # no dlopen of a missing NVML at every optimiser step (vsmd/nvml.py)
        VSMDCLI(PhaseSpaceModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                parser_class=VSMDArgumentParser)
    except BaseException as err:
        forget_loaded()
        cleanup()  # a command that failed before writing anything leaves no empty version_N behind
        stopped = stop_message(err, argv)
        if stopped:  # SIGTERM (e.g. a batch scheduler) or Ctrl-C: never an exit status of success
            print(stopped[0], file=sys.stderr)
            raise SystemExit(stopped[1]) from None
        if raise_errors or os.environ.get("VSMD_DEBUG") or not isinstance(err, ERRORS):
            raise
        if isinstance(err, OSError) and not isinstance(err, (CheckpointWriteError, FileNotFoundError)):
            what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                    errno.EACCES: "permission denied", errno.EROFS: "the filesystem is read-only"}.get(err.errno)
            if what is None:
                raise
            err = f"{what}: {err}. Free space or choose another --trainer.logger.init_args.save_dir."
        print(f"vsmd: error: {err}{resume_hint(argv)}\n(set VSMD_DEBUG=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    forget_loaded()  # a checkpoint Lightning did not take (a CheckpointIO of the user's own)
    for run in RESERVED:
        if run.is_dir():
            print(f"run folder: {run}", file=sys.stderr)


ERRORS = (CheckpointError, CheckpointWriteError, FloatingPointError, FileNotFoundError, ValueError, OSError)


if __name__ == "__main__":
    main()
