"""Checkpoints that survive kills and full disks, and always hold the end of a finished fit.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file *in the target folder*, fsyncs it and renames
  it over the target with ``os.replace``. A rename within one folder is atomic on POSIX and Windows, so a kill at
  any moment leaves either the old checkpoint or the new one under the name, never a fragment. (Lightning's own
  writer moves a file from the system temp folder, which becomes a copy when the run folder is on another
  filesystem, e.g. a Docker volume.) A full disk raises :class:`CheckpointWriteError`, which names the file and the
  space it needed, and leaves the previous checkpoint untouched.
- :class:`FinalCheckpoint` saves ``last.ckpt`` at the final step of a fit that ended normally, when the final step
  is not a multiple of the checkpoint interval.
- :func:`newest_checkpoint` finds the newest loadable checkpoint of a run, for resume advice.
- :func:`check_checkpoint` refuses a missing, damaged, unsafe or foreign checkpoint with what to do. It reads the
  file once: it checks the CRCs and loads it with ``weights_only=True``, and keeps the loaded dict (:func:`loaded`)
  for the CLI's settings reconciliation and Lightning's restore (through :class:`AtomicCheckpointIO`).

The CLI installs the first two by default.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from vsmd.caller import option

_TMP_SUFFIX = ".vsmd-tmp"


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (full disk, unwritable folder); the previous one is untouched."""


