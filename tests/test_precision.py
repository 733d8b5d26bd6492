"""Training precision (train/precision.py): bf16 from the DeepSpeed JSON, fp32 islands, TF32 switch, fp16 refused.

* a bf16 engine holds bf16 parameters while the loss, the feature statistics and the degree normalisers stay
  fp32, and the features are standardised in fp32 (checked against an fp32 reference);
* a 2-rank ZeRO-2 bf16 run resumed mid-epoch ends exactly like a straight run, and ``evaluate`` of its checkpoint
  (bf16 parameters, fp32 buffers, as the run computed) gives the run's test metrics;
* with ID tables outside the engine (sparse with layer histories, sharded) bf16 runs, and ``evaluate`` agrees;
* ``train.tf32`` sets torch's TF32 switches; a DeepSpeed JSON with fp16 is one line.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from helpers import SMALL, close, last_json, run_cli, straight_and_resumed, train

BF16 = ["train.ds_config=configs/ds/zero2_bf16.json"]


def test_bf16_engine_keeps_the_fp32_islands(synth_ds, tmp_path):
    from metammf_dist.config import load_config
    from metammf_dist.train.loop import Trainer

    cfg = load_config("configs/tiktok.yaml", [f"data.path={synth_ds}", f"run_dir={tmp_path / 'run'}", *SMALL,
                                              "train.ds_config=configs/ds/zero1_bf16.json", "train.graph_backend=torch"])
    trainer = Trainer(cfg)
    model = trainer.model
    assert trainer.precision == "bf16"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    floating = {name: b.dtype for name, b in model.named_buffers() if b.is_floating_point()}
    assert floating and set(floating.values()) == {torch.float32}, floating  # feat_mean/std, inverse degrees
    # standardisation in fp32 before the cast: the fused rows equal an fp32 reference's within bf16 rounding of
    # the fusion itself, which a bf16 subtraction of TikTok-like means (~2.7) would not
    feats = torch.randn(5, model.feat_dim) * 0.01 + 2.7
    with torch.no_grad():
        fused = model.fuse(feats)
        x = ((feats - model.feat_mean) / model.feat_std).to(torch.bfloat16)
        assert torch.equal(fused, model.fusion(x))
    batch = next(iter(trainer.batches.epoch(0, store=trainer.store)))
    loss, batch = trainer.train_step(batch, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.multiproc
def test_bf16_zero2_two_ranks_resume_exactly_and_evaluate_like_the_run(synth_ds, tmp_path):
    straight, resumed, straight_run = straight_and_resumed(synth_ds, tmp_path, *BF16, stage=2)
    assert json.loads((straight_run / "ds_config.json").read_text())["bf16"]["enabled"] is True
    assert close(straight, resumed, 1e-6), (straight, resumed)
    assert close(last_json(run_cli("evaluate", str(straight_run))), straight, 1e-6)
    fp32 = last_json(train(synth_ds, tmp_path / "fp32", nproc=2, stage=2, epochs=1))
    assert not close(fp32, straight, 1e-6)  # bf16 did change the computation


HAVE_TORCHREC = importlib.util.find_spec("torchrec") is not None and importlib.util.find_spec("fbgemm_gpu") is not None


@pytest.mark.multiproc
@pytest.mark.parametrize("tables", [
    pytest.param(["train.id_tables=sparse", "train.fusion_cache_refresh=3", "train.gcn_history=true"],
                 id="sparse-layer-histories"),
    pytest.param(["train.id_tables=sharded", "model.id_init=blocks", "train.id_optimizer=rowwise_adagrad",
                  "model.item_knn=0"], id="sharded",
                 marks=pytest.mark.skipif(not HAVE_TORCHREC, reason="TorchRec runs in the latest lane only")),
])
def test_bf16_with_id_tables_outside_the_engine_evaluates_like_the_run(synth_ds, tmp_path, tables):
    """The fp32 rows of tables outside the engine enter bf16 layers cast (the layer histories' refresh and the
    sharded evaluation read the tables directly), and the run's test metrics equal ``evaluate`` of its checkpoint."""
    run = tmp_path / "run"
    out = last_json(train(synth_ds, run, *BF16, *tables, "model.gcn_type=sage", nproc=2, stage=2, epochs=1))
    assert close(last_json(run_cli("evaluate", str(run))), out, 1e-6), out


def test_tf32_switch():
    from metammf_dist.train.precision import apply_tf32

    try:
        apply_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
        apply_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        apply_tf32(False)


def test_fp16_is_refused_in_one_line(synth_ds, tmp_path):
    ds = tmp_path / "fp16.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}}))
    proc = train(synth_ds, tmp_path / "run", f"train.ds_config={ds}", epochs=1, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fp16" in proc.stderr.strip().splitlines()[-1] and "bf16" in proc.stderr.strip().splitlines()[-1]


def test_keep_fp32_buffers_restores_what_a_conversion_rounded():
    from metammf_dist.train.precision import keep_fp32_buffers

    module = torch.nn.Linear(3, 2)
    module.register_buffer("mean", torch.tensor([2.7182817, 3.1415927]))
    with keep_fp32_buffers(module):
        module.to(torch.bfloat16)
    assert module.weight.dtype == torch.bfloat16
    assert module.mean.dtype == torch.float32 and torch.equal(module.mean, torch.tensor([2.7182817, 3.1415927]))


def test_bf16_at_zero_stage_0_trains_or_is_refused_in_one_line(synth_ds, tmp_path):
    """DeepSpeed 0.18.2 (the DGL lane) runs bf16 at stage 0 through its fp16 optimizer, where the loss diverges:
    refused, naming the ZeRO-1 file; DeepSpeed 0.19 (the latest lane) trains it."""
    import deepspeed

    proc = train(synth_ds, tmp_path / "run", "train.ds_config=configs/ds/zero0_bf16.json", epochs=1, check=False)
    major, minor = (int(x) for x in deepspeed.__version__.split(".")[:2])
    if (major, minor) < (0, 19):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "zero1_bf16.json" in proc.stderr.strip().splitlines()[-1]
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert last_json(proc)["recall@20"] > 0
