"""Run folders, resume and signals through the real command, with the documented (docs/runs.md, once the README's)
and vsmd's own command lines run exactly as they are written or printed (issue 23)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_cli import ROOT, tiny, versions
from test_reliability import every

from vsmd.checkpointing import AtomicCheckpointIO
from vsmd.cli import main
from vsmd.models import VSMDModule

RUN = Path("runs/spiral8y/version_0")  # relative, as a user types it: the tests run in their tmp_path


def vsmd(command: str) -> int:
    """Run a command line as written (``vsmd fit ...``) in-process; its exit status."""
    words = shlex.split(command)
    assert words[0] == "vsmd", command
    try:
        main(words[1:])
    except SystemExit as exc:
        return exc.code
    return 0


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def snapshot(folder: Path) -> dict:
    """Every file of a folder with its size and modification time (a run that must stay untouched)."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def interrupted_run(tmp_path: Path, monkeypatch, capsys) -> str:
    """A fit in ./runs (a relative save_dir, as in the configs) whose loss turns NaN at step 15 of 30: last.ckpt
    holds step 10. Returns what the failed fit printed."""
    monkeypatch.chdir(tmp_path)
    real = VSMDModule.batch_loss

    def loss(self, batch, net):
        value = real(self, batch, net)
        return value * float("nan") if self.global_step >= 15 else value

    with monkeypatch.context() as m:
        m.setattr(VSMDModule, "batch_loss", loss)
        assert vsmd(shlex.join(["vsmd", "fit", *tiny(Path("runs")), *every(tmp_path, 10),
                                "--trainer.max_steps", "30"])) == 1
    assert _step(RUN / "checkpoints" / "last.ckpt") == 10
    return capsys.readouterr().err


def readme_commands() -> list[str]:
    """The vsmd command lines of the guarantees on the docs page "Runs, checkpoints and resuming" (once the README's
    section of that name) and of the page's config.yaml row."""
    text = (ROOT / "docs" / "runs.md").read_text()
    section = text.split("## What vsmd guarantees")[1].split("\n## ")[0]
    row = next(line for line in text.splitlines() if line.startswith("| `config.yaml` |"))
    spans = re.findall(r"`(vsmd [^`]+)`", re.sub(r"\n\s*", " ", section) + row)
    return list(dict.fromkeys(spans))


README_RESUME = ("vsmd fit --config runs/<name>/version_N/config.yaml "
                 "--ckpt_path runs/<name>/version_N/checkpoints/last.ckpt")
README_REPRODUCE = "vsmd fit -c runs/<name>/version_N/config.yaml"
README_EXPLICIT = "vsmd fit -c runs/<name>/version_N/config.yaml --trainer.logger.init_args.version 0"
README_LAST = "vsmd test --config runs/<name>/version_N/config.yaml --ckpt_path last"


def as_written(command: str) -> str:
    """The README's placeholders replaced by the run folder's actual path (nothing else changes)."""
    return command.replace("runs/<name>/version_N", str(RUN))


def test_the_readme_commands_on_runs_work_as_written(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    """Issue 23 item 1: the saved config pinned ``version: 0``, so the README's resume and reproduce commands (and
    the resume command vsmd printed) crashed and wrote an events file into the earlier run."""
    printed = interrupted_run(tmp_path, monkeypatch, capsys)
    assert sorted(readme_commands()) == sorted([README_RESUME, README_REPRODUCE, README_EXPLICIT, README_LAST])
    # The resume command that the failed fit printed is the README's, for this run.
    assert f"resume it with: {as_written(README_RESUME)} (" in printed, printed
    before = snapshot(RUN)

    assert vsmd(as_written(README_EXPLICIT)) == 1
    err = capsys.readouterr().err
    assert f"the run folder {RUN} exists already" in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.startswith(("vsmd:", "(set"))]) == 2, err

    assert vsmd(as_written(README_RESUME)) == 0
    resumed = versions(Path("runs"))[-1]
    assert resumed.name == "version_1" and _step(resumed / "checkpoints" / "last.ckpt") == 30
    assert f"Restored all states from the checkpoint at {RUN / 'checkpoints' / 'last.ckpt'}" in caplog.text

    assert vsmd(as_written(README_REPRODUCE)) == 0
    reproduced = versions(Path("runs"))[-1]
    assert reproduced.name == "version_2" and _step(reproduced / "checkpoints" / "last.ckpt") == 30
    capsys.readouterr()

    assert vsmd(as_written(README_LAST)) == 0
    assert f"using {reproduced / 'checkpoints' / 'last.ckpt'} (step 30)" in capsys.readouterr().err
    assert (versions(Path("runs"))[-1] / "test_metrics.json").is_file()
    assert snapshot(RUN) == before  # the earlier run was only read
    assert "version: null" in (RUN / "config.yaml").read_text()


