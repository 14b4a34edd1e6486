"""Case 1: a decompression bomb behind an honest header.

A DICOM in the Deflated Explicit VR Little Endian transfer syntax that announces 256 x 256 16-bit pixels (128 KiB;
the ``--max-pixels`` guard passes it) and whose deflated stream inflates to 1 GiB (a 1 MB file; zeros). Before the
fix, decoding it peaked at 3.1 GB (`miner show`) and the cheap `miner inspect` at 2.1 GB, calling it sound. Every
verb that reads it now inflates at most what its header promises plus 16 MiB (`miner.data.dicom_bounds`) and
calls it ``too_large``: one line, its peak memory far below 300 MB (the CLI's own ``ru_maxrss``, through the
harness's launcher), nothing touched outside OUT.
"""
from __future__ import annotations

import shutil

import pytest

from miner.errors import ImageError
from tests.data.bombs import dicom_deflated_lie
from tests.hostile.harness import assert_refused, assert_untouched, run_miner

#: the issue's limit on the peak memory of a verb that meets the bomb
PEAK_MB = 300
#: what the refusal says (256 x 256 x 2 bytes = 131,072 of pixel data + 16 MiB for the other elements)
SENTENCE = ("too_large image (its deflated data set inflates past 16,908,288 bytes, while its header (256 x 256 of "
            "16 bits) promises 131,072 bytes of pixel data and 16,777,216 more are allowed for its other elements")
#: the archive image replaced by the bomb (its name stays .png: the format is sniffed from the bytes)
VICTIM = "00000003_000.png"


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """The issue's bomb: 256 x 256 announced, 1 GiB inflated, about 1 MB on disk."""
    path = dicom_deflated_lie(tmp_path_factory.mktemp("bomb") / "bomb.dcm", 256, 256, 1 << 30)
    assert path.stat().st_size < 1_100_000
    return path


@pytest.fixture
def bombed(archive, bomb):
    """The private phantom archive with one of its images replaced by the bomb."""
    shutil.copyfile(bomb, archive / "images" / VICTIM)
    return archive


def test_show_refuses_the_bomb_in_bounded_memory(tmp_path, bomb, watched):
    """`miner show --image` decodes one image in one process without importing torch: the lowest baseline
    (about 55 MB) of the verbs that decode."""
    image = shutil.copyfile(bomb, tmp_path / "bomb.dcm")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nbomb.dcm,Nodule,10,10,50,50\n")
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(["show", boxes, "bomb.dcm", "--image", image, "--out", out / "bomb.png"], cwd=tmp_path,
                       peak_memory=True, timeout=120)
    line = assert_refused(result, ImageError.exit_code, contains=[f"{image}: {SENTENCE}"])
    assert line.startswith("miner show: error: ")
    assert result.max_rss_mb < PEAK_MB, result.describe()
    assert not out.exists()
    assert_untouched(before, watched(out))


@pytest.mark.parametrize("deep", [False, True])
def test_inspect_lists_the_bomb_as_too_large_in_bounded_memory(tmp_path, bombed, watched, deep):
    """The cheap check counts a deflated stream against its ceiling in constant memory (it used to call the bomb
    sound after inflating it whole); --deep decodes with the same bound."""
    before = watched()
    result = run_miner(["inspect", bombed, *(["--deep"] if deep else [])], cwd=tmp_path, peak_memory=True,
                       timeout=120)
    assert "Traceback" not in result.stderr + result.stdout, result.describe()
    assert result.returncode == 0 and not result.err_lines, result.describe()
    assert "1 bad: too_large 1" in result.stdout, result.describe()
    listed = [line for line in result.stdout.splitlines() if VICTIM in line and "too_large" in line]
    assert len(listed) == 1 and SENTENCE.split("(", 1)[1] in listed[0], result.describe()
    assert result.max_rss_mb < PEAK_MB, result.describe()
    assert_untouched(before, watched())


