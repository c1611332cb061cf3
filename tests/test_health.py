"""The advice of the unusable-samples guard (issue 23, items 2 and 11): it names what is likely for the model at hand
(the training steps its checkpoint saw, the sampler and its steps) and blames A only where there is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli import tiny  # tests/test_cli.py
from vsmd.cli import main
from vsmd.metrics.health import unusable_advice, unusable_advice_for
from vsmd.models import ToyAGM, ToyVSMD

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("process", "has_a"), [("vsuld", True), ("vsdm", True), ("cld", False), ("vp", False),
                                                ("agm", False)])
def test_advice_names_the_steps_and_a_only_where_it_is_learned(process: str, has_a: bool) -> None:
    model = ToyAGM(sample_steps=7) if process == "agm" else ToyVSMD(process=process, sample_steps=7)
    text = unusable_advice_for(model)
    assert "saw 0 training steps" in text and "with 7 grid points" in text
    assert ("sa_lr" in text) == has_a and ("A is learned" in text) == has_a
    assert "guidance" not in text


def test_advice_counts_the_checkpoints_steps() -> None:
    text = unusable_advice(20, "heun", 5, adaptive=True)
    assert "saw 20 training steps" in text and "heun with 5 grid points" in text and "sa_lr" in text


def test_agm_guidance_far_off_the_data_is_named_not_a(tmp_path: Path, capsys) -> None:
    """Item 11: AGM guided toward 1e9 exploded and the error blamed "the model or its A"; AGM has no A."""
    args = tiny(tmp_path, "--config", str(ROOT / "configs" / "spiral8y_agm.yaml"),
                "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                "--model.init_args.hidden", "32", "--model.init_args.depth", "1",
                "--data.init_args.n_predict", "50",
                "--model.init_args.guide", "[1e9, 1e9]")
    with pytest.raises(SystemExit) as exc:
        main(["predict", *args, "--ckpt_path", "untrained"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "generated samples are unusable" in err
    assert "guidance target far outside the data's range (guide [1000000000.0, 1000000000.0]" in err
    assert "saw 0 training steps" in err
    assert "its A" not in err and "sa_lr" not in err
