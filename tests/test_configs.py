"""Every shipped config is valid: experiment YAMLs pass the config checks (with each fusion-ablation variant's
overrides), sweep YAMLs the sweep checks (with each series' overrides on their base config), and every DeepSpeed
JSON parses with a ZeRO stage 0-3.  A config edited by hand (say, an ID width that no longer adds up to the user
rows) fails here, not an hour into an experiment."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from metammf_dist.ablation.runner import VARIANTS, Ablation
from metammf_dist.config import load_config
from metammf_dist.scaling.point import series_config
from metammf_dist.scaling.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
EXPERIMENTS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "sweeps")
DS_JSONS = sorted((REPO / "configs" / "ds").glob("*.json"))


def test_the_config_folders_hold_what_these_tests_check():
    names = {p.relative_to(REPO).as_posix() for p in EXPERIMENTS + SWEEPS + DS_JSONS}
    assert {"configs/tiktok.yaml", "configs/ablation/synth.yaml", "configs/scale/base.yaml",
            "configs/sweeps/ci.yaml", "configs/ds/zero3_offload.json"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_experiment_config_and_its_ablation_variants_load(path, tmp_path):
    cfg = load_config(str(path))
    assert (REPO / cfg.train.ds_config).is_file(), f"{path}: train.ds_config {cfg.train.ds_config} is missing"
    # static-wide's widths come from the dataset's feature width: the only variant that needs the data
    Ablation(str(path), str(tmp_path), [1], [v for v in VARIANTS if v != "static-wide"]).validate()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_sweep_and_every_series_load(path, monkeypatch):
    monkeypatch.chdir(REPO)  # a sweep names its base config relative to the repository
    sweep = load_sweep(str(path))
    assert sweep.series and sweep.catalogs
    for series in sweep.series:
        series_config(sweep, series)


@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_parses_with_its_stage(path):
    ds = json.loads(path.read_text())
    stage = ds["zero_optimization"]["stage"]
    assert stage in (0, 1, 2, 3)
    assert path.name.startswith(f"zero{stage}"), f"{path.name} holds ZeRO stage {stage}"
    assert ("offload" in path.name) == ("offload_optimizer" in ds["zero_optimization"])
    assert ("bf16" in path.name) == ds.get("bf16", {}).get("enabled", False)
