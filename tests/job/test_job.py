"""The mining job end to end on Ray: bad files, image bombs, a full disk, a killed driver, a two-node cluster,
readers of the output.

One uninterrupted run (in the module's shared Ray session) is the reference the other runs must equal exactly:
same shards and batches, one compute thread per actor, so the same floats.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import miner.io
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

    # auth off for the in-process clusters only (tests/conftest.py): Ray reads the mode once per process, and this
    # pytest process hosts several local clusters; the subprocess clusters below run with tokens
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


def test_decode_in_tasks_gives_the_rows_of_decode_in_the_actors(reference, job_archive, job_model, tmp_path):
    """``--decode tasks`` (Ray tasks beside each actor, the GPU default) and the CPU default, ``actor`` (each actor
    decodes its own batches), mine the same rows; the manifest records where decoding ran."""
    root, _ = job_archive
    out = tmp_path / "tasks"
    assert main(["mine", str(root), "--model", str(job_model), "--out", str(out), *OPTIONS, "--decode", "tasks"]) == 0
    assert _rows(out) == _rows(reference[0])
    assert json.loads((out / "_manifest.json").read_text())["runs"][-1]["decode"] == "tasks"
    assert json.loads((reference[0] / "_manifest.json").read_text())["runs"][0]["decode"] == "actor"


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
        f"select count(*), count(distinct image_id), count(distinct finding) from '{out}/boxes/*.parquet'"
    ).fetchall()[0]
    assert count == table.num_rows and images == len(set(frame["image_id"])) and findings == 14
    kinds = duckdb.sql(f"select kind, count(*) from '{out}/errors/*.parquet' group by kind order by kind").fetchall()
    assert kinds == [("corrupt", 1), ("empty", 1), ("missing", 1), ("truncated", 1), ("unsupported", 1)]
    # boxes lie inside their images
    joined = duckdb.sql(f"""select count(*) from '{out}/boxes/*.parquet' b join '{out}/images/*.parquet' i
                            using (image_id) where b.x < 0 or b.y < 0 or b.x + b.w > i.width + 1e-3
                            or b.y + b.h > i.height + 1e-3""").fetchall()[0][0]
    assert joined == 0


def test_image_bombs_become_too_large_rows_and_the_rest_is_mined(ray_session, job_archive, job_model, tmp_path,
                                                                   capsys):
    """A 40,000^2 PNG, a 64-frame 4096^2 DICOM header and a 40,000^2 TIFF among ten good images: three
    `too_large` rows (the files are never decoded), the ten mined, exit 0."""
    from ..data.bombs import dicom_frames_bomb, png_bomb, tiff_bomb

    root, bad = job_archive
    folder = tmp_path / "folder"
    folder.mkdir()
    good = sorted(p for p in (root / "images").glob("*.png") if p.name not in bad.values())[:10]
    for path in good:
        shutil.copy(path, folder / path.name)
    bombs = {png_bomb(folder / "bomb.png", 40_000, 40_000): "PNG header announces 40,000 x 40,000 = 1,600,000,000",
             dicom_frames_bomb(folder / "frames.dcm", 4096, 4096, 64):
                 "DICOM header announces 4,096 x 4,096 x 64 frames = 1,073,741,824",
             tiff_bomb(folder / "bomb.tif", 40_000, 40_000): "TIFF header announces 40,000 x 40,000 = 1,600,000,000"}
    out = tmp_path / "out"
    assert main(["mine", str(folder), "--model", str(job_model), "--out", str(out), "--shard-size", "5",
                 "--batch-size", "5", "--classes", "all", "--workers", "2", "--no-progress"]) == 0
    assert "mined 13 images" in capsys.readouterr().out
    rows = _rows(out)
    assert sorted(r[0] for r in rows["images"]) == sorted(p.name for p in good)
    errors = {r[1]: r for r in rows["errors"]}
    assert sorted(errors) == sorted(str(path) for path in bombs)
    for path, announced in bombs.items():
        _, _, kind, message = errors[str(path)]
        assert kind == "too_large"
        assert message.startswith(f"{path}: too_large image (its {announced} pixels, more than the limit of "
                                  "268,435,456; raise --max-pixels to mine it)"), message
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["identity"]["max_pixels"] == 1 << 28 and manifest["counts"]["errors"] == 3


def test_a_full_disk_stops_with_one_line_readers_see_whole_shards_and_a_rerun_resumes(
        reference, job_archive, job_model, tmp_path, monkeypatch, capsys):
    """ENOSPC while the 4th shard's images part is written (after its errors and boxes parts): exit 74 and one
    line naming OUT, the cause and what to do; at that moment the three folders hold whole shards whose rows
    are the reference's; the same command then resumes and ends with exactly the reference's rows."""
    root, _ = job_archive
    out = tmp_path / "out"
    real_write = miner.io._write_synced
    images_parts = []

    def write(path, data):
        if path.parent.name == "images" and path.name.startswith(".part-"):
            images_parts.append(path)
            if len(images_parts) == 4:
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])  # a full disk takes part of the data, then refuses
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(miner.io, "_write_synced", write)
    command = ["mine", str(root), "--model", str(job_model), "--out", str(out), *OPTIONS]
    assert main(command) == 74
    err = capsys.readouterr().err.strip().splitlines()  # the job's information lines, then the error
    failed = images_parts[3].name[1:-len(".tmp")]
    assert err[-1] == (f"miner mine: error: {out}: cannot write the output: no space left on the device (writing "
                       f"images/{failed}); 3 of 11 shards are complete in it and kept; free space and rerun the "
                       "same command to resume")
    assert sum("error" in line.lower() for line in err) == 1 and "Traceback" not in "\n".join(err)

    # what a reader sees at this moment: the same three shards in every folder, nothing half-written
    import pandas as pd

    listing = {name: sorted(os.listdir(out / name)) for name in ("boxes", "errors", "images", "_shards")}
    shards = [name[5:11] for name in listing["images"]]
    assert len(shards) == 3 and failed[5:11] not in shards
    assert listing["boxes"] == listing["errors"] == listing["images"] == [f"part-{k}.parquet" for k in shards]
    assert listing["_shards"] == [f"{k}.json" for k in shards]
    images, boxes = pd.read_parquet(out / "images"), pd.read_parquet(out / "boxes")
    counts = boxes.groupby("image_id").size()
    assert all(counts.get(i, 0) == n for i, n in zip(images["image_id"], images["boxes"]))  # each image's boxes
    reference_rows = _rows(reference[0])
    visible = set(images["image_id"]) | set(pd.read_parquet(out / "errors")["image_id"])
    assert len(visible) == 3 * SHARD_SIZE
    rows = _rows(out)
    for name in ("boxes", "errors", "images"):
        assert rows[name] == [r for r in reference_rows[name] if r[0] in visible]
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted" and run["error"] == err[-1].split("error: ", 1)[1]

    monkeypatch.setattr(miner.io, "_write_synced", real_write)  # space freed
    assert main(command) == 0
    assert "resuming" in capsys.readouterr().err
    assert _rows(out) == reference_rows
    runs = json.loads((out / "_manifest.json").read_text())["runs"]
    assert [(r["shards"], r["status"]) for r in runs] == [(11, "interrupted"), (8, "complete")]


def _env(short_tmp: Path, name: str, *, token: str | None = None) -> dict[str, str]:
    """A subprocess's environment: its own Ray temp folder, and Ray's authentication as a user would have it:
    none configured (a driver's local cluster then makes its own token) or the cluster's `token`."""
    temp = short_tmp / name
    temp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0")
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


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
        # the driver's local cluster runs with token authentication and a token of its own (none was configured)
        gcs = [pid for pid in session_pids(driver.pid) if _name(pid) == "gcs_server"]
        assert len(gcs) == 1
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{gcs[0]}/environ").read_bytes().decode().split("\0") if "=" in item)
        assert environ["RAY_AUTH_MODE"] == "token" and len(environ["RAY_AUTH_TOKEN"]) == 64
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


def _name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return ""


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# The `ray` CLI of this interpreter's environment: CI runs `.venv/bin/python -m pytest` without the venv on PATH.
RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def _wait_for_nodes(port: int, count: int, env: dict[str, str], timeout: float = 120.0) -> None:
    """Until `ray status` lists `count` active nodes: `ray start --address` returns before the head counts the new
    node's CPUs, and a driver that plans its actors then (a busy machine) sees one node."""
    deadline = time.monotonic() + timeout
    while True:
        status = subprocess.run([RAY_CLI, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                                text=True, timeout=60)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if status.returncode == 0 and len(re.findall(r"^\s*1 node_", active, flags=re.M)) >= count:
            return
        assert time.monotonic() < deadline, f"the cluster has not {count} nodes after {timeout:g} s:\n{status.stdout}"
        time.sleep(0.5)


def test_two_node_cluster_gives_the_same_rows(reference, job_archive, job_model, short_tmp, tmp_path):
    root, _ = job_archive
    port = free_port()
    token = secrets.token_hex(32)  # the two nodes and the driver share it; the cluster refuses anyone else
    sessions = []  # session ids of the two `ray start` commands: every node process stays in its session
    try:
        for name, args in (("head", ["--head", f"--port={port}", "--include-dashboard=false"]),
                           ("node2", [f"--address=127.0.0.1:{port}"])):
            starter = subprocess.Popen(
                [RAY_CLI, "start", *args, "--num-cpus=1", f"--temp-dir={short_tmp / name}",
                 "--object-store-memory=100000000", "--disable-usage-stats"],
                env=_env(short_tmp, name, token=token), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            sessions.append(starter.pid)
            output, _ = starter.communicate(timeout=120)
            assert starter.returncode == 0, output
        _wait_for_nodes(port, 2, _env(short_tmp, "status", token=token))
        out = tmp_path / "out"
        driver = subprocess.run(
            [sys.executable, "-m", "miner", "mine", str(root), "--model", str(job_model), "--out", str(out),
             *OPTIONS, "--address", f"127.0.0.1:{port}"],
            env=_env(short_tmp, "driver2", token=token), capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stderr
        assert "mined 201 images" in driver.stdout
    finally:
        for sid in sessions:
            kill_session(sid)
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["cluster"]["nodes"] == 2 and not run["cluster"]["started_here"]
    # each node has 1 CPU, so no two actors share one; the record lists the actors that were ready before the last
    # shard was written (the job does not wait for the second: on a busy machine it can start too late to mine)
    nodes = [actor["node_id"] for actor in run["actors"]]
    assert 1 <= len(nodes) == len(set(nodes)) <= 2, run
    assert _rows(out) == _rows(reference[0])