def _is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary checkpoint files left in ``folder`` by killed processes (their pid no longer runs)."""
    removed = []
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
        try:
            pid = int(tmp.name[: -len(_TMP_SUFFIX)].rsplit(".", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def format_size(n: int) -> str:
    """A byte count for messages, to three significant digits: 812 B, 4.21 KiB, 169 MiB, 1.02 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1000 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.3g} {unit}" if n < 1000 else f"{n:.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def atomic_write_bytes(data: bytes | memoryview, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(err.errno, f"cannot create the folder {folder} for the {what} {path.name}: "
                                   f"{err.strerror}; choose a writable "
                                   f"{option('trainer.logger.init_args.save_dir')}") from None
    remove_stale_temporaries(folder)
    tmp = folder / f".{path.name}.{os.getpid()}{_TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(folder).free
            raise CheckpointWriteError(
                err.errno, f"no space left on the device to write the {what} {path}: it needs "
                f"{format_size(len(data))} and {format_size(free)} are free. Nothing was written under that "
                "name (an earlier file there is untouched). Free some space, or resume from the newest checkpoint "
                "with a save_dir on another disk.") from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise CheckpointWriteError(err.errno, f"cannot write the {what} {path}: {err.strerror}; choose a "
                                       f"writable {option('trainer.logger.init_args.save_dir')}") from None
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems (and Windows) do not fsync folders
        pass


def as_saved(storage, location):
    """torch.load's map_location that keeps every tensor on the device it was saved from (Lightning's default)."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to memory, then :func:`atomic_write_bytes` (remote URLs use Lightning's writer). Loading hands
    Lightning the checkpoint the CLI's check loaded, when it is this very file (:func:`loaded`)."""

    def load_checkpoint(self, path, map_location: Any = as_saved, weights_only: bool | None = None) -> dict[str, Any]:
        if map_location is as_saved and _is_local(path):
            checkpoint = loaded(str(path).removeprefix("file://"), take=True)
            if checkpoint is not None:
                return checkpoint
        return super().load_checkpoint(path, map_location, weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getbuffer(), str(path).removeprefix("file://"))


class FinalCheckpoint(Callback):
    """At the end of a fit that ended normally, save ``last.ckpt`` if the final step was not saved yet."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.interrupted or trainer.global_step == 0 or trainer.sanity_checking:
            return
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb._last_global_step_saved != trainer.global_step:
                cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))


def checkpoint_step(path: Path) -> int | None:
    """The global step of a loadable checkpoint, or None when it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"]) if isinstance(ckpt, dict) and "state_dict" in ckpt else None
    except Exception:  # noqa: BLE001 (any unreadable file is simply not a candidate)
        return None


def newest_checkpoint(folder: str | os.PathLike) -> tuple[Path, int] | None:
    """The loadable checkpoint with the largest global step under ``folder`` (a run or its checkpoints folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best = None
    for p in sorted(folder.rglob("*.ckpt")):
        step = checkpoint_step(p) if p.is_file() else None
        if step is not None and (best is None or step > best[1] or (step == best[1] and p.name == "last.ckpt")):
            best = (p, step)
    return best


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be read."""


LIGHTNING_KEYS = ("state_dict", "global_step", "pytorch-lightning_version")


def _other_checkpoints(p: Path) -> str:
    """Resume advice: the newest loadable checkpoint of the run that ``p`` belongs to (only when ``p`` sits in a
    run's checkpoints/ folder: any other folder may hold checkpoints of unrelated experiments)."""
    newest = newest_checkpoint(p.parent) if p.parent.name == "checkpoints" else None
    if newest and newest[0].resolve() != p.resolve():
        return (f"the newest loadable checkpoint of that run is {newest[0]} (step {newest[1]}); pass it as "
                f"{option('ckpt_path')}")
    return "use another checkpoint of the run (under <run>/checkpoints/)"


def check_checkpoint(path: str | os.PathLike, resume: bool = False) -> None:
    """Fail early, with what to do, when a checkpoint is missing, damaged, unsafe or not a Lightning checkpoint.

    Every checkpoint vsmd loads passes here: a zip whose CRCs all match (bit rot would otherwise load and give
    NaN metrics), loadable with ``weights_only=True`` (no pickled code), with Lightning's keys. The file is read
    once: the loaded checkpoint is kept (vsmd.checkpointing.loaded) for the settings reconciliation and Lightning.
    """
    p = Path(path)
    if p.is_dir():
        newest = newest_checkpoint(p)
        hint = (f"the newest loadable one there is {newest[0]} (step {newest[1]})" if newest
                else "it holds no loadable checkpoint")
        raise CheckpointError(f"{option('ckpt_path', str(p))} is a folder; pass a checkpoint file: {hint}")
    if p.parent.is_dir():
        with contextlib.suppress(OSError):  # temporary files of killed writers (a read-only folder keeps them)
            remove_stale_temporaries(p.parent)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p} ({_other_checkpoints(p)})")
    data = p.read_bytes()  # the one read of the file: the CRCs and the load below work on these bytes
    if not zipfile.is_zipfile(io.BytesIO(data)):
        head = data[:4]
        if head.startswith(b"PK"):
            raise CheckpointError(f"checkpoint {p} is truncated (it starts like a checkpoint but its end is missing, "
                                  f"e.g. a copy or write that was cut off); {_other_checkpoints(p)}")
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{p} is in PyTorch's legacy (non-zip) format, which vsmd does not load because it cannot be checked "
                "for pickled code. If you trust the file, convert it once: python -c "
                f"\"import torch; torch.save(torch.load('{p}', weights_only=False), 'converted.ckpt')\"")
        raise CheckpointError(f"{p} is not a checkpoint (torch.save writes a zip archive; this file is not one); "
                              "pass a .ckpt written by vsmd fit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {p} is corrupt ({err}); {_other_checkpoints(p)}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {p} is corrupt: the data of {bad} fails its CRC check (a damaged copy or "
                              f"bit rot); {_other_checkpoints(p)}")
    try:
        # as Lightning's restore would load it (on the devices it was saved from; on CPU where there is no GPU)
        ckpt = torch.load(io.BytesIO(data), map_location=as_saved if torch.cuda.is_available() else "cpu",
                          weights_only=True)
    except pickle.UnpicklingError as err:
        why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {p} holds objects other than tensors and plain data, which vsmd does not "
                              f"load (pickled code could run): {why}") from None
    except Exception as err:  # torch raises several types for damaged archives
        raise CheckpointError(f"checkpoint {p} is corrupt ({type(err).__name__}: {err}); "
                              f"{_other_checkpoints(p)}") from None
    missing = [k for k in LIGHTNING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no {', '.join(repr(k) for k in missing)}); pass a "
                              ".ckpt written by vsmd fit")
    if resume and not all(k in ckpt for k in ("optimizer_states", "loops")):
        raise CheckpointError(f"{p} has the weights but not the training state (optimizer, loops) needed to resume "
                              "fit; it can be used with vsmd test/predict, or to start a new fit from scratch")
    keep_loaded(p, ckpt)  # for the settings reconciliation and Lightning's restore: the file is not read again


# ----------------------------------------------------------------------------------------------
# A checkpoint is read once per command: vsmd.cli's check reads the file, checks every CRC and loads it with
# weights_only=True; the settings reconciliation and Lightning's restore take that loaded dict from here.
_LOADED: dict[tuple[str, int, int], dict] = {}


def _key(path: str | os.PathLike) -> tuple[str, int, int] | None:
    """The file's identity: its resolved path, modification time and size (a file replaced since misses)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def keep_loaded(path: str | os.PathLike, checkpoint: dict) -> None:
    """Keep the checked checkpoint of ``path`` for the reconciliation and for Lightning (one at a time)."""
    _LOADED.clear()
    key = _key(path)
    if key is not None:
        _LOADED[key] = checkpoint


def loaded(path: str | os.PathLike, take: bool = False) -> dict | None:
    """The checkpoint of ``path`` as the check loaded it (None if not loaded or changed since); ``take`` hands it
    over (the last use: Lightning's restore) and forgets it."""
    key = _key(path)
    if key is None or key not in _LOADED:
        return None
    return _LOADED.pop(key) if take else _LOADED[key]


def forget_loaded() -> None:
    _LOADED.clear()
