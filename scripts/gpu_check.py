"""The checks of `scripts/gpu_check.sh`, one summary line each (run that script; this file is its second half).

    python scripts/gpu_check.py                  # every check on the GPU
    python scripts/gpu_check.py --only ort-cuda  # one check
    python scripts/gpu_check.py --device cpu --quick   # a rehearsal on a CPU machine (the tests run it)

Each check runs in a child process of its own with a time limit, so that a crash or a hang of one (a CUDA
fault, a TensorRT build that never ends) cannot take the others with it. A check prints exactly one line
``gpu_check: NAME  PASS|FAIL|SKIP  what was measured`` on stdout; SKIP says what is missing (a package, a
GPU). The last line is ``gpu_check: N passed, N failed, N skipped``; the exit code is 1 when a check failed.

With ``--device cpu`` every check runs the same code on the CPU where it can (onnxruntime's CPU provider
instead of CUDA; kernels and the job on CPU tensors): the rehearsal that `tests/test_gpu_check.py` runs, so the
script is tested here up to the point where it needs the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ("env", "pytest-gpu", "kernels", "ort-cuda", "tensorrt", "job")
LIMITS = {"env": 60, "pytest-gpu": 240, "kernels": 120, "ort-cuda": 180, "tensorrt": 300, "job": 240}


class Skip(Exception):
    """A check that cannot run here (a package or the GPU is missing): SKIP, not FAIL."""


def _line(name: str, status: str, text: str) -> str:
    return f"gpu_check: {name:<13} {status:<4}  {text}"


def _device(args: argparse.Namespace) -> str:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA device")
    return args.device


def _default_model() -> Path:
    from miner.demo import default_model_path

    return Path(default_model_path())


def check_env(args: argparse.Namespace) -> str:
    import torch

    parts = []
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise Skip(f"torch {torch.__version__} sees no CUDA device")
        props = torch.cuda.get_device_properties(0)
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip().splitlines()
        parts.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), "
                     f"driver {driver[0] if driver else '?'}")
    parts.append(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import onnxruntime as ort

        parts.append(
            f"onnxruntime {ort.__version__} "
            f"[{', '.join(p.replace('ExecutionProvider', '') for p in ort.get_available_providers())}]"
        )
    except ImportError:
        parts.append("onnxruntime missing")
    for module in ("tensorrt", "triton"):
        try:
            parts.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            parts.append(f"{module} missing")
    return ", ".join(parts)


def check_pytest_gpu(args: argparse.Namespace) -> str:
    if args.device != "cuda":
        raise Skip("the gpu-marked tests need a CUDA device")
    _device(args)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=LIMITS["pytest-gpu"] - 10)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", proc.stdout.splitlines()[-1]
                                                if proc.stdout.strip() else "")}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    text = (f"{counts.get('passed', 0)} passed, {failed} failed, {counts.get('skipped', 0)} skipped "
            "(`pytest -m gpu`)")
    if failed or proc.returncode not in (0, 5) or not counts.get("passed"):
        failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:3]
        raise AssertionError(text + ("; " + "; ".join(failures) if failures else ""))
    return text


def check_kernels(args: argparse.Namespace) -> str:
    """The Triton kernels (erase, label, stats) on the device against the CPU path, exactly, and their speed."""
    import torch

    from miner.bench.kernels import smooth_maps
    from miner.kernels import component_stats, erase_components, label_components

    device = _device(args)
    n, side = (64, 32) if args.quick else (2048, 64)
    maps = torch.as_tensor(smooth_maps(n, side, seed=0), dtype=torch.float32)
    cpu_erase = erase_components(maps, threshold=0.5)
    cpu_labels, cpu_counts = label_components(maps > 0.5)
    k = int(cpu_counts.max()) + 1
    cpu_stats = component_stats(cpu_labels, maps, num_labels=k)
    dev = maps.to(device)
    erase = erase_components(dev, threshold=0.5)  # warm-up (compiles the kernels on a GPU)
    labels, counts = label_components(dev > 0.5)
    stats = component_stats(labels, dev, num_labels=k)
    if not torch.equal(erase.cpu(), cpu_erase):
        raise AssertionError(
            f"erase on {device} differs from the CPU path on {(erase.cpu() != cpu_erase).sum()} pixels"
        )
    if not (torch.equal(labels.cpu(), cpu_labels) and torch.equal(counts.cpu(), cpu_counts)):
        raise AssertionError(f"labels on {device} differ from the CPU path")
    if not (torch.equal(stats.bbox.cpu(), cpu_stats.bbox) and torch.equal(stats.area.cpu(), cpu_stats.area)):
        raise AssertionError(f"component boxes/areas on {device} differ from the CPU path")
    torch.testing.assert_close(stats.mean.cpu(), cpu_stats.mean, rtol=1e-5, atol=1e-5)

    def timed(fn: Callable[[], object], sync: bool) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    t_dev = timed(lambda: erase_components(dev, threshold=0.5), device != "cpu")
    t_cpu = timed(lambda: erase_components(maps, threshold=0.5), False)
    return (f"erase/label/stats on {device} == CPU path on {n} maps of {side}x{side}; "
            f"erase {t_dev * 1e3:.1f} ms on {device} vs {t_cpu * 1e3:.1f} ms CPU path")


def _images(input_size: tuple[int, int], batch: int):
    import torch

    from miner.export.parity import phantom_image

    return torch.cat([phantom_image(input_size, seed=s) for s in range(batch)])


def _compare(reference, other, input_size: tuple[int, int]) -> str:
    """Logits and maps of two backends on the same images, and how far the rank-1 box moves."""
    import numpy as np

    (ref_logits, ref_maps), (logits, maps) = reference, other
    ref_maps, maps = ref_maps.float().cpu(), maps.float().cpu()
    d_logits = float((ref_logits.float().cpu() - logits.float().cpu()).abs().max())
    scale = float(ref_maps.abs().max()) or 1.0
    d_maps = float((ref_maps - maps).abs().max()) / scale
    ious = _rank1_ious(ref_maps, maps, input_size)
    return (f"logits |d| {d_logits:.1e}, maps |d|/max {d_maps:.1e}, rank-1 box IoU median "
            f"{float(np.median(ious)):.3f} (min {float(np.min(ious)):.3f})"), d_logits, d_maps, ious


def _rank1_ious(ref_maps, maps, input_size: tuple[int, int]):
    """IoU of the box around each map's peak region (>= half its maximum, the peak's component), per map."""
    import numpy as np
    from scipy import ndimage

    def box(m: np.ndarray) -> tuple[int, int, int, int]:
        m = m - m.min()
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        labels, _ = ndimage.label(m >= 0.5 * m.max())
        ys, xs = np.nonzero(labels == labels[peak])
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

    out = []
    for a, b in zip(ref_maps.reshape(-1, *ref_maps.shape[-2:]).numpy(), maps.reshape(-1, *maps.shape[-2:]).numpy()):
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box(a), box(b)
        inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
        union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
        out.append(inter / union)
    return out


def _export(workdir: Path) -> Path:
    from miner.export.onnx import export_checkpoint

    path = workdir / "embedded.onnx"
    if not path.exists():
        export_checkpoint(_default_model(), path)
    return path


def _torch_reference(device: str, images):
    from miner.backends import open_backend

    return open_backend(_default_model(), device=device).run(images.to(device))


def check_ort_cuda(args: argparse.Namespace) -> str:
    from miner.backends import open_backend

    device = _device(args)
    provider = "cuda" if device == "cuda" else "cpu"
    workdir = Path(args.workdir)
    graph = _export(workdir)
    images = _images(_input_size(), 4)
    reference = _torch_reference(device, images)
    backend = open_backend(graph, backend="onnxruntime", provider=provider)
    result = backend.run(images)
    text, d_logits, d_maps, ious = _compare(reference, result, _input_size())
    described = backend.describe()
    if provider == "cuda" and "CUDA" not in described:
        raise AssertionError(f"onnxruntime did not run on CUDA: {described}")
    if d_logits > 1e-3 or d_maps > 1e-3:
        raise AssertionError(f"{described}: {text}")
    return f"embedded model, {described}: {text}"


def _input_size() -> tuple[int, int]:
    meta = json.loads((_default_model().with_suffix(".json")).read_text())
    size = meta["input_size"]
    return (size, size) if isinstance(size, int) else tuple(size)


def check_tensorrt(args: argparse.Namespace) -> str:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise Skip("tensorrt is not installed (pip install tensorrt needs NVIDIA's index)") from None
    device = _device(args)
    if device != "cuda":
        raise Skip("a TensorRT build needs a CUDA device")
    from miner.backends import open_backend
    from miner.export.trt import EngineSettings, build_engine

    workdir = Path(args.workdir)
    graph = _export(workdir)
    start = time.perf_counter()
    engine = build_engine(graph, workdir / "embedded.engine", EngineSettings(tf32=False, max_batch=16))
    built = time.perf_counter() - start
    images = _images(_input_size(), 4)
    reference = _torch_reference(device, images)
    result = open_backend(engine, backend="tensorrt").run(images.to(device))
    text, d_logits, d_maps, ious = _compare(reference, result, _input_size())
    if d_logits > 1e-2 or d_maps > 1e-2:
        raise AssertionError(f"engine vs torch: {text}")
    return f"fp32 engine built in {built:.0f} s; vs torch on the GPU: {text}"


def check_job(args: argparse.Namespace) -> str:
    device = _device(args)
    from miner.phantoms import make_phantoms

    images, size = (24, 128) if args.quick else (1024, 512)
    workdir = Path(args.workdir)
    archive = workdir / f"phantoms{images}"
    if not archive.exists():
        make_phantoms(archive, images=images, size=size, seed=11)
    out = workdir / "job"
    cmd = [sys.executable, "-m", "miner", "mine", str(archive), "--model", str(_default_model()), "--out", str(out),
           "--overwrite", "--no-progress"]
    if device == "cpu":
        cmd += ["--gpus-per-worker", "0"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=LIMITS["job"] - 20)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        err = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise AssertionError(f"miner mine exited {proc.returncode}: {err[0][:200]}")
    rate = re.search(r"\(([\d.]+) images/s(?:, ([\d.]+) steady)?, (\d+) workers\)", last)
    if not rate:
        raise AssertionError(f"no throughput in miner mine's summary: {last[:200]}")
    steady = f", {rate.group(2)} steady" if rate.group(2) else ""
    return (f"miner mine, {images} phantoms of {size} px on {device}: {rate.group(1)} images/s{steady} "
            f"({rate.group(3)} workers)")


RUNNERS: dict[str, Callable[[argparse.Namespace], str]] = {
    "env": check_env, "pytest-gpu": check_pytest_gpu, "kernels": check_kernels, "ort-cuda": check_ort_cuda,
    "tensorrt": check_tensorrt, "job": check_job,
}


def run_one(name: str, args: argparse.Namespace) -> int:
    """Run one check in this process and print its line (exit 0 pass, 1 fail, 3 skip)."""
    try:
        text = RUNNERS[name](args)
    except Skip as skip:
        print(_line(name, "SKIP", str(skip)), flush=True)
        return 3
    except Exception as err:  # a failed check is a line, not a traceback: the summary must stay readable
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(_line(name, "FAIL", message[:400]), flush=True)
        return 1
    print(_line(name, "PASS", text), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=CHECKS, action="append", help="run this check (repeatable; default all)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default), or cpu for a rehearsal on a machine without a GPU")
    parser.add_argument("--quick", action="store_true", help="small workloads (the rehearsal)")
    parser.add_argument("--workdir", default=None, help="where graphs, engines and phantoms go (default: temporary)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.only or list(CHECKS)
    if args.child:
        return run_one(names[0], args)
    with tempfile.TemporaryDirectory(prefix="gpu_check") as tmp:
        workdir = args.workdir or tmp
        counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        for name in names:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--only", name, "--device", args.device,
                   "--workdir", workdir] + (["--quick"] if args.quick else [])
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMITS[name], cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gpu_check: ")]
                if lines:
                    line = lines[-1]
                else:
                    tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
                    line = _line(name, "FAIL", f"exited {proc.returncode}: {tail[0][:300]}")
            except subprocess.TimeoutExpired:
                line = _line(name, "FAIL", f"did not end within {LIMITS[name]} s")
            status = line.split()[2]
            counts[status] = counts.get(status, 0) + 1
            print(f"{line} [{time.perf_counter() - start:.0f} s]", flush=True)
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
