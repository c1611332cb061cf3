"""Issue 10: checkpoints that survive kills and full disks, resumes that do what they say, no silent garbage."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from test_cli import ROOT, tiny, versions

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
    assert "no space left on the device" in err and "epoch=0-step=20.ckpt" in err
    assert re.search(r"it needs [1-9][0-9.]* (B|KiB|MiB) and [1-9][0-9.]* (B|KiB|MiB|GiB) are free", err), err
    ckpts = versions(tmp_path)[-1] / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["epoch=0-step=10.ckpt", "last.ckpt"], names  # no fragment, no temp file
    assert _step(ckpts / "last.ckpt") == 10


def test_sizes_in_messages_keep_three_significant_digits() -> None:
    from vsmd.checkpointing import format_size

    assert [format_size(n) for n in (812, 4311, 150_000, 169 * 2**20, 5 * 2**30, 3 * 2**40)] == [
        "812 B", "4.21 KiB", "146 KiB", "169 MiB", "5 GiB", "3072 GiB"]


def test_a_full_disk_outside_checkpoints_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from lightning.pytorch.cli import SaveConfigCallback

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "config.yaml")

    monkeypatch.setattr(SaveConfigCallback, "setup", full)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "vsmd: error: the disk is full" in err and "Traceback" not in err


FULL_DISK_IN_TENSORBOARD = """
import errno, sys
import tensorboard.summary.writer.record_writer as rw
real, calls = rw.RecordWriter.write, [0]
def write(self, data):  # TensorBoard's writer thread meets a full disk after a few events
    calls[0] += 1
    if calls[0] > 5:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(self, data)
rw.RecordWriter.write = write
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_cli import tiny
from vsmd.cli import main
main(["fit", *tiny(Path({save!r})), "--trainer.max_steps", "60", "--trainer.log_every_n_steps", "1"])
"""


def test_a_full_disk_under_tensorboard_is_one_message_not_a_thread_traceback(tmp_path: Path) -> None:
    code = FULL_DISK_IN_TENSORBOARD.format(tests=str(ROOT / "tests"), save=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "vsmd: error: the disk is full" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr, proc.stderr


def test_loading_a_checkpoint_removes_temporaries_of_killed_writers(tmp_path: Path) -> None:
    from vsmd.cli import check_checkpoint

    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "state_dict": {}, "pytorch-lightning_version": "2.6.4"},
                                         target)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.ckpt.{int(dead.stdout)}.vsmd-tmp"
    stale.write_bytes(b"PK half a checkpoint")
    check_checkpoint(target)
    assert not stale.exists() and target.is_file()


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


def test_a_failed_fit_names_the_checkpoint_and_the_command_that_resume_it(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from vsmd.models import VSMDModule

    real = VSMDModule.batch_loss

    def loss(self, batch, net):  # the loss turns NaN at step 15
        value = real(self, batch, net)
        return value * float("nan") if self.global_step >= 15 else value

    monkeypatch.setattr(VSMDModule, "batch_loss", loss)
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path), *every(tmp_path, 10), "--trainer.max_steps", "30"])
    err = capsys.readouterr().err
    run = versions(tmp_path)[-1]
    assert "the score loss is nan at step 15" in err
    assert f"newest loadable checkpoint of this run is {run / 'checkpoints' / 'last.ckpt'} (step 10)" in err
    assert f"vsmd fit --config {run / 'config.yaml'} --ckpt_path {run / 'checkpoints' / 'last.ckpt'}" in err


# --- resume and evaluation need a trained run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 20-step VSULD fit of the shrunk spiral config; returns its run folder."""
    save_dir = tmp_path_factory.mktemp("runs")
    main(["fit", *tiny(save_dir), "--trainer.max_steps", "20"])
    return versions(save_dir)[-1]


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


# --- 4. resume that does what it says ---------------------------------------------------------------------------------

