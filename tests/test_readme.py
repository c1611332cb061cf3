"""Every ```bash block of README.md and of the docs pages (docs/**/*.md) runs as written (issues 23 and 25), in a
copy of the repository's configs; so do the ```python blocks, those of a page in order in one Python session (as a
reader pastes them into one notebook). A block that is not meant to run has another fence (```text, ```pycon).

The README and every page with ``vsmd fit`` in a block say how the suite shortens them: each ``vsmd fit`` gets
``--trainer.max_steps 20`` appended, and the setup lines ``pip install ...`` and ``python -m pytest ...`` are skipped
(the suite runs inside them). Blocks that read ``../shared`` are skipped when it is missing; the docker block (a CUDA
image, GPUs) is not run: its volumes and the vsmd command it runs in the image are checked. A block that calls
``mkdocs`` runs in a copy of the files the site is built from (skipped without mkdocs). A block whose text appears
on an earlier page (the quick start is on three) runs once. The python blocks' fits are shortened the same way:
``vsmd.fit`` gets ``trainer={"max_steps": 20}``, a ``pl.Trainer`` ``max_steps=20`` (every page with a fit in a
python block says so).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STEPS = 20  # the README names this number
SLOW = ("exchange", "petal", "eb", "cifar10_tiny", "csv_forecast")  # blocks with these configs take minutes on 2 cores

# set -e does not stop at a failure inside `a && b`, so a failing vsmd ends the script itself
PRELUDE = f"""set -e
vsmd() {{ if [ "$1" = fit ]; then "$VSMD_PY" -m vsmd.cli "$@" --trainer.max_steps {STEPS}; \
else "$VSMD_PY" -m vsmd.cli "$@"; fi; local rc=$?; [ $rc -eq 0 ] || exit $rc; }}
pip() {{ echo "readme test: skipped: pip $*"; }}
python() {{ if [ "$1 $2" = "-m pytest" ]; then echo "readme test: skipped: python $*"; else "$VSMD_PY" "$@"; fi; }}
mkdocs() {{ NO_MKDOCS_2_WARNING=1 "$VSMD_PY" -m mkdocs "$@"; }}
"""
SITE_FILES = ("mkdocs.yml", "docs", "benchmarks/results", "vsmd")  # what `mkdocs build` reads
FENCES = ("bash", "python", "text", "pycon", "yaml", "")  # bash and python run; the others (and ``` alone) are shown

# the python blocks of a page, in one session: a fit of vsmd.fit or of a pl.Trainer stops at STEPS
PY_RUNNER = f"""import json, sys, traceback
import lightning.pytorch as pl
import vsmd.api


def fit(config=None, *, trainer=None, _fit=vsmd.api.fit, **options):
    return _fit(config, trainer={{**(trainer or {{}}), "max_steps": {STEPS}}}, **options)


class Trainer(pl.Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{{**kwargs, "max_steps": {STEPS}}})


