"""The samplers' progress bars follow ``--trainer.enable_progress_bar`` (through the real CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli import tiny  # tests/test_cli.py
from vsmd.cli import main


@pytest.mark.parametrize("bar", ["false", "true"])
def test_sampling_bar_follows_the_trainer(tmp_path: Path, capsys, bar: str) -> None:
    args = tiny(tmp_path, "--trainer.enable_progress_bar", bar, "--data.init_args.n_predict", "8")
    try:
        main(["predict", *args, "--ckpt_path", "untrained"])
    except SystemExit:  # an untrained network may explode; the bar is drawn (or not) before the check
        pass
    err = capsys.readouterr().err
    assert ("Heun sampling" in err) == (bar == "true"), err[-2000:]


# ------------------------------------------------------------------------------------------------------------------
# The training bar of vsmd fit: redrawn at most ten times a second (vsmd/progress_bar.py), unless the config brings
# its own bar or turns bars off.
def _bars(tmp_path: Path, monkeypatch, *extra: str) -> list:
    import vsmd.cli as cli

    made = []
    real = cli.VSMDCLI._instantiate_trainer

    def spy(self, config, callbacks):
        trainer = real(self, config, callbacks)
        made.append(trainer)
        return trainer

    monkeypatch.setattr(cli.VSMDCLI, "_instantiate_trainer", spy)
    main(["fit", *tiny(tmp_path, "--trainer.max_steps", "3", *extra)])
    (trainer,) = made
    return [c for c in trainer.callbacks if type(c).__name__.endswith("ProgressBar")]


def test_fit_draws_its_bar_with_the_steady_bar(tmp_path: Path, monkeypatch) -> None:
    from vsmd.progress_bar import SteadyProgressBar

    bars = _bars(tmp_path, monkeypatch, "--trainer.enable_progress_bar", "true")
    assert len(bars) == 1 and isinstance(bars[0], SteadyProgressBar) and bars[0].interval == 0.1


def test_a_bar_of_the_config_is_kept_and_no_bar_is_added_where_bars_are_off(tmp_path: Path, monkeypatch) -> None:
    bars = _bars(tmp_path / "own", monkeypatch, "--trainer.enable_progress_bar", "true", "--trainer.callbacks+",
                 "lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate", "5")
    assert [type(b).__name__ for b in bars] == ["TQDMProgressBar"] and bars[0].refresh_rate == 5
    monkeypatch.undo()
    assert _bars(tmp_path / "off", monkeypatch, "--trainer.enable_progress_bar", "false") == []


@pytest.mark.parametrize("interval, drawn", [(0.0, list(range(1, 13))), (3600.0, [1, 12])])
def test_the_steady_bar_skips_redraws_sooner_than_its_interval_but_draws_the_last_step(interval, drawn, monkeypatch):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vsmd.datamodules import Toy2DDataModule
    from vsmd.models import ToyVSMD
    from vsmd.progress_bar import SteadyProgressBar

    seen = []
    real = TQDMProgressBar.on_train_batch_end

    def counted(self, trainer, *args):
        seen.append(trainer.global_step)
        real(self, trainer, *args)

    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", counted)
    bar = SteadyProgressBar(interval=interval)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_model_summary=False, callbacks=[bar])
    trainer.fit(ToyVSMD(hidden=16, depth=1, process="cld"), datamodule=Toy2DDataModule(batch_size=32))
    assert seen == drawn
    assert bar.train_progress_bar.n == 12  # the bar ends on the fit's last step either way
