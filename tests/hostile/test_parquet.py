"""Issue 22, case 4: a Parquet folder is untrusted input (README "Output folders are checked before use").

`miner labels`, `miner eval` and `miner report` check every part of ``OUT/boxes``, ``OUT/errors`` and
``OUT/images`` against the output contract (`miner.io.BOXES_SCHEMA`, ...: columns, types, no nulls, readable
data, values a reader relies on) and the manifest and shard markers before they use them. A damaged one ends in
one line naming the file, what is wrong and what to do, exit code 2, and nothing written anywhere. The damage is
made in a copy of a real job's output (one `miner mine` of a 12-image phantom archive, one image of it empty, so
that ``errors/`` holds a row).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miner.errors import UsageError
from miner.io import BOXES_SCHEMA, DATASETS, ContractError, read_part
from tests.hostile.harness import assert_refused, assert_untouched, run_miner

PART = "part-000000.parquet"


@pytest.fixture(scope="module")
def mined(tmp_path_factory, clean_archive, tiny_model) -> Path:
    """A finished job's output over 4 images of the phantom archive, one of them empty (read-only: copy before
    damaging)."""
    base = tmp_path_factory.mktemp("parquet_job")
    archive = base / "archive"
    shutil.copytree(clean_archive, archive)
    entries = archive / "Data_Entry_2017.csv"
    entries.write_text("".join(entries.read_text().splitlines(keepends=True)[:5]))  # 4 images: quick runs
    min((archive / "images").glob("*.png")).write_bytes(b"")  # an error row of kind "empty"
    out = base / "out"
    result = run_miner(["mine", archive, "--model", tiny_model, "--out", out, "--no-progress"], cwd=base)
    assert result.returncode == 0, result.describe()
    for name in DATASETS:
        assert pq.read_table(out / name / PART).num_rows > 0, name  # every dataset has rows to damage
    return out


@pytest.fixture
def out(mined, tmp_path) -> Path:
    """A private copy of the job's output that a test may damage."""
    return Path(shutil.copytree(mined, tmp_path / "out"))


# ------------------------------------------------------------------------------------------------------------
# the damage: each returns the file the error line must name


def _rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _random_bytes(out: Path) -> Path:
    path = out / "images" / PART
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _truncated(out: Path) -> Path:
    path = out / "errors" / PART
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_parquet(out: Path) -> Path:
    path = out / "boxes" / PART
    path.write_text("image_id,finding\n00000001_000.png,Mass\n")
    return path


def _missing_column(out: Path) -> Path:
    path = out / "boxes" / PART
    _rewrite(path, lambda t: t.drop_columns(["w"]))
    return path


def _wrong_type(out: Path) -> Path:
    path = out / "boxes" / PART
    _rewrite(path, lambda t: t.set_column(t.schema.get_field_index("x"), "x", t.column("x").cast(pa.float64())))
    return path


def _extra_column(out: Path) -> Path:
    path = out / "boxes" / PART
    _rewrite(path, lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)))
    return path


def _nan_width(out: Path) -> Path:
    path = out / "boxes" / PART

    def change(t: pa.Table) -> pa.Table:
        w = t.column("w").to_numpy().copy()
        w[0] = np.nan
        return t.set_column(t.schema.get_field_index("w"), t.schema.field("w"), pa.array(w, pa.float32()))

    _rewrite(path, change)
    return path


def _null_ids(out: Path) -> Path:
    path = out / "images" / PART
    _rewrite(path, lambda t: t.set_column(0, pa.field("image_id", pa.string()),
                                          pa.array([None] * t.num_rows, pa.string())))
    return path


def _manifest_truncated(out: Path) -> Path:
    path = out / "_manifest.json"
    path.write_text(path.read_text()[:200])
    return path


def _manifest_not_an_object(out: Path) -> Path:
    path = out / "_manifest.json"
    path.write_text(json.dumps([1, 2, 3]))
    return path


DAMAGE = {
    "images part of random bytes": (_random_bytes, "not a readable Parquet file"),
    "errors part truncated": (_truncated, "not a readable Parquet file"),
    "boxes part that is CSV": (_not_parquet, "not a readable Parquet file"),
    "boxes part without w": (_missing_column, "missing column w"),
    "boxes part with x as double": (_wrong_type, "x is double, not float"),
    "boxes part with an extra column": (_extra_column, "unknown column note"),
    "boxes part with a NaN width": (_nan_width, "column w holds 1 value that is not finite and > 0"),
    "images part with null ids": (_null_ids, "column image_id holds"),
    "manifest truncated": (_manifest_truncated, "not a valid manifest"),
    "manifest a JSON list": (_manifest_not_an_object, "not a valid manifest (a JSON list, not an object)"),
}