def test_resume_applies_changed_learning_rates_and_says_so(run: Path, tmp_path: Path, capsys) -> None:
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "30", "--model.init_args.lr", "5e-4",
          "--model.init_args.sa_lr", "1e-3", "--ckpt_path", str(_last(run))])
    out = capsys.readouterr().out
    assert "resume with changed settings" in out and "lr 0.001 -> 0.0005" in out and "sa_lr 0.01 -> 0.001" in out
    new = versions(tmp_path)[-1]
    ckpt = torch.load(_last(new), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 30
    assert ckpt["hyper_parameters"]["lr"] == 5e-4 and ckpt["hyper_parameters"]["sa_lr"] == 1e-3
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(5e-4)  # the optimiser's own lr
    sa = ckpt["vsmd_sa"]
    assert sa["steps"] == 10  # stages at steps 10 and 20, of 5 A-steps each: the schedule went on
    assert sa["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.99 ** (sa["steps"] // 100))
    assert "lr: 0.0005" in (new / "config.yaml").read_text()


def test_resume_applies_a_changed_sa_schedule_and_ema(run: Path, tmp_path: Path, capsys) -> None:
    """sa_every 10 -> 5 runs stages at steps 20 and 25; ema_decay 0.999 -> 0 and back (a strict state-dict load
    failed on both before)."""
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "30", "--model.init_args.sa_every", "5",
          "--model.init_args.ema_decay", "0.0", "--ckpt_path", str(_last(run))])
    out = capsys.readouterr().out
    assert "sa_every 10 -> 5" in out and "ema_decay 0.999 -> 0.0" in out
    first = _last(versions(tmp_path)[-1])
    ckpt = torch.load(first, map_location="cpu", weights_only=True)
    assert ckpt["vsmd_sa"]["stages"] == 3  # step 10 of the first run, then 20 and 25
    assert not any(k.startswith("net_ema.") for k in ckpt["state_dict"])
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "34", "--model.init_args.sa_every", "5",
          "--ckpt_path", str(first)])
    assert "ema_decay 0.0 -> 0.999" in capsys.readouterr().out
    ckpt = torch.load(_last(versions(tmp_path)[-1]), map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert int(state["net_ema.n_averaged"]) == 4  # started from the network at step 30, 4 updates since
    assert any(not torch.equal(state[k], state[f"net_ema.module.{k[4:]}"]) for k in state if k.startswith("net."))


def test_resume_refuses_a_changed_process_and_names_both_values(run: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "30", "--model.init_args.process", "cld",
              "--ckpt_path", str(_last(run))])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "process: checkpoint 'vsuld', config 'cld'" in err and "config.yaml" in err
    assert versions(tmp_path) == []  # nothing was started, no empty run folder is left


def test_evaluation_takes_the_architecture_from_the_checkpoint_and_says_so(run: Path, tmp_path: Path,
                                                                          capsys) -> None:
    main(["test", *tiny(tmp_path), "--model.init_args.beta", "7", "--ckpt_path", str(_last(run))])
    assert "from the checkpoint: beta 5.0 (config 7.0)" in capsys.readouterr().err
    report = json.loads((versions(tmp_path)[-1] / "test_metrics.json").read_text())
    assert report["beta"] == 5.0


# --- 5. a checkpoint of another task ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["fit", "test", "predict"])
def test_a_checkpoint_of_another_model_family_is_refused_before_any_work(run: Path, tmp_path: Path, capsys,
                                                                         sub: str) -> None:
    data_dir = tmp_path / "no-data"
    with pytest.raises(SystemExit):
        main([sub, "--config", str(ROOT / "configs" / "exchange.yaml"), "--trainer.logger.init_args.save_dir",
              str(tmp_path), "--data.init_args.data_dir", str(data_dir), "--ckpt_path", str(_last(run))])
    assert "holds a ToyVSMD model but the config asks for TimeSeriesVSMD" in capsys.readouterr().err
    assert not data_dir.exists()  # refused before the data were touched


def test_a_checkpoint_of_other_data_is_refused(run: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path), "--config", str(ROOT / "configs" / "checkerboard6x.yaml"),
              "--ckpt_path", str(_last(run))])
    assert "trained on data with dataset='spiral', but the config gives data dataset='checkerboard'" in \
        capsys.readouterr().err


# --- 6. no silent garbage ---------------------------------------------------------------------------------------------

