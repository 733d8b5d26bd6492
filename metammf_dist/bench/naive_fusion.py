"""The per-item *materialized* formulation of MetaMMF fusion: test oracle and benchmark baseline only.

For every item i and fusion layer it builds the item's own weight matrix (equations (1) and (4) of
``metammf_dist/model/fusion.py``)

    meta:  W_i = M + Σ_k s_ik T_k
    cp:    W_i = M + Σ_k s_ik T_k   with   T_k = A · diag(C_k) · B
    static: W_i = M

as a ``[B, in, out]`` tensor and applies it with a batched vector-matrix product h_i · W_i + b.  This is
the textbook reading of the paper and costs in × out numbers per item per layer (plus as many again for
their gradients) — exactly what the layers in ``fusion.py`` avoid.  It reads the parameters of the real
layers, so outputs and gradients can be compared one to one.  Never used in training.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from metammf_dist.model.fusion import CPLayer, FusionNet, MetaLayer, StaticLayer


def materialize_weights(layer: torch.nn.Module, s: torch.Tensor) -> torch.Tensor:
    """W_i for every item of the batch, ``[B, in, out]``."""
    if isinstance(layer, MetaLayer):
        tensor = layer.T
    elif isinstance(layer, CPLayer):
        # T_k = A diag(C_k) B for k = 1..s   -> [s, in, out]
        tensor = torch.einsum("ir,kr,ro->kio", layer.A, layer.C, layer.B)
    elif isinstance(layer, StaticLayer):
        return layer.M.unsqueeze(0).expand(s.shape[0], -1, -1)
    else:
        raise TypeError(f"not a fusion layer: {type(layer).__name__}")
    # W_i = M + Σ_k s_ik T_k
    return layer.M.unsqueeze(0) + torch.einsum("bk,kio->bio", s, tensor)


def naive_layer_forward(layer: torch.nn.Module, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """h_i · W_i + b with W_i materialized per item."""
    weights = materialize_weights(layer, s)
    return torch.bmm(h.unsqueeze(1), weights).squeeze(1) + layer.bias


def naive_fusion_forward(net: FusionNet, x: torch.Tensor) -> torch.Tensor:
    """``FusionNet.forward`` computed with per-item materialized weights."""
    s = net.meta_vectors(x)
    h = x
    last = len(net.layers) - 1
    for index, layer in enumerate(net.layers):
        h = naive_layer_forward(layer, h, s)
        if index < last:
            h = F.leaky_relu(h, net.leaky_slope)
    return h


def materialized_floats_per_item(in_dim: int, dims: Sequence[int]) -> int:
    """Numbers of all W_i of one item: Σ_l in_l · out_l (2276·1024 + 1024·512 + ... at paper dims)."""
    widths = [in_dim] + list(dims)
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
