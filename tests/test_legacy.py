"""Configs and checkpoints of vsmd 0.1, where AGM was ``process: agm`` of the VSMD task classes (vsmd.legacy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import ROOT, versions

from vsmd.cli import main
from vsmd.legacy import upgrade_hparams

# What a 0.1 ToyVSMD checkpoint of process agm kept besides the AGM options (the VSMD options at their values).
VSMD_ONLY = {"process": "agm", "beta": 5.0, "beta_schedule": "auto", "beta_min": 0.1, "gamma": 2.0, "damping": None,
             "init_velocity": "hsm", "v0_var": 1.0, "t_eps": 1e-3, "sa_every": 100, "sa_lr": 1e-2, "zb_mode": "fbsde",
             "rho_init": "data", "rotation": "none", "parametrisation": "eps_v", "ei_t_stop": 0.02}


def _args(tmp_path: Path) -> list[str]:
    return ["--config", str(ROOT / "configs" / "spiral8y_agm.yaml"), "--trainer.logger.init_args.save_dir",
            str(tmp_path), "--trainer.logger.init_args.name", "spiral8y", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
            "--model.init_args.hidden", "16", "--model.init_args.depth", "1", "--model.init_args.n_straight", "20",
            "--model.init_args.straight_steps", "10", "--data.init_args.batch_size", "64",
            "--data.init_args.n_test", "300"]


def test_a_checkpoint_of_an_agm_run_of_vsmd_0_1_is_evaluated_as_its_agm_class(tmp_path: Path) -> None:
    """The weights keep their names, so the 0.1 checkpoint (class ToyVSMD, process agm, the VSMD options beside)
    is scored by ToyAGM exactly as the same weights saved by this vsmd."""
    main(["fit", *_args(tmp_path), "--trainer.max_steps", "5"])
    ckpt = versions(tmp_path)[-1] / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["_class_path"] == "vsmd.models.ToyAGM"
    old = dict(state, hyper_parameters=state["hyper_parameters"] | VSMD_ONLY | {"_class_path": "vsmd.models.ToyVSMD"})
    legacy = tmp_path / "legacy.ckpt"
    torch.save(old, legacy)
    scores = []
    for path in (ckpt, legacy):
        main(["test", *_args(tmp_path), "--ckpt_path", str(path)])
        scores.append(json.loads((versions(tmp_path)[-1] / "test_metrics.json").read_text())["metrics"])
    assert scores[0] == scores[1] and scores[0]["w1_0"] > 0


def test_upgrade_keeps_only_the_options_of_the_agm_class() -> None:
    cls, h = upgrade_hparams("vsmd.models.ToyVSMD", VSMD_ONLY | {"agm_p": 2.0, "hidden": 16, "sampler": "ei"})
    assert cls == "vsmd.models.ToyAGM" and h == {"agm_p": 2.0, "hidden": 16, "sampler": "ei"}
    same = {"process": "vsuld", "beta": 5.0}
    assert upgrade_hparams("vsmd.models.ToyVSMD", same) == ("vsmd.models.ToyVSMD", same)


def test_a_config_of_vsmd_0_1_that_runs_agm_says_what_to_change(tmp_path: Path, capsys) -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "spiral8y_agm.yaml").read_text())
    cfg["model"]["class_path"] = "vsmd.models.ToyVSMD"
    cfg["model"]["init_args"]["process"] = "agm"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(old), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "written for vsmd 0.1" in err
    assert "set 'class_path: vsmd.models.ToyAGM' and delete 'process: agm'" in err
