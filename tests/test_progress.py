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
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)  # without a logger, the run's config.yaml is written to the working folder
    assert _bars(tmp_path / "barebones", monkeypatch, "--trainer.enable_progress_bar", "null",
                 "--trainer.enable_model_summary", "null", "--trainer.barebones", "true",
                 "--trainer.enable_checkpointing", "null", "--trainer.logger", "null",
                 "--trainer.log_every_n_steps", "null", "--trainer.callbacks", "null") == []


def test_with_rich_installed_lightning_keeps_its_rich_bar(tmp_path: Path, monkeypatch) -> None:
    import vsmd.cli

    monkeypatch.setattr(vsmd.cli, "RICH", True)
    bars = _bars(tmp_path, monkeypatch, "--trainer.enable_progress_bar", "true")
    assert [type(b).__name__ for b in bars] == ["TQDMProgressBar"]  # Lightning's own default (rich is missing here)


def _fit_with_bar(bar, monkeypatch, stop_at: int | None = None, **trainer_args) -> list[int]:
    """The counts the training bar showed at each redraw, over a tiny fit."""
    import lightning.pytorch as pl

    from vsmd.datamodules import Toy2DDataModule
    from vsmd.models import ToyVSMD
    from vsmd.progress_bar import SteadyProgressBar

    drawn = []
    real = SteadyProgressBar._draw

    def spy(self, trainer, pl_module):
        before = self._shown
        real(self, trainer, pl_module)
        if self._shown != before:
            drawn.append(self._shown)
            assert self.train_progress_bar.n == self._shown

    class Stop(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == stop_at:
                trainer.should_stop = True

    monkeypatch.setattr(SteadyProgressBar, "_draw", spy)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, limit_val_batches=0, enable_model_summary=False,
                         callbacks=[bar, Stop()], **trainer_args)
    trainer.fit(ToyVSMD(hidden=16, depth=1, process="cld"), datamodule=Toy2DDataModule(batch_size=32))
    return drawn


@pytest.mark.parametrize("interval, drawn", [(0.0, list(range(1, 13))), (3600.0, [1, 12])])
@pytest.mark.parametrize("refresh_rate", [1, 5])
def test_the_steady_bar_skips_redraws_sooner_than_its_interval_but_draws_the_last_step(interval, drawn, refresh_rate,
                                                                                      monkeypatch):
    from vsmd.progress_bar import SteadyProgressBar

    bar = SteadyProgressBar(interval=interval, refresh_rate=refresh_rate)  # Lightning's rate does not hold it back
    assert _fit_with_bar(bar, monkeypatch, max_steps=12) == drawn
    assert bar.train_progress_bar.n == 12


def test_the_steady_bar_ends_each_epoch_and_a_stopped_fit_on_their_last_batch(monkeypatch):
    from vsmd.progress_bar import SteadyProgressBar

    assert _fit_with_bar(SteadyProgressBar(interval=3600.0), monkeypatch, max_epochs=2, max_steps=-1,
                         limit_train_batches=7) == [1, 7, 1, 7]
    monkeypatch.undo()
    bar = SteadyProgressBar(interval=3600.0)
    assert _fit_with_bar(bar, monkeypatch, stop_at=5, max_steps=100) == [1, 5]
    assert bar.train_progress_bar.n == 5
