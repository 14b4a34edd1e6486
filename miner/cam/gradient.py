"""Gradient-weighted class maps: Grad-CAM, HiRes-CAM, Grad-CAM++, XGrad-CAM, LayerCAM.

With A_k the activation of channel k of the layer and G_k = dy_c / dA_k (y_c the class score before the
sigmoid), each method's raw map for class c is (formulas as pytorch-grad-cam implements them):

    Grad-CAM   (Selvaraju et al. 2017)  ReLU( sum_k mean_ij(G_k) A_k )
    HiRes-CAM  (Draelos & Carin 2021)   ReLU( sum_k G_k * A_k )                 (element-wise, no averaging)
    Grad-CAM++ (Chattopadhay et al. 2018)
                                        ReLU( sum_k w_k A_k ),  w_k = sum_ij a_kij ReLU(G_kij),
                                        a_kij = G^2 / (2 G^2 + sum_ab(A_kab) G^3 + 1e-6), 0 where G = 0
    XGrad-CAM  (Fu et al. 2020)         ReLU( sum_k w_k A_k ),  w_k = sum_ij G_kij A_kij / (sum_ij A_kij + 1e-7)
    LayerCAM   (Jiang et al. 2021)      ReLU( sum_k ReLU(G_k) * A_k )           (element-wise)

At the input of a GAP + linear head G_k = w_ck / (h w) at every position, so Grad-CAM = HiRes-CAM = LayerCAM
(on non-negative A) = ReLU(CAM) / (h w).
"""
from __future__ import annotations

import torch
from torch import Tensor

from miner.cam.base import CamMethod, register, spatial_sum, weighted_sum


def _constant_in_space(grads: Tensor) -> bool:
    return grads.shape[-2] == 1 and grads.shape[-1] == 1


@register
class GradCAM(CamMethod):
    stage_weightable = True
    name = "gradcam"
    mask_equivariant = True

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(-2, -1))


@register
class HiResCAM(CamMethod):
    stage_weightable = True
    name = "hirescam"
    mask_equivariant = True

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        if _constant_in_space(grads):
            maps = weighted_sum(grads[..., 0, 0], acts)
        else:
            maps = (grads * acts).sum(dim=2)
        return torch.relu(maps)


@register
class GradCAMPlusPlus(CamMethod):
    name = "gradcam++"

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        size = (acts.shape[-2], acts.shape[-1])
        g2 = grads * grads
        g3 = g2 * grads
        sum_a = acts.sum(dim=(-2, -1), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return spatial_sum(torch.relu(grads) * alpha, size)


@register
class XGradCAM(CamMethod):
    stage_weightable = True
    name = "xgradcam"

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        sum_a = acts.sum(dim=(-2, -1))
        if _constant_in_space(grads):
            return grads[..., 0, 0] * sum_a / (sum_a + 1e-7)
        return (grads * acts).sum(dim=(-2, -1)) / (sum_a + 1e-7)


@register
class LayerCAM(CamMethod):
    stage_weightable = True
    name = "layercam"
    mask_equivariant = True

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        g = torch.relu(grads)
        if _constant_in_space(g):
            maps = weighted_sum(g[..., 0, 0], acts)
        else:
            maps = (g * acts).sum(dim=2)
        return torch.relu(maps)
