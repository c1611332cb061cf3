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

The CLI installs the first two by default.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

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
                                   f"{err.strerror}; choose a writable --trainer.logger.init_args.save_dir") from None
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
                                       "writable --trainer.logger.init_args.save_dir") from None
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems (and Windows) do not fsync folders
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to memory, then :func:`atomic_write_bytes` (remote URLs use Lightning's writer)."""

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
