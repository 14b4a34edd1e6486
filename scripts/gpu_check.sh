#!/usr/bin/env bash
# One GPU check of attention-miner, for a machine with one NVIDIA GPU; about 5 minutes, at most 10.
#
#   bash scripts/gpu_check.sh            # from the repository root or anywhere
#
# Installs what it can (the project itself, editable, into the Python that has CUDA torch; the GPU image ships
# torch + CUDA; TensorRT and onnxruntime-gpu where a registry is reachable), then runs the checks of
# scripts/gpu_check.py, each printing one summary line:
#
#   gpu_check: env            PASS  NVIDIA H100 80GB HBM3, driver 560.35, torch 2.11.0+cu128 (CUDA 12.8), ...
#   gpu_check: pytest-gpu     PASS  41 passed, 0 failed, 0 skipped (`pytest -m gpu`)
#   gpu_check: kernels        PASS  erase/label/stats on CUDA == CPU path on 256 maps of 64x64 ...
#   gpu_check: ort-cuda       PASS  embedded model, CUDAExecutionProvider: logits |d| 3e-6, maps |d| 2e-5 ...
#   gpu_check: tensorrt       PASS  engine built in 41 s; vs torch on the GPU: logits |d| ..., rank-1 box IoU ...
#   gpu_check: job            PASS  miner mine, 512 phantoms of 512 px on the GPU: 212.4 images/s steady ...
#
# and a last line `gpu_check: N passed, N failed, N skipped`. Exit code: 0 when nothing failed, 1 when a check
# failed, 69 (EX_UNAVAILABLE) with one line when this machine has no NVIDIA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); run it where one is lent" >&2
    exit 69
fi

# The Python that has (or gets) CUDA torch: $PYTHON, else the project's .venv if its torch sees the GPU, else python3.
pick_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1; then echo .venv/bin/python; return; fi
    echo python3
}
PY=$(pick_python)

# Installs: each bounded in time (a machine without a registry fails fast) and optional: a check whose package is
# missing reports SKIP with the reason instead of failing the script.
pip_try() {  # pip_try WHAT ARGS...: one line saying whether it installed
    local what=$1; shift
    if timeout 240 "$PY" -m pip install -q --disable-pip-version-check --timeout 15 --retries 1 "$@" >/tmp/gpu_check_pip.log 2>&1; then
        echo "gpu_check: install $what: ok"
    else
        echo "gpu_check: install $what: not installed ($(tail -n 1 /tmp/gpu_check_pip.log | cut -c1-160))"
    fi
}
# the project without touching the image's CUDA torch (--no-deps), then the dependencies it lacks
pip_try "attention-miner (editable, no deps)" --no-deps -e .
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "scipy": "scipy", "onnx": "onnx", "onnxscript": "onnxscript", "ray": "ray[data]",
        "pyarrow": "pyarrow", "cv2": "opencv-python-headless", "pydicom": "pydicom", "tqdm": "tqdm",
        "triton": "triton", "faster_coco_eval": "faster-coco-eval", "matplotlib": "matplotlib", "jinja2": "jinja2",
        "pytest": "pytest", "onnxruntime": "onnxruntime-gpu", "hypothesis": "hypothesis"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then pip_try "missing dependencies ($missing)" $missing; fi
if ! "$PY" -c 'import tensorrt' >/dev/null 2>&1; then pip_try "tensorrt" tensorrt; fi

exec timeout 560 "$PY" scripts/gpu_check.py "$@"
