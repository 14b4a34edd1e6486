"""The mining job end to end on Ray: bad files, a killed driver, a two-node cluster, readers of the output.

One uninterrupted run (in the module's shared Ray session) is the reference the other runs must equal exactly:
same shards and batches, one compute thread per actor, so the same floats.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from miner.cli import main
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA

from .conftest import IMAGES, free_port, kill_session, session_pids

pytestmark = pytest.mark.ray

SHARD_SIZE = 20
OPTIONS = ["--shard-size", str(SHARD_SIZE), "--batch-size", "5", "--classes", "all", "--steps", "3",
           "--workers", "2", "--cpus-per-worker", "1", "--no-progress"]


@pytest.fixture(scope="module")
def ray_session(short_tmp):
    """One local Ray for the in-process runs of this module (run_job reuses a session it did not start)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(short_tmp / "shared"), logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(ray_session, job_archive, job_model, tmp_path_factory):
    """An uninterrupted run: (out folder, exit code)."""
    root, _ = job_archive
    out = tmp_path_factory.mktemp("reference") / "out"
    code = main(["mine", str(root), "--model", str(job_model), "--out", str(out), *OPTIONS])
    return out, code


def _rows(out: Path) -> dict[str, list[tuple]]:
    """Every dataset's rows, sorted (row order across shards is not part of the contract)."""
    result = {}
    for name, schema in (("boxes", BOXES_SCHEMA), ("errors", ERRORS_SCHEMA), ("images", IMAGES_SCHEMA)):
        table = ds.dataset(out / name, format="parquet").to_table()
        assert table.schema == schema
        columns = table.to_pydict()
        rows = [tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in zip(*columns.values())]
        result[name] = sorted(rows)
    return result


