"""The reports in a real browser: headless Chromium (Debian's ``chromium``) opens the demo's report and the report of
an archive whose file names hold markup, from the file system.

Checked: the rendered numbers of findings, gallery images (each one decoded) and table rows equal what the job's
Parquet rows give; no console error, exception or failed load; no request outside the report's folder; a
screenshot; and no script runs, also with the page's Content-Security-Policy switched off, so that escaping alone
is what keeps ``<img src=x onerror=alert(1)>.png`` a piece of text.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest

from miner.config import ReportConfig
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA

from .chromium import Chromium, chromium_path
from .conftest import MARKUP_BROKEN, MARKUP_IMAGE, MARKUP_NAMES

pytestmark = [pytest.mark.browser, pytest.mark.ray]

WIDTH, HEIGHT = 1280, 1600


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        if os.environ.get("MINER_REQUIRE_BROWSER"):  # .ci/run installs chromium: its absence is a failure there
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    with Chromium(width=WIDTH, height=HEIGHT) as chromium:
        yield chromium


def count(chromium: Chromium, selector: str) -> int:
    return chromium.evaluate(f"document.querySelectorAll({selector!r}).length")


def check_clean(load, report: Path) -> None:
    """No console error and no request outside `report` while `load` happened."""
    assert load.console_errors == [], load.console_errors
    assert load.dialogs == []
    inside = report.resolve().as_uri() + "/"
    assert load.requests and all(url.startswith(inside) for url in load.requests), load.requests


def images_decoded(chromium: Chromium) -> tuple[int, int]:
    """(img elements, those decoded with a size) on the page."""
    return tuple(chromium.evaluate(
        "[document.images.length, Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length]"))


def test_demo_report_in_chromium(browser, demo, tmp_path):
    out, _ = demo
    report = out / "report"
    boxes = ds.dataset(out / "boxes", format="parquet", schema=BOXES_SCHEMA).to_table().to_pydict()
    errors = ds.dataset(out / "errors", format="parquet", schema=ERRORS_SCHEMA).to_table().to_pydict()
    findings = sorted(set(boxes["finding"]))
    config = ReportConfig()

    load = browser.open((report / "index.html").as_uri())
    check_clean(load, report)
    assert browser.evaluate("document.title") == f"Mining report: {out.name}"
    assert count(browser, "#finding-table tbody tr") == len(findings)
    assert sorted(browser.evaluate("Array.from(document.querySelectorAll('#finding-table tbody tr'))"
                                   ".map(r => r.dataset.finding)")) == findings
    assert count(browser, "nav.findings a") == len(findings)
    assert count(browser, "#error-table tbody tr") == len(errors["image_id"]) == 5
    assert count(browser, "#eval-bounded tbody tr") == 7 + 5 and count(browser, "#eval-every-box tbody tr") == 7
    assert browser.evaluate("document.getElementById('status').dataset.status") == "complete"
    shown, decoded = images_decoded(browser)
    assert shown == decoded == 2  # the overview and the accuracy plot
    shot = cv2.imdecode(np.frombuffer(browser.screenshot(tmp_path / "index.png").read_bytes(), np.uint8),
                        cv2.IMREAD_COLOR)
    assert shot.shape == (HEIGHT, WIDTH, 3)
    assert shot.std() > 20 and (shot[:40] < 80).all(axis=-1).mean() > 0.5  # a page was drawn: the dark header

    for finding in findings:
        load = browser.open((report / "findings" / f"{finding.lower()}.html").as_uri())
        check_clean(load, report)
        n = sum(1 for f in boxes["finding"] if f == finding)
        images = len({i for i, f in zip(boxes["image_id"], boxes["finding"]) if f == finding})
        top = min(config.top, images)
        assert count(browser, "figure.thumb[data-kind=top] img") == top
        assert count(browser, "figure.thumb[data-kind=sample] img") == min(config.sample, n - top)
        shown, decoded = images_decoded(browser)
        assert shown == decoded == top + min(config.sample, n - top) + 1  # the thumbnails and the plot
        links = browser.evaluate("Array.from(document.querySelectorAll('figure.thumb a')).map(a => a.href)")
        assert len(links) == top + min(config.sample, n - top)
    # a thumbnail's link opens its full-size picture
    load = browser.open(links[0])
    check_clean(load, report)
    assert browser.evaluate("document.images[0].naturalWidth") > config.thumb_size


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "without-csp"])
def test_markup_in_file_names_stays_text(browser, markup_report, bypass_csp):
    """File names with markup render as text and run nothing, even with the page's CSP switched off (the index
    with the error row and two finding pages with every name in their galleries; tests/report/test_report.py
    checks the HTML of every page)."""
    report = markup_report.index.parent
    pages = [report / "index.html", *sorted((report / "findings").glob("*.html"))[:2]]
    for page in pages:
        load = browser.open(page.as_uri(), bypass_csp=bypass_csp)
        check_clean(load, report)
        assert count(browser, "script, svg, b, img[src=x], [onerror], [onload], [onmouseover]") == 0
        text = browser.evaluate("document.body.innerText")
        if page.name == "index.html":
            assert MARKUP_BROKEN in text  # the zero-byte file's error row
            assert count(browser, "#error-table tbody tr") == 1
            assert count(browser, "#no-ground-truth") == 1 and count(browser, "#eval-bounded") == 0
        else:
            assert MARKUP_IMAGE in text
            ids = browser.evaluate("Array.from(document.querySelectorAll('figure.thumb[data-kind=top] .id'))"
                                   ".map(e => e.textContent)")
            assert sorted(ids) == sorted(MARKUP_NAMES)
            shown, decoded = images_decoded(browser)
            assert shown == decoded and shown >= len(MARKUP_NAMES)
