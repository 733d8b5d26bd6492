"""Fusion layers (model/fusion.py) against the per-item materialized oracle (bench/naive_fusion.py).

Every check is in float64 at small dims with the meta part deliberately large (random s, T of the same
scale as M), comparing outputs and gradients w.r.t. every parameter and the inputs to 1e-10.
"""
import json
import math

import pytest
import torch
from torch.nn import functional as F

from metammf_dist.bench import fusion as bench_fusion
from metammf_dist.bench.naive_fusion import materialize_weights, naive_fusion_forward, naive_layer_forward
from metammf_dist.model.fusion import CPLayer, FusionNet, MetaLayer, StaticLayer
from metammf_dist.model.registry import FUSION_LAYERS

TOL = dict(rtol=0.0, atol=1e-10)


def _randomize(module: torch.nn.Module, seed: int, std: float = 1.0) -> None:
    """Replace every parameter by N(0, std²) values so the meta part is as large as the static part."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _grads(out: torch.Tensor, upstream: torch.Tensor, wrt):
    return torch.autograd.grad((out * upstream).sum(), wrt)


def _check_layer(layer: torch.nn.Module, batch: int = 6, seed: int = 0) -> None:
    layer = layer.double()
    _randomize(layer, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    h = torch.randn(batch, layer.in_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(batch, layer.meta_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch, layer.out_dim, generator=gen, dtype=torch.float64)
    wrt = [h, s, *layer.parameters()]

    ours, oracle = layer(h, s), naive_layer_forward(layer, h, s)
    assert ours.shape == (batch, layer.out_dim)
    torch.testing.assert_close(ours, oracle, **TOL)
    for name, g_ours, g_oracle in zip(["h", "s", *dict(layer.named_parameters())], _grads(ours, upstream, wrt),
                                      _grads(oracle, upstream, wrt)):
        torch.testing.assert_close(g_ours, g_oracle, **TOL, msg=lambda m: f"gradient w.r.t. {name}: {m}")


def test_meta_layer_equals_materialized_oracle():
    _check_layer(MetaLayer(7, 5, 3), seed=0)
    _check_layer(MetaLayer(4, 9, 5), batch=11, seed=1)


def test_cp_layer_equals_materialized_oracle():
    _check_layer(CPLayer(7, 5, 3, rank=4), seed=2)
    _check_layer(CPLayer(6, 3, 5, rank=16), batch=9, seed=3)


def test_cp_oracle_builds_t_from_its_factors():
    layer = CPLayer(4, 3, 2, rank=5).double()
    _randomize(layer, 4)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = materialize_weights(layer, s)
    for k in range(2):  # s = e_k  ->  W = M + A diag(C_k) B
        expected = layer.M + layer.A @ torch.diag(layer.C[k]) @ layer.B
        torch.testing.assert_close(w[k], expected, **TOL)


def test_static_layer_is_a_linear_layer():
    layer = StaticLayer(6, 4).double()
    _randomize(layer, 5)
    h = torch.randn(8, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(h, None), F.linear(h, layer.M.t(), layer.bias), **TOL)
    torch.testing.assert_close(layer(h, torch.randn(8, 3, dtype=torch.float64)), layer(h, None), **TOL)


@pytest.mark.parametrize("kind", ["meta", "cp", "static"])
@pytest.mark.parametrize("dims", [[5, 3], [6, 4, 3]])
def test_fusion_net_equals_oracle(kind, dims):
    torch.manual_seed(0)
    net = FusionNet(7, dims, kind=kind, meta_dim=3, meta_hidden=6, cp_rank=4, leaky_slope=0.2).double()
    _randomize(net, 6, std=0.4)  # keeps activations O(1) through 3 layers, so 1e-10 is a tight bound
    x = torch.randn(10, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(10, dims[-1], dtype=torch.float64)
    wrt = [x, *net.parameters()]
    ours, oracle = net(x), naive_fusion_forward(net, x)
    assert ours.shape == (10, dims[-1]) and 0.1 < ours.abs().max() < 100
    torch.testing.assert_close(ours, oracle, **TOL)
    for name, g_ours, g_oracle in zip(["x", *dict(net.named_parameters())], _grads(ours, upstream, wrt),
                                      _grads(oracle, upstream, wrt)):
        torch.testing.assert_close(g_ours, g_oracle, **TOL, msg=lambda m: f"gradient w.r.t. {name}: {m}")


def test_fusion_net_matches_hand_written_equations():
    """One 2-layer meta net written out by hand: s = MLP(x), h1 = lrelu(x (M1 + Σ s_k T1_k) + b1), ..."""
    net = FusionNet(3, [4, 2], kind="meta", meta_dim=2, leaky_slope=0.1).double()
    _randomize(net, 7)
    x = torch.randn(5, 3, dtype=torch.float64)
    ml = net.meta_learner
    s = torch.relu(x @ ml.hidden_layer.weight.t() + ml.hidden_layer.bias) @ ml.out_layer.weight.t() + ml.out_layer.bias
    rows = []
    for i in range(5):
        h = x[i]
        for index, layer in enumerate(net.layers):
            w = layer.M + sum(s[i, k] * layer.T[k] for k in range(2))
            h = h @ w + layer.bias
            if index == 0:
                h = torch.where(h > 0, h, 0.1 * h)
        rows.append(h)
    torch.testing.assert_close(net(x), torch.stack(rows), **TOL)
    torch.testing.assert_close(net.meta_vectors(x), s, **TOL)


def test_parameter_names_and_shapes_contract():
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(MetaLayer(7, 5, 3)) == {"M": (7, 5), "T": (3, 7, 5), "bias": (5,)}
    assert shapes(CPLayer(7, 5, 3, rank=4)) == {"M": (7, 5), "A": (7, 4), "B": (4, 5), "C": (3, 4), "bias": (5,)}
    assert shapes(StaticLayer(7, 5)) == {"M": (7, 5), "bias": (5,)}
    net = FusionNet(7, [6, 4], kind="meta", meta_dim=3)
    assert net.meta_learner.hidden_layer.weight.shape == (7, 7)  # hidden defaults to the input dim
    assert net.meta_vectors(torch.randn(2, 7)).shape == (2, 3)
    static = FusionNet(7, [6, 4], kind="static")
    assert static.meta_learner is None and static.meta_vectors(torch.randn(2, 7)).shape == (2, 0)
    assert set(FUSION_LAYERS) == {"meta", "cp", "static"}
    with pytest.raises(ValueError, match="unknown fusion kind"):
        FusionNet(7, [4], kind="dense")


def test_initial_meta_part_is_small():
    """At init every T_k entry has std = 0.1 × Xavier std of M, for the exact and the CP layer."""
    torch.manual_seed(0)
    xavier = math.sqrt(2.0 / (256 + 128))
    meta = MetaLayer(256, 128, 5)
    assert abs(meta.T.std().item() / xavier - 0.1) < 0.01
    assert abs(meta.M.std().item() / xavier - 1.0) < 0.05
    cp = CPLayer(256, 128, 5, rank=16)
    t_cp = torch.einsum("ir,kr,ro->kio", cp.A, cp.C, cp.B)
    assert 0.05 < t_cp.std().item() / xavier < 0.2
    assert torch.count_nonzero(meta.bias) == 0 and torch.count_nonzero(cp.bias) == 0


def test_fusion_benchmark_at_tiny_dims():
    """The benchmark's measurement path (real worker subprocesses) and its JSON summary keys."""
    common = dict(in_dim=12, dims=[8, 4], meta_dim=3, rank=2, threads=1, repeats=1)
    isolated = bench_fusion.measure_variant("cp", batch=16, isolate=True, **common)
    assert isolated["variant"] == "cp" and isolated["batch"] == 16
    assert isolated["ms_per_item"] > 0 and isolated["peak_bytes"] >= 0 and "memory_method" in isolated
    out = bench_fusion.run_benchmark(batch=16, naive_mem_gb=1e-6, isolate=False, **common)
    summary = out["summary"]
    for key in ("meta_mem_ratio", "meta_time_ratio", "cp_mem_ratio", "cp_time_ratio",
                "naive_bytes_per_item", "meta_bytes_per_item", "cp_bytes_per_item",
                "naive_ms_per_item", "meta_ms_per_item", "cp_ms_per_item"):
        assert key in summary and summary[key] >= 0, key
    assert summary["naive_batch"] == 1  # the tiny budget still runs one item
    json.loads(json.dumps(summary))
    assert "meta_learner" in bench_fusion.format_results(out["results"])
    assert out["parameters"]["static"]["meta_learner"] == 0
    assert bench_fusion.naive_batch_size(2276, [1024, 512, 256, 32], 4.0) == 4 * 2**30 // (8 * 2994176)
