"""`miner report`: what the pages hold, checked against the job's Parquet rows and `miner eval`'s tables; a job with
error rows, an interrupted one, one without ground truth; escaping; bounds; errors a user can act on."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest

from miner.cli import main
from miner.config import ReportConfig
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA

from .conftest import MARKUP_BROKEN, MARKUP_NAMES

pytestmark = pytest.mark.ray


class Page(HTMLParser):
    """Elements (tag, attributes, the text inside it) of one page (or part of one), and its whole text."""

    def __init__(self, path: Path | None = None, *, raw: str | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.path = path
        self.raw = path.read_text(encoding="utf-8") if raw is None else raw
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []
        self.text: list[str] = []
        self.feed(self.raw)

    def handle_starttag(self, tag, attrs):
        texts: list[str] = []
        self.elements.append((tag, dict(attrs), texts))
        if tag not in ("img", "meta", "br", "link", "input"):
            self._open.append(texts)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        self.text.append(data)
        for texts in self._open:
            texts.append(data)

    def find(self, tag: str, **attrs: str) -> list[tuple[dict[str, str], str]]:
        return [(a, "".join(t)) for name, a, t in self.elements
                if name == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def rows(self, table_id: str) -> list[list[str]]:
        """The body rows of a table, as cell texts (th and td)."""
        body = self.raw.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
        if "<tbody>" in body:
            body = body.split("<tbody>", 1)[1]
        rows: list[list[str]] = []
        for name, _, texts in Page(raw=body).elements:
            if name == "tr":
                rows.append([])
            elif name in ("td", "th") and rows:
                rows[-1].append("".join(texts).strip())
        return rows

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def rows_of(out: Path, name: str, schema) -> dict[str, list]:
    return ds.dataset(out / name, format="parquet", schema=schema).to_table().to_pydict()


def expected_gallery(boxes: dict[str, list], finding: str, config: ReportConfig) -> tuple[int, int]:
    """(top, sample) tiles of a finding: one per image up to `top`, then `sample` of the remaining boxes."""
    n = sum(1 for f in boxes["finding"] if f == finding)
    images = len({i for i, f in zip(boxes["image_id"], boxes["finding"]) if f == finding})
    top = min(config.top, images)
    return top, min(config.sample, n - top)


def check_links(report: Path) -> int:
    """Every src and href of every page is relative, stays inside the report and names an existing file;
    returns how many there were."""
    count = 0
    for html in report.rglob("*.html"):
        page = Page(html)
        for _tag, attrs, _ in page.elements:
            for key in ("src", "href"):
                if key in attrs:
                    link = attrs[key]
                    assert "://" not in link and not link.startswith(("/", "//", "data:", "javascript:")), link
                    target = (html.parent / link).resolve()
                    assert target.is_relative_to(report.resolve()), link
                    assert target.is_file(), (html, link)
                    count += 1
    return count


# --------------------------------------------------------------------------------------------- the demo's report


def test_demo_writes_the_report_and_prints_its_path(demo):
    out, result = demo
    assert result.report == out / "report" / "index.html" and result.report.is_file()
    assert result.line().endswith(f"; report: {result.report}")
    assert "report" in result.seconds


def test_demo_report_matches_the_job(demo):
    """Findings, counts, gallery sizes and error rows of the report equal what the Parquet rows give."""
    out, _ = demo
    report = out / "report"
    boxes = rows_of(out, "boxes", BOXES_SCHEMA)
    errors = rows_of(out, "errors", ERRORS_SCHEMA)
    config = ReportConfig()
    index = Page(report / "index.html")
    findings = [r[0] for r in index.rows("finding-table")]
    classes = json.loads((out / "_manifest.json").read_text())["model"]["classes"]
    assert findings == [c for c in classes if c in set(boxes["finding"])]  # model order, only findings with boxes
    for row in index.rows("finding-table"):
        finding, asked, images, n_boxes, rank1 = row[0], *(int(v.replace(",", "")) for v in row[1:5])
        mine = [i for i, f in zip(boxes["image_id"], boxes["finding"]) if f == finding]
        assert (images, n_boxes) == (len(set(mine)), len(mine))
        assert rank1 == sum(1 for f, r in zip(boxes["finding"], boxes["rank"]) if f == finding and r == 1)
        assert asked >= images  # --classes labels: the images labelled with the finding
    assert index.find("div", id="status")[0][0]["data-status"] == "complete"
    # the error table: every row, escaped text, by kind
    assert sorted(r[1] for r in index.rows("error-table")) == sorted(errors["kind"]) == [
        "corrupt", "empty", "missing", "truncated", "unsupported"]
    assert {r[0] for r in index.rows("error-table")} == set(errors["image_id"])
    # galleries: the bound, one per image in the top gallery, every thumbnail drawn with a heatmap and CLEAR
    thumbnails = 0
    for finding in findings:
        page = Page(report / "findings" / f"{finding.lower()}.html")
        top = page.find("figure", data_kind="top")
        sample = page.find("figure", data_kind="sample")
        assert (len(top), len(sample)) == expected_gallery(boxes, finding, config)
        top_ids = [text.strip().split("rank")[0].strip() for _, text in top]
        assert len(set(top_ids)) == len(top_ids)
        for tag, attrs, _ in page.elements:
            if tag == "img" and "thumbs" in attrs["src"]:
                picture = cv2.imread(str((page.path.parent / attrs["src"]).resolve()))
                assert picture.shape[0] <= config.thumb_size and picture.shape[1] == 2 * config.thumb_size + 4
                assert (int(attrs["width"]), int(attrs["height"])) == (picture.shape[1], picture.shape[0])
                thumbnails += 1
    summary = json.loads((report / "report.json").read_text())
    assert summary["thumbnails"] == thumbnails <= (config.top + config.sample) * len(findings)
    assert summary["findings"] == findings and summary["status"] == "complete"
    assert check_links(report) > thumbnails * 2
    assert not list(report.rglob("*.js"))


def test_demo_report_tables_are_miner_evals(demo, tmp_path, capsys):
    """The evaluation tables hold exactly the cells of the demo's evaluation.json (miner eval's protocol), and the
    COCO table the numbers `miner eval OUT --json` gives."""
    out, _ = demo
    evaluation = json.loads((out / "evaluation.json").read_text())
    index = Page(out / "report" / "index.html")
    for table_id, key in (("eval-bounded", "cells"), ("eval-every-box", "cells_all_boxes")):
        head = index.raw.split(f'id="{table_id}"', 1)[1].split("</thead>", 1)[0]
        findings = [h.split("</th>")[0] for h in head.split("<th>")[2:]]
        expected = {}
        for c in evaluation[key]:
            label = f"T({'IoU' if c['metric'] == 'iou' else 'IoBB'})={c['threshold']:g}"
            text = "-" if c["acc"] is None else f"{c['acc']:.2f}-{c['afp']:.2f}" + ("*" if c["bound"] is None else "")
            expected.setdefault(label, {})[c["finding"]] = text
        rows = index.rows(table_id)
        assert [r[0] for r in rows] == list(expected)
        for row in rows:
            assert dict(zip(findings, row[1:])) == expected[row[0]]
    assert Path(out / "report" / "img" / "plots" / "accuracy.png").is_file()
    assert main(["eval", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    coco = json.loads((tmp_path / "eval.json").read_text())["coco"]
    rows = index.rows("eval-coco")
    expected = [[r["finding"], f"{r['images']:,}", f"{r['gt_boxes']:,}", f"{r['detections']:,}",
                 *("-" if r[k] is None else f"{r[k]:.3f}" for k in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100"))]
                for r in coco["findings"]]
    mean = coco["mean"]
    expected.append(["mean", "", f"{mean['gt_boxes']:,}", f"{mean['detections']:,}",
                     *("-" if mean[k] is None else f"{mean[k]:.3f}" for k in ("ap", "ap50", "ap75", "ar1", "ar10",
                                                                                "ar100"))])
    assert rows == expected
    assert ("only the images with ground-truth boxes" in index.all_text) == (coco["negatives"] == "boxed")


def test_report_bounds_without_model(demo, tmp_path, capsys):
    """Without --model: boxes on the plain image (one panel); --top/--sample/--max-errors bound what is listed;
    an earlier report in --to is replaced: the files it listed, not the user's."""
    out, _ = demo
    to = tmp_path / "small"
    to.mkdir()
    # an earlier report, with a file the new one does not write, and a file of the user's beside it
    (to / "report.json").write_text(json.dumps({"out": str(out), "findings": [], "files": ["stale.html"]}))
    (to / "stale.html").write_text("old")
    (to / "notes.txt").write_text("mine")
    assert main(["report", str(out), "--to", str(to), "--top", "2", "--sample", "1", "--max-errors", "2",
                 "--thumb-size", "64"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"miner report: {to / 'index.html'} (complete job;") and "2 of 5 error rows listed" in line
    index = Page(to / "index.html")
    assert len(index.rows("error-table")) == 2 and "The first 2 of 5 error rows" in index.all_text
    assert [r[1] for r in index.rows("error-table")] == ["corrupt", "empty"]  # by kind, then image
    boxes = rows_of(out, "boxes", BOXES_SCHEMA)
    for thumb in (to / "img" / "thumbs").rglob("*.jpg"):
        picture = cv2.imread(str(thumb))
        assert max(picture.shape[:2]) == 64  # one panel: no heatmap, no CLEAR
    counts = [expected_gallery(boxes, f, ReportConfig(top=2, sample=1)) for f in set(boxes["finding"])]
    assert len(list((to / "img" / "thumbs").rglob("*.jpg"))) == sum(a + b for a, b in counts)
    assert "CLEAR" not in index.all_text
    assert not (to / "stale.html").exists() and json.loads((to / "report.json").read_text())["config"]["top"] == 2
    assert (to / "notes.txt").read_text() == "mine"
    listed = json.loads((to / "report.json").read_text())["files"]
    assert sorted(listed) == sorted(p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file()
                                    and p.name != "notes.txt")
    # a folder that holds something else is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["report", str(out), "--to", str(foreign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty and holds no earlier report" in err[0]


# --------------------------------------------------------------------------------------------- other jobs


def test_interrupted_job_report(interrupted):
    """A job stopped after its first shard: the report says so (1 of 4 shards) and shows that shard's rows only."""
    from miner.report import write_report

    archive, out = interrupted
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["runs"][-1]["status"] == "interrupted"
    result = write_report(out)
    assert result.status == "interrupted"
    index = Page(result.index)
    status = index.find("div", id="status")[0]
    assert (status[0]["data-status"], status[0]["data-shards-done"], status[0]["data-shards-planned"]) == (
        "interrupted", "1", "4")
    assert status[1].startswith("Interrupted: 1 of 4 shards done (8 of 31 images)")
    assert sorted(p.name for p in (out / "_shards").iterdir()) == ["000000.json"]
    first = set(ds.dataset(out / "images").to_table().column("image_id").to_pylist())
    assert len(first) + len(rows_of(out, "errors", ERRORS_SCHEMA)["image_id"]) == 8
    boxes = rows_of(out, "boxes", BOXES_SCHEMA)
    assert set(boxes["image_id"]) <= first
    total = sum(int(r[3].replace(",", "")) for r in index.rows("finding-table"))
    assert total == len(boxes["image_id"])
    # ground truth is evaluated on the mined images only
    assert "ground-truth boxes on" in index.all_text
    for finding_page in (result.index.parent / "findings").glob("*.html"):
        assert "Interrupted: 1 of 4 shards" in Page(finding_page).all_text


def test_killed_and_running_states(interrupted, tmp_path):
    """A manifest left at "running": killed when no process holds the lock, running while one does."""
    from miner.io import ShardStore
    from miner.report.job import job_state, load_snapshot

    _, source = interrupted
    out = tmp_path / "out"
    shutil.copytree(source, out)
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["status"] = "running"  # what a SIGKILLed driver leaves (tests/job: test_killed_driver...)
    (out / "_manifest.json").write_text(json.dumps(manifest))
    done = ShardStore(out).done()
    assert job_state(out, manifest, done).status == "killed"
    assert load_snapshot(out).state.line().startswith("Stopped without finishing")
    with ShardStore(out).lock():
        state = job_state(out, manifest, done)
        assert (state.status, state.shards_done, state.shards_planned) == ("running", 1, 4)
        assert "Still running" in state.line()


def test_report_when_the_archive_has_moved(interrupted, tmp_path):
    """The manifest's archive is gone and no --archive is given: the report says so, shows counts, plots and
    errors, and each gallery tile says why it has no picture; a wrong --archive is refused (test below)."""
    from miner.report import write_report

    _, source = interrupted
    out = tmp_path / "out"
    shutil.copytree(source, out)
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["archive"]["path"] = str(tmp_path / "moved")
    (out / "_manifest.json").write_text(json.dumps(manifest))
    result = write_report(out, config=ReportConfig(top=1, sample=1))
    assert result.thumbnails == 0 and len(result.notices) == 1 and "give --archive" in result.notices[0]
    index = Page(result.index)
    assert "Pictures and ground truth are left out" in index.all_text
    assert index.find("p", id="no-ground-truth")[0][1].startswith("No evaluation: the archive is not readable")
    failed = [text for page in (result.index.parent / "findings").glob("*.html")
              for _, text in Page(page).find("figure") if "could not be drawn" in text]
    boxes = rows_of(out, "boxes", BOXES_SCHEMA)
    assert len(failed) == sum(sum(expected_gallery(boxes, f, ReportConfig(top=1, sample=1)))
                              for f in set(boxes["finding"]))
    assert not list((result.index.parent / "img").rglob("*.jpg"))


def test_report_without_ground_truth_and_markup_names(markup, markup_report):
    """A plain folder of images (no labels, no boxes) mined with --classes all: no evaluation section, every
    image mined for every finding, and every name from the archive escaped in the HTML."""
    folder, _ = markup
    result = markup_report
    index = Page(result.index)
    assert index.find("p", id="no-ground-truth") and 'id="eval-bounded"' not in index.raw
    mined = len(MARKUP_NAMES)
    assert all(int(r[1]) == mined for r in index.rows("finding-table"))  # --classes all: asked = every image
    errors = index.rows("error-table")
    assert errors == [[MARKUP_BROKEN, "empty", f"{folder / MARKUP_BROKEN}: empty image (zero bytes)"]]
    pages = [index, *(Page(p) for p in (result.index.parent / "findings").glob("*.html"))]
    assert len(pages) == 9
    for page in pages:
        assert "<img src=x" not in page.raw and "<svg" not in page.raw and "<b " not in page.raw
        assert not any(tag in ("script", "svg", "b") for tag, _, _ in page.elements)
        assert not any(name.startswith("on") for _, attrs, _ in page.elements for name in attrs)
    for page in pages[1:]:
        # every image (6 < --top) is in each finding's top gallery, its name shown as text
        shown = {text.split("rank")[0].strip() for _, text in page.find("figure", data_kind="top")}
        assert shown == set(MARKUP_NAMES)
        assert "&lt;img src=x onerror=alert(1)&gt;.png" in page.raw
    assert MARKUP_BROKEN in index.all_text


def test_report_cli_refuses_bad_input(demo, markup, tmp_path, capsys):
    out, _ = demo
    cases = [
        (["report", str(tmp_path / "nothing")], "is not a folder"),
        (["report", str(tmp_path)], "holds no _manifest.json"),
        (["report", str(out), "--model", str(tmp_path / "none.pt")], "--model:"),
        (["report", str(out), "--archive", str(markup[0]), "--to", str(tmp_path / "r")],
         "is not the archive this job mined"),
        (["report", str(out), "--top", "-1", "--to", str(tmp_path / "r")],
         "argument --top: must be an integer in [0, 1000]"),
    ]
    for argv, text in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0] and err[0].startswith("miner report: error:"), err


