from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import miner.io
from miner.errors import UsageError, WriteError
from miner.io import (
    BOXES_SCHEMA,
    ERRORS_SCHEMA,
    IMAGES_SCHEMA,
    ShardStore,
    atomic_write_parquet,
    read_dataset,
    read_manifest,
    table_from_rows,
    write_manifest,
)


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


# ---------------------------------------------------------------------------------------------- write failures


def _listing(root) -> dict[str, list[str]]:
    """Every file under the store's folders, hidden ones included."""
    return {name: sorted(os.listdir(root / name)) for name in ("boxes", "errors", "images", "_shards")}


def _whole_shards(root) -> list[int]:
    """The shards a reader sees, asserting that each is whole: the same part numbers in the three folders, no
    temporary file, and every image row's box count equal to the rows of its boxes."""
    listing = _listing(root)
    parts = {name: sorted(int(f[5:11]) for f in listing[name]) for name in ("boxes", "errors", "images")}
    assert parts["boxes"] == parts["errors"] == parts["images"], listing
    assert not any(f.startswith(".") for files in listing.values() for f in files), listing
    boxes = read_dataset(root, "boxes").to_pydict()
    images = read_dataset(root, "images").to_pydict()
    per_image = {i: boxes["image_id"].count(i) for i in images["image_id"]}
    assert per_image == dict(zip(images["image_id"], images["boxes"]))
    assert set(boxes["image_id"]) <= set(images["image_id"])
    return parts["images"]


# the calls `write_shard` makes, in order: three temporaries, three renames, the marker (temporary + rename)
FAILURE_POINTS = [("write", 0), ("write", 1), ("write", 2), ("rename", 0), ("rename", 1), ("rename", 2),
                  ("write", 3), ("rename", 3)]


@pytest.mark.parametrize("step,nth", FAILURE_POINTS)
def test_a_failed_shard_write_leaves_whole_shards_only(tmp_path, monkeypatch, step, nth):
    """ENOSPC at any write or rename of a shard: one `WriteError` that names OUT, the cause and what to do
    (exit code 74), nothing of that shard visible, the shards before it untouched; the retry writes it whole."""
    store = ShardStore(tmp_path)
    store.prepare()
    store.write_shard(0, **_tables(0), info={"images": 3})
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    calls = {"write": 0, "rename": 0}
    real_write, real_replace = miner.io._write_synced, os.replace

    def write(path, data):
        calls["write"] += 1
        if step == "write" and calls["write"] == nth + 1:
            with open(path, "wb") as f:  # what a full disk does: part of the data lands, then ENOSPC
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    def replace(src, dst):
        calls["rename"] += 1
        if step == "rename" and calls["rename"] == nth + 1:  # a full directory block: rename needs space too
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(miner.io, "_write_synced", write)
    monkeypatch.setattr(miner.io.os, "replace", replace)
    with pytest.raises(WriteError) as info:
        store.write_shard(1, **_tables(1), info={"images": 3})
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: cannot write the output: no space left on the device")
    assert message.endswith("free space and rerun the same command to resume") and "\n" not in message
    assert info.value.exit_code == 74
    assert _whole_shards(tmp_path) == [0] and sorted(store.done()) == [0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(miner.io, "_write_synced", real_write)
    monkeypatch.setattr(miner.io.os, "replace", real_replace)
    store.write_shard(1, **_tables(1), info={"images": 3})
    assert _whole_shards(tmp_path) == [0, 1] and sorted(store.done()) == [0, 1]
    assert read_dataset(tmp_path, "boxes").num_rows == 4


def test_an_interrupt_mid_commit_rolls_the_shard_back(tmp_path, monkeypatch):
    """Ctrl-C or `ray job stop`'s SIGTERM (raised as KeyboardInterrupt) between two renames: the shard goes."""
    store = ShardStore(tmp_path)
    store.prepare()
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(miner.io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(0, **_tables(0), info={})
    assert [os.path.basename(os.path.dirname(p)) for p in calls] == ["errors", "boxes"]  # images renamed last
    assert _listing(tmp_path) == {"boxes": [], "errors": [], "images": [], "_shards": []}


@pytest.mark.parametrize("code,cause,action", [
    (errno.EROFS, "read-only file system", "make OUT writable and rerun the same command to resume"),
    (errno.EDQUOT, "disk quota exceeded", "free space and rerun the same command to resume"),
    (errno.EACCES, "permission denied", "make OUT writable and rerun the same command to resume"),
])
def test_every_writing_step_reports_one_line(tmp_path, monkeypatch, code, cause, action):
    """The lock file, the folders, the manifest: an unwritable OUT is a `WriteError`, never a traceback."""
    real_open, real_mkdir = os.open, os.mkdir

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[0]))

    out = tmp_path / "out"
    monkeypatch.setattr(miner.io.os, "open", fail)
    with pytest.raises(WriteError) as info:
        with ShardStore(out).lock():
            pass
    assert str(info.value) == f"{out}: cannot write the output: {cause} (writing .lock); {action}"
    monkeypatch.setattr(miner.io.os, "open", real_open)
    monkeypatch.setattr(os, "mkdir", fail)
    with pytest.raises(WriteError, match=f"{cause} \\(writing boxes\\); {action}$"):
        ShardStore(out).prepare()
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    monkeypatch.setattr(miner.io, "_write_synced", fail)
    with pytest.raises(WriteError, match=f"{cause} \\(writing _manifest.json\\); {action}$"):
        write_manifest(out, {"format": 1})


def _mount_tmpfs(path, size: str) -> bool:
    """Mount a tmpfs of `size` at `path` (needs root and a kernel that lets this container mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"am-{uuid.uuid4().hex[:8]}", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_real_full_file_system_leaves_whole_shards(tmp_path):
    """Shards written into a 64 KiB tmpfs until the kernel says ENOSPC; then room is made and the rest goes."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "64k"):
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it here")
    try:
        store = ShardStore(mount)
        store.prepare()
        tables = {k: _tables(k, n_boxes=40, n_errors=5) for k in range(40)}
        written = []
        with pytest.raises(WriteError) as info:
            for k, parts in tables.items():
                store.write_shard(k, **parts, info={"images": 45})
                written.append(k)
        assert 1 <= len(written) < 40
        assert "no space left on the device" in str(info.value)
        assert _whole_shards(mount) == written == sorted(store.done())
        # free space: the same writes go on where they stopped
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        for k in range(len(written), 40):
            store.write_shard(k, **tables[k], info={"images": 45})
        assert _whole_shards(mount) == list(range(40))
        assert read_dataset(mount, "boxes").num_rows == 40 * 40
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # detach now, free when unused
