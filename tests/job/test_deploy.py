"""deploy/: the cluster launcher config validates against Ray's own schema, the RayJob runs a `miner mine` command
line this CLI accepts, and the image, cluster and job agree on the versions they pin."""
from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from miner.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _mine_args(command: str):
    words = shlex.split(command)
    assert words[:2] == ["miner", "mine"], command
    return build_parser().parse_args(words[1:])


def _dockerfile_args() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))


def test_cluster_launcher_config_validates():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_groups = [name for name, spec in types.items() if spec.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_groups and all(types[name]["max_workers"] >= 1 for name in gpu_groups)
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # no actor on the head


def test_rayjob_runs_miner_mine_on_gpu_workers():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    args = _mine_args(job["spec"]["entrypoint"])
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == _dockerfile_args()["RAY_VERSION"]
    groups = spec["workerGroupSpecs"]
    gpus = sum(int(g["replicas"]) * int(c["resources"]["limits"]["nvidia.com/gpu"])
               for g in groups for c in g["template"]["spec"]["containers"])
    assert args.workers == gpus and args.gpus_per_worker == 1
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    images |= {c["image"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same image (same Python, Ray, miner)
    mounts = {m["mountPath"] for g in groups for c in g["template"]["spec"]["containers"] for m in c["volumeMounts"]}
    assert {"/data", "/dev/shm"} <= mounts and args.archive.startswith("/data") and args.out.startswith("/data")


def test_image_pins_match_the_package():
    pins = _dockerfile_args()
    torch_major_minor = tuple(int(v) for v in pins["TORCH_VERSION"].split(".")[:2])
    requirement = next(r for r in metadata.requires("attention-miner") if re.match(r"torch\b[<>=]", r))
    low = re.search(r">=([\d.]+)", requirement).group(1)
    high = re.search(r"<([\d.]+)", requirement).group(1)
    assert tuple(int(v) for v in low.split(".")[:2]) <= torch_major_minor < tuple(int(v) for v in high.split(".")[:2])
    assert pins["TORCH_CUDA"] == "cu" + re.search(r"cuda:(\d+)\.(\d+)", pins["CUDA_IMAGE"]).expand(r"\1\2")


@pytest.mark.parametrize("source", ["README.md", "docs/cluster.md", "deploy/README.md"])
def test_documented_commands_parse(source):
    text = (ROOT / source).read_text().replace("\\\n", " ")  # join continued lines
    commands = [line.split(" -- ", 1)[1] for line in re.findall(r"^\s*ray job submit .*$", text, flags=re.M)]
    commands += re.findall(r"^\s*(miner mine .*)$", text, flags=re.M)
    assert commands, f"{source} shows no `miner mine` command"
    for command in commands:
        _mine_args(command.strip())


# ---------------------------------------------------------------------------------------------- token authentication

# a secret's shape: 32+ hex characters, or a quoted base64 blob of 40+ characters
_SECRET = re.compile(r"\b[0-9a-f]{32,}\b|['\"][A-Za-z0-9+/]{40,}={0,2}['\"]")


def test_every_deploy_file_turns_token_authentication_on():
    """The image, the cluster launcher config and the RayJob all run Ray with RAY_AUTH_MODE=token, each with a
    token that comes from outside the repository (a file of yours, a Kubernetes Secret)."""
    assert re.search(r"^ENV RAY_AUTH_MODE=token$", (DEPLOY / "Dockerfile").read_text(), flags=re.M)

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert sum("ray start" in c for c in starts) == 2
    # the token: the user's ~/.ray/auth_token, copied to Ray's default path of the container's user (root)
    assert config["file_mounts"] == {"/root/.ray/auth_token": "~/.ray/auth_token"}

    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # open, hence the token
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for container in (c for pod in pods for c in pod["spec"]["containers"]):
        for variable in container.get("env", []):  # any token set by hand must come from a Secret
            if variable["name"] == "RAY_AUTH_TOKEN":
                assert "secretKeyRef" in variable["valueFrom"]


@pytest.mark.parametrize("source", ["deploy/Dockerfile", "deploy/cluster.yaml", "deploy/rayjob.yaml",
                                    "deploy/README.md", "README.md", "docs/cluster.md"])
def test_no_token_is_committed(source):
    text = (ROOT / source).read_text()
    assert not _SECRET.search(text), _SECRET.search(text)
    assert not re.search(r"RAY_AUTH_TOKEN=(?![\"']?\$\()\S", text)  # only ever from a command, e.g. kubectl
    assert not re.search(r"auth_token:\s*\S", text)  # no literal Secret data


@pytest.mark.parametrize("source", ["docs/cluster.md", "deploy/README.md"])
def test_documented_submissions_carry_the_token(source):
    """Every shell block that submits a job or starts a head turns token authentication on first."""
    text = (ROOT / source).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    submitting = [b for b in blocks if re.search(r"^ray (job submit|start --head|up) ", b, flags=re.M)]
    assert submitting
    for block in submitting:
        first = next(i for i, line in enumerate(block.splitlines()) if re.match(r"ray (job submit|start|up) ", line))
        before = "\n".join(block.splitlines()[:first])
        assert "export RAY_AUTH_MODE=token" in before, block