def test_the_run_config_named_by_a_refusal_resumes_as_printed(tmp_path: Path, monkeypatch, capsys) -> None:
    interrupted_run(tmp_path, monkeypatch, capsys)
    ckpt = RUN / "checkpoints" / "last.ckpt"
    assert vsmd(shlex.join(["vsmd", "fit", *tiny(Path("runs")), "--model.init_args.process", "cld",
                            "--ckpt_path", str(ckpt)])) == 1
    advice = re.search(r"\(use the run's own config: (--config \S+)\)", capsys.readouterr().err)
    before = snapshot(RUN)
    assert vsmd(f"vsmd fit {advice.group(1)} --ckpt_path {ckpt}") == 0
    assert _step(versions(Path("runs"))[-1] / "checkpoints" / "last.ckpt") == 30
    assert snapshot(RUN) == before


def test_a_config_saved_with_a_pinned_version_resumes_into_a_new_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """Configs saved before this fix pin their run's version; given from their own run folder they still work."""
    interrupted_run(tmp_path, monkeypatch, capsys)
    config = RUN / "config.yaml"
    config.write_text(config.read_text().replace("version: null", "version: 0"))
    before = snapshot(RUN)
    assert vsmd(as_written(README_RESUME)) == 0
    assert _step(Path("runs/spiral8y/version_1/checkpoints/last.ckpt")) == 30
    assert snapshot(RUN) == before