def test_mine_makes_the_bomb_an_error_row_and_mines_the_rest(tmp_path, bombed, tiny_model, watched):
    import pyarrow.dataset as ds

    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(["mine", bombed, "--model", tiny_model, "--out", out, "--workers", "1", "--cpus-per-worker",
                        "1", "--num-cpus", "2", "--batch-size", "4", "--steps", "2", "--no-progress"],
                       cwd=tmp_path, timeout=300)
    assert "Traceback" not in result.stderr + result.stdout, result.describe()
    assert result.returncode == 0, result.describe()
    errors = ds.dataset(out / "errors", format="parquet").to_table().to_pylist()
    assert [(row["image_id"], row["kind"]) for row in errors] == [(VICTIM, "too_large")], errors
    assert SENTENCE.split("(", 1)[1] in errors[0]["error"]
    images = ds.dataset(out / "images", format="parquet").to_table().column("image_id").to_pylist()
    assert sorted(images) == sorted(p.name for p in (bombed / "images").iterdir() if p.name != VICTIM)
    assert_untouched(before, watched(out))


# ---------------------------------------------------------------------------------------------- fuzz (in-process)
# Mutated DICOM files (deflated, RLE, JPEG 2000, native): every reader ends in an image or an ImageError, never in
# another exception, and never inflates or decodes past the ceiling. Budget: the "hostile" profile (200
# derandomized examples per property; tests/hostile/conftest.py).


def _seeds(root):
    """Small valid files of each DICOM path through the readers: {name: bytes}."""
    import numpy as np
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
    )

    from tests.data.bombs import _dicom_dataset
    from tests.data.test_dicom import _j2k

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, size=(32, 32), dtype=np.uint16)
    seeds = {}
    for name, syntax in (("native", ExplicitVRLittleEndian), ("deflated", DeflatedExplicitVRLittleEndian),
                         ("rle", RLELossless), ("j2k", JPEG2000Lossless)):
        ds = _dicom_dataset(32, 32, 1, ExplicitVRLittleEndian if syntax == RLELossless else syntax)
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        if syntax == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        elif syntax == JPEG2000Lossless:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = encapsulate([_j2k((pixels >> 4).astype(np.uint8))])
            ds["PixelData"].VR = "OB"
        ds.save_as(root / f"{name}.dcm", enforce_file_format=True)
        seeds[name] = (root / f"{name}.dcm").read_bytes()
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _seeds(tmp_path_factory.mktemp("seeds"))


def _mutations():
    from hypothesis import strategies as st

    edit = st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8))
    return st.tuples(st.sampled_from(["native", "deflated", "rle", "j2k"]), st.lists(edit, max_size=6),
                     st.one_of(st.none(), st.integers(0, 1 << 16)))


def _mutated(seed: bytes, edits, cut) -> bytes:
    data = bytearray(seed)
    for at, value in edits:
        at = 132 + at % max(len(data) - 132, 1)  # past the preamble: edits where the readers look
        data[at:at + len(value)] = value
    return bytes(data if cut is None else data[:cut % (len(data) + 1)])


def test_fuzzed_dicom_files_end_in_an_image_or_an_image_error(seeds, tmp_path):
    """... and with no warning (pydicom warns about a file's flaws; a CLI would print each as lines of its own)."""
    import warnings

    from hypothesis import given

    from miner.data.image import load_image, probe_image

    path = tmp_path / "fuzz.dcm"

    @given(_mutations())
    def check(case):
        name, edits, cut = case
        path.write_bytes(_mutated(seeds[name], edits, cut))
        for read in (probe_image, load_image):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    read(path)
                except ImageError as err:
                    assert err.kind in ImageError.KINDS and "\n" not in str(err)
            assert not caught, [str(w.message) for w in caught]

    check()


def test_fuzzed_frames_are_checked_or_refused():
    """Any bytes as an RLE frame or a codestream of a 64 x 64 image: accepted, or an ImageError; never more."""
    from hypothesis import given
    from hypothesis import strategies as st

    from miner.data.dicom_bounds import ImageHeader, check_codestream, check_rle_frame

    image = ImageHeader(rows=64, columns=64, frames=1, samples=1, bits=16)
    starts = st.sampled_from([b"", b"\xff\xd8\xff\xc0", b"\xff\xd8\xff\xf7", b"\xff\x4f\xff\x51",
                              b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\x02\x00\x00\x00\x40\x00\x00\x00"])

    @given(starts, st.binary(max_size=300))
    def check(start, rest):
        for check_frame in (check_rle_frame, check_codestream):
            try:
                check_frame(start + rest, image, "fuzz.dcm")
            except ImageError as err:
                assert err.kind in ("corrupt", "too_large", "unsupported") and "\n" not in str(err)

    check()
