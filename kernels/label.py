"""Connected-component labelling of a batch of binary maps, numbered exactly like scipy.ndimage.label."""
from __future__ import annotations

from torch import Tensor

from miner.kernels._checks import check_connectivity, flatten_maps
from miner.kernels.ops import label_components_op


def label_components(mask: Tensor, *, connectivity: int = 8) -> tuple[Tensor, Tensor]:
    """Label the components of every map of a batch.

    mask (Tensor[N, H, W], bool; any leading dims ``[..., H, W]`` are accepted and kept; non-bool means ``!= 0``)
    -> (labels Tensor[N, H, W] int32, counts Tensor[N] int32).

    Labels run 1..counts[n] in the raster order of each component's first pixel, 0 is background: per map exactly
    ``scipy.ndimage.label(mask[n], structure)`` with ``np.ones((3, 3))`` for connectivity 8 and the default cross for
    4. ``counts`` has the leading shape of ``mask``.
    """
    check_connectivity(connectivity)
    flat, shape = flatten_maps(mask, "mask", floating=False)
    labels, counts = label_components_op(flat, int(connectivity))
    return labels.reshape(shape), counts.reshape(shape[:-2])


__all__ = ["label_components"]
