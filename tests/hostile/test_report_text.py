"""Issue 22, case 12: text from the archive or OUT reaches the report escaped (README "Reports").

File names (image ids), paths, error messages and finding names may hold bidirectional controls (U+202E reverses
what follows: ``a\\u202egnp.exe.png`` shows as ``aexe.png``...), isolates, zero-width characters and C0/C1
controls. On every page each is shown as its escape in a marked span (``<span class="esc" title="RIGHT-TO-LEFT
OVERRIDE">\\u202e</span>``), in attributes and titles as the plain escape, in plots and pictures as the escape too;
no page holds one raw. The job is a real `miner mine` of a folder of images with such names.
"""
from __future__ import annotations

import html
import re
import shutil
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miner.io import INVISIBLE, visible
from tests.hostile.harness import run_miner

#: image file names as a hostile archive may hold them (each one file name: no "/")
NAMES = ("a\u202egnp.exe.png", "zero\u200bwidth.png", "iso\u2066late\u2069.png", "esc\x1b[31mred.png",
         "nel\u0085line.png")
#: each name as a page shows it (written out by hand)
SHOWN = {
    NAMES[0]: 'a<span class="esc" title="RIGHT-TO-LEFT OVERRIDE">\\u202e</span>gnp.exe.png',
    NAMES[1]: 'zero<span class="esc" title="ZERO WIDTH SPACE">\\u200b</span>width.png',
    NAMES[2]: 'iso<span class="esc" title="LEFT-TO-RIGHT ISOLATE">\\u2066</span>late<span class="esc" '
              'title="POP DIRECTIONAL ISOLATE">\\u2069</span>.png',
    NAMES[3]: 'esc<span class="esc" title="U+001B">\\u001b</span>[31mred.png',
    NAMES[4]: 'nel<span class="esc" title="U+0085">\\u0085</span>line.png',
}
BROKEN = "broken\u202e.png"  # zero bytes: an error row whose id, path and message hold U+202E
ESCAPED = '<span class="esc" title="{}">{}</span>'


def _raw(text: str) -> list[str]:
    """The characters of `text` that a page must not hold raw (newline and tab are the templates' own)."""
    return [c for c in text if unicodedata.category(c) in INVISIBLE and c not in "\n\t"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory, clean_archive, tiny_model) -> tuple[Path, Path]:
    """(archive, OUT): a folder archive named with an isolate, its images named with NAMES, one empty."""
    base = tmp_path_factory.mktemp("report_text_job")
    archive = base / "archive\u2067x"
    archive.mkdir()
    png = min((clean_archive / "images").glob("*.png"))
    for name in NAMES:
        shutil.copy(png, archive / name)
    (archive / BROKEN).write_bytes(b"")
    out = base / "out"
    result = run_miner(["mine", archive, "--model", tiny_model, "--out", out, "--classes", "all", "--no-progress"],
                       cwd=base)
    assert result.returncode == 0, result.describe()
    return archive, out


def _report(out: Path, to: Path) -> dict[str, str]:
    result = run_miner(["report", out, "--to", to, "--top", str(len(NAMES)), "--sample", "0", "--thumb-size", "32",
                        "--picture-size", "64"], cwd=to.parent)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
    return {p.relative_to(to).as_posix(): p.read_text(encoding="utf-8") for p in to.rglob("*.html")}


def test_archive_text_is_shown_escaped_on_every_page(mined, tmp_path):
    archive, out = mined
    pages = _report(out, tmp_path / "report")
    for name, text in pages.items():
        assert not _raw(text), f"{name} holds {[f'U+{ord(c):04X}' for c in _raw(text)]} raw"
    index = pages["index.html"]
    rlo = ESCAPED.format("RIGHT-TO-LEFT OVERRIDE", "\\u202e")
    # the error row: its id and its message (the path) with the escape in a marked span
    assert f'<td class="mono nowrap">broken{rlo}.png</td>' in index
    assert f"broken{rlo}.png: empty image" in index
    # the archive's path in the job's description
    assert "archive" + ESCAPED.format("RIGHT-TO-LEFT ISOLATE", "\\u2067") + "x" in index
    # every image id in a gallery, escaped as text and as the plain escape in the picture's alt text
    finding = next(text for name, text in pages.items() if name.startswith("findings/"))
    for name, marked in SHOWN.items():
        assert f'<span class="id">{marked}</span>' in finding, name
        assert f'box on {html.escape(visible(name))}"' in finding, name


def test_a_finding_name_from_out_is_escaped_in_pages_and_plots(mined, tmp_path):
    """A finding name in OUT/boxes that is not one of the model's (a hand-edited OUT): its page, its row, its
    plot labels (``$`` included: matplotlib would parse ``$...$`` as math) show it escaped."""
    _, mined_out = mined
    out = Path(shutil.copytree(mined_out, tmp_path / "out"))
    part = out / "boxes" / "part-000000.parquet"
    table = pq.read_table(part)
    hostile = "Ma\u202ess $\\frac{$"
    findings = [hostile if f == "Mass" else f for f in table.column("finding").to_pylist()]
    assert hostile in findings
    pq.write_table(table.set_column(table.schema.get_field_index("finding"), table.schema.field("finding"),
                                    pa.array(findings, pa.string())), part)
    pages = _report(out, tmp_path / "report")
    for name, text in pages.items():
        assert not _raw(text), name
    page = next(text for name, text in pages.items() if name.startswith("findings/")
                and "<h1>Ma" + ESCAPED.format("RIGHT-TO-LEFT OVERRIDE", "\\u202e") in text.replace(
                    '<h1><span class="swatch"', "<h1>"))
    assert re.search(r"<title>Ma\\u202ess \$\\frac\{\$: mining report", page)
    assert 'data-finding="Ma\\u202ess $\\frac{$"' in pages["index.html"]


# ------------------------------------------------------------------------------------------------------------
# in-process: the escaping itself, for any text


def test_visible_escapes_exactly_the_invisible_characters():
    assert visible("a\u202eb\u200bc\x00d\x85e\u2028f\ud800g\U000e0001h") == \
        "a\\u202eb\\u200bc\\u0000d\\u0085e\\u2028f\\ud800g\\U000e0001h"
    printable = "plain ascii, é, 中文, Ελληνικά, עברית, \u00a0"  # right-to-left letters and NBSP are text
    assert visible(printable) == printable


def test_fuzz_any_text_renders_without_a_raw_invisible_character():
    """For any text: a page holds none of its invisible characters raw; the text part (spans removed, entities
    decoded) and the attribute both read as `visible(text)`; and `visible` loses nothing (its escapes decode back
    to the text when the text holds no backslash)."""
    from hypothesis import given
    from hypothesis import strategies as st

    from miner.report.page import environment

    template = environment().from_string('<p title="{{ x|plain }}">{{ x }}</p>')
    span = re.compile(r'<span class="esc" title="[^"<>]*">(\\[uU][0-9a-f]+)</span>')

    @given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40))
    def check(text):
        page = template.render(x=text)
        assert not _raw(page)
        attribute, body = re.fullmatch(r'<p title="([^"]*)">(.*)</p>', page, re.DOTALL).groups()
        assert html.unescape(attribute) == visible(text)
        assert html.unescape(span.sub(r"\1", body)) == visible(text)
        if "\\" not in text:
            decoded = re.sub(r"\\u([0-9a-f]{4})|\\U([0-9a-f]{8})", lambda m: chr(int(m.group(1) or m.group(2), 16)),
                             visible(text))
            assert decoded == text

    check()
