"""README stays a front door, the pages under docs/ link to files that exist, and every table or figure of a results
page sits under the command that regenerates it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
RESULTS = sorted((ROOT / "docs" / "results").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```(\w*)")
COMMAND = re.compile(r"^(\.venv/bin/)?(miner |python |bash scripts/|scripts/|SEED=)")


def test_readme_is_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):  # http(s), mailto; an anchor on the same page
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def _sections(text: str) -> list[list[tuple[str, str]]]:
    """The page cut at its headings (outside code fences) into sections of blocks: ("command", text) for a fenced
    bash block, ("output", text) for any other fenced block, ("table", line) and ("figure", line) outside fences."""
    sections: list[list[tuple[str, str]]] = [[]]
    fence, body = None, []
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence, body = opening.group(1), []
        elif fence is not None and line.startswith("```"):
            sections[-1].append(("command" if fence == "bash" else "output", "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):
            sections.append([])
        elif line.startswith("|"):
            sections[-1].append(("table", line))
        elif line.startswith("!["):
            sections[-1].append(("figure", line))
    return sections


@pytest.mark.parametrize("page", RESULTS, ids=lambda p: p.name)
def test_results_sit_under_their_command(page):
    """In every section of a results page, the first table, figure or printed output comes after a bash block that
    runs a command (`miner ...`, a script)."""
    assert RESULTS, "docs/results/ has no pages"
    for number, blocks in enumerate(_sections(page.read_text())):
        results = [i for i, (kind, _) in enumerate(blocks) if kind in ("table", "figure", "output")]
        if not results:
            continue
        commands = [i for i, (kind, body) in enumerate(blocks)
                    if kind == "command" and any(COMMAND.match(line.strip()) for line in body.splitlines())]
        assert commands and commands[0] < results[0], (
            f"{page.name}, section {number}: {blocks[results[0]][1][:60]!r} comes before any command")
