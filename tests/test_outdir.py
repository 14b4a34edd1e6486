"""`miner.outdir.prepare_out`: the create / refuse / overwrite policy every verb's output folder goes through; and
`miner.io.json_safe`, the strict-JSON form of the verbs' reports."""
from __future__ import annotations

import json
import math

import pytest

from miner.errors import UsageError
from miner.io import json_safe
from miner.outdir import listed_files, prepare_out, read_listing

WORDS = {"where": "OUT: here", "not_folder": "give a new folder"}


def test_a_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(UsageError, match="^OUT: here exists and is not a folder; give a new folder$"):
        prepare_out(path, overwrite=True, create=True, **WORDS)
    assert path.read_text() == "x"


def test_new_or_empty_is_made_when_asked(tmp_path):
    assert prepare_out(tmp_path / "a" / "b", overwrite=False, create=True, **WORDS) is None
    assert (tmp_path / "a" / "b").is_dir()
    assert prepare_out(tmp_path / "c", overwrite=False, **WORDS) is None and not (tmp_path / "c").exists()


def test_non_empty_is_refused_without_overwrite(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(UsageError, match="^OUT: here is not empty; give a new folder or pass --overwrite$"):
        prepare_out(tmp_path, overwrite=False, **WORDS)
    with pytest.raises(UsageError, match="^OUT: here holds files$"):
        prepare_out(tmp_path, overwrite=False, not_empty="holds files", **WORDS)


def test_overwrite_removes_only_the_named_items(tmp_path):
    for name in ("report", "images"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    (tmp_path / "evaluation.txt").write_text("x")
    (tmp_path / "masks").write_text("a user's file where a folder would be")
    (tmp_path / "notes.txt").write_text("the user's")
    assert prepare_out(tmp_path, overwrite=True, remove=("report", "evaluation.txt", "images/", "masks/"),
                       **WORDS) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "notes.txt"]  # "masks/": folders only


def test_overwrite_asks_the_verb_which_files_are_its_own(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({"files": ["a.txt", "list.json"]}))
    (tmp_path / "a.txt").write_text("x")
    owned = prepare_out(tmp_path, overwrite=True, owned_by=lambda p: listed_files(read_listing(p / "list.json")),
                        **WORDS)
    assert owned == {"a.txt", "list.json"} and (tmp_path / "a.txt").exists()


@pytest.mark.parametrize("text, files", [
    ('{"files": ["a", "b/c"]}', {"a", "b/c"}),
    ('{"files": ["../x"]}', None),
    ('{"files": ["/etc/passwd"]}', None),
    ('["a"]', None),
    ("{not json", None),
    ('{"other": 1}', None),
])
def test_listing_files(tmp_path, text, files):
    (tmp_path / "list.json").write_text(text)
    assert listed_files(read_listing(tmp_path / "list.json")) == files
    assert read_listing(tmp_path / "missing.json") is None


def test_json_safe():
    value = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": None, "e": "x"}}
    assert json_safe(value) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": None, "e": "x"}}
    json.dumps(json_safe(value), allow_nan=False)