vsmd.fit = vsmd.api.fit = fit
pl.Trainer = Trainer
namespace = {{"__name__": "__main__"}}
for name, text in json.loads(sys.argv[1]):
    print(f"readme test: python block {{name}}", flush=True)
    try:
        exec(compile(text, name, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"readme test: the python block {{name}} failed")
"""


def pages() -> list[Path]:
    """README.md, then every page of the docs, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def page_blocks(page: Path, language: str = "bash") -> list[tuple[str, str]]:
    """(id, text) of every ```bash block (or ``language``) of a page; the id is the heading above it and the block's
    number there, after the page's path for the docs pages."""
    blocks, heading, n, lines = [], "top", 0, page.read_text().splitlines()
    prefix = "" if page.name == "README.md" else f"{page.relative_to(ROOT).as_posix()}:"
    i = 0
    while i < len(lines):
        if lines[i].startswith(("# ", "## ")):
            title = lines[i].split(" ", 1)[1]
            heading, n = re.sub(r"[^a-z0-9]+", "-", title.split("(")[0].lower()).strip("-"), 0
        if lines[i].startswith("```"):  # a fenced block: its lines are no headings
            j = lines.index("```", i + 1)
            if lines[i].strip() == f"```{language}":
                n += 1
                blocks.append((f"{prefix}{heading}-{n}", "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return blocks


def readme_blocks() -> list[tuple[str, str]]:
    """The blocks of every page, each text once (the first page that has it names it)."""
    seen, blocks = set(), []
    for page in pages():
        for name, text in page_blocks(page):
            if text not in seen:
                seen.add(text)
                blocks.append((name, text))
    return blocks


def _param(block: tuple[str, str]):
    slow = any(re.search(rf"configs/{name}\.yaml", block[1]) for name in SLOW)
    return pytest.param(*block, id=block[0], marks=[pytest.mark.slow] if slow else [])


def test_the_readme_has_its_blocks() -> None:
    texts = "\n".join(t for _, t in readme_blocks())
    for config in ("spiral8y", "exchange", "cifar10_tiny", "petal", "eb"):
        assert f"configs/{config}.yaml" in texts
    assert f"--trainer.max_steps {STEPS}" in (ROOT / "README.md").read_text()  # the README says how it is shortened
    for page in pages():  # and so does every page with a fit in a block
        if any(re.search(r"^\s*vsmd fit", text, re.M) for _, text in page_blocks(page)):
            assert f"--trainer.max_steps {STEPS}" in page.read_text(), f"{page} does not say how its fits are shortened"


def test_the_blocks_are_collected_from_every_page_once() -> None:
    names = [name for name, _ in readme_blocks()]
    assert len(names) == len(set(names))
    assert "quick-start-1" in names  # the README's; the same block on the docs' quick start and toys pages runs once
    assert not any(name.startswith(("docs/quickstart.md:", "docs/tasks/toys.md:")) for name in names)
    assert {"docs/tasks/forecasting.md:forecasting-1", "docs/install.md:these-pages-1"} <= set(names)


def test_a_failing_command_fails_the_block(tmp_path: Path) -> None:
    out = run_block("vsmd fit --config configs/missing.yaml && echo went-on\necho after", tmp_path)
    assert out.returncode != 0 and "went-on" not in out.stdout and "after" not in out.stdout


def run_block(text: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VSMD_PY=sys.executable, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(["bash", "-c", PRELUDE + text], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.parametrize(("name", "text"), [_param(b) for b in readme_blocks()])
def test_readme_block(name: str, text: str, tmp_path: Path) -> None:
    if "../shared" in text and not SHARED.is_dir():
        pytest.skip(f"the block reads ../shared, which is missing here ({SHARED})")
    if re.search(r"^\s*docker ", text, re.M):  # a CUDA image and GPUs: not run, checked
        check_docker_block(text)
        return
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "configs", repo / "configs")
    if re.search(r"^\s*mkdocs ", text, re.M):  # the docs' own block: the files the site is built from
        for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
            pytest.importorskip(module, reason="the block builds the docs: pip install -e '.[docs]'")
        for name in SITE_FILES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, repo / name)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    out = run_block(text, repo)
    assert out.returncode == 0, f"{name} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    if "cifar10_tiny" in text:  # the image quick start ends with a finite image grid
        assert (repo / "runs" / "cifar10_tiny" / "version_1" / "samples_000.png").stat().st_size > 0
    if re.search(r"^\s*mkdocs build", text, re.M):  # the site was built
        assert (repo / "site" / "index.html").stat().st_size > 0


def check_docker_block(text: str) -> None:
    """The docker block builds a CUDA image and needs GPUs, so it is not run: its volumes must be the Dockerfile's
    and the command it runs in the image must parse in vsmd's CLI, with the container's paths."""
    joined = text.replace("\\\n", " ")
    run = next(line for line in joined.splitlines() if line.strip().startswith("docker run"))
    volumes = set(re.findall(r"-v \S+:(/\w+)", run))
    declared = re.search(r'^VOLUME \[(.*)\]', (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert volumes == {v.strip(' "') for v in declared.split(",")}
    args = shlex.split(run)
    cmd = args[args.index("vsmd", args.index("vsmd") + 1) + 1:]  # after the image name: vsmd <subcommand> ...
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "vsmd.cli", *cmd, "--print_config"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "save_dir: /runs" in out.stdout and "root: /data" in out.stdout


# ------------------------------------------------------------------------------------------------------------
# the python blocks
def python_pages() -> list[Path]:
    return [page for page in pages() if page_blocks(page, "python")]


def fence_problems(text: str, where: str) -> list[str]:
    """The fences of a page that the suite would neither run nor know as shown only: ```py, ```python3, an indented
    one (inside a list: not collected)."""
    problems, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("```"):
            continue
        if line != line.lstrip():
            problems.append(f"{where}:{number}: an indented fence is not collected; start it at the line's start")
        elif not inside and line[3:].strip() not in FENCES:
            problems.append(f"{where}:{number}: {line.strip()} is neither run (```bash, ```python) nor shown only "
                            "(```text, ```pycon, ```yaml)")
        inside = not inside
    return problems


def test_every_block_is_run_or_shown_on_purpose() -> None:
    assert [p for page in pages() for p in fence_problems(page.read_text(), str(page.relative_to(ROOT)))] == []
    assert {p.relative_to(ROOT).as_posix() for p in python_pages()} >= {"README.md", "docs/python.md"}
    bad = "```py\nx = 1\n```\n\n- a list:\n\n  ```python\n  y = 2\n  ```\n\n```pycon\n>>> 1\n```\n"
    assert fence_problems(bad, "bad.md") == [
        "bad.md:1: ```py is neither run (```bash, ```python) nor shown only (```text, ```pycon, ```yaml)",
        "bad.md:7: an indented fence is not collected; start it at the line's start",
        "bad.md:9: an indented fence is not collected; start it at the line's start"]


def test_every_page_says_how_its_python_fits_are_shortened() -> None:
    for page in python_pages():
        if any(re.search(r"\bvsmd\.fit\(|\bTrainer\(", text) for _, text in page_blocks(page, "python")):
            assert f'"max_steps": {STEPS}' in page.read_text(), f"{page} does not say how its fits are shortened"


def run_python_blocks(blocks: list[tuple[str, str]], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", PY_RUNNER, json.dumps(blocks)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_a_failing_python_block_fails_the_page(tmp_path: Path) -> None:
    blocks = [("first", "import lightning.pytorch as pl\nx = 1\nprint('steps', pl.Trainer(max_steps=5000, "
                        "logger=False).max_steps)"),
              ("second", "assert x == 1  # the session goes on\nraise ValueError('boom')"),
              ("third", "print('went-on')")]
    out = run_python_blocks(blocks, tmp_path)
    assert out.returncode != 0 and f"steps {STEPS}" in out.stdout and "went-on" not in out.stdout
    assert "the python block second failed" in out.stderr and 'File "second", line 2' in out.stderr


def _python_param(page: Path):
    text = "\n".join(t for _, t in page_blocks(page, "python"))
    slow = any(re.search(rf"configs/{name}\.yaml", text) for name in SLOW)
    name = page.relative_to(ROOT).as_posix()
    return pytest.param(page, id=name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("page", [_python_param(p) for p in python_pages()])
def test_python_blocks(page: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "configs", repo / "configs")
    out = run_python_blocks(page_blocks(page, "python"), repo)
    assert out.returncode == 0, f"{page.name} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