def test_bad_files_become_error_rows(reference, job_archive, capsys):
    out, code = reference
    root, bad = job_archive
    assert code == 0
    rows = _rows(out)
    errors = {r[0]: r[2] for r in rows["errors"]}
    assert errors == {image_id: kind for kind, image_id in bad.items()}  # one row per bad file, its kind
    assert len(rows["errors"]) == 5
    # a row for every good image, boxes only for good images
    from miner.data import read_archive

    good = {r.image_id for r in read_archive(root).records} - set(bad.values())
    assert len(good) == IMAGES + 1 - 5  # the GIF was added to the archive
    assert {r[0] for r in rows["images"]} == good
    assert {r[0] for r in rows["boxes"]} <= good
    assert len(rows["boxes"]) > len(good)  # --classes all: several findings with boxes per image
    per_image = {}
    for r in rows["boxes"]:
        per_image[r[0]] = per_image.get(r[0], 0) + 1
    assert all(r[3] == per_image.get(r[0], 0) for r in rows["images"])
    assert all(1 <= r[3] <= 3 for r in rows["boxes"])  # rank
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"images": IMAGES + 1, "processed": len(good), "boxes": len(rows["boxes"]),
                                  "errors": 5, "shards_done": 11}
    assert manifest["shards"]["bounds"][:2] == [[0, 20], [20, 40]] and manifest["shards"]["bounds"][-1] == [200, 201]
    assert manifest["model"]["classes"][0] == "Atelectasis" and len(manifest["model"]["sha256"]) == 64
    assert set(manifest["versions"]) >= {"miner", "torch", "ray", "onnxruntime"}

    # a rerun skips everything and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert main(["mine", str(root), "--model", str(manifest["model"]["path"]), "--out", str(out), *OPTIONS]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    # a different option on the same OUT is refused with one line
    code = main(["mine", str(root), "--model", str(manifest["model"]["path"]), "--out", str(out),
                 *OPTIONS, "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pipeline.mining" in err[0] and "--overwrite" in err[0]


def test_output_opens_in_pyarrow_pandas_and_duckdb(reference):
    import duckdb
    import pandas as pd

    import pyarrow.parquet as pq

    out, _ = reference
    table = pq.read_table(out / "boxes")
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("image_id", "string"), ("finding", "string"), ("class_index", "int16"), ("rank", "int8"),
        ("x", "float"), ("y", "float"), ("w", "float"), ("h", "float"), ("score", "float"), ("prob", "float"),
        ("threshold", "float")]
    frame = pd.read_parquet(out / "boxes")
    assert len(frame) == table.num_rows
    assert str(frame["class_index"].dtype) == "int16" and str(frame["x"].dtype) == "float32"
    count, images, findings = duckdb.sql(
        f"select count(*), count(distinct image_id), count(distinct finding) from '{out}/boxes/*.parquet'").fetchall()[0]
    assert count == table.num_rows and images == len(set(frame["image_id"])) and findings == 14
    kinds = duckdb.sql(f"select kind, count(*) from '{out}/errors/*.parquet' group by kind order by kind").fetchall()
    assert kinds == [("corrupt", 1), ("empty", 1), ("missing", 1), ("truncated", 1), ("unsupported", 1)]
    # boxes lie inside their images
    joined = duckdb.sql(f"""select count(*) from '{out}/boxes/*.parquet' b join '{out}/images/*.parquet' i
                            using (image_id) where b.x < 0 or b.y < 0 or b.x + b.w > i.width + 1e-3
                            or b.y + b.h > i.height + 1e-3""").fetchall()[0][0]
    assert joined == 0


def _env(short_tmp: Path, name: str) -> dict[str, str]:
    temp = short_tmp / name
    temp.mkdir(exist_ok=True)
    return {**os.environ, "RAY_TMPDIR": str(temp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def test_killed_driver_then_rerun_gives_the_same_rows(reference, job_archive, job_model, short_tmp, tmp_path):
    root, _ = job_archive
    out = tmp_path / "out"
    command = [sys.executable, "-m", "miner", "mine", str(root), "--model", str(job_model), "--out", str(out),
               *OPTIONS, "--num-cpus", "2"]
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen(command, env=_env(short_tmp, "killed"), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and driver.poll() is None:
            if len(list((out / "_shards").glob("*.json"))) >= 1 if (out / "_shards").is_dir() else False:
                break
            time.sleep(0.02)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        kill_session(driver.pid)
        log.close()
    assert session_pids(driver.pid) == [] or all(_zombie(p) for p in session_pids(driver.pid))
    done = len(list((out / "_shards").glob("*.json")))
    assert 1 <= done < 11  # killed mid-way
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "running"

    assert main(["mine", str(root), "--model", str(job_model), "--out", str(out), *OPTIONS]) == 0
    assert _rows(out) == _rows(reference[0])
    assert sorted(p.name for p in (out / "boxes").iterdir()) == [f"part-{k:06d}.parquet" for k in range(11)]
    runs = json.loads((out / "_manifest.json").read_text())["runs"]
    assert [(r["shards"], r["status"]) for r in runs] == [(11, "killed"), (11 - done, "complete")]


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# The `ray` CLI of this interpreter's environment: CI runs `.venv/bin/python -m pytest` without the venv on PATH.
RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def test_two_node_cluster_gives_the_same_rows(reference, job_archive, job_model, short_tmp, tmp_path):
    root, _ = job_archive
    port = free_port()
    sessions = []  # session ids of the two `ray start` commands: every node process stays in its session
    try:
        for name, args in (("head", ["--head", f"--port={port}", "--include-dashboard=false"]),
                           ("node2", [f"--address=127.0.0.1:{port}"])):
            starter = subprocess.Popen(
                [RAY_CLI, "start", *args, "--num-cpus=1", f"--temp-dir={short_tmp / name}",
                 "--object-store-memory=100000000", "--disable-usage-stats"],
                env=_env(short_tmp, name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            sessions.append(starter.pid)
            output, _ = starter.communicate(timeout=120)
            assert starter.returncode == 0, output
        out = tmp_path / "out"
        driver = subprocess.run(
            [sys.executable, "-m", "miner", "mine", str(root), "--model", str(job_model), "--out", str(out),
             *OPTIONS, "--address", f"127.0.0.1:{port}"],
            env=_env(short_tmp, "driver2"), capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stderr
        assert "mined 201 images" in driver.stdout
    finally:
        for sid in sessions:
            kill_session(sid)
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["cluster"]["nodes"] == 2 and not run["cluster"]["started_here"]
    assert len({actor["node_id"] for actor in run["actors"]}) == 2  # one actor on each node
    assert _rows(out) == _rows(reference[0])
