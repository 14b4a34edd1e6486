from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from miner.data import load_image, read_archive
from miner.data.archives.survey import survey_archive
from miner.errors import ImageError
from miner.phantoms import make_phantoms
from miner.phantoms.bad_files import BAD_KINDS, inject_bad_files


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "arch"
    clean = make_phantoms(root, images=24, size=64, seed=5)
    bad = inject_bad_files(root, seed=2)
    return root, clean, bad


def _miner(*argv):
    return subprocess.run([sys.executable, "-m", "miner", *map(str, argv)], capture_output=True, text=True)


def test_injected_files_raise_their_kind(broken):
    root, clean, bad = broken
    assert set(bad) == set(BAD_KINDS)
    assert len(set(bad.values())) == len(BAD_KINDS)
    archive = read_archive(root)
    assert len(archive) == len(clean) + 1  # the unsupported file is listed
    paths = {r.image_id: r.path for r in archive.records}
    assert {r.image_id: r.split for r in archive.records}[bad["unsupported"]] == "test"
    for kind, image_id in bad.items():
        with pytest.raises(ImageError) as info:
            load_image(paths[image_id])
        assert info.value.kind == kind, image_id
    for image_id in set(paths) - set(bad.values()):
        image, size = load_image(paths[image_id])
        assert size == (64, 64)


def test_survey_counts_and_problems(broken):
    root, clean, bad = broken
    archive = read_archive(root)
    cheap = survey_archive(archive)
    assert cheap["images"] == len(clean) + 1
    assert cheap["splits"]["train"] + cheap["splits"]["test"] == cheap["images"]
    labels = Counter(lab for r in clean.records for lab in r.labels)
    for finding, n in labels.items():
        assert cheap["findings"][finding]["images"] == n
        assert cheap["findings"][finding]["boxes"] == sum(1 for b in clean.boxes if b.finding == finding)
    assert cheap["no_finding"]["images"] == sum(1 for r in clean.records if not r.labels) + 1
    assert cheap["boxes"] == len(clean.boxes) and cheap["boxes_outside_image"] == 0
    # the cheap check sees all but the corrupt file (its header and end chunk are intact)
    assert {p["image_id"]: p["kind"] for p in cheap["problems"]} == {v: k for k, v in bad.items() if k != "corrupt"}
    assert cheap["sizes"]["distinct"] == [{"height": 64, "width": 64, "images": len(clean) - 3}]
    deep = survey_archive(archive, deep=True)
    assert {p["image_id"]: p["kind"] for p in deep["problems"]} == {v: k for k, v in bad.items()}
    sampled = survey_archive(archive, sample=5)
    assert sampled["checked"] == 5 and sampled["images"] == len(clean) + 1


def test_inspect_lists_bad_files_and_exits_0(broken):
    root, _, bad = broken
    result = _miner("inspect", root, "--deep")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for kind, image_id in bad.items():
        assert any(line.split()[:2] == [kind, image_id] for line in lines), (kind, image_id)
    assert "5 bad" in result.stdout
    as_json = _miner("inspect", root, "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["problem_counts"] == {"missing": 1, "empty": 1, "truncated": 1, "unsupported": 1}


def test_inspect_on_the_real_nih_labels(tmp_path, nih_data_entry, nih_bbox_list):
    import shutil

    shutil.copy(nih_data_entry, tmp_path)
    shutil.copy(nih_bbox_list, tmp_path)
    report = json.loads(_miner("inspect", tmp_path, "--json", "--sample", "20").stdout)
    assert report["images"] == 112_120 and report["boxes"] == 984 and report["images_with_boxes"] == 880
    assert report["findings"]["Nodule"]["boxes"] == 79 and report["findings"]["Hernia"]["images"] == 227
    assert report["no_finding"]["images"] == 60_361
    assert report["problem_counts"] == {"missing": 20}  # the labels without the images


@pytest.mark.parametrize("argv,code,message", [
    (["inspect", "/nonexistent/archive"], 2, "no such file or folder"),
    (["inspect", ".", "--sample", "0"], 2, "argument --sample: must be an integer in [1, 100000000], got '0'"),
])
def test_inspect_bad_input_is_one_line(argv, code, message):
    result = _miner(*argv)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