# --------------------------------------------------------------------------------------------- the pieces


def test_gallery_selection_by_hand():
    """Top: the best box of each image, best images first; sample: from the other boxes, seeded, best first."""
    from miner.report.gallery import select

    ids = np.array(["a", "a", "b", "c", "c", "d", "e"], dtype=object)
    scores = np.array([0.9, 0.95, 0.5, 0.7, 0.2, 0.7, 0.1])
    rows = np.arange(7) + 100
    top, sample = select(ids, scores, rows, finding="Mass", config=ReportConfig(top=3, sample=2, seed=1))
    assert top.tolist() == [101, 103, 105]  # a (0.95), then c and d tie at 0.7: by image name
    assert len(sample) == 2 and not set(sample) & set(top) and set(sample) <= {100, 102, 104, 106}
    assert list(scores[sample - 100]) == sorted(scores[sample - 100], reverse=True)
    again, _ = select(ids, scores, rows, finding="Mass", config=ReportConfig(top=3, sample=2, seed=1))
    _, same = select(ids, scores, rows, finding="Mass", config=ReportConfig(top=3, sample=2, seed=1))
    assert again.tolist() == top.tolist() and same.tolist() == sample.tolist()
    draws = {tuple(select(ids, scores, rows, finding="Mass", config=ReportConfig(top=3, sample=2, seed=s))[1])
             for s in range(20)}
    assert len(draws) > 1  # the seed matters
    top, sample = select(ids, scores, rows, finding="Mass", config=ReportConfig(top=10, sample=10))
    assert len(top) == 5 and sorted(sample.tolist()) == [100, 104]  # every image once; the rest sampled
    empty = select(ids[:0], scores[:0], rows[:0], finding="Mass", config=ReportConfig())
    assert [len(x) for x in empty] == [0, 0]


def test_slugs_are_safe_and_distinct():
    from miner.report.page import slug

    assert slug("Mass") == "mass"
    assert slug("Pleural_Thickening").startswith("pleural-thickening-")
    names = ["<b>x</b>", "../../etc", "a/b", "", "Mass", "mass "]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(slugs)
    assert all(s and all(ch.isalnum() or ch == "-" for ch in s) for s in slugs)


def test_escaping_of_every_template_variable():
    """A page rendered with markup in each kind of value holds it as text only."""
    from miner.report.page import environment, render_page

    evil = '<script>alert(1)</script>"\'&'
    assert render_page("macros.html").strip() == ""  # the macros alone render to nothing
    template = environment().from_string('{% from "macros.html" import kv, legend %}'
                                         '<p title="{{ v }}">{{ v }}</p>{{ kv([(v, v)]) }}{{ legend([(v, v)]) }}')
    out = template.render(v=evil)
    assert "<script" not in out and out.count("&lt;script&gt;") >= 4 and '"\'&' not in out
    assert "&#34;&#39;&amp;" in out
