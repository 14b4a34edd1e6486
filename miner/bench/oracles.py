"""The reference implementations the class maps are compared with (tests and `miner bench maps`).

`import_pytorch_grad_cam` imports pytorch-grad-cam (the ``grad-cam`` package) without torchvision or
scikit-learn; `reimplemented_gradcam` is a faithful re-implementation of what one pytorch-grad-cam GradCAM call
does, for machines where the package is not installed (the benchmark labels it as such).

pytorch-grad-cam imports, at module level, names it uses only for pictures, test-time augmentation and
factorisation methods: ``torchvision.transforms`` (Compose, Normalize, ToTensor),
``torchvision.transforms.functional.resize``, ``torchvision`` itself (``ops.box_iou`` for detection targets)
and ``sklearn.decomposition`` (KernelPCA, NMF). torchvision cannot be installed beside CPU torch here (its
wheel pulls a CUDA torch; see NOTES.md), so the package is installed with ``pip install --no-deps grad-cam
ttach`` (README set-up) and `import_pytorch_grad_cam` puts inert stand-ins for exactly those names
into ``sys.modules`` while ``pytorch_grad_cam`` is imported, then removes them again (other tests never see a
fake torchvision). Every stand-in raises if called: the CAM computations compared in the tests (GradCAM,
HiResCAM, XGradCAM, GradCAMPlusPlus, LayerCAM, SemanticSegmentationTarget) never touch them.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _inert(name: str):
    def fn(*args, **kwargs):
        raise RuntimeError(f"{name} is a test stand-in (torchvision/scikit-learn are not installed)")

    fn.__name__ = name.rsplit(".", 1)[-1]
    return fn


_STAND_INS = {
    "torchvision": {},
    "torchvision.ops": {"box_iou": None},
    "torchvision.transforms": {"Compose": None, "Normalize": None, "ToTensor": None},
    "torchvision.transforms.functional": {"resize": None},
    "sklearn": {},
    "sklearn.decomposition": {"KernelPCA": None, "NMF": None},
}


def import_pytorch_grad_cam() -> types.ModuleType:
    """The ``pytorch_grad_cam`` package, or ImportError when ``grad-cam``/``ttach`` are not installed."""
    if "pytorch_grad_cam" in sys.modules:
        return sys.modules["pytorch_grad_cam"]
    for needed in ("pytorch_grad_cam", "ttach"):
        if importlib.util.find_spec(needed) is None:
            raise ImportError(f"{needed} is not installed (pip install --no-deps grad-cam ttach)")
    missing_roots = {root for root in ("torchvision", "sklearn") if importlib.util.find_spec(root) is None}
    added = []
    for name, attrs in _STAND_INS.items():
        if name.split(".")[0] not in missing_roots:
            continue  # the real package is installed: pytorch-grad-cam uses it
        module = types.ModuleType(name)
        for attr in attrs:
            setattr(module, attr, _inert(f"{name}.{attr}"))
        sys.modules[name] = module
        added.append(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        return importlib.import_module("pytorch_grad_cam")
    finally:
        for name in added:
            sys.modules.pop(name, None)


def reimplemented_gradcam(model, layer, images, class_index: int):
    """One pytorch-grad-cam ``GradCAM(model, [layer])(images, [ClassifierOutputTarget(c)] * B)`` call, re-done.

    What its BaseCAM does, step by step: eval mode; a forward hook storing the layer's activation (moved to the
    host as numpy) and a tensor hook storing its gradient; a full forward pass; ``model.zero_grad()``; the
    summed class score's ``backward(retain_graph=True)`` (the parameters require grad, so every weight gradient
    is computed too); channel weights = spatial mean of the gradient; ReLU of the weighted sum; per map min-max
    (eps 1e-7) and ``cv2.resize`` to the input size; min-max again (its layer aggregation).

    Returns np.ndarray[B, H, W] float32.
    """
    import cv2
    import numpy as np

    store = {}

    def keep(module, inputs, output):
        store["a"] = output.cpu().detach()
        output.register_hook(lambda g: store.__setitem__("g", g.cpu().detach()))

    model.eval()
    handle = layer.register_forward_hook(keep)
    try:
        out = model(images)
        model.zero_grad()
        out[:, class_index].sum().backward(retain_graph=True)
    finally:
        handle.remove()
    a, g = store["a"].numpy(), store["g"].numpy()
    cam = np.maximum((g.mean(axis=(2, 3))[:, :, None, None] * a).sum(axis=1), 0)
    size = (images.shape[-1], images.shape[-2])
    result = []
    for m in cam:
        m = m - m.min()
        m = cv2.resize(np.float32(m / (1e-7 + m.max())), size)
        m = m - m.min()
        result.append(m / (1e-7 + m.max()))
    return np.float32(result)
