"""Token authentication of the job's own Ray sessions (miner.job.cluster), without starting Ray: which settings a
local cluster gets, how a bad token file and a refused attach are reported, and that `ray.init` does not take
SIGTERM away from `miner mine`. The real clusters with tokens are in test_submit.py and test_job.py."""
from __future__ import annotations

import signal

import pytest

from miner.errors import UsageError
from miner.job import cluster
from miner.job.cluster import check_token_path, local_auth_env, token_configured


def test_a_local_cluster_gets_token_authentication(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    first, second = local_auth_env(env), local_auth_env(env)
    assert first["RAY_AUTH_MODE"] == "token" and set(first) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert len(first["RAY_AUTH_TOKEN"]) == 64 and int(first["RAY_AUTH_TOKEN"], 16) >= 0  # 256 random bits
    assert first["RAY_AUTH_TOKEN"] != second["RAY_AUTH_TOKEN"]
    assert not (home / ".ray").exists()  # written nowhere
    # the user's token is used as it is: only the mode is set
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("abc\n")
    assert token_configured(env) and local_auth_env(env) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_env({"RAY_AUTH_TOKEN_PATH": "/x"}) == {"RAY_AUTH_MODE": "token"}
    assert local_auth_env({"RAY_AUTH_TOKEN": "t"}) == {"RAY_AUTH_MODE": "token"}
    # an explicit mode is the user's choice, either way
    assert local_auth_env({"RAY_AUTH_MODE": "disabled"}) == {}
    assert local_auth_env({"RAY_AUTH_MODE": "token"}) == {}


def test_a_bad_token_file_is_one_line_not_an_abort(tmp_path):
    """Ray aborts the whole process on an unreadable RAY_AUTH_TOKEN_PATH; the job says what is wrong first."""
    missing = tmp_path / "nope"
    with pytest.raises(UsageError, match=rf"^RAY_AUTH_TOKEN_PATH={missing}: cannot read the Ray token file"):
        check_token_path({"RAY_AUTH_TOKEN_PATH": str(missing)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="the Ray token file is empty"):
        check_token_path({"RAY_AUTH_TOKEN_PATH": str(empty)})
    good = tmp_path / "token"
    good.write_text("f" * 64)
    check_token_path({"RAY_AUTH_TOKEN_PATH": str(good)})
    check_token_path({"RAY_AUTH_TOKEN_PATH": str(missing), "RAY_AUTH_TOKEN": "t"})  # RAY_AUTH_TOKEN wins


@pytest.mark.parametrize("mode,raised,expected", [
    ("token", "auth", "--address 10.0.0.1:6379: token authentication is on here (RAY_AUTH_MODE=token) but no token "
                      "was found; set RAY_AUTH_TOKEN_PATH to the cluster's token file (or RAY_AUTH_TOKEN)"),
    ("", "connection", "--address 10.0.0.1:6379: no Ray cluster accepted the connection (or it requires token "
                       "authentication (set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to its token file))"),
    ("token", "connection", "--address 10.0.0.1:6379: no Ray cluster accepted the connection (or its token "
                            "differs from the one configured here)"),
])
def test_a_refused_attach_says_why_in_one_line(monkeypatch, mode, raised, expected):
    import ray
    from ray.exceptions import AuthenticationError

    def init(**kwargs):
        if raised == "auth":
            raise AuthenticationError("Token authentication is enabled but no authentication token was found")
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(UsageError) as info:
        cluster._attach("10.0.0.1:6379", 30)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_ray_init_leaves_miner_mines_sigterm_handler():
    """`ray.init` installs `sys.exit` for SIGTERM; a handler the caller had (miner mine's) is put back."""
    def ours(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with cluster._keep_sigterm_handler():
            signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is ours
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with cluster._keep_sigterm_handler():  # no handler of the caller's: Ray's stays
            signal.signal(signal.SIGTERM, ours)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_ends_miner_mine_as_an_interrupt(monkeypatch, capsys, tmp_path):
    """`ray job stop` sends SIGTERM: `miner mine` ends like Ctrl-C (the run's finally blocks roll back and record),
    says what is kept and exits 143; its handler is gone afterwards."""
    import argparse
    import os
    import time

    from miner.cli import mine

    finished = []

    def job(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            finished.append(True)  # what run_job's finally does: it runs
        return 0

    monkeypatch.setattr(mine, "_run", job)
    before = signal.getsignal(signal.SIGTERM)
    started = time.time()
    assert mine.run(argparse.Namespace(out=str(tmp_path / "out"))) == 143
    assert time.time() - started < 4 and finished == [True]
    assert capsys.readouterr().err.strip() == (f"miner mine: stopped by SIGTERM; the shards complete in "
                                               f"{tmp_path / 'out'} are kept: rerun the same command to resume")
    assert signal.getsignal(signal.SIGTERM) is before
