"""Issue 22, case 9: a verb that writes a folder replaces only the files it wrote itself (README "Folders miner
writes").

`miner report --to DIR` (and its default ``OUT/report``) lists every file it writes in ``DIR/report.json``;
`miner labels --to DIR --overwrite` in ``DIR/miner-labels.json``. A later run replaces and removes only the files
of that list: a file of the user's in DIR (``mine.txt``, even one inside the report's own ``img/``) survives, and
a file of the user's where the new run would write refuses the run before anything moves. A folder that holds
files but no such list is refused. Each run is the real CLI on a real job's output.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.hostile.harness import assert_refused, assert_untouched, run_miner, snapshot


@pytest.fixture(scope="module")
def mined(tmp_path_factory, clean_archive, tiny_model) -> Path:
    """A finished job's output over the first 3 images of the phantom archive (read-only for the tests)."""
    base = tmp_path_factory.mktemp("report_out_job")
    archive = base / "archive"
    shutil.copytree(clean_archive, archive)
    entries = archive / "Data_Entry_2017.csv"
    entries.write_text("".join(entries.read_text().splitlines(keepends=True)[:4]))  # few findings: quick reports
    out = base / "out"
    result = run_miner(["mine", archive, "--model", tiny_model, "--out", out, "--no-progress"], cwd=base)
    assert result.returncode == 0, result.describe()
    return out


SMALL = ["--top", "2", "--sample", "1", "--thumb-size", "32", "--picture-size", "64"]
SMALLER = ["--top", "1", "--sample", "0", "--thumb-size", "32", "--picture-size", "64"]


def _listed(folder: Path, listing: str) -> set[str]:
    return set(json.loads((folder / listing).read_text())["files"])


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _stat(*paths: Path) -> list[tuple[bytes, int]]:
    """Content and mtime of files: a file that was never rewritten has both unchanged."""
    return [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]


def _report(out: Path, cwd: Path, *options) -> None:
    result = run_miner(["report", out, *options], cwd=cwd)
    assert result.returncode == 0 and not result.stderr.strip(), result.describe()


def test_a_report_keeps_the_users_files_and_replaces_its_own(mined, tmp_path, watched):
    to = tmp_path / "report"
    _report(mined, tmp_path, "--to", to, *SMALL)
    first = _listed(to, "report.json")
    assert first == _files(to) and "index.html" in first
    (to / "mine.txt").write_text("my notes")  # the case
    (to / "img" / "plots" / "mine.txt").write_text("more notes")  # in a folder the report writes, too
    users = _stat(to / "mine.txt", to / "img" / "plots" / "mine.txt")
    before = watched(to)
    _report(mined, tmp_path, "--to", to, *SMALLER)  # fewer pictures: some of the first report's files go
    assert_untouched(before, watched(to))  # nothing outside DIR
    assert _stat(to / "mine.txt", to / "img" / "plots" / "mine.txt") == users
    second = _listed(to, "report.json")
    assert second == _files(to) - {"mine.txt", "img/plots/mine.txt"}
    assert first - second, "the second report writes fewer files"
    assert not any((to / name).exists() for name in first - second)  # the first report's extra pictures are gone
    # a third report into the same folder still works, and still leaves the user's files alone
    _report(mined, tmp_path, "--to", to, *SMALL)
    assert _listed(to, "report.json") == first
    assert _stat(to / "mine.txt", to / "img" / "plots" / "mine.txt") == users


def test_the_default_report_folder_in_out_keeps_the_users_files(mined, tmp_path):
    out = Path(shutil.copytree(mined, tmp_path / "out"))
    _report(out, tmp_path, *SMALL)
    (out / "report" / "mine.txt").write_text("my notes")
    _report(out, tmp_path, *SMALLER)
    assert (out / "report" / "mine.txt").read_text() == "my notes"
    assert _listed(out / "report", "report.json") == _files(out / "report") - {"mine.txt"}


def test_a_users_file_where_the_report_writes_refuses_before_anything_moves(mined, tmp_path, watched):
    to = tmp_path / "report"
    _report(mined, tmp_path, "--to", to, *SMALLER)
    summary = json.loads((to / "report.json").read_text())
    summary["files"].remove("index.html")  # index.html is now a file the report did not write
    (to / "report.json").write_text(json.dumps(summary))
    before = watched()
    assert_refused(run_miner(["report", mined, "--to", to, *SMALLER], cwd=tmp_path), 2,
                   contains=[str(to / "index.html"), "was not written by miner report"])
    assert_untouched(before, watched())  # DIR as it was, no temporary folder left beside it
    summary["files"].append("index.html")
    (to / "report.json").write_text(json.dumps(summary))
    (to / "findings" / "mine.html").write_text("my page")  # where a finding named "mine" would have its page
    before = watched()
    assert_refused(run_miner(["report", mined, "--to", to, *SMALLER], cwd=tmp_path), 2,
                   contains=[str(to / "findings" / "mine.html"), "was not written by miner report"])
    assert_untouched(before, watched())


