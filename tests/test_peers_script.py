"""benchmarks/peers.py: the vsmd side of both rows runs without the peers into a table of the documented shape, a bad
peer path or missing data is refused in words, and (when the peers' checkouts are there) the whole comparison runs
on tiny settings. Never asserts times."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402

PEERS = Path(os.environ.get("VSMD_PEERS_DIR", "/tmp/peers"))
TINY = ["--seeds", "0", "--steps", "4", "--block", "2", "--set", "model.init_args.hidden", "8",
        "--set", "data.init_args.batch_size", "16", "--agm-samples", "20", "--agm-reps", "1"]


def _eb_like(folder: Path) -> Path:
    """A file in the EB subset's layout: 5 snapshots of 40 cells in 8 coordinates (X, ts)."""
    rng = np.random.default_rng(0)
    ts = np.repeat(np.arange(5), 40)
    x = rng.normal(size=(200, 8)) + ts[:, None] * np.linspace(0.5, 1.0, 8)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "eb_nlsb_val_rna.npz", X=x, ts=ts)
    return folder


def _table(md: str, header_start: str) -> tuple[str, list[str]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return lines[i], rows


def test_vsmd_sides_without_the_peers(tmp_path: Path) -> None:
    data = _eb_like(tmp_path / "data")
    peers.main([*TINY, "--shared-data", str(data), "--out", str(tmp_path / "out"), "--note", "test run"])
    report = json.loads((tmp_path / "out" / "peers.json").read_text())
    (row,) = report["otcfm"]
    assert "error" not in row, row.get("error")
    assert row["steps"] == 4 and len(row["vsmd_blocks_s"]) == len(row["bare_blocks_s"]) == 2 and "peer" not in row
    assert row["bare_ms_median"] > 0
    assert row["vsmd"]["w1"] > 0 and row["vsmd"]["baseline_w1"] > 0
    (agm,) = report["agm"]["rows"]
    assert agm["variant"].startswith("vsmd ei sampler") and agm["params"] > 0 and len(agm["seconds"]) == 1
    assert report["meta"]["patches"] == [] and "torchcfm" not in report["meta"]
    md = (tmp_path / "out" / "peers.md").read_text()
    header, rows = _table(md, "| seed |")
    assert header.count("|") == 12 and len(rows) == 1 and rows[0].count("|") == 12 and "not run" in rows[0]
    header, rows = _table(md, "| sampler, network |")
    assert header.count("|") == 5 and len(rows) == 1 and rows[0].count("|") == 5
    assert "Peer: not run (no --torchcfm)" in md and "Peer: not run (no --agm)" in md and "test run" in md


def test_a_peer_path_that_is_not_a_checkout_is_refused_in_words(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--torchcfm must be the root of a checkout"):
        peers.main(["--torchcfm", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="AM/samplers.py is missing: --agm must be the root"):
        peers.main(["--agm", str(tmp_path), "--out", str(tmp_path)])


def test_missing_data_is_an_error_row_naming_the_option(tmp_path: Path) -> None:
    peers.main([*TINY, "--no-agm", "--shared-data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "peers.json").read_text())["otcfm"]
    assert "eb_nlsb_val_rna.npz is missing" in row["error"] and "--shared-data" in row["error"]
    assert "| 0 | error: FileNotFoundError" in (tmp_path / "peers.md").read_text()


@pytest.mark.skipif(not ((PEERS / "torchcfm" / "torchcfm").is_dir() and (PEERS / "ml-agm" / "AM").is_dir()),
                    reason=f"the peers' checkouts are not under {PEERS} (VSMD_PEERS_DIR; see benchmarks/peers.py)")
def test_the_whole_comparison_against_the_peers_checkouts(tmp_path: Path) -> None:
    data = _eb_like(tmp_path / "data")
    peers.main([*TINY, "--torchcfm", str(PEERS / "torchcfm"), "--agm", str(PEERS / "ml-agm"),
                "--shared-data", str(data), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "peers.json").read_text())
    (row,) = report["otcfm"]
    assert "error" not in row, row.get("error")
    assert row["peer_steps"] == row["steps"] == 4 and len(row["peer_blocks_s"]) == 2
    assert row["peer"]["w1"] > 0 and row["peer"]["baseline_w1"] == row["vsmd"]["baseline_w1"]
    assert report["meta"]["torchcfm"]["matcher"].endswith("ExactOptimalTransportConditionalFlowMatcher")
    assert report["agm"]["agm_network_calls"] == 10 and len(report["agm"]["rows"]) == 4
    md = (tmp_path / "out" / "peers.md").read_text()
    _, rows = _table(md, "| seed |")
    assert len(rows) == 1 and "not run" not in rows[0] and rows[0].count("|") == 12
    _, rows = _table(md, "| sampler, network |")
    assert [r.split(" | ")[0] for r in rows] == [
        "| vsmd ei sampler, vsmd's toy net (the config's)", "| ml-agm gDDIM sampler, their toy net (ResNet)",
        "| ml-agm gDDIM sampler, vsmd's toy net", "| vsmd ei sampler, their toy net (ResNet)"]
    assert "## Patches to the peers" in md and "stand-in" in md
