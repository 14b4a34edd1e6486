"""`ray job submit` as docs/cluster.md shows it: a local head with its dashboard and token authentication, `miner mine`
submitted with the `ray` CLI, a job stopped part-way (`ray job stop`) and submitted again with
`JobSubmissionClient`, and `miner mine --address` attached to the running head.

The commands are read from docs/cluster.md's blocks after ``<!-- test:ray-job-submit -->`` (bash) and
``<!-- test:ray-job-submit-python -->`` (the SDK) and run in their order, with this test's paths and free loopback
ports substituted and its small-archive options appended to `miner mine` (20-image shards, so that a stop lands
part-way). One exception: the page ends with ``ray stop``, which stops every Ray process on the machine; the test
stops the head's processes by their ids instead (they all keep the session of the ``ray start`` it launched),
and any job driver still running by its own.

Every run must end with the same rows: the first submission is the reference; the stopped-then-resumed and the
attached runs are compared with it exactly.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import free_port, kill_session
from .test_job import OPTIONS, _rows

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # CI runs the venv's python without its bin/ on PATH
RAY = str(BIN / "ray")
# the page's placeholders -> fixture paths; its dashboard port -> a free one
ARCHIVE, MODEL, OUT, DASHBOARD = "/data/chestxray14", "/data/models/model.pt", "/data/out/", "8265"


def _readme_block(marker: str, language: str) -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```{language}\n(.*?)```", text, flags=re.S)
    assert block, f"docs/cluster.md lost its <!-- {marker} --> block"
    return block.group(1)


def readme_commands() -> list[list[str]]:
    """The commands of the page's ray-job-submit block, split as the shell would (comments dropped)."""
    block = _readme_block("test:ray-job-submit", "bash")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def readme_sdk() -> tuple[str, str, str]:
    """The page's SDK snippet: the token file, the client's construction and the entrypoint it submits."""
    code = _readme_block("test:ray-job-submit-python", "python")
    token = re.search(r'^token = (.*)$', code, flags=re.M).group(1)
    client = re.search(r'^client = (.*)$', code, flags=re.M).group(1)
    entrypoint = re.search(r'submit_job\(entrypoint="([^"]+)"\)', code).group(1)
    return token, client, entrypoint


def readme_attach() -> list[str]:
    """The page's `miner mine ... --address HEAD:6379` line."""
    text = (ROOT / "docs" / "cluster.md").read_text()
    line = re.search(r"^miner mine .* --address 127\.0\.0\.1:6379.*$", text, flags=re.M)
    assert line, "docs/cluster.md lost its `miner mine --address` example"
    return shlex.split(line.group(0))


def _base_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray address or auth setting (the test suite disables auth for its
    in-process clusters), with `home` as HOME: ~/.ray/auth_token is the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API"))}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               RAY_DATA_DISABLE_PROGRESS_BARS="1")
    return env


