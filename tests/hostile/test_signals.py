"""Case 5: a signal at any moment ends `miner` with its own exit code (130 SIGINT, 143 SIGTERM), one line saying how
to resume, and no process of ours left (a local Ray started by the job is shut down, even one still starting).

The `miner mine` runs send the signal at a phase given by a file appearing: Ray's session folder (Ray is starting;
``RAY_TMPDIR`` points it into a short private folder), ``OUT/_manifest.json`` (Ray is up, the model actors are
starting) and the first shard marker (mining). Every process the child started carries a marker in its
environment (Ray's node processes and workers inherit it); after the run none may be left. The other tests run
`miner.cli.main` in-process on fake verbs: an interrupt at every step of `main`, and the deferral that keeps a
signal from cutting the start or stop of Ray in half (`miner.runtime.signals_deferred`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.hostile.harness import run_miner

MARK = "MINER_HOSTILE_MARK"


def _ours(mark: str) -> list[str]:
    """Live processes (not zombies) whose environment carries `mark`: the child and all it started."""
    import psutil
    import ray  # noqa: F401  (Ray vendors psutil)

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:100]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _assert_none_left(mark: str) -> None:
    deadline = time.time() + 10  # the kernel may take a moment to reap what ray.shutdown killed
    while (left := _ours(mark)) and time.time() < deadline:
        time.sleep(0.2)
    if left:
        import psutil

        for line in left:  # do not leave them to the next test
            try:
                psutil.Process(int(line.split()[0])).kill()
            except psutil.NoSuchProcess:
                pass
    assert not left, "processes of the job outlived it:\n" + "\n".join(left)


def _assert_stopped(result, signum: int) -> str:
    """Exit 128 + signum, no traceback, and one line (the last) saying what stopped it and how to resume."""
    name = signal.Signals(signum).name
    assert "Traceback" not in result.stderr + result.stdout, result.describe()
    assert result.returncode == 128 + signum, result.describe()
    stops = [line for line in result.err_lines if "stopped by" in line]
    assert stops == [result.err_lines[-1]], result.describe()
    assert not any("error" in line for line in result.err_lines), result.describe()
    line = stops[0]
    assert line.startswith("miner mine: stopped by " + name + ";") and "rerun the same command" in line, line
    return line


@pytest.fixture
def ray_env():
    """A marker every process of the run inherits, and Ray's temporary folder in a short private place (its
    session folder appearing = Ray is starting)."""
    root = Path(tempfile.mkdtemp(prefix="h5sig", dir="/tmp"))
    mark = uuid.uuid4().hex
    yield {MARK: mark, "RAY_TMPDIR": str(root)}, root / "ray" / "session_latest", mark
    _assert_none_left(mark)
    shutil.rmtree(root, ignore_errors=True)


def _mine(archive, model, out, *extra):
    return ["mine", archive, "--model", model, "--out", out, "--no-progress", *extra]


@pytest.mark.ray
def test_sigterm_while_ray_starts(archive, tiny_model, tmp_path, watched, ray_env):
    """Was: exit 15, no word, Ray's agents left running. Ray's start is finished, then stopped; OUT untouched
    (nothing is written to OUT before Ray is up)."""
    env, session, mark = ray_env
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(_mine(archive, tiny_model, out), cwd=tmp_path, env=env, signal_after=(0.0, signal.SIGTERM),
                       wait_for=session)
    _assert_stopped(result, signal.SIGTERM)
    _assert_none_left(mark)
    assert watched(out) == before and not out.exists()


@pytest.mark.ray
def test_sigterm_while_actors_start_is_sigterm(archive, tiny_model, tmp_path, watched, ray_env):
    """Was: reported as SIGINT with 130. Ray's wait turns the interrupt into its own KeyboardInterrupt; the signal
    received decides the code. The manifest records the run as interrupted."""
    env, _, mark = ray_env
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(_mine(archive, tiny_model, out), cwd=tmp_path, env=env, signal_after=(0.5, signal.SIGTERM),
                       wait_for=out / "_manifest.json")
    _assert_stopped(result, signal.SIGTERM)
    _assert_none_left(mark)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted", manifest["runs"]
    assert watched(out) == before


@pytest.mark.ray
def test_sigint_while_mining_then_resume(archive, tiny_model, tmp_path, watched, ray_env):
    """SIGINT the moment the first shard is written: 130, the shards written are kept, the rerun resumes and ends
    with every image mined once."""
    env, _, mark = ray_env
    out = tmp_path / "out"
    before = watched(out)
    args = _mine(archive, tiny_model, out, "--shard-size", "1", "--batch-size", "1")
    result = run_miner(args, cwd=tmp_path, env=env, signal_after=(0.0, signal.SIGINT),
                       wait_for=out / "_shards" / "000000.json")
    _assert_stopped(result, signal.SIGINT)
    _assert_none_left(mark)
    manifest = json.loads((out / "_manifest.json").read_text())
    done = manifest["counts"]["shards_done"]
    assert manifest["runs"][-1]["status"] in ("interrupted", "complete") and done >= 1
    assert manifest["status"] == ("complete" if done == 12 else "interrupted")

    again = run_miner(args, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.describe()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["images"] == 12
    assert watched(out) == before


def test_sigterm_before_ray(archive, tiny_model, tmp_path, watched):
    """A signal while the CLI still imports and parses: its own code and one line, no traceback (an interrupt
    inside an import surfaces as an ImportError; the signal decides)."""
    out = tmp_path / "out"
    before = watched(out)
    mark = uuid.uuid4().hex
    for delay in (0.05, 0.3):
        result = run_miner(_mine(archive, tiny_model, out), cwd=tmp_path, env={MARK: mark},
                           signal_after=(delay, signal.SIGTERM))
        assert "Traceback" not in result.stderr, result.describe()
        if result.returncode == -signal.SIGTERM:  # before the interpreter ran miner's first line: the default
            continue
        assert result.returncode == 143, result.describe()
        assert len(result.err_lines) == 1 and "stopped by SIGTERM" in result.err_lines[0], result.describe()
    _assert_none_left(mark)
    assert watched(out) == before and not out.exists()


# --- in-process: miner.cli.main and miner.runtime --------------------------------------------------------------


def _fake_verb(monkeypatch, body, *, resume=None):
    """Make `miner inspect` run `body(args)` (its parser stays: `miner inspect X`)."""
    from miner.cli import inspect

    monkeypatch.setattr(inspect, "run", body)
    if resume is not None:
        monkeypatch.setattr(inspect, "resume_hint", resume, raising=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("where", ["run", "import", "library", "error line"])
def test_main_ends_every_interrupt_with_its_code(monkeypatch, capsys, signum, where):
    """Wherever the signal lands in a verb (its work, an import, a library that re-labels the interrupt, the
    printing of an error), main returns 128 + signum and says so in one line; the handlers are restored."""
    from miner.cli import main
    from miner.errors import UsageError

    def body(args):
        if where == "error line":
            raise UsageError("bad input")  # the signal arrives while main prints it: see below
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except KeyboardInterrupt:
            if where == "import":
                raise ImportError("PyCapsule_Import could not import module 'datetime'") from None
            if where == "library":
                raise KeyboardInterrupt from None  # what Ray's wait does with our Stopped
            raise
        return 0

    _fake_verb(monkeypatch, body)
    if where == "error line":
        import builtins

        real_print = builtins.print

        def print_then_signal(*a, **k):
            real_print(*a, **k)
            os.kill(os.getpid(), signum)

        monkeypatch.setattr(builtins, "print", print_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.time()
    code = main(["inspect", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert time.time() - started < 4
    assert {s: signal.getsignal(s) for s in before} == before
    assert code == 128 + signum
    name = signal.Signals(signum).name
    if where == "error line":
        assert err[0] == "miner inspect: error: bad input"
        assert err[1:] == [f"miner inspect: stopped by {name}; run the same command again"]
    else:
        assert err == [f"miner inspect: stopped by {name}; run the same command again"]


def test_main_says_the_verbs_own_resume_hint(monkeypatch, capsys):
    from miner.cli import main

    def body(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    _fake_verb(monkeypatch, body, resume=lambda args: f"rerun it on {args.archive}")
    assert main(["inspect", "ARCH"]) == 143
    assert capsys.readouterr().err.strip() == "miner inspect: stopped by SIGTERM; rerun it on ARCH"


def test_deferred_signal_is_raised_after_the_block(monkeypatch):
    """Inside `signals_deferred` a signal is recorded, not raised (a Ray start is not cut in half); it is raised
    once the block ends; a second one during the clean-up is only recorded."""
    from miner import runtime

    steps = []
    with pytest.raises(runtime.Stopped):
        with runtime.interrupt_on_signals():
            with runtime.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                steps.append("block finished")
            steps.append("not reached")
    assert steps == ["block finished"] and runtime.signal_received() == signal.SIGTERM

    with runtime.interrupt_on_signals():  # the first signal raises, the second is only recorded
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            steps.append("clean-up finished")
    assert steps[-1] == "clean-up finished"
    assert runtime.signal_received() == signal.SIGINT


def test_deferral_without_miners_handlers_gives_the_signal_back():
    """Outside `interrupt_on_signals` (run_job called from Python), the deferred signal is sent again after the
    block, to whatever handler the caller has: Python's default SIGINT raises KeyboardInterrupt there."""
    from miner import runtime

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with runtime.signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("block finished")
    assert steps == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ray_init_cannot_replace_the_handler(monkeypatch):
    """`ray.init` sets SIGTERM's handler through Ray's own helper (sys.exit, then the head node's); while the
    cluster starts that helper does nothing, so a SIGTERM then is ours (deferred), not an exit with code 15."""
    import ray._private.utils as ray_utils

    from miner import runtime
    from miner.job import cluster

    with runtime.interrupt_on_signals():
        ours = signal.getsignal(signal.SIGTERM)
        with cluster._keep_sigterm_handler():
            ray_utils.set_sigterm_handler(lambda signum, frame: os._exit(15))
            assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGTERM) is ours
    assert ray_utils.set_sigterm_handler.__name__ == "set_sigterm_handler"  # Ray's helper is back
