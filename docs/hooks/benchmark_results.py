"""MkDocs hook: the committed files of benchmarks/results/ become part of the site under the same path, without
copies in docs/. Its tables (.md) are pages outside the nav, its figures and .json files are served as they are.

A table that shows a figure which was never committed (the benchmark writes the figure next to the table, and only
the table was kept) gets a visible note in its place, so the strict build stays a check of the pages' own links.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
PREFIX = "benchmarks/results/"
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s/]+\.png)\)")


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            files.append(File.generated(config, PREFIX + path.name, abs_src_path=str(path),
                                        inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    if not page.file.src_uri.startswith(PREFIX):
        return markdown

    def figure(match: re.Match) -> str:
        if (RESULTS / match.group(2)).is_file():
            return match.group(0)
        return f"*(figure `{match.group(2)}`: not committed)*"

    return IMAGE.sub(figure, markdown)
