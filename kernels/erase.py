"""Erase the connected component at each map's maximum (one attention-mining step), for a whole batch."""
from __future__ import annotations

from torch import Tensor

from miner.kernels._checks import check_connectivity, flatten_maps
from miner.kernels.ops import erase_components_op


def erase_components(maps: Tensor, *, threshold: float = 0.5, connectivity: int = 8) -> Tensor:
    """The component of ``maps >= threshold`` that holds each map's maximum.

    maps (Tensor[N, h, w], float; any leading dims ``[..., h, w]`` are accepted and kept) -> Tensor[N, h, w] bool.

    The seed is ``torch.argmax`` of the flattened map: the first maximum in raster order when several pixels tie.
    Connectivity 8 joins diagonal neighbours, 4 only edge neighbours. A map whose maximum is below ``threshold``
    (impossible for a map normalised to max 1 with threshold <= 1) gives an all-False mask, and so does a map whose
    argmax is NaN: maps are expected NaN-free. float16/bfloat16/float64 maps are compared in float32 (the threshold
    too), so CPU and CUDA agree bit for bit. One batched call for all maps; CPU tensors run the batched CPU path,
    CUDA tensors one Triton program per map.
    """
    check_connectivity(connectivity)
    flat, shape = flatten_maps(maps, "maps", floating=True)
    out = erase_components_op(flat, float(threshold), int(connectivity))
    return out.reshape(shape)


__all__ = ["erase_components"]