def test_an_explicit_version_that_exists_is_refused_and_left_alone(tmp_path: Path, capsys) -> None:
    args = ["fit", *tiny(tmp_path), "--trainer.max_steps", "2", "--trainer.logger.init_args.version", "7"]
    main(args)
    run = tmp_path / "spiral8y" / "version_7"
    before = snapshot(run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"--trainer.logger.init_args.version 7: the run folder {run} exists already" in err, err
    assert "Leave the version out" in err and "Traceback" not in err
    assert snapshot(run) == before  # no events file, no config: nothing written into the earlier run
    assert [p.name for p in versions(tmp_path)] == ["version_7"]
    main([*args, "--trainer.logger.init_args.version", "null"])  # as the refusal advises: the next free version
    assert [p.name for p in versions(tmp_path)] == ["version_7", "version_8"] and snapshot(run) == before


@pytest.mark.parametrize("version", ["-1", '""', "../version_0"])
def test_a_version_that_is_no_folder_name_is_refused(tmp_path: Path, capsys, version: str) -> None:
    """-1 made a folder version_-1 and "" one literally named \"\"; a path would leave the run's root."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2", "--trainer.logger.init_args.version", version])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "a version is a number >= 0" in err and "Traceback" not in err, err
    assert not versions(tmp_path) and not any((tmp_path / "spiral8y").glob("*"))


# --- item 5: signals -------------------------------------------------------------------------------------------------

class StepPrinter(pl.Callback):
    """Prints each finished training step, so that a test can wait for progress instead of sleeping."""

    def on_train_batch_end(self, trainer, *args) -> None:
        print(f"finished step {trainer.global_step}", flush=True)


def _fit_until(tmp_path: Path, step: int, sig: signal.Signals) -> tuple[int, str]:
    """A 40-step fit in a subprocess (checkpoints every 10 steps), sent ``sig`` once it finished ``step`` steps."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vsmd.cli", "fit", *tiny(Path("runs")), *every(tmp_path, 10),
                             "--trainer.max_steps", "40", "--trainer.callbacks+=test_runs.StepPrinter"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == f"finished step {step}":
            proc.send_signal(sig)
            break
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_sigterm_saves_the_step_reached_exits_143_and_prints_the_resume_command(tmp_path: Path,
                                                                                monkeypatch) -> None:
    code, err = _fit_until(tmp_path, 12, signal.SIGTERM)
    assert code == 143, err[-3000:]
    stopped = int(re.search(r"vsmd: stopped by SIGTERM at step (\d+)\.", err).group(1))
    assert 12 <= stopped < 40
    last = tmp_path / RUN / "checkpoints" / "last.ckpt"
    assert _step(last) == stopped  # not the step-10 checkpoint: the step reached
    command = re.search(r"resume it with: (vsmd .*?) \(learning rates", err).group(1)
    assert command == as_written(README_RESUME)
    monkeypatch.chdir(tmp_path)
    assert vsmd(command) == 0
    resumed = torch.load(versions(Path("runs"))[-1] / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)
    # The SA schedule of an uninterrupted 40-step run (see test_cli's resume test): 3 stages of 5 A-steps.
    assert resumed["global_step"] == 40 and resumed["vsmd_sa"]["stages"] == 3 and resumed["vsmd_sa"]["steps"] == 15
    # The state saved on SIGTERM is whole: resuming it gives exactly what resuming the regular checkpoint of an
    # uninterrupted run at the same step gives.
    main(["fit", *tiny(tmp_path / "b"), *every(tmp_path, 1), "--trainer.max_steps", str(stopped)])
    regular = versions(tmp_path / "b")[-1] / "checkpoints" / f"epoch=0-step={stopped}.ckpt"
    main(["fit", *tiny(tmp_path / "b"), "--trainer.max_steps", "40", "--ckpt_path", str(regular)])
    again = torch.load(versions(tmp_path / "b")[-1] / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    for k, v in resumed["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k


def test_ctrl_c_names_the_newest_checkpoint_and_the_resume_command(tmp_path: Path) -> None:
    code, err = _fit_until(tmp_path, 12, signal.SIGINT)
    assert code == 130, err[-3000:]
    assert re.search(r"vsmd: interrupted \(Ctrl-C\) at step \d+\.", err), err[-3000:]
    named = re.search(r"newest loadable checkpoint of this run is (\S+) \(step (\d+)\)", err)
    steps = [_step(p) for p in (tmp_path / RUN / "checkpoints").glob("*.ckpt")]
    assert int(named.group(2)) == max(steps) >= 10 and _step(tmp_path / named.group(1)) == max(steps)
    assert all(step % 10 == 0 for step in steps)  # only the regular checkpoints: Ctrl-C saves nothing
    assert f"resume it with: vsmd fit --config {RUN / 'config.yaml'} --ckpt_path {named.group(1)}" in err


# --- items 7, 9, 10, 11: refusals and messages -----------------------------------------------------------------------

class StopAfter(pl.Callback):
    """Ends a test that would otherwise train for ever."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= 30:
            raise RuntimeError("trained 30 steps without a step limit")


def test_a_fit_without_a_step_limit_on_an_endless_stream_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
              "--trainer.callbacks+=test_runs.StopAfter"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "endless stream" in err and "--trainer.max_steps -1 sets no step limit" in err, err
    assert versions(tmp_path) == []  # refused before any work
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1"])  # an epoch of 3 batches is finite
    assert _step(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt") == 3


def test_resuming_with_fewer_max_steps_than_the_checkpoint_is_refused_before_any_work(tmp_path: Path,
                                                                                     capsys) -> None:
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "20"])
    last = versions(tmp_path)[-1] / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    for max_steps in ("10", "20"):
        with pytest.raises(SystemExit) as exc:
            main(["fit", *tiny(tmp_path), "--trainer.max_steps", max_steps, "--ckpt_path", str(last)])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert f"is already at step 20, and --trainer.max_steps is {max_steps}" in err, err
        assert "--trainer.max_steps larger than 20" in err
    assert [p.name for p in versions(tmp_path)] == ["version_0"]  # no empty run folder
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "25", "--ckpt_path", str(last)])  # as advised
    assert _step(versions(tmp_path)[-1] / "checkpoints" / "last.ckpt") == 25


@pytest.mark.parametrize("override, message", [
    (["--model.init_args.beta", "-1"], "beta must be > 0, got -1.0"),
    (["--data.init_args.dataset", "foo"], "unknown toy dataset 'foo'"),
])
def test_constructor_errors_come_without_jsonargparse_noise(tmp_path: Path, capsys, override: list[str],
                                                           message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "2", *override])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"vsmd: error: {message}" in err, err
    for noise in ("Union subtypes", "Given value", "Namespace(", "NoneType"):
        assert noise not in err, (noise, err)


def test_a_damaged_checkpoint_outside_a_run_names_no_checkpoint_of_another_experiment(tmp_path: Path,
                                                                                     capsys) -> None:
    other = tmp_path / "runs" / "spiral8y" / "version_0" / "checkpoints"
    other.mkdir(parents=True)
    AtomicCheckpointIO().save_checkpoint({"global_step": 10, "state_dict": {}}, other / "last.ckpt")
    bad = tmp_path / "downloads" / "model.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(SystemExit):
        main(["test", *tiny(tmp_path / "runs"), "--ckpt_path", str(bad)])
    err = capsys.readouterr().err
    assert "is truncated" in err and "use another checkpoint of the run" in err, err
    assert str(other) not in err


def test_the_conversion_command_for_a_legacy_checkpoint_works_as_printed(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    main(["fit", *tiny(tmp_path / "runs"), "--trainer.max_steps", "2"])
    ckpt = torch.load(versions(tmp_path / "runs")[-1] / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    torch.save(ckpt, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert vsmd(shlex.join(["vsmd", "test", *tiny(Path("runs")), "--ckpt_path", "old.ckpt"])) == 1
    command = re.search(r"convert it once: (python -c .*)$", capsys.readouterr().err, re.M).group(1)
    words = shlex.split(command)
    subprocess.run([sys.executable, *words[1:]], check=True, timeout=120)  # python: this interpreter
    assert vsmd(shlex.join(["vsmd", "test", *tiny(Path("runs")), "--ckpt_path", "converted.ckpt"])) == 0


def test_an_empty_config_file_is_named(tmp_path: Path, capsys) -> None:
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing yet\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(tmp_path / name)])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert f"the config file {tmp_path / name} is empty" in err and "Unexpected config" not in err, err


def test_a_loss_blow_up_at_step_0_says_there_is_no_checkpoint_to_resume(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    monkeypatch.setattr(VSMDModule, "batch_loss", lambda self, batch, net: torch.tensor(float("inf")))
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "5"])
    err = capsys.readouterr().err
    assert "the score loss is inf at step 0" in err and "no checkpoint was written yet" in err, err
    assert "start the fit again with a lower lr" in err and "the last one" not in err


def test_a_loss_blow_up_before_the_first_checkpoint_does_not_advise_resuming(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    """The usual blow-up (too large an lr) comes at step 1 or 2, long before the first checkpoint (every 1000
    steps): the message must not tell the user to resume from a checkpoint that does not exist."""
    real = VSMDModule.batch_loss

    def blow_up_at_step_2(self, batch, net):
        return real(self, batch, net) if self.global_step < 2 else torch.tensor(float("inf"))

    monkeypatch.setattr(VSMDModule, "batch_loss", blow_up_at_step_2)
    with pytest.raises(SystemExit):
        main(["fit", *tiny(tmp_path), "--trainer.max_steps", "5"])
    err = capsys.readouterr().err
    assert "the score loss is inf at step 2" in err, err
    assert "no checkpoint was written yet" in err and "resume from the newest" not in err, err


def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    from vsmd.datamodules.timeseries import load_series

    afile = tmp_path / "afile"
    afile.write_text("x")
    for data_dir in (afile, afile / "sub"):
        with pytest.raises(ValueError, match=f"{afile} is a file, not a folder"):
            load_series("exchange_rate_nips", data_dir, download=True)


def test_the_config_of_a_resumed_run_does_not_evaluate_the_checkpoint_it_resumed_from(tmp_path: Path,
                                                                                      capsys) -> None:
    """A resumed fit saves ``ckpt_path`` (the earlier run's checkpoint) in its config.yaml: ``vsmd test -c`` that
    config without --ckpt_path scored the earlier checkpoint with exit 0, not the run whose config was given."""
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "10"])
    first = versions(tmp_path)[-1]
    main(["fit", *tiny(tmp_path), "--trainer.max_steps", "20", "--ckpt_path", str(first / "checkpoints" / "last.ckpt")])
    resumed = versions(tmp_path)[-1]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["test", "--config", str(resumed / "config.yaml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"--ckpt_path {resumed.resolve() / 'checkpoints' / 'last.ckpt'}" in err, err
    assert versions(tmp_path)[-1] == resumed  # refused before any work
