"""The documentation site (issue 25): ``mkdocs build --strict`` succeeds, so no page has a broken link, anchor or API
reference; a broken one fails the build; the committed benchmark results are served as they are, without copies."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("mkdocs", "material", "mkdocstrings_handlers.python")
missing = [name for name in TOOLS if importlib.util.find_spec(name.split(".")[0]) is None]
needs_mkdocs = pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed: the docs tools come "
                                                        "with pip install -e '.[dev]' (or '.[docs]')")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          env=env, capture_output=True, text=True, timeout=600)


@needs_mkdocs
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    out = build(ROOT / "mkdocs.yml", tmp_path)
    assert out.returncode == 0, out.stderr[-5000:]
    for page in ("index.html", "quickstart/index.html", "tasks/trajectories/index.html", "architecture/index.html",
                 "benchmarks/results/toy2d/index.html"):
        assert (tmp_path / page).stat().st_size > 0, page
    for figure in RESULTS.glob("*.png"):  # served byte for byte from benchmarks/results
        assert (tmp_path / "benchmarks" / "results" / figure.name).read_bytes() == figure.read_bytes()
    api = (tmp_path / "api" / "models" / "index.html").read_text()
    assert 'id="vsmd.models.ToyVSMD"' in api and 'id="vsmd.models.TrajectoryBridge"' in api


def site_copy(tmp_path: Path) -> Path:
    """The files the site is built from, copied, so that a test may break one."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("mkdocs.yml", "docs", "benchmarks/results", "vsmd"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path / "mkdocs.yml"


@needs_mkdocs
@pytest.mark.parametrize(("page", "added", "named"), [
    ("install.md", "[the samplers](sampler.md)", "sampler.md"),
    ("install.md", "[ei](samplers.md#no-such-section)", "no-such-section"),
    ("install.md", "[the data](../data/x.md)", "../data/x.md"),
    ("api/metrics.md", "::: vsmd.metrics.no_such_metric", "no_such_metric"),
], ids=["link", "anchor", "outside-docs", "api-reference"])
def test_a_broken_link_or_reference_fails_the_build(tmp_path: Path, page: str, added: str, named: str) -> None:
    config = site_copy(tmp_path / "repo")
    with open(config.parent / "docs" / page, "a") as f:
        f.write(f"\n{added}\n")
    out = build(config, tmp_path / "site")
    assert out.returncode != 0 and named in out.stderr, out.stderr[-3000:]


@needs_mkdocs
def test_the_hook_marks_a_figure_that_was_never_committed() -> None:
    spec = importlib.util.spec_from_file_location("hook", ROOT / "docs" / "hooks" / "benchmark_results.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    committed = next(RESULTS.glob("*.png")).name
    text = f"![a]({committed})\n![b](never_written.png)\n"
    page = SimpleNamespace(file=SimpleNamespace(src_uri="benchmarks/results/x.md"))
    assert hook.on_page_markdown(text, page, None, None) == \
        f"![a]({committed})\n*(figure `never_written.png`: not committed)*\n"
    own = SimpleNamespace(file=SimpleNamespace(src_uri="benchmarks.md"))  # the pages' own links stay checked
    assert hook.on_page_markdown(text, own, None, None) == text


def test_every_results_table_is_linked_from_the_benchmarks_page() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    linked = set(re.findall(r"\]\(benchmarks/results/([\w.]+\.md)\)", page))
    assert linked == {p.name for p in RESULTS.glob("*.md")}


def test_the_nav_names_every_page_and_the_readme_stays_short() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert page.relative_to(ROOT / "docs").as_posix() in nav, page
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_links_point_at_committed_files() -> None:
    """The README is not part of the site, so its links are checked here: each names a file of the repository."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert links and all((ROOT / link).is_file() for link in links), [x for x in links if not (ROOT / x).is_file()]
