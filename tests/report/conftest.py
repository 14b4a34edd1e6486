"""Job outputs the report tests look at, made once for the package in one local Ray session:

- ``demo``: `miner demo` on 30 phantoms (ground truth, one error row of each kind); the demo writes its report;
- ``markup``: a plain folder of images (no labels, no ground truth) whose file names hold markup, one of them a
  zero-byte file (an error row), mined with ``--classes all``; ``markup_report`` its report with heatmaps;
- ``interrupted``: a job over the demo's archive stopped after its first shard (Ctrl-C while shard 1 is being
  written), as the driver leaves it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: file names a reviewer's browser must show as text (none holds "/", so each is one file name)
MARKUP_IMAGE = "<img src=x onerror=alert(1)>.png"
MARKUP_NAMES = (MARKUP_IMAGE, "\"'><b onmouseover=alert(3)>hover.png", "plain & simple.png", "a.png", "b.png",
                "c.png")
MARKUP_BROKEN = "<svg onload=alert(2)>.png"
DEMO_IMAGES = 30


@pytest.fixture(scope="package")
def ray_session():
    """One local Ray for every job of this package (run_job and run_demo reuse a session they did not start)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp = Path(tempfile.mkdtemp(prefix="amr", dir="/tmp"))  # short: Ray's socket paths are limited
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), logging_level="warning")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="package")
def demo(ray_session, tmp_path_factory):
    """`miner demo` on 30 images (no overlays: tests/test_demo.py looks at them): its folder (with ``report/``)
    and its `DemoResult`."""
    from miner.config import DemoConfig
    from miner.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_demo(out, config=DemoConfig(images=DEMO_IMAGES, overlays=0), progress=False,
                      log=lambda text: None)
    return out, result


@pytest.fixture(scope="package")
def markup(ray_session, tmp_path_factory):
    """A folder archive of 6 images named with markup (plus a broken one), mined with --classes all."""
    import cv2

    from miner.config import JobConfig
    from miner.demo import default_model_path
    from miner.job import run_job
    from miner.phantoms import make_phantoms

    base = tmp_path_factory.mktemp("markup")
    source = make_phantoms(base / "phantoms", images=len(MARKUP_NAMES), size=192, seed=11)
    folder = base / "archive"
    folder.mkdir()
    for name, record in zip(MARKUP_NAMES, source.records):
        assert cv2.imwrite(str(folder / name), cv2.imread(record.path, cv2.IMREAD_UNCHANGED))
    (folder / MARKUP_BROKEN).write_bytes(b"")
    out = base / "out"
    run_job(folder, default_model_path(), out, config=JobConfig(classes="all", shard_size=4, batch_size=4, workers=1),
            progress=False, log=lambda text: None)
    return folder, out


@pytest.fixture(scope="package")
def markup_report(markup):
    """The report of the markup job, with the embedded model's heatmaps: its `ReportResult`."""
    from miner.demo import default_model_path
    from miner.report import write_report

    _, out = markup
    return write_report(out, model=default_model_path())


@pytest.fixture(scope="package")
def interrupted(ray_session, demo, tmp_path_factory):
    """A job over the demo's archive (4 shards of 8) interrupted while writing its second shard."""
    from miner.config import JobConfig
    from miner.demo import default_model_path
    from miner.io import ShardStore
    from miner.job import run_job

    out_demo, _ = demo
    out = tmp_path_factory.mktemp("interrupted") / "out"
    write_shard = ShardStore.write_shard
    calls = []

    def stop_at_the_second(self, index, **kwargs):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_shard(self, index, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardStore, "write_shard", stop_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            run_job(out_demo / "archive", default_model_path(), out,
                    config=JobConfig(shard_size=8, batch_size=4, workers=1), progress=False, log=lambda text: None)
    return out_demo / "archive", out