class Head:
    """The head that the page's commands start, and how the test talks to it."""

    def __init__(self, tmp: Path, archive: Path, model: Path) -> None:
        self.tmp, self.archive, self.model = tmp, archive, model
        self.home = tmp / "home"
        self.home.mkdir()
        self.env = _base_env(self.home)
        self.dashboard_port, self.gcs_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.session: int | None = None
        self.token = ""

    def substitute(self, words: list[str]) -> list[str]:
        """The page's words with this test's paths and ports; `ray`/`miner` as the venv's."""
        out = []
        for word in words:
            word = word.replace(f"127.0.0.1:{DASHBOARD}", f"127.0.0.1:{self.dashboard_port}")
            word = word.replace("127.0.0.1:6379", f"127.0.0.1:{self.gcs_port}")
            word = word.replace(f"--dashboard-port={DASHBOARD}", f"--dashboard-port={self.dashboard_port}")
            word = word.replace(ARCHIVE, str(self.archive)).replace(MODEL, str(self.model))
            word = word.replace(OUT, f"{self.tmp}/out/")
            out.append(word)
        if out[0] == "ray":
            out[0] = RAY
        if out[:2] == ["miner", "mine"]:
            out[0] = str(BIN / "miner")
        if out[:2] == [str(BIN / "miner"), "mine"] or (
                "--" in out and out[out.index("--") + 1:][:2] == ["miner", "mine"]):
            out += OPTIONS  # in an entrypoint `miner` resolves on the head's PATH, which starts with the venv's
        return out

    def run(self, words: list[str], *, env: dict[str, str] | None = None, timeout: float = 240,
            check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(words, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{shlex.join(words)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def start(self, words: list[str]) -> None:
        """`ray start --head ...` plus isolation: its own temp folder, free ports, 2 CPUs, a small object store."""
        isolation = [f"--port={self.gcs_port}", f"--temp-dir={self.tmp / 'ray'}", "--num-cpus=2",
                     "--object-store-memory=150000000", "--disable-usage-stats",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                     f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                     f"--metrics-export-port={free_port()}", f"--node-manager-port={free_port()}",
                     f"--object-manager-port={free_port()}"]
        starter = subprocess.Popen(words + isolation, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.session = starter.pid
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, output

    def client(self, token: str | None):
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None
        return JobSubmissionClient(self.address, headers=headers)

    def stop(self) -> None:
        """Stop the head's processes, and any job driver still running, by their ids."""
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "miner" in cmdline and str(self.tmp) in cmdline and proc.pid != os.getpid():
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
        if self.session is not None:
            kill_session(self.session)


@pytest.fixture(scope="module")
def head(job_archive, job_model, short_tmp):
    """The page's commands up to `ray start --head`: token mode, a generated token, the head with its dashboard."""
    root, _ = job_archive
    tmp = short_tmp / "submit"
    tmp.mkdir()
    head = Head(tmp, root, job_model)
    commands = readme_commands()
    assert commands[0] == ["export", "RAY_AUTH_MODE=token"]
    head.env["RAY_AUTH_MODE"] = "token"
    assert commands[1] == ["ray", "get-auth-token", "--generate"]
    head.run(head.substitute(commands[1]))
    head.token = (head.home / ".ray" / "auth_token").read_text().strip()
    assert len(head.token) == 64
    assert commands[2][:3] == ["ray", "start", "--head"] and "--include-dashboard=true" in commands[2]
    assert "--dashboard-host=127.0.0.1" in commands[2]
    try:
        head.start(head.substitute(commands[2]))
        yield head
    finally:
        head.stop()


# the `ray` console script (.venv/bin/ray: `sys.exit(main())`), imported ahead and run when a line arrives
_RAY_CLI_ON_CUE = """
import sys
from ray.scripts.scripts import main
sys.stdin.readline()
sys.argv[0] = "ray"
sys.exit(main())
"""


def _wait(client, job_id: str, states: set[str], timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        if status.split(".")[-1] in states:
            return status.split(".")[-1]
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")


def test_submissions_without_the_token_are_refused(head, tmp_path):
    """The Jobs API answers 401 without a token and 403 with a wrong one, to the CLI, the SDK and plain HTTP."""
    import requests
    from ray.exceptions import AuthenticationError

    stranger = _base_env(tmp_path)  # no token file, no RAY_AUTH_MODE: someone who only knows the address
    submit = [RAY, "job", "submit", "--address", head.address, "--", "echo", "pwned"]
    refused = head.run(submit, env=stranger, check=False, timeout=60)
    assert refused.returncode != 0 and "Unauthorized: Missing authentication token" in refused.stderr
    wrong = head.run(submit, env={**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, check=False,
                     timeout=60)
    assert wrong.returncode != 0 and "invalid or incorrect" in wrong.stderr
    assert requests.get(f"{head.address}/api/jobs/", timeout=10).status_code == 401
    assert requests.get(f"{head.address}/api/jobs/", headers={"Authorization": "Bearer " + "0" * 64},
                        timeout=10).status_code == 403
    with pytest.raises(AuthenticationError):
        head.client(None)
    assert head.client(head.token).list_jobs() == []  # nothing ran


@pytest.fixture(scope="module")
def submitted(head):
    """The page's first `ray job submit` (it waits for the job): the reference output folder."""
    command = readme_commands()[3]
    assert command[:3] == ["ray", "job", "submit"] and "--no-wait" not in command
    done = head.run(head.substitute(command), timeout=300)
    out = head.tmp / "out" / "boxes"
    assert "mined 201 images" in done.stdout and "succeeded" in done.stdout + done.stderr
    return out


def test_ray_job_submit_writes_the_output(submitted):
    manifest = json.loads((submitted / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["shards_done"] == 11
    run = manifest["runs"][-1]
    assert not run["cluster"]["started_here"]  # the entrypoint attached to the head through RAY_ADDRESS
    assert len(_rows(submitted)["images"]) == 196 and len(_rows(submitted)["errors"]) == 5


def test_ray_job_stop_then_the_sdk_submits_it_again_and_it_resumes(head, submitted):
    """The page's `--no-wait` submission, `ray job stop` once a shard is written, then its SDK snippet submitting
    the same job again: it resumes and ends with the reference's rows."""
    commands = readme_commands()
    started, stop = commands[4], commands[5]
    assert "--no-wait" in started and stop[:3] == ["ray", "job", "stop"]
    job_id = started[started.index("--submission-id") + 1]
    assert stop[-1] == job_id
    out = head.tmp / "out" / "boxes-2"
    # `ray job stop` is started now and told to go once a shard is written: the seconds the CLI takes to import
    # Ray would otherwise let this small job finish first; one actor, so that shards remain when it lands
    stopper = subprocess.Popen([sys.executable, "-c", _RAY_CLI_ON_CUE, *head.substitute(stop)[1:]], env=head.env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        head.run(head.substitute(started) + ["--workers", "1"])
        deadline = time.time() + 240
        while not (out / "_shards").is_dir() or not any((out / "_shards").glob("*.json")):
            assert time.time() < deadline, head.client(head.token).get_job_logs(job_id)[-3000:]
            time.sleep(0.02)
        output, _ = stopper.communicate("go\n", timeout=120)
        assert stopper.returncode == 0, output
    finally:
        if stopper.poll() is None:
            stopper.kill()

    token_source, client_source, entrypoint = readme_sdk()
    assert token_source == '(Path.home() / ".ray" / "auth_token").read_text().strip()'
    assert client_source == 'JobSubmissionClient("http://127.0.0.1:8265", headers={"Authorization": f"Bearer {token}"})'
    client = head.client(head.token)  # the same construction, against this head with its token
    assert _wait(client, job_id, {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    done = len(list((out / "_shards").glob("*.json")))
    assert 1 <= done < 11
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted"  # SIGTERM ended the driver cleanly, its shard rolled back
    assert "stopped by SIGTERM" in client.get_job_logs(job_id)

    words = head.substitute(shlex.split(entrypoint))
    assert words[:2] == [str(BIN / "miner"), "mine"] and words[words.index("--out") + 1] == str(out)
    again = client.submit_job(entrypoint=shlex.join(["miner", *words[1:]]))
    assert _wait(client, again, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    assert f"resuming {out}: {done} of 11 shards done" in client.get_job_logs(again)
    assert _rows(out) == _rows(submitted)
    runs = json.loads((out / "_manifest.json").read_text())["runs"]
    assert [(r["shards"], r["status"]) for r in runs] == [(11, "interrupted"), (11 - done, "complete")]


def test_miner_mine_attaches_with_address(head, submitted):
    """The page's `miner mine --address HEAD:6379`, from a shell with RAY_AUTH_MODE=token and the token file."""
    words = head.substitute(readme_attach())
    out = Path(words[words.index("--out") + 1])
    done = head.run(words, timeout=300)
    assert "mined 201 images" in done.stdout
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["cluster"]["nodes"] == 1 and not run["cluster"]["started_here"]
    assert _rows(out) == _rows(submitted)


def test_readme_ends_by_stopping_the_head():
    assert readme_commands()[-1] == ["ray", "stop"]
    assert shutil.which("ray", path=str(BIN)), "ray[default]'s CLI is missing from the venv"