def _poisoned(run: Path, tmp_path: Path) -> Path:
    """The run's checkpoint with NaN in the EMA network (which evaluation uses)."""
    ckpt = torch.load(_last(run), map_location="cpu", weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("net_ema.module.") and v.is_floating_point():
            v.fill_(float("nan"))
    path = tmp_path / "nan.ckpt"
    torch.save(ckpt, path)
    return path


def _strict_json(path: Path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds a bare {c}"))


def test_diverged_samples_give_null_metrics_valid_json_and_exit_1(run: Path, tmp_path: Path, capsys) -> None:
    bad = _poisoned(run, tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["test", *tiny(tmp_path), "--ckpt_path", str(bad)])
    assert exc.value.code == 1
    assert "generated samples are unusable" in capsys.readouterr().err
    report = _strict_json(versions(tmp_path)[-1] / "test_metrics.json")
    assert report["samples_problem"].endswith("are NaN or inf")
    assert report["metrics"] and all(v is None for v in report["metrics"].values())
    with pytest.raises(SystemExit) as exc:
        main(["predict", *tiny(tmp_path), "--ckpt_path", str(bad)])
    assert exc.value.code == 1
    assert (versions(tmp_path)[-1] / "samples.npz").is_file()  # kept for inspection


def test_exploded_samples_are_reported() -> None:
    from vsmd.metrics import sample_problem

    assert sample_problem(np.array([[1.0, -30.0], [2.0, 5.0]]), 35.0) is None
    assert "exploded" in sample_problem(np.array([[1.0, 1e32]]), 35.0)
    assert "NaN or inf" in sample_problem(np.array([[1.0, np.inf]]), 35.0)


def test_a_non_finite_sa_gradient_stops_training_and_leaves_a_unchanged(monkeypatch) -> None:
    from vsmd.diffusion.variational import SAStats
    from vsmd.models import ToyVSMD

    model = ToyVSMD(hidden=16, depth=1, process="vsuld", damping=0.7, sa_paths=8, sa_points=5, rho_init="zero")
    rho = model.process.rho.detach().clone()
    monkeypatch.setattr(SAStats, "grad", lambda self, a, n: (torch.full_like(a, float("inf")), torch.zeros_like(a)))
    with pytest.raises(FloatingPointError, match="SA gradient for A is not finite"):
        model.sa.stage(lambda a, t: model.score(a, t, model.net), torch.Generator().manual_seed(0))
    assert torch.equal(model.process.rho.detach(), rho)


# --- 7. evaluation needs a checkpoint ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_an_error_unless_asked_for(tmp_path: Path, capsys, sub: str) -> None:
    with pytest.raises(SystemExit):
        main([sub, *tiny(tmp_path)])
    assert f"vsmd {sub} needs --ckpt_path" in capsys.readouterr().err
    assert versions(tmp_path) == []
    main([sub, *tiny(tmp_path), "--ckpt_path", "untrained"])
    wrote = [p.name for p in versions(tmp_path)[-1].rglob("*") if p.is_file()]
    assert any(n.endswith((".json", ".npz")) or (sub == "validate" and n.startswith("events.out")) for n in wrote)


# --- 8. NaN in the data -----------------------------------------------------------------------------------------------

def test_missing_values_in_a_dataset_are_refused_with_file_series_and_index(tmp_path: Path) -> None:
    from tsdata import synthetic_series

    from vsmd.datamodules.timeseries import load_series, write_materialised

    values = synthetic_series(4, 120)
    values[2, 17] = np.nan
    write_materialised(values, tmp_path / "solar_nips", "2020-01-01 00:00", "h", 6, 2)
    with pytest.raises(ValueError, match=r"solar_nips \(train split\): series 2 .* 1 missing or infinite values, "
                                         r"the first at time index 17"):
        load_series("solar_nips", tmp_path, download=False)
    values = synthetic_series(4, 120)
    values[1, 115] = np.inf  # past the 108 training steps: only the test windows hold it
    write_materialised(values, tmp_path / "electricity_nips", "2020-01-01 00:00", "h", 6, 2)
    with pytest.raises(ValueError, match=r"electricity_nips \(test split\): series 1 .* missing or infinite values, "
                                         r"the first at time index 115"):
        load_series("electricity_nips", tmp_path, download=False)


# --- 9. bit rot -------------------------------------------------------------------------------------------------------

def test_a_flipped_byte_in_a_checkpoint_is_caught_by_the_crc(run: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(_last(run).read_bytes())
    with zipfile.ZipFile(bad) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)  # the largest tensor
    with open(bad, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path), "--ckpt_path", str(bad)])
    err = capsys.readouterr().err
    assert "fails its CRC check" in err and info.filename in err


# --- 10 and 11. clear, accurate messages ------------------------------------------------------------------------------

