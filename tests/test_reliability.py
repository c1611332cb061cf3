"""Issue 10: checkpoints that survive kills and full disks, resumes that do what they say, no silent garbage."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_cli import tiny, versions

from vsmd.checkpointing import AtomicCheckpointIO, newest_checkpoint
from vsmd.cli import main


def every(tmp_path: Path, n: int) -> list[str]:
    """A second config that checkpoints every ``n`` steps (keeps every step checkpoint and last.ckpt)."""
    cfg = tmp_path / f"every{n}.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        trainer:
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {{save_last: true, every_n_train_steps: {n}, save_top_k: -1}}
        """))
    return ["--config", str(cfg)]


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# --- 1. atomic writes ------------------------------------------------------------------------------------------------

def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint_and_no_fragment(tmp_path: Path) -> None:
    """kill -9 while the new checkpoint is being written: the old one stays loadable under the name."""
    target = tmp_path / "ckpt" / "last.ckpt"
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        from vsmd.checkpointing import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"global_step": 1, "state_dict": {{"w": torch.zeros(10)}}}}, {str(target)!r})
        def hang(fd):  # a slow disk: the kill comes while the new file is being written
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = hang
        io.save_checkpoint({{"global_step": 2, "state_dict": {{"w": torch.ones(2_000_000)}}}}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _step(target) == 1  # the old checkpoint, whole
    leftovers = [p for p in target.parent.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.")  # the killed temp, hidden
    # The next write in that folder removes the dead process's temp file.
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "state_dict": {}}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert _step(target) == 3


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOSPC on the second checkpoint write of a fit (simulated at fsync): clear error, earlier files intact."""
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 4:  # step 10 writes two checkpoints (file + folder fsync each); step 20 fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), *every(tmp_path, 10), "--trainer.max_steps", "30"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "MiB" in err and "epoch=0-step=20.ckpt" in err
    ckpts = versions(tmp_path)[-1] / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["epoch=0-step=10.ckpt", "last.ckpt"], names  # no fragment, no temp file
    assert _step(ckpts / "last.ckpt") == 10


# --- 2. last.ckpt at the final step ----------------------------------------------------------------------------------

def test_last_checkpoint_holds_the_final_step_when_it_is_not_a_multiple_of_the_interval(tmp_path: Path) -> None:
    main(["fit", *tiny(tmp_path), *every(tmp_path, 10), "--trainer.max_steps", "25"])
    ckpts = versions(tmp_path)[-1] / "checkpoints"
    assert _step(ckpts / "last.ckpt") == 25
    assert _step(ckpts / "epoch=0-step=20.ckpt") == 20


# --- 3. resume advice names the newest loadable checkpoint -----------------------------------------------------------

def test_a_missing_last_checkpoint_names_the_newest_loadable_one(tmp_path: Path, capsys) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    AtomicCheckpointIO().save_checkpoint({"global_step": 10, "state_dict": {}}, ckpts / "epoch=0-step=10.ckpt")
    AtomicCheckpointIO().save_checkpoint({"global_step": 5, "state_dict": {}}, ckpts / "epoch=0-step=5.ckpt")
    (ckpts / "epoch=0-step=20.ckpt").write_bytes(b"PK\x03\x04 truncated")  # a fragment is never proposed
    assert newest_checkpoint(tmp_path / "run") == (ckpts / "epoch=0-step=10.ckpt", 10)
    for path in (ckpts / "last.ckpt", ckpts):
        with pytest.raises(SystemExit):
            main(["fit", *tiny(tmp_path), "--ckpt_path", str(path)])
        err = capsys.readouterr().err
        assert "epoch=0-step=10.ckpt (step 10)" in err, err
