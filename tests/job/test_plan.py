from __future__ import annotations

import hashlib

import pytest

from miner.data.records import Record
from miner.errors import UsageError
from miner.job.plan import Shard, archive_fingerprint, check_identity, model_files, model_hash, plan_shards
from miner.job.summary import BatchEvent, steady_rate, steady_window


def test_plan_shards_boundaries():
    assert plan_shards(10, 4) == [Shard(0, 0, 4), Shard(1, 4, 8), Shard(2, 8, 10)]
    assert plan_shards(8, 4) == [Shard(0, 0, 4), Shard(1, 4, 8)]
    assert [len(s) for s in plan_shards(5, 100)] == [5]
    assert plan_shards(0, 4) == []
    with pytest.raises(UsageError, match="--shard-size"):
        plan_shards(10, 0)


def _records(root, labels=("Mass",)):
    return [Record(f"{i}.png", f"{root}/images/{i}.png", labels if i == 1 else ()) for i in range(3)]


def test_archive_fingerprint_tracks_content_not_location():
    base = archive_fingerprint(_records("/a"), "/a")
    assert archive_fingerprint(_records("/mnt/b"), "/mnt/b") == base      # the archive moved
    assert archive_fingerprint(_records("/a", labels=("Nodule",)), "/a") != base
    assert archive_fingerprint(list(reversed(_records("/a"))), "/a") != base
    assert archive_fingerprint(_records("/a")[:2], "/a") != base


def test_model_hash_covers_onnx_external_data(tmp_path):
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"graph")
    assert model_files(graph) == [graph]
    assert model_hash(graph) == hashlib.sha256(b"graph").hexdigest()
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    assert model_files(graph) == [graph, tmp_path / "m.onnx.data"]
    assert model_hash(graph) == hashlib.sha256(b"graphweights").hexdigest()


def test_check_identity_names_the_difference(tmp_path):
    same = {"archive": "abc", "model_sha256": "123", "shard_size": 64}
    check_identity(same, dict(same), out=tmp_path)
    with pytest.raises(UsageError, match=r"shard_size: 64 there, 32 now.*--overwrite"):
        check_identity(same, {**same, "shard_size": 32}, out=tmp_path)


def test_steady_rate_window():
    # worker 0 finishes batches at 10, 12, 14, 16; worker 1 (slow start) at 13, 15, 17; 8 images each
    events = [BatchEvent(0, t - 2, t, 8) for t in (10, 12, 14, 16)] + [BatchEvent(1, t - 2, t, 8) for t in (13, 15, 17)]
    # window (13, 16]: batches finished at 14, 15, 16 -> 24 images in 3 s
    assert steady_rate(events) == pytest.approx(8.0)
    assert steady_window(events) == (24, 3)
    assert steady_rate([BatchEvent(0, 0, 1, 8)]) is None
    assert steady_rate([]) is None


def test_progress_logs_lines_off_a_terminal():
    import io

    from miner.job.progress import Progress

    lines = []
    progress = Progress(10, log=lines.append, interval=0.0, stream=io.StringIO())
    assert not progress.tty
    progress.update(4, boxes=3, errors=1)
    progress.update(6, boxes=2)
    progress.close()
    assert [line.split(", 5 boxes")[0] for line in lines[-1:]] == ["mined 10/10 images (100.0%)"]
    assert lines[0].startswith("mined 4/10 images (40.0%), 3 boxes, 1 errors, ")
    silent = []
    Progress(10, enabled=False, log=silent.append, interval=0.0, stream=io.StringIO()).update(10)
    assert silent == []


def test_worker_env_threads_and_malloc():
    from miner.job.cluster import MALLOC_TUNED, worker_env

    env = worker_env(threads=3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert {k: env[k] for k in MALLOC_TUNED} == {"MALLOC_MMAP_THRESHOLD_": "4294967296",
                                                 "MALLOC_TRIM_THRESHOLD_": "68719476736",
                                                 "MALLOC_TOP_PAD_": "1073741824"}
    assert not any(k.startswith("MALLOC_") for k in worker_env(threads=1, malloc="default"))
    with pytest.raises(UsageError, match="--malloc"):
        worker_env(threads=1, malloc="jemalloc")


def test_plan_workers_fills_the_cluster():
    from miner.job.cluster import ClusterInfo, WorkerResources, plan_workers

    cpu = ClusterInfo(address="x", started_here=True, cpus=8, gpus=0, nodes=1)
    gpu = ClusterInfo(address="x", started_here=False, cpus=32, gpus=4, nodes=2)
    assert plan_workers(cpu, workers=None, cpus_per_worker=2, gpus_per_worker=None) == WorkerResources(4, 2, 0.0)
    assert plan_workers(gpu, workers=None, cpus_per_worker=2, gpus_per_worker=None) == WorkerResources(4, 2, 1.0)
    assert plan_workers(gpu, workers=None, cpus_per_worker=1, gpus_per_worker=0.5).workers == 8
    assert plan_workers(gpu, workers=None, cpus_per_worker=1, gpus_per_worker=None).device == "cuda"
    attached = ClusterInfo(address="x", started_here=False, cpus=8, gpus=0, nodes=1)
    assert plan_workers(attached, workers=3, cpus_per_worker=1, gpus_per_worker=1).device == "cuda"  # autoscaling
    # a local cluster cannot grow: a plan it can never run is refused at once (no wait for resources)
    with pytest.raises(UsageError, match="local Ray cluster has no GPUs"):
        plan_workers(cpu, workers=3, cpus_per_worker=1, gpus_per_worker=1)
    with pytest.raises(UsageError, match="more CPUs than the local Ray cluster has"):
        plan_workers(cpu, workers=None, cpus_per_worker=9, gpus_per_worker=None)
    with pytest.raises(UsageError, match="decode tasks would wait forever"):
        plan_workers(cpu, workers=8, cpus_per_worker=1, gpus_per_worker=None, decode_cpus=1)
    assert plan_workers(cpu, workers=None, cpus_per_worker=2, gpus_per_worker=None, decode_cpus=1).workers == 3
    with pytest.raises(UsageError, match="no GPUs"):
        plan_workers(cpu, workers=None, cpus_per_worker=1, gpus_per_worker=1)
    with pytest.raises(UsageError, match="--cpus-per-worker"):
        plan_workers(cpu, workers=None, cpus_per_worker=0, gpus_per_worker=None)