def test_foreign_files_get_accurate_messages(tmp_path: Path, capsys) -> None:
    cases = {"text.ckpt": "is not a checkpoint (torch.save writes a zip archive",
             "legacy.ckpt": "legacy (non-zip) format",
             "keys.ckpt": "is not a Lightning checkpoint (no 'global_step', 'pytorch-lightning_version')"}
    (tmp_path / "text.ckpt").write_text("hello")
    torch.save({"state_dict": {}}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {}}, tmp_path / "keys.ckpt")
    for name, message in cases.items():
        with pytest.raises(SystemExit):
            main(["test", *tiny(tmp_path / "runs"), "--ckpt_path", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert "mmap" not in err


def test_bad_save_dir_and_precision_are_clear_errors(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(tiny(afile), "is a file, not a folder"),
             (tiny(tmp_path, "--trainer.precision", "bf16-true"), "bf16-true is not supported"),
             (tiny(tmp_path, "--trainer.precision", "16-true"), "16-true is not supported")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(["fit", *args, "--trainer.max_steps", "2"])
        assert message in capsys.readouterr().err


UNWRITABLE = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_cli import tiny
from vsmd.cli import main
main(["fit", *tiny(Path({save!r})), "--trainer.max_steps", "2"])
"""


def _as_nobody(base: Path) -> dict | None:
    """subprocess options that run as user nobody (for root, who may write anywhere), or None if nobody cannot
    run this Python or read the repository (e.g. a Python under /root)."""
    kwargs = {"user": 65534, "group": 65534, "extra_groups": [],
              "env": dict(os.environ, HOME=str(base), MPLCONFIGDIR=str(base))}
    try:
        probe = subprocess.run([sys.executable, "-c", "import vsmd, test_cli"], cwd=ROOT / "tests",
                               capture_output=True, **kwargs)
    except OSError:
        return None
    return kwargs if probe.returncode == 0 else None


def test_an_unwritable_save_dir_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    """A folder the user cannot write: a real one for a normal user, and for root run as user nobody where it can;
    otherwise (root, and nobody cannot run this Python) the permission check is made to see what a normal user
    would, and the message is checked in-process."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="vsmd-ro-", dir=os.environ.get("TMPDIR", "/tmp")))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        kwargs = {} if os.geteuid() != 0 else _as_nobody(base)
        if kwargs is not None:
            code = UNWRITABLE.format(tests=str(ROOT / "tests"), save=str(ro / "runs"))
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                  **kwargs)
            code_, err = proc.returncode, proc.stderr
        else:
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
            with pytest.raises(SystemExit) as exc:
                main(["fit", *tiny(ro / "runs"), "--trainer.max_steps", "2"])
            code_, err = exc.value.code, capsys.readouterr().err
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert code_ == 1, err
    assert f"the run folder cannot be made: {ro} is not writable" in err, err
    assert "Traceback" not in err


def test_validation_errors_are_short(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path), "--model.init_args.beta", "abc"])
    err = capsys.readouterr().err
    assert "Got value: abc" in err and "NestedArg" not in err
    assert len(err.splitlines()) < 10, err


def test_image_folders_with_mixed_sizes_or_a_corrupt_file_name_the_file(tmp_path: Path) -> None:
    from PIL import Image
    from test_images import make_folder

    from vsmd.datamodules import ImageDataModule

    root = make_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "train" / "dog" / "big.png")
    with pytest.raises(ValueError, match=r"big.png is 40x40 but the model needs 32x32"):
        ImageDataModule(source="folder", root=str(root), num_workers=0).setup()
    root = make_folder(tmp_path / "corrupt")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"cannot read the image .*broken.jpg"):
        ImageDataModule(source="folder", root=str(root), num_workers=0).setup()


def test_concurrent_runs_get_their_own_run_folders(tmp_path: Path, monkeypatch) -> None:
    """A run that lists the folders while another creates version_0 still gets a folder of its own."""
    first = tmp_path / "spiral8y" / "version_0"
    first.mkdir(parents=True)
    (first / "marker").write_text("the other run")
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()) if pattern == "version_*"
                        else real_glob(self, pattern))
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2"])
    monkeypatch.undo()
    assert sorted(p.name for p in first.iterdir()) == ["marker"]
    assert _step(_last(tmp_path / "spiral8y" / "version_1")) == 2


