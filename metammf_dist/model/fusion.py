"""Meta-learned multimodal fusion: the equations of MetaMMF (Liu et al., TOIS 2023) as batched layers.

MetaMMF fuses an item's concatenated multimodal features x_i (visual ⊕ acoustic ⊕ textual, d dims) with
an MLP whose weights are *item-specific*.  The meta-learner (``metalearner.py``) gives every item a
small meta vector s_i (s = 5 dims); each fusion layer l then uses, for item i, the weight matrix

    W_i^l = M^l + Σ_k s_ik · T_k^l              (M^l: in × out shared,  T^l: s × in × out tensor)   (1)
    h_i^{l+1} = σ(h_i^l · W_i^l + b^l)          (σ = LeakyReLU between layers, none after the last)  (2)

with h_i^0 = x_i.  Materializing W_i^l costs in × out numbers *per item* (2,276 × 1,024 for the paper's
first layer) — ``metammf_dist/bench/naive_fusion.py`` does exactly that, as test oracle and benchmark
baseline.  The layers below never build W_i; they contract h with M and T first:

    h_i · W_i = h_i·M + Σ_k s_ik (h_i·T_k)                                                            (3)

so one matmul against T reshaped to in × (s·out) gives all u_ik = h_i·T_k at once ([B, s, out]), and a
batched 1 × s by s × out product weighs them by s_i.  Per item that is s·out extra numbers, not in·out.

The paper also reduces the parameter count of T with a CP decomposition of rank R:

    T_k = A · diag(C_k) · B          (A: in × R,  C: s × R,  B: R × out)                               (4)
    h_i · W_i = h_i·M + ((h_i·A) ⊙ (s_i·C)) · B                                                       (5)

so a CP layer costs in·R + s·R + R·out parameters for the meta part instead of s·in·out, and
per item only R extra numbers.  (Equation (5) keeps the full rank-R structure; it does not collapse T to
one scalar per item.)  ``StaticLayer`` drops the meta part (W_i = M for every item): the no-meta
ablation.

Parameter names and shapes are a documented contract (checkpoints, parameter tables, tests):
    MetaLayer:   M [in, out], T [s, in, out], bias [out]
    CPLayer:     M [in, out], A [in, R], B [R, out], C [s, R], bias [out]
    StaticLayer: M [in, out], bias [out]

Initialization: M is Xavier-uniform, bias zero, and the meta part is small — every T_k entry has
std = ``META_INIT_SCALE`` × the Xavier std of M, in both parameterizations — so early training is close
to a static MLP and the item-specific part grows as it is learned.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Type

import torch
from torch import nn
from torch.nn import functional as F

from metammf_dist.model.metalearner import MetaLearner

META_INIT_SCALE = 0.1  # std of the initial T_k entries relative to the Xavier std of M


def _xavier_std(in_dim: int, out_dim: int) -> float:
    return math.sqrt(2.0 / (in_dim + out_dim))


class MetaLayer(nn.Module):
    """Exact meta fusion layer, equations (1)-(3): ``forward(h [B, in], s [B, meta_dim]) -> [B, out]``."""

    uses_meta = True

    def __init__(self, in_dim: int, out_dim: int, meta_dim: int):
        super().__init__()
        self.in_dim, self.out_dim, self.meta_dim = in_dim, out_dim, meta_dim
        self.M = nn.Parameter(torch.empty(in_dim, out_dim))
        self.T = nn.Parameter(torch.empty(meta_dim, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.M)
        nn.init.normal_(self.T, std=META_INIT_SCALE * _xavier_std(self.in_dim, self.out_dim))
        nn.init.zeros_(self.bias)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n_meta, out = self.meta_dim, self.out_dim
        # T as in × (s·out): column block k is T_k, so u[b, k] = h_b · T_k   (equation 3)
        t_flat = self.T.permute(1, 0, 2).reshape(self.in_dim, n_meta * out)
        u = torch.mm(h, t_flat).view(-1, n_meta, out)  # [B, s, out]
        static = torch.addmm(self.bias, h, self.M)  # h·M + b      [B, out]
        # static + Σ_k s_k u_k, as a batch of (1 × s)·(s × out) products
        return torch.baddbmm(static.unsqueeze(1), s.unsqueeze(1), u).squeeze(1)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, meta_dim={self.meta_dim}"


class CPLayer(nn.Module):
    """Meta fusion layer with a rank-R CP-decomposed T, equations (4)-(5)."""

    uses_meta = True

    def __init__(self, in_dim: int, out_dim: int, meta_dim: int, rank: int = 16):
        super().__init__()
        self.in_dim, self.out_dim, self.meta_dim, self.rank = in_dim, out_dim, meta_dim, rank
        self.M = nn.Parameter(torch.empty(in_dim, out_dim))
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        self.B = nn.Parameter(torch.empty(rank, out_dim))
        self.C = nn.Parameter(torch.empty(meta_dim, rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.M)
        # Var(T_k[i, o]) = R · Var(A) · Var(C) · Var(B); choose Var(B) so that it matches MetaLayer's T.
        target_var = (META_INIT_SCALE * _xavier_std(self.in_dim, self.out_dim)) ** 2
        nn.init.normal_(self.A, std=math.sqrt(1.0 / self.in_dim))
        nn.init.normal_(self.C, std=1.0)
        nn.init.normal_(self.B, std=math.sqrt(target_var * self.in_dim / self.rank))
        nn.init.zeros_(self.bias)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gated = torch.mm(h, self.A) * torch.mm(s, self.C)  # (h·A) ⊙ (s·C)   [B, R]
        return torch.addmm(self.bias, h, self.M).addmm_(gated, self.B)  # equation (5)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, meta_dim={self.meta_dim}, rank={self.rank}"


class StaticLayer(nn.Module):
    """No-meta ablation: ``h·M + bias`` for every item; ``forward(h, s)`` ignores ``s``."""

    uses_meta = False

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.M = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.M)
        nn.init.zeros_(self.bias)

    def forward(self, h: torch.Tensor, s: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.addmm(self.bias, h, self.M)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}"


# Fusion kinds by their ``ModelConfig.fusion`` string (re-exported by ``registry.py``).
FUSION_LAYERS: Dict[str, Type[nn.Module]] = {"meta": MetaLayer, "cp": CPLayer, "static": StaticLayer}


def make_fusion_layer(kind: str, in_dim: int, out_dim: int, meta_dim: int, cp_rank: int) -> nn.Module:
    """One fusion layer of the given kind (the three constructors take different arguments)."""
    if kind not in FUSION_LAYERS:
        raise ValueError(f"unknown fusion kind {kind!r} (known: {', '.join(FUSION_LAYERS)})")
    if kind == "meta":
        return MetaLayer(in_dim, out_dim, meta_dim)
    if kind == "cp":
        return CPLayer(in_dim, out_dim, meta_dim, cp_rank)
    return StaticLayer(in_dim, out_dim)


class FusionNet(nn.Module):
    """Meta-learner + stack of fusion layers: ``x [B, in_dim] -> [B, dims[-1]]``, equation (2).

    ``dims`` lists the hidden widths then the output width (paper: 1024, 512, 256, 32 from d = 2276).
    For ``kind="static"`` there is no meta-learner (``meta_learner is None``) and ``meta_vectors``
    returns an empty ``[B, 0]`` tensor.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        kind: str = "meta",
        meta_dim: int = 5,
        meta_hidden: Optional[int] = None,
        cp_rank: int = 16,
        leaky_slope: float = 0.01,
    ):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or min(dims) <= 0 or in_dim <= 0:
            raise ValueError(f"FusionNet needs positive dims, got in_dim={in_dim} dims={dims}")
        if kind not in FUSION_LAYERS:
            raise ValueError(f"unknown fusion kind {kind!r} (known: {', '.join(FUSION_LAYERS)})")
        self.in_dim, self.dims, self.kind, self.leaky_slope = in_dim, dims, kind, leaky_slope
        self.meta_dim = meta_dim if FUSION_LAYERS[kind].uses_meta else 0
        self.meta_learner: Optional[MetaLearner] = (
            MetaLearner(in_dim, meta_dim, meta_hidden) if FUSION_LAYERS[kind].uses_meta else None
        )
        widths: List[int] = [in_dim] + dims
        self.layers = nn.ModuleList(
            make_fusion_layer(kind, a, b, meta_dim, cp_rank) for a, b in zip(widths[:-1], widths[1:])
        )

    @property
    def out_dim(self) -> int:
        return self.dims[-1]

    def meta_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """The item-specific meta vectors s_i, ``[B, meta_dim]`` (``[B, 0]`` for static fusion)."""
        if self.meta_learner is None:
            return x.new_zeros(x.shape[0], 0)
        return self.meta_learner(x)

    def forward(self, x: torch.Tensor, s: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``s``: meta vectors to use instead of ``meta_vectors(x)`` (probes: the fusion with the average item's s)."""
        s = self.meta_vectors(x) if s is None else s
        h = x
        last = len(self.layers) - 1
        # in place: each layer returns a fresh tensor its own backward does not need, and LeakyReLU's
        # backward can read the sign from its output (slope ≥ 0), so one [B, out] tensor per layer is kept
        inplace = self.leaky_slope >= 0
        for index, layer in enumerate(self.layers):
            h = layer(h, s)
            if index < last:
                h = F.leaky_relu(h, self.leaky_slope, inplace=inplace)
        return h
