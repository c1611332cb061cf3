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
