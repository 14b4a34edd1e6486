from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miner.errors import UsageError
from miner.io import (BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA, ShardStore, atomic_write_parquet, read_dataset,
                      read_manifest, table_from_rows, write_manifest)


def _box(image_id: str, rank: int = 1) -> dict:
    return {"image_id": image_id, "finding": "Mass", "class_index": 5, "rank": rank, "x": 1.5, "y": 2.0,
            "w": 30.0, "h": 40.25, "score": 0.75, "prob": 0.9, "threshold": 0.5}


def _tables(shard: int, n_boxes: int = 2, n_errors: int = 1) -> dict[str, pa.Table]:
    boxes = table_from_rows([_box(f"s{shard}_{i}.png", rank=i + 1) for i in range(n_boxes)], BOXES_SCHEMA)
    errors = table_from_rows([{"image_id": f"bad{shard}_{i}.png", "path": f"/x/bad{shard}_{i}.png",
                               "kind": "corrupt", "error": "boom"} for i in range(n_errors)], ERRORS_SCHEMA)
    images = table_from_rows([{"image_id": f"s{shard}_{i}.png", "height": 100, "width": 120, "boxes": 1,
                               "probs": [0.1, 0.9]} for i in range(n_boxes)], IMAGES_SCHEMA)
    return {"boxes": boxes, "errors": errors, "images": images}


def test_schemas_are_the_output_contract():
    expected = [("image_id", pa.string()), ("finding", pa.string()), ("class_index", pa.int16()),
                ("rank", pa.int8()), ("x", pa.float32()), ("y", pa.float32()), ("w", pa.float32()),
                ("h", pa.float32()), ("score", pa.float32()), ("prob", pa.float32()), ("threshold", pa.float32())]
    assert [(f.name, f.type) for f in BOXES_SCHEMA] == expected
    assert ERRORS_SCHEMA.names == ["image_id", "path", "kind", "error"]
    assert IMAGES_SCHEMA.field("probs").type == pa.list_(pa.float32())


def test_table_from_rows_casts_to_schema():
    table = table_from_rows([_box("a.png"), _box("a.png", rank=2)], BOXES_SCHEMA)
    assert table.schema == BOXES_SCHEMA
    assert table.column("rank").to_pylist() == [1, 2]
    assert table.column("h").to_pylist() == [40.25, 40.25]  # exact in float32
    assert table_from_rows([], BOXES_SCHEMA).num_rows == 0


def test_atomic_write_leaves_no_temporary(tmp_path):
    table = table_from_rows([_box("a.png")], BOXES_SCHEMA)
    atomic_write_parquet(tmp_path / "x.parquet", table)
    assert sorted(os.listdir(tmp_path)) == ["x.parquet"]
    assert pq.read_table(tmp_path / "x.parquet").equals(table)


def test_shard_store_marks_done_only_after_all_parts(tmp_path):
    store = ShardStore(tmp_path)
    store.prepare()
    store.write_shard(0, **_tables(0), info={"images": 3, "boxes": 2})
    store.write_shard(2, **_tables(2, n_boxes=0, n_errors=0), info={"images": 0})
    assert sorted(store.done()) == [0, 2]
    assert store.done()[0] == {"images": 3, "boxes": 2}
    for dataset in ("boxes", "errors", "images"):
        assert sorted(os.listdir(tmp_path / dataset)) == ["part-000000.parquet", "part-000002.parquet"]
    boxes = read_dataset(tmp_path, "boxes")
    assert boxes.schema == BOXES_SCHEMA
    assert sorted(boxes.column("image_id").to_pylist()) == ["s0_0.png", "s0_1.png"]
    assert read_dataset(tmp_path, "errors").num_rows == 1


def test_clean_stale_removes_temporaries_and_orphans(tmp_path):
    """What a job killed mid-shard leaves: a temporary file, and parts of a shard without its marker."""
    store = ShardStore(tmp_path)
    store.prepare()
    store.write_shard(0, **_tables(0), info={})
    atomic_write_parquet(store.part_path("boxes", 1), _tables(1)["boxes"])   # shard 1: boxes written, no marker
    atomic_write_parquet(store.part_path("errors", 1), _tables(1)["errors"])
    (tmp_path / "images" / ".part-000001.parquet.tmp").write_bytes(b"PAR1 half a file")
    (tmp_path / "._manifest.json.tmp").write_text("{")
    # a reader meets whole files only while the job runs: the hidden temporary is skipped
    assert read_dataset(tmp_path, "images").num_rows == 2
    assert store.clean_stale() == 4
    assert sorted(os.listdir(tmp_path / "boxes")) == ["part-000000.parquet"]
    assert sorted(os.listdir(tmp_path / "errors")) == ["part-000000.parquet"]
    assert not (tmp_path / "._manifest.json.tmp").exists()
    assert sorted(store.done()) == [0]


def test_clear_removes_only_what_the_store_writes(tmp_path):
    store = ShardStore(tmp_path)
    store.prepare()
    store.write_shard(0, **_tables(0), info={})
    write_manifest(tmp_path, {"format": 1})
    (tmp_path / "notes.txt").write_text("mine")
    assert store.has_output()
    store.clear()
    assert not store.has_output()
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_lock_refuses_a_second_writer(tmp_path):
    store = ShardStore(tmp_path)
    with store.lock():
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UsageError, match="another job is writing"):
            with ShardStore(tmp_path).lock():
                pass
    with store.lock():  # released
        pass


def test_manifest_round_trip_and_bad_manifest(tmp_path):
    assert read_manifest(tmp_path) is None
    write_manifest(tmp_path, {"format": 1, "counts": {"boxes": 3}})
    assert read_manifest(tmp_path) == {"format": 1, "counts": {"boxes": 3}}
    assert json.loads((tmp_path / "_manifest.json").read_text())["counts"]["boxes"] == 3
    (tmp_path / "_manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="--overwrite"):
        read_manifest(tmp_path)
