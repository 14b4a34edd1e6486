"""CAM (Zhou et al. 2016): the class branch's weights applied to the feature map, no gradient.

    M_c(i, j) = sum_k w_ck X_k(i, j)          (Zhou et al. Eq. 2; Cai et al. Eq. 7 with M = 1)

Defined only at the input X of a GAP + linear head (``model.head_is_linear``, layer = ``model.feature_layer``),
where logit_c = mean_ij M_c(i, j) + b_c. The map is raw: no ReLU, no bias, not normalised. Erasure commutes with
it exactly: CAM(X * M) = M * CAM(X).
"""
from __future__ import annotations

from torch import Tensor

from miner.cam.base import CamMethod, register


@register
class CAM(CamMethod):
    name = "cam"
    needs_gradients = False
    relu = False
    mask_equivariant = True
    stage_weightable = True

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        # the engine passes the head weights as a spatially constant "gradient" [1, C, K, 1, 1]
        return grads[..., 0, 0]
