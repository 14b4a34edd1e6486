#!/usr/bin/env bash
# Check the layer contracts of pyproject.toml ([tool.importlinter]) with import-linter.
#
# export/ and kernels/ are installed as miner.export and miner.kernels (setuptools package-dir), which import-linter
# cannot see in the source tree: it walks the folder of `miner`. So the package is laid out as it installs, in a
# temporary folder (the .py files only), and checked there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=${PYTHON:-.venv/bin/python}
python="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute, links kept (a venv's python is one)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" - "$repo" "$tmp/src" <<'PY'
import shutil, sys
from pathlib import Path

repo, dst = Path(sys.argv[1]), Path(sys.argv[2])
only_py = shutil.ignore_patterns("__pycache__", "*.pt", "*.json", "*.html", "*.onnx*")
shutil.copytree(repo / "miner", dst / "miner", ignore=only_py)
shutil.copytree(repo / "export", dst / "miner" / "export", ignore=only_py)
shutil.copytree(repo / "kernels", dst / "miner" / "kernels", ignore=only_py)
PY
cp pyproject.toml "$tmp/"
cd "$tmp"
# the copy, not the editable install, must be what `miner.export` means here
PYTHONPATH="$tmp/src" "$python" -c 'import sys, importlib.util
spec = importlib.util.find_spec("miner.export")
sys.exit(0 if spec and spec.origin.startswith(sys.argv[1]) else "lint_imports.sh: miner.export does not resolve to the copy")' "$tmp/src"
PYTHONPATH="$tmp/src" "$(dirname "$python")/lint-imports" pyproject.toml --no-cache