class DeleteRunFolder(pl.Callback):
    """Deletes the run folder after step 3 (a user cleaning up the wrong folder)."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            shutil.rmtree(trainer.log_dir)


def test_a_run_folder_deleted_during_the_run_is_recreated_for_the_checkpoint(tmp_path: Path) -> None:
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "6", "--trainer.callbacks+=test_reliability.DeleteRunFolder"])
    assert _step(_last(tmp_path / "spiral8y" / "version_0")) == 6


# --- 12. checkpoint keywords ------------------------------------------------------------------------------------------

class _Payload:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_keywords_go_through_the_same_check(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pickled-code-ran"
    payload = _Payload()
    payload.marker = marker
    ckpts = tmp_path / "spiral8y" / "version_0" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 5, "pytorch-lightning_version": "2.6.4", "x": payload},
               ckpts / "last.ckpt")
    for keyword in ("last", "best", "hpc", "registry"):
        with pytest.raises(SystemExit):
            main(["test", *tiny(tmp_path), "--ckpt_path", keyword, "--weights_only", "false"])
        err = capsys.readouterr().err
        assert "vsmd: error:" in err
    assert not marker.exists()


def test_last_keyword_resolves_to_the_newest_checkpoint(run: Path, capsys) -> None:
    save_dir = run.parent.parent
    main(["test", *tiny(save_dir), "--ckpt_path", "last"])
    assert f"using {_last(run)} (step 20)" in capsys.readouterr().err


# --- housekeeping -----------------------------------------------------------------------------------------------------

def test_a_failed_command_leaves_no_run_folder_and_a_good_one_names_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path), "--model.init_args.beta", "-1"])
    assert versions(tmp_path) == []
    assert "version_0 removed (the command failed before writing any output)" in capsys.readouterr().err
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2"])
    assert capsys.readouterr().err.count(f"run folder: {tmp_path / 'spiral8y' / 'version_0'}") == 2


def test_a_missing_data_dir_is_not_created(tmp_path: Path, monkeypatch) -> None:
    import gluonts.dataset.repository as repo

    from vsmd.datamodules.timeseries import load_series

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(repo, "get_dataset", offline)
    with pytest.raises(FileNotFoundError, match="the download failed"):
        load_series("exchange_rate_nips", tmp_path / "new" / "data", download=True)
    assert not (tmp_path / "new").exists()


NOISE = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_cli import tiny
from vsmd.cli import main
save = Path({save!r})
main(["fit", *tiny(save), "--trainer.max_steps", "12"])
for sub in ("test", "predict"):
    main([sub, *tiny(save), "--ckpt_path", {ckpt!r}])
"""


def test_command_output_is_free_of_lightning_noise_and_warnings(run: Path, tmp_path: Path) -> None:
    """In a subprocess, so that Python warnings reach stderr as a user sees them (pytest captures them)."""
    code = NOISE.format(tests=str(ROOT / "tests"), save=str(tmp_path), ckpt=str(_last(run)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "test metrics" in out and "wrote 50 samples" in out
    for noise in ("dirpath has changed", "Tip:", "LeafSpec", "Warning:", "warnings.warn"):
        assert noise not in out, (noise, out)


# --- DDP --------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_keeps_a_equal_and_resumes(tmp_path: Path) -> None:
    """2 CPU ranks (gloo) through the real command: an SA stage, the same A on both ranks, then a resume."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "vsmd.cli", "fit", *tiny(tmp_path), "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.limit_val_batches", "0",
            "--trainer.callbacks+=ddp_probe.RhoProbe"]

    def fit(steps: int, *extra: str) -> list[dict]:
        probe = tmp_path / f"probe{steps}"
        probe.mkdir()
        proc = subprocess.run([*base, "--trainer.max_steps", str(steps), *extra], capture_output=True, text=True,
                              env=env | {"VSMD_PROBE_DIR": str(probe)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads((probe / f"rank{k}.json").read_text()) for k in range(2)]

    first = fit(15)
    assert all(r["world_size"] == 2 and r["global_step"] == 15 and r["sa_stages"] == 1 for r in first)
    assert first[0]["rho"] == first[1]["rho"]  # the SA statistics are averaged over the ranks
    assert len(versions(tmp_path)) == 1  # one run folder for both ranks
    ckpt = _last(versions(tmp_path)[-1])
    assert _step(ckpt) == 15
    resumed = fit(25, "--ckpt_path", str(ckpt))
    assert all(r["global_step"] == 25 and r["sa_stages"] == 2 for r in resumed)
    assert resumed[0]["rho"] == resumed[1]["rho"] != first[0]["rho"]


def test_a_failed_run_keeps_its_folder_when_training_logged_values(tmp_path: Path) -> None:
    """A fit whose first checkpoint write fails has trained: its TensorBoard events are output, not an empty folder."""
    from torch.utils.tensorboard import SummaryWriter

    from vsmd.runs import has_output as _has_output
    empty, trained = tmp_path / "version_0", tmp_path / "version_1"
    for run in (empty, trained):
        run.mkdir()
        (run / "config.yaml").write_text("model: {}\n")
    w = SummaryWriter(str(empty))  # a fresh logger: header and hyper-parameters only
    w.add_hparams({"lr": 1e-3}, {"hp_metric": -1}, run_name=".")  # what Lightning logs at the start
    w.close()
    w = SummaryWriter(str(trained))
    w.add_scalar("train/loss", 1.0, 50)
    w.close()
    assert not _has_output(empty)
    assert _has_output(trained)
