"""The import layers of pyproject.toml ([tool.importlinter]) hold, and the check catches a module importing up or a
cycle (scripts/lint_imports.sh, which .ci/run also runs)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _lint(repo: Path) -> subprocess.CompletedProcess:
    if shutil.which("lint-imports", path=str(VENV_PYTHON.parent)) is None:
        pytest.fail("import-linter is not installed: run README's set-up command (the dev extra has it)")
    return subprocess.run(["bash", str(repo / "scripts" / "lint_imports.sh")], capture_output=True, text=True,
                          timeout=300, env={"PYTHON": str(VENV_PYTHON), "PATH": "/usr/bin:/bin"})


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in ("miner", "export", "kernels", "scripts"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    shutil.copy(ROOT / "pyproject.toml", repo)
    return repo


def test_the_layers_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module,line,contract", [
    # the eager backend importing the exporter: running a model would depend on the code that exports it
    ("miner/backends/torch_backend.py", "import miner.export.onnx", "Running a model does not depend"),
    # the archive readers importing the job: a layer importing up
    ("miner/data/archives/read.py", "import miner.job", "Layers: from the CLI down"),
    # a cycle between two siblings of one package (image.py imports dicom.py)
    ("miner/data/dicom.py", "import miner.data.image", "No import cycles inside a package"),
])
def test_an_import_that_breaks_a_contract_is_caught(tmp_path, module, line, contract):
    repo = _copy(tmp_path)
    path = repo / module
    path.write_text(path.read_text() + f"\n\ndef _breaks_the_layers():\n    {line}\n")
    result = _lint(repo)
    assert result.returncode != 0
    assert contract in result.stdout and "BROKEN" in result.stdout, result.stdout
