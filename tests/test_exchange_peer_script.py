"""benchmarks/exchange_peer.py: vsmd's side of the bookkeeping on a tiny setting (checkpoints, their tests, the
curve and the time-to-target table), the peer shims, and the errors. Never asserts times. The peer's own run is
tested only where a checkout of the authors' repository is present (VSMD_PEER_VMSB, default /tmp/peers/vmsb)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tsdata import make_gp_copula_archive  # tests/tsdata.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import exchange_peer  # noqa: E402

PEER = Path(os.environ.get("VSMD_PEER_VMSB", "/tmp/peers/vmsb"))


def test_time_to_target_and_ratio() -> None:
    peer = {"curve": [{"step": 500, "train_seconds": 100.0, "crps_sum": 0.009},
                      {"step": 1000, "train_seconds": 200.0, "crps_sum": 0.006},
                      {"step": 1500, "train_seconds": 300.0, "crps_sum": 0.007}]}
    ours = {"curve": [{"step": 250, "train_seconds": 20.0, "crps_sum": 0.008},
                      {"step": 500, "train_seconds": 40.0, "crps_sum": 0.0059},
                      {"step": 750, "train_seconds": 60.0, "crps_sum": 0.005}]}
    assert exchange_peer.time_to_target(ours["curve"], 0.006)["step"] == 500
    assert exchange_peer.time_to_target(ours["curve"], 0.001) is None
    c = exchange_peer.compare({"peer": peer, "vsmd": ours})
    assert c == {"target_crps_sum": 0.006, "peer_seconds": 200.0, "peer_step": 1000, "vsmd_seconds": 40.0,
                 "vsmd_step": 500, "ratio": 5.0}
    c = exchange_peer.compare({"peer": peer, "vsmd": {"curve": ours["curve"][:1]}})
    assert c["vsmd_seconds"] is None and c["ratio"] is None
    assert exchange_peer.compare({"vsmd": ours}) == {}


def test_pts_shim_merges_series_and_lags() -> None:
    """pts's lagged_sequence_values returns (B, T, D * lags); the shim gives that from GluonTS's (B, T, D, lags)."""
    saved = {k: sys.modules.pop(k, None) for k in ("pts", "pts.util")}
    try:
        exchange_peer._peer_shims()
        from pts.util import lagged_sequence_values

        prior, seq = torch.arange(2 * 6 * 3.0).reshape(2, 6, 3), 100 + torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)
        lags = lagged_sequence_values([0, 2, 5], prior, seq, dim=1)
        assert lags.shape == (2, 4, 9)
        full = torch.cat([prior, seq], 1)
        assert torch.equal(lags[:, :, 3 * 1 + 1], full[:, 6 - 2:10 - 2, 1])  # series 1, lag 2
        assert lagged_sequence_values([0, 2], prior, seq, dim=1, keepdim=True).shape == (2, 4, 3, 2)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None)
            if v is not None:
                sys.modules[k] = v


def test_vsmd_side_tiny(tmp_path: Path) -> None:
    """Two steps of configs/exchange.yaml on a synthetic archive, a checkpoint after each, ``vsmd test`` on both."""
    data = tmp_path / "data"
    data.mkdir()
    make_gp_copula_archive(data, n_train=200)
    out = tmp_path / "out" / "exchange_peer"
    exchange_peer.main(["--side", "vsmd", "--data-dir", str(data), "--work", str(tmp_path / "work"), "--out",
                        str(out), "--vsmd-steps", "2", "--vsmd-every", "1", "--num-samples", "2"])
    results = json.loads(out.with_suffix(".json").read_text())
    ours = results["vsmd"]
    assert (ours["process"], ours["steps"], ours["num_samples"], ours["batch_size"]) == ("vsuld", 2, 2, 64)
    assert [r["step"] for r in ours["curve"]] == [1, 2]
    for r in ours["curve"]:
        assert set(r) >= {"train_seconds", "eval_seconds", "crps_sum", "crps", "nd_sum", "nfe_per_step"}
        assert math.isfinite(r["crps_sum"]) and r["crps_sum"] > 0 and r["nfe_per_step"] == 39
        report = json.loads(next((tmp_path / "work" / "vsmd" / f"test_{r['step']}").glob(
            "version_*/test_metrics.json")).read_text())
        assert report["metrics"]["crps_sum"] == r["crps_sum"]
    assert results["comparison"] == {}  # no peer: no ratio
    table = out.with_suffix(".md").read_text()
    assert "## vsmd (`configs/exchange.yaml`)" in table and "| 2 | " in table
    assert "--side vsmd" in table  # the command that wrote it


def test_errors_name_the_file_and_what_to_do(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match=r"exchange_rate_nips\.tar\.gz is missing: copy the GP-Copula"):
        exchange_peer.materialise(tmp_path)
    args = type("Args", (), {"peer": tmp_path})()
    with pytest.raises(FileNotFoundError, match=r"time_series/estimator\.py is missing: --peer must name a checkout"):
        exchange_peer.run_peer(args)
    with pytest.raises(SystemExit):
        exchange_peer.main(["--side", "both", "--work", str(tmp_path / "w"), "--data-dir", str(tmp_path / "d")])
    assert "needs --peer PATH" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.slow
@pytest.mark.skipif(not (PEER / "time_series" / "estimator.py").is_file(),
                    reason=f"no checkout of the authors' repository at {PEER} (set VSMD_PEER_VMSB)")
def test_peer_side_one_epoch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_gp_copula_archive(data, n_train=200)
    work = tmp_path / "work"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "exchange_peer.py"), "--side", "peer", "--peer",
                    str(PEER), "--data-dir", str(data), "--work", str(work), "--peer-epochs", "1", "--num-samples",
                    "2"], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peer = json.loads((work / "peer.json").read_text())
    assert (peer["sde"], peer["batches_per_epoch"], peer["batch_size"], peer["complete"]) == ("cld", 50, 32, True)
    assert [r["step"] for r in peer["curve"]] == [50] and math.isfinite(peer["curve"][0]["crps_sum"])