def _verb(verb: str, out: Path, tmp_path: Path) -> list:
    return {"labels": ["labels", out, "--format", "coco", "--to", tmp_path / "labels"],
            "eval": ["eval", out, "--json", tmp_path / "eval.json"],
            "report": ["report", out, "--to", tmp_path / "report"]}[verb]


# every damage through one verb, the verbs in turn: the three read OUT through the same checked reader
# (miner/output.py), so each verb meets a third of the damages and every damage is met once (CI's time)
VERBS = ("labels", "eval", "report")


@pytest.mark.parametrize("damage,verb", [(d, VERBS[i % len(VERBS)]) for i, d in enumerate(DAMAGE)])
def test_a_damaged_output_is_refused_with_one_line(out, tmp_path, watched, damage, verb):
    make, problem = DAMAGE[damage]
    path = make(out)
    before = watched(out)
    line = assert_refused(run_miner(_verb(verb, out, tmp_path), cwd=tmp_path), 2, contains=[str(path), problem])
    assert f"miner {verb}: error: " in line
    assert_untouched(before, watched(out))  # no labels folder, no eval.json, no report folder, no temporary one


def test_the_line_says_how_to_repair_and_that_works(out, tmp_path, watched, clean_archive, tiny_model):
    """A damaged part of a finished shard names the shard's marker: deleting it and rerunning the same `miner mine`
    rewrites the shard, and the report is then written."""
    _wrong_type(out)
    line = assert_refused(run_miner(["report", out, "--to", tmp_path / "report"], cwd=tmp_path), 2)
    marker = out / "_shards" / "000000.json"
    assert f"delete {marker} and rerun the same miner mine command to rewrite shard 0" in line
    marker.unlink()
    manifest = json.loads((out / "_manifest.json").read_text())
    archive = manifest["archive"]["path"]
    mine = run_miner(["mine", archive, "--model", tiny_model, "--out", out, "--no-progress"], cwd=tmp_path)
    assert mine.returncode == 0, mine.describe()
    report = run_miner(["report", out, "--to", tmp_path / "report", "--top", "1", "--sample", "0"], cwd=tmp_path)
    assert report.returncode == 0, report.describe()
    assert pq.read_schema(out / "boxes" / PART).field("x").type == pa.float32()


@pytest.mark.parametrize("verb", ["labels", "eval"])
def test_a_stray_file_in_a_dataset_folder_is_named(out, tmp_path, watched, verb):
    """labels and eval read whole folders, as pyarrow and pandas do: a file that is not a part is named."""
    stray = out / "boxes" / "notes.txt"
    stray.write_text("my notes")
    before = watched(out)
    assert_refused(run_miner(_verb(verb, out, tmp_path), cwd=tmp_path), 2,
                   contains=[str(stray), "not a part of the output contract", "move it out"])
    assert_untouched(before, watched(out))


def test_a_damaged_shard_marker_is_named_by_report(out, tmp_path, watched):
    marker = out / "_shards" / "000000.json"
    marker.write_text('{"images": "twelve"}')
    before = watched(out)
    assert_refused(run_miner(_verb("report", out, tmp_path), cwd=tmp_path), 2,
                   contains=[str(marker), "not a valid shard marker"])
    assert_untouched(before, watched(out))


def test_eval_checks_a_predictions_file_given_directly(mined, tmp_path, watched):
    """`miner eval FILE.parquet --gt CSV`: the file is checked against the boxes contract; a good one is scored."""
    archive = Path(json.loads((mined / "_manifest.json").read_text())["archive"]["path"])
    good = tmp_path / "good.parquet"
    shutil.copy(mined / "boxes" / PART, good)
    result = run_miner(["eval", good, "--gt", archive / "BBox_List_2017.csv"], cwd=tmp_path)
    assert result.returncode == 0 and "mined boxes vs" in result.stdout, result.describe()
    bad = tmp_path / "bad.parquet"
    table = pq.read_table(good)
    pq.write_table(table.set_column(table.schema.get_field_index("rank"), "rank",
                                    table.column("rank").cast(pa.int64())), bad)
    before = watched()
    assert_refused(run_miner(["eval", bad, "--gt", archive / "BBox_List_2017.csv"], cwd=tmp_path), 2,
                   contains=[str(bad), "rank is int64, not int8", "give a file or folder that miner mine wrote"])
    assert_untouched(before, watched())


# ------------------------------------------------------------------------------------------------------------
# in-process: the reader against hand-made parts and random damage


def _boxes(n: int = 4) -> pa.Table:
    return pa.table({"image_id": [f"{i}.png" for i in range(n)], "finding": ["Mass"] * n,
                     "class_index": np.full(n, 4, np.int16), "rank": np.ones(n, np.int8),
                     "x": np.zeros(n, np.float32), "y": np.zeros(n, np.float32), "w": np.full(n, 5, np.float32),
                     "h": np.full(n, 6, np.float32), "score": np.full(n, 0.5, np.float32),
                     "prob": np.full(n, 0.9, np.float32), "threshold": np.full(n, 0.5, np.float32)},
                    schema=BOXES_SCHEMA)


