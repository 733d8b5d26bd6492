"""Training precision: fp32 (TF32 matmuls where the device has them) or bf16.

One source of truth each: **bf16** is the DeepSpeed JSON's ``bf16: {enabled: true}`` (``configs/ds/zero*_bf16.json``,
as in DeepSpeed's own examples): DeepSpeed then holds the module's parameters in bf16 and keeps fp32 master weights
and fp32 Adam states in its optimizer.  **TF32** is ``train.tf32`` (default true): fp32 matmuls and convolutions
may use TF32 tensor cores on GPUs that have them (Ampere and newer); ``train.tf32=false`` asks for full fp32.  On
CPU TF32 does not exist and the key changes nothing.  fp16 (loss scaling) is refused in one line.

What stays float32 under bf16, and why:

* **BPR scores and the loss** (``objective.py``): the vectors are cast to fp32 before the dot products, so
  ``sigma(y_ui - y_uj)`` does not lose the small score differences late in training;
* **metric accumulation**: scores for ranking are computed from fp32 vectors and metrics are exact fixed-point sums
  (``evaluation/ranking.py``);
* **optimizer states**: DeepSpeed's fp32 masters and Adam moments; sparse and row-sharded ID tables live outside
  the engine and keep fp32 rows and optimizer state (their rows are cast to bf16 where the model reads them);
* **the fusion cache and layer histories**: fp32 tables, read as gradient-free inputs (cast at use); a cache row is
  a model output, and storing it in bf16 would add a second rounding on every refresh and push;
* **feature statistics and degree normalisers** (model buffers ``feat_mean`` / ``feat_std`` /
  ``*_inv_sqrt_deg``): DeepSpeed converts every floating buffer to bf16, which would round TikTok's image-feature
  mean 2.7 to 3 significant digits before the subtraction; ``keep_fp32_buffers`` puts the fp32 values back, and
  the standardisation runs in fp32 before the fusion casts to bf16.

Features stored as float16 in the shards are read once into fp32 and cast once to the parameters' dtype.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch



def apply_tf32(enabled: bool) -> None:
    """Let fp32 matmuls and convolutions use TF32 (GPUs that have it) or ask for full fp32."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    torch.set_float32_matmul_precision("high" if enabled else "highest")


@contextlib.contextmanager
def keep_fp32_buffers(model: torch.nn.Module) -> Iterator[None]:
    """Around DeepSpeed's initialisation: the model's floating-point buffers come out as they went in (fp32),
    although a bf16 engine converts the module."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers() if buf.is_floating_point()}
    yield
    owners = dict(model.named_modules())
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        module = owners[owner] if owner else model
        module._buffers[leaf] = value.to(module._buffers[leaf].device)


def to_bf16_as_trained(model: torch.nn.Module, id_tables_outside: bool) -> None:
    """A model restored from a bf16 run computes as that run did: bf16 dense parameters, fp32 buffers, and
    fp32 ID tables where the run held them outside the engine (``train.id_tables`` sparse / sharded; their rows
    are cast where they enter a layer, and the item kNN mean is taken over fp32 rows)."""
    kept = ("user_emb", "item_emb") if id_tables_outside else ()
    with keep_fp32_buffers(model):
        for name, child in model.named_children():
            if name not in kept:
                child.to(torch.bfloat16)
        for param in model.parameters(recurse=False):
            param.data = param.data.to(torch.bfloat16)

