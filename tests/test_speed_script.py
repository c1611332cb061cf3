"""benchmarks/speed.py: the floor computes vsmd's loss exactly (same draws, same number), and one tiny row runs end to
end into a table of the documented shape. Never asserts times."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402
from vsmd.models import TimeSeriesVSMD, ToyAGM, ToyVSMD  # noqa: E402


def _randomised(module):
    with torch.no_grad():
        for p in module.net.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("row, make", [
    ("spiral8y", lambda: ToyVSMD(data_dim=2, hidden=32, depth=2, process="vsuld")),
    ("spiral8y_agm", lambda: ToyAGM(data_dim=2, hidden=32, depth=2)),
])
def test_floor_loss_is_vsmd_loss_toys(row, make) -> None:
    torch.manual_seed(0)
    m = _randomised(make())
    x = 3 * torch.randn(64, 2)
    floor = speed.Floor(speed.ROWS[row], m, [x], 1.0)
    floor.net.load_state_dict(m.net.state_dict())
    torch.manual_seed(5)
    want = m.batch_loss(x, m.net)
    torch.manual_seed(5)
    assert floor.loss().item() == want.item()


def test_floor_loss_is_vsmd_loss_forecasting() -> None:
    torch.manual_seed(0)
    m = _randomised(TimeSeriesVSMD(target_dim=4, freq="B", context_length=6, hidden=8, cond_dim=8,
                                   residual_layers=2))
    m.prediction_length = 3
    history = m.window_history(3)
    batch = {"target": 1 + torch.rand(5, history + 3, 4), "time_feat": torch.rand(5, history + 3, 3)}
    floor = speed.Floor(speed.ROWS["exchange"], m, [batch], 1.0)
    floor.net.load_state_dict(m.net.state_dict())
    m.net.eval(), floor.net.eval()  # the GRU's dropout would draw in a different order
    torch.manual_seed(5)
    want = m.batch_loss(batch, m.net)
    torch.manual_seed(5)
    assert floor.loss().item() == pytest.approx(want.item(), rel=1e-6)


def test_sampling_rates_at_nfe_10_and_20() -> None:
    m = ToyVSMD(data_dim=2, hidden=16, depth=1)
    rates = speed.sampling_rates(speed.ROWS["spiral8y"], m, None, None)
    assert rates["nfe10_used"] == 10 and rates["nfe20_used"] == 20 and rates["nfe10"] > 0 and rates["nfe20"] > 0


def test_one_tiny_row_end_to_end(tmp_path: Path) -> None:
    speed.main(["--rows", "spiral8y", "--steps", "2", "--block", "1", "--threads", "1", "--out", str(tmp_path),
                "--scratch", str(tmp_path / "scratch"), "--note", "test run", "--profile", "--no-sampling"])
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["meta"]["threads"] == 1 and report["meta"]["matmul_gflops"] > 0
    (row,) = report["rows"]
    assert "error" not in row, row.get("error")
    assert row["row"] == "spiral8y" and row["blocks"] == 3 and len(row["floor_blocks_s"]) == 3
    for key in ("ratio_median", "ratio_whole", "vsmd_ms_median", "floor_ms_median", "flops_per_step"):
        assert row[key] > 0
    assert "sampling" not in row and "profile" not in row
    profile = (tmp_path / "speed_profile_spiral8y.txt").read_text()
    assert "== vsmd ==" in profile and "== floor ==" in profile and "aten::addmm" in profile
    md = (tmp_path / "speed.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| row |"))
    data = next(line for line in md.splitlines() if line.startswith("| spiral8y |"))
    assert header.count("|") == data.count("|") == 13
    assert "1 thread(s)" in md and "test run" in md and "--rows spiral8y" in md
    assert len(row["lightning_blocks_s"]) == len(row["lightning_floor_blocks_s"]) == 3
    assert row["ratio_lightning"] > 0 and row["ratio_vsmd_lightning"] > 0 and row["bytes_per_step"] > 0
    assert report["meta"]["memory_gbps"] > 0
    for table in ("| row | floor ms/step (beside the Lightning floor) | Lightning floor ms/step |",
                  "| row | GB moved per step |"):
        assert table in md
        head = next(line for line in md.splitlines() if line.startswith(table))
        assert sum(line.startswith("| spiral8y |") and line.count("|") == head.count("|")
                   for line in md.splitlines()) == 1


def test_traffic_counts_the_inputs_and_outputs_of_each_op_but_views() -> None:
    a, b, c = torch.ones(1000), torch.ones(1000), torch.ones(1000)  # 4000 bytes each
    assert speed.traffic_of(lambda: a + b) == 3 * 4000
    assert speed.traffic_of(lambda: a.add_(b)) == 3 * 4000  # read a and b, write a
    assert speed.traffic_of(lambda: torch._foreach_add_([a], [b])) == 3 * 4000  # the same, through foreach
    assert speed.traffic_of(lambda: torch.add(a, b, out=c)) == 4 * 4000  # the destination read and written
    assert speed.traffic_of(lambda: c.copy_(a)) == 3 * 4000
    assert speed.traffic_of(lambda: (a.view(10, 100).t(), a[:500], a.reshape(-1))) == 0
    assert speed.traffic_of(lambda: a.view(10, 100).t().contiguous()) == 2 * 4000
    m = torch.ones(30, 40)
    assert speed.traffic_of(lambda: m @ m.t()) == (2 * 1200 + 900) * 4
    x = torch.ones(6, 4)
    assert speed.traffic_of(lambda: x.max(dim=1)) == (6 * 4 + 6) * 4 + 6 * 8  # two new outputs
    counted = {}
    for foreach in (True, False):  # the same AdamW work, one op per tensor or one per list: the same traffic
        opt = torch.optim.AdamW([torch.ones(1000), torch.ones(2000)], foreach=foreach)
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()  # the state exists: the counted step does the steady work
        counted[foreach] = speed.traffic_of(opt.step)
    assert counted[True] > 12 * 3000 * 4 and counted[True] == pytest.approx(counted[False], rel=0.01)


def test_a_row_without_its_data_is_an_error_row_naming_the_option(tmp_path: Path) -> None:
    speed.main(["--rows", "eb", "--threads", "1", "--shared-data", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                "--scratch", str(tmp_path / "scratch")])
    (row,) = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert "eb_nlsb_val_rna.npz is missing" in row["error"] and "--shared-data" in row["error"]
    assert "| eb | error: FileNotFoundError" in (tmp_path / "speed.md").read_text()


def test_floor_pairing_is_vsmds_ot_chain_and_a_trajectory_row_reports_floor_plus_pairing(tmp_path: Path) -> None:
    from vsmd.datamodules import TrajectoryDataModule
    from vsmd.diffusion.trajectory import ot_chain

    dm = TrajectoryDataModule("petal", n_per_snapshot=200, batch_size=64)
    for batch in speed._raw_snapshot_batches(dm, 3):  # an exact OT chain too (ties may be broken otherwise)
        chains = speed.Floor.pair(batch)
        want = ot_chain(batch)
        assert chains.shape == want.shape
        for k, points in enumerate(batch):
            assert torch.equal(chains[:, k].sort(0).values, points.sort(0).values)  # each snapshot, reordered
        cost = (chains.diff(dim=1).double() ** 2).sum()
        assert cost.item() == pytest.approx((want.diff(dim=1).double() ** 2).sum().item(), rel=1e-9)
    speed.main(["--rows", "petal", "--steps", "2", "--block", "1", "--threads", "1", "--out", str(tmp_path),
                "--scratch", str(tmp_path / "scratch"), "--no-sampling"])
    (row,) = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert "error" not in row, row.get("error")
    assert len(row["pair_blocks_s"]) == 3 and row["floor_pair_ms_median"] > 0 and row["ratio_pair_median"] > 0
    assert row["loader_workers"] == (1 if len(os.sched_getaffinity(0)) > 1 else 0)  # the test ran at 1 thread
    md = (tmp_path / "speed.md").read_text()
    assert "| row | vsmd ms/step (median) | floor ms/step (median) | floor + pairing ms/step (median)" in md
    assert next(line for line in md.splitlines() if line.startswith("| petal |")).count("|") == 13