def test_read_part_accepts_the_contract_in_any_column_order_and_nullability(tmp_path):
    table = _boxes()
    path = tmp_path / "p.parquet"
    loose = pa.schema([f.with_nullable(True) for f in reversed(list(table.schema))])
    pq.write_table(table.select(loose.names).cast(loose), path)
    assert read_part(path, "boxes").equals(table)


@pytest.mark.parametrize("change, problem", [
    (lambda t: t.set_column(3, "rank", pa.array(np.zeros(t.num_rows, np.int8))),
     "rank holds 4 values that are not >= 1"),
    (lambda t: t.set_column(7, "h", pa.array(np.full(t.num_rows, -1, np.float32))), "h holds 4 values"),
    (lambda t: t.set_column(4, "x", pa.array([0, np.inf, 0, 0], pa.float32())),
     "x holds 1 value that is not finite (first at row 1)"),
    (lambda t: t.rename_columns(["image_id", "image_id", *t.column_names[2:]]), "column image_id appears 2 times"),
])
def test_read_part_names_the_value_or_column_at_fault(tmp_path, change, problem):
    path = tmp_path / "p.parquet"
    pq.write_table(change(_boxes()), path)
    with pytest.raises(ContractError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        read_part(path, "boxes")


def test_read_part_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.parquet")  # reading it would block for ever
    with pytest.raises(ContractError, match="not a regular file"):
        read_part(tmp_path / "fifo.parquet", "boxes")
    with pytest.raises(ContractError, match="cannot be read"):
        read_part(tmp_path / "missing.parquet", "boxes")


def test_fuzz_damaged_bytes_give_a_valid_table_or_one_contract_error(tmp_path):
    """Random damage to a valid part (bytes overwritten, cut, appended): `read_part` returns a table of exactly the
    contract's schema or raises `ContractError` with a one-line message naming the file, never anything else."""
    from hypothesis import given
    from hypothesis import strategies as st

    path = tmp_path / "p.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(_boxes(20), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()

    @given(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8),
           st.integers(0, len(data)), st.binary(max_size=16))
    def check(writes, cut, tail):
        damaged = bytearray(data)
        for at, value in writes:
            damaged[at] = value
        path.write_bytes(bytes(damaged[:cut]) + tail)
        try:
            table = read_part(path, "boxes")
        except ContractError as err:
            assert str(path) in str(err) and "\n" not in str(err)
        else:
            assert table.schema.equals(BOXES_SCHEMA)

    check()
    assert issubclass(ContractError, UsageError)


#: the manifest's field names the readers look up, for the fuzz below to combine
_KEYS = ("format", "status", "created", "updated", "identity", "archive", "model", "config", "shards", "versions",
         "counts", "runs", "path", "source", "images", "has_labels", "options", "uncertain", "sha256", "classes",
         "backend", "provider", "device", "method", "layer", "map_size", "input_size", "in_chans", "pipeline",
         "mining", "boxes", "recipe", "backend_options", "prob_threshold", "count", "bounds", "size", "started",
         "finished", "seconds", "startup_seconds", "images_per_second", "steady_images_per_second", "workers")


def test_fuzz_any_json_manifest_is_refused_in_one_line_or_read(tmp_path):
    """Any JSON as ``_manifest.json``: `read_manifest` raises `ContractError` (one line naming it), or every reader
    of the report's job description, state and archive options takes it without an exception."""
    from hypothesis import given
    from hypothesis import strategies as st

    from miner.io import read_manifest
    from miner.report import describe
    from miner.report.job import JobSnapshot, job_state

    scalars = st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4), max_leaves=12)
    empty = pa.table({})

    @given(st.dictionaries(st.sampled_from(_KEYS), values, max_size=6) | values)
    def check(manifest):
        (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
        try:
            data = read_manifest(tmp_path)
        except ContractError as err:
            assert "\n" not in str(err) and "_manifest.json" in str(err)
            return
        state = job_state(tmp_path, data, {})
        classes = list(data.get("model", {}).get("classes") or [])
        snapshot = JobSnapshot(out=tmp_path, manifest=data, state=state, boxes=empty, errors=empty, images=empty,
                               classes=classes)
        describe.archive_rows(snapshot, given=None, gt_boxes=None)
        describe.model_rows(snapshot, None)
        describe.option_rows(snapshot)
        describe.version_rows(snapshot)
        describe.run_rows(data)
        describe.last_rate(snapshot)
        state.line()

    check()
