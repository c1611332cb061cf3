"""benchmarks/quickstarts.py: the commands of each page's first bash block, run as written in a scratch repository.
Never asserts times."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quickstarts  # noqa: E402


def test_commands_are_split_at_and_and_lose_comments_and_the_install_and_test_lines() -> None:
    block = ('pip install -e ".[dev]"   # installs\n'
             'vsmd fit --config c.yaml && vsmd test --ckpt_path "a # b"   # and scores it\n'
             'python -m pytest -q\n'
             'vsmd predict --data.init_args.times "[0.25, 1.0]" \\\n    --ckpt_path x.ckpt\n')
    assert quickstarts.commands(block) == ["vsmd fit --config c.yaml", 'vsmd test --ckpt_path "a # b"',
                                           'vsmd predict --data.init_args.times "[0.25, 1.0]" --ckpt_path x.ckpt']


def test_every_page_has_a_quick_start_with_a_fit() -> None:
    for page in quickstarts.PAGES:
        cmds = quickstarts.commands(quickstarts.first_block(ROOT / page))
        assert any(c.startswith("vsmd fit") for c in cmds), page
        assert not any(c.startswith(quickstarts.LEFT_OUT) for c in cmds), page


def test_a_page_runs_in_a_scratch_repository_and_stops_at_a_failing_command(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```bash\nls configs > listed.txt && test -s listed.txt  # configs are there\n"
                    "false\necho never\n```\n")
    code = quickstarts.main(["--pages", str(page), "--out", str(tmp_path / "out"), "--shared", str(tmp_path)])
    assert code == 1
    rows = json.loads((tmp_path / "out" / "quickstarts.json").read_text())["rows"]
    assert [(r["command"], r["exit"]) for r in rows] == [("ls configs > listed.txt", 0), ("test -s listed.txt", 0),
                                                         ("false", 1)]
    md = (tmp_path / "out" / "quickstarts.md").read_text()
    assert "| `false` |" in md and md.count("\n| ") == 4  # the header and three commands
