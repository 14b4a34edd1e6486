"""Case 8: a rejected command must not poison OUT. Nothing is written to OUT (it is not even created) before every
option, the archive and the model have passed, and Ray starts only after that (`miner.job.driver.run_job`); a
refused command therefore leaves OUT as it was and the corrected command runs. OUT that is a regular file (or lies
below one) is a usage error (exit 2), not an I/O error (was 74, with a misleading message)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.hostile.harness import assert_refused, assert_untouched, run_miner


def _mine(archive, model, out, *extra):
    return ["mine", archive, "--model", model, "--out", out, "--no-progress", *extra]


@pytest.fixture
def ray_tmp():
    """Ray's temporary folder for the run: its session folder appears only if Ray starts."""
    root = Path(tempfile.mkdtemp(prefix="h5out", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _ray_started(ray_tmp: Path) -> bool:
    return (ray_tmp / "ray").exists()


@pytest.mark.ray
def test_refused_commands_leave_out_alone_and_the_corrected_one_runs(archive, tiny_model, tmp_path, watched,
                                                                     ray_tmp):
    """Was: `--steps 0` refused but a manifest left in OUT, and the corrected command refused as "a different
    job". Refusals at every stage (parsing, the model's options, the pipeline against the model, the cluster
    plan) leave no OUT; the corrected command then mines the archive."""
    out = tmp_path / "out"
    env = {"RAY_TMPDIR": str(ray_tmp)}
    before = watched(out)
    refusals = [
        (["--steps", "0"], "argument --steps: must be an integer in [1, 10]", False),
        (["--layer", "nope"], "no layer 'nope'", False),  # the model opened by the driver, before Ray and OUT
        (["--recipe", "nope"], "unknown recipe 'nope'", False),
        (["--gpus-per-worker", "1"], "the local Ray cluster has no GPUs", True),  # the cluster's plan, before OUT
    ]
    for extra, expected, starts_ray in refusals:
        result = run_miner(_mine(archive, tiny_model, out, *extra), cwd=tmp_path, env=env, timeout=300)
        assert_refused(result, 2, contains=[expected])
        assert not out.exists(), f"{extra} created OUT"
        assert _ray_started(ray_tmp) == starts_ray, extra
        assert_untouched(before, watched(out))
    result = run_miner(_mine(archive, tiny_model, out, "--steps", "1"), cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["images"] == 12
    assert [run["status"] for run in manifest["runs"]] == ["complete"]  # no trace of the refused commands
    assert_untouched(before, watched(out))


@pytest.mark.parametrize("bad", ["model", "archive"])
def test_bad_model_or_archive_creates_no_out(archive, tiny_model, tmp_path, watched, bad, ray_tmp):
    """A model file that cannot be used or an archive that cannot be read: one line, exit 2, no OUT, no Ray."""
    out = tmp_path / "out"
    if bad == "model":
        model = tmp_path / "junk.pt"
        model.write_bytes(b"\x80\x04not a checkpoint")
        args = _mine(archive, model, out)
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        args = _mine(empty, tiny_model, out)
    before = watched(out)
    result = run_miner(args, cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)}, timeout=120)
    assert_refused(result, 2)
    assert not out.exists() and not _ray_started(ray_tmp)
    assert_untouched(before, watched(out))


def test_out_of_another_job_is_refused_before_ray(archive, tiny_model, tmp_path, watched, ray_tmp):
    """OUT holding another job's manifest: refused read-only, before Ray starts; OUT unchanged (no lock file)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifest.json").write_text(json.dumps({"format": 1, "identity": {"archive": "another"}}))
    before = watched()
    result = run_miner(_mine(archive, tiny_model, out), cwd=tmp_path, env={"RAY_TMPDIR": str(ray_tmp)}, timeout=120)
    assert_refused(result, 2, contains=["holds the output of a different job", "--overwrite"])
    assert not _ray_started(ray_tmp)
    assert_untouched(before, watched())  # OUT included: not even a lock file


@pytest.mark.parametrize("where", ["out", "below"])
def test_out_that_is_a_file(archive, tiny_model, tmp_path, watched, where):
    """Was: exit 74 and "cannot write the output: File exists". Now one line, exit 2, the file untouched."""
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    out = afile if where == "out" else afile / "sub"
    before = watched()
    result = run_miner(_mine(archive, tiny_model, out), cwd=tmp_path, timeout=60)
    line = assert_refused(result, 2, contains=["argument --out:", str(out.name)])
    assert ("is a file, not a folder" in line) if where == "out" else ("is a file; give another path" in line)
    assert_untouched(before, watched())


def test_run_job_refuses_a_file_as_out(tmp_path):
    """The library call (miner demo and Python users) refuses it too, before anything runs."""
    from miner.errors import UsageError
    from miner.outdir import check_out_folder

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_out_folder(afile)
    with pytest.raises(UsageError, match=r"afile is a file; give --out another path"):
        check_out_folder(afile / "a" / "b")
    check_out_folder(tmp_path / "new" / "folder")  # to be made: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