def test_install_refuses_a_collision_that_only_the_built_files_show(tmp_path):
    """The exact guard (`miner.outdir.install_folder`): a built file whose place holds a file the verb did not write
    stops the install before anything moves, and the built folder is removed."""
    from miner.errors import UsageError
    from miner.outdir import install_folder

    target, built = tmp_path / "dir", tmp_path / ".dir.tmp"
    for folder, files in ((target, {"list.json": "[]", "old.txt": "old", "theirs.txt": "user"}),
                          (built, {"list.json": "[]", "theirs.txt": "new"})):
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    before = snapshot([tmp_path], exclude=[built])
    with pytest.raises(UsageError, match="theirs.txt was not written by miner test"):
        install_folder(built, target, owned={"list.json", "old.txt"}, listing="list.json",
                       listing_bytes=lambda files: b"[]", verb="test")
    assert_untouched(before, snapshot([tmp_path]))


@pytest.mark.parametrize("summary", [None, "{}", '{"files": ["../outside.txt"]}', "not json"])
def test_a_folder_without_a_report_is_refused(mined, tmp_path, watched, summary):
    to = tmp_path / "notes"
    to.mkdir()
    (to / "mine.txt").write_text("my notes")
    (tmp_path / "outside.txt").write_text("next to it")
    if summary is not None:
        (to / "report.json").write_text(summary)  # not a report's summary, or one naming a file outside DIR
    before = watched()
    assert_refused(run_miner(["report", mined, "--to", to], cwd=tmp_path), 2,
                   contains=[str(to), "is not empty and holds no earlier report"])
    assert_untouched(before, watched())


def test_labels_overwrite_keeps_the_users_files(mined, tmp_path, watched):
    to = tmp_path / "labels"
    first = run_miner(["labels", mined, "--format", "coco", "--to", to], cwd=tmp_path)
    assert first.returncode == 0, first.describe()
    coco = _listed(to, "miner-labels.json")
    assert coco == _files(to) and "annotations.json" in coco
    (to / "mine.txt").write_text("my notes")  # the old --overwrite removed every *.txt
    # without --overwrite a non-empty folder is refused, untouched
    before = watched()
    assert_refused(run_miner(["labels", mined, "--format", "yolo", "--to", to], cwd=tmp_path), 2,
                   contains=[str(to), "is not empty", "--overwrite"])
    assert_untouched(before, watched())
    before = watched(to)
    second = run_miner(["labels", mined, "--format", "yolo", "--to", to, "--overwrite"], cwd=tmp_path)
    assert second.returncode == 0, second.describe()
    assert_untouched(before, watched(to))
    assert (to / "mine.txt").read_text() == "my notes"
    yolo = _listed(to, "miner-labels.json")
    assert yolo == _files(to) - {"mine.txt"} and "data.yaml" in yolo
    assert not (to / "annotations.json").exists()  # the COCO export's files went, with nothing else
    assert (to / "images").is_dir() and all(p.is_symlink() for p in (to / "images").iterdir())
    third = run_miner(["labels", mined, "--format", "coco", "--to", to, "--overwrite"], cwd=tmp_path)
    assert third.returncode == 0, third.describe()
    assert _listed(to, "miner-labels.json") == coco and (to / "mine.txt").read_text() == "my notes"
    assert not (to / "images").exists() and not (to / "labels").exists()  # emptied folders of the YOLO export


def test_labels_overwrite_refuses_an_export_without_its_list(mined, tmp_path, watched):
    """An export of an earlier version (no miner-labels.json): --overwrite cannot tell its files from the user's,
    so it refuses and removes nothing."""
    to = tmp_path / "labels"
    to.mkdir()
    (to / "annotations.json").write_text("{}")
    (to / "mine.txt").write_text("my notes")
    before = watched()
    assert_refused(run_miner(["labels", mined, "--format", "coco", "--to", to, "--overwrite"], cwd=tmp_path), 2,
                   contains=[str(to), "without its list of files"])
    assert_untouched(before, watched())


@pytest.mark.parametrize("verb", [["report"], ["labels", "--format", "coco"]])
def test_a_folder_inside_outs_data_is_refused(mined, tmp_path, watched, verb):
    """A report or an export inside OUT/boxes (or errors/, images/, _shards/) would break the output contract."""
    out = Path(shutil.copytree(mined, tmp_path / "out"))
    before = watched()
    assert_refused(run_miner([verb[0], out, *verb[1:], "--to", out / "boxes" / "r"], cwd=tmp_path), 2,
                   contains=[f"is inside {out / 'boxes'}, which holds the job's data"])
    assert_untouched(before, watched())  # OUT included: nothing written in it either
