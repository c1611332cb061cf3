"""Wall time of each page's quick start at full length (issue 26): the commands a new user runs first, as written.

For each page (the README and the task pages), the first ``bash`` block is run command by command in a scratch copy
of the repository's ``configs/`` with ``../shared`` beside it, as the test suite runs it (tests/test_readme.py) but
without shortening any fit: the configs' own step counts. The ``pip install`` and ``python -m pytest`` lines are left
out (the install is done; the suite has its own time in the README). torch uses its default threads (every CPU), as
a user's run does. Writes ``quickstarts.md`` and ``quickstarts.json`` into ``--out``.

    python benchmarks/quickstarts.py                          # every page (about 8 minutes on 2 CPU cores)
    python benchmarks/quickstarts.py --pages README.md docs/tasks/images.md --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tasks/forecasting.md", "docs/tasks/images.md", "docs/tasks/trajectories.md"]
LEFT_OUT = ("pip install", "python -m pytest")


def first_block(page: Path) -> str:
    """The text of the page's first ```bash block."""
    lines = page.read_text().splitlines()
    start = lines.index("```bash")
    return "\n".join(lines[start + 1:lines.index("```", start + 1)])


def _split(line: str) -> list[str]:
    """A shell line without its trailing comment and with one blank between words, cut at each ``&&`` outside
    quotes (each part is timed alone; run in order, stopping at the first failure, they do what the line does)."""
    parts, quote, current, i = [], "", "", 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (not current or current[-1].isspace()):
            break
        elif line.startswith("&&", i):
            parts.append(current)
            current, i = "", i + 2
            continue
        elif ch.isspace():  # runs of blanks outside quotes become one
            ch = "" if current.endswith(" ") else " "
        current += ch
        i += 1
    return [p.strip() for p in [*parts, current] if p.strip()]


def commands(block: str) -> list[str]:
    """The block's commands, one per line (a line ending in a backslash goes on, a ``&&`` starts the next), without
    the install and test lines and the comments at their ends."""
    out, current = [], ""
    for line in block.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        out += [c for c in _split(current) if not c.startswith(LEFT_OUT)]
        current = ""
    return out


def run_page(page: str, scratch: Path, shared: Path | None) -> list[dict]:
    """Runs the page's quick start in a fresh scratch repository; the wall time and exit status of each command."""
    repo = scratch / Path(page).stem / "repo"
    shutil.copytree(ROOT / "configs", repo / "configs")
    if shared is not None and shared.is_dir():
        (repo.parent / "shared").symlink_to(shared.resolve())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    rows = []
    for cmd in commands(first_block(ROOT / page)):
        start = time.perf_counter()
        out = subprocess.run(["bash", "-c", cmd], cwd=repo, env=env, capture_output=True, text=True)
        rows.append({"page": page, "command": cmd, "seconds": time.perf_counter() - start, "exit": out.returncode,
                     "tail": (out.stderr or out.stdout)[-600:] if out.returncode else ""})
        print(f"[quickstarts] {page}: {cmd[:80]} -> exit {out.returncode}, {rows[-1]['seconds']:.0f} s", flush=True)
        if out.returncode:
            break  # the page's later commands read what this one should have written
    return rows


def table(rows: list[dict], meta: dict) -> str:
    lines = ["# Quick starts at full length (issue 26)", "", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; torch's default threads; total {meta['seconds']:.0f} s.", "",
             "The first `bash` block of each page, run as written (the configs' own step counts) in a scratch copy of "
             "`configs/` with `../shared` beside it; the `pip install` and `python -m pytest` lines left out.", "",
             "| page | command | wall time | exit |", "|---|---|---|---|"]
    for r in rows:
        t = r["seconds"]
        lines.append(f"| {r['page']} | `{r['command']}` | {t / 60:.1f} min ({t:.0f} s) | {r['exit']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", nargs="+", default=PAGES, help="pages relative to the repository root")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared folder (default: ../shared)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of quickstarts.md/json")
    args = ap.parse_args(argv)
    meta = {"command": " ".join(["python benchmarks/quickstarts.py",
                                  shlex.join(argv if argv is not None else sys.argv[1:])]).strip(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible"}
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="vsmd-quickstarts-") as scratch:
        for page in args.pages:
            rows += run_page(page, Path(scratch), Path(args.shared))
    meta["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstarts.md").write_text(table(rows, meta))
    (out / "quickstarts.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows, meta))
    failed = [r for r in rows if r["exit"]]
    for r in failed:
        print(f"{r['page']}: `{r['command']}` exited {r['exit']}:\n{r['tail']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
