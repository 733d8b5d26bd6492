"""Importers (`prepare mmrec` / `prepare mmgcn`), the canonical dataset folder and `info`, on the real
shared data (TikTok in MMRec layout, the MetaMMF MovieLens sample) plus tiny hand-made bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SHARED_DATA, shared

from metammf_dist.cli import main
from metammf_dist.data.dataset import Dataset, write_dataset
from metammf_dist.data.mmrec import import_mmrec
from metammf_dist.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA
TIKTOK = DATA / "tiktok"
MOVIELENS = DATA / "movielens_sample"

# The shared data is part of the test setup: missing data fails these tests (conftest.shared), never skips.
shared("tiktok", "tiktok.inter"), shared("movielens_sample", "user_item_dict_sample.npy")
def needs_tiktok(test):  # kept as a marker of which tests read the shared data
    return test


needs_movielens = needs_tiktok


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_nothing_written(out: Path) -> None:
    """OUT absent and no temp sibling left behind."""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
    assert leftovers == []


# ---------------------------------------------------------------------------- TikTok (MMRec layout)
@pytest.fixture(scope="module")
def tiktok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiktok") / "ds"
    assert main(["prepare", "mmrec", str(TIKTOK), str(out)]) == 0
    return out


@needs_tiktok
def test_tiktok_info_counts(tiktok, capsys):
    rc, out, _ = run_cli(capsys, "info", tiktok)
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "9,308" in lines["users"]
    assert "6,710" in lines["items"]
    assert "59,541" in lines["train"] and "3,051" in lines["valid"] and "6,130" in lines["test"]
    assert "audio:128" in lines["modalities"] and "image:128" in lines["modalities"]
    assert "float16" in out and "mmrec" in lines["source"]


@needs_tiktok
def test_tiktok_interactions_match_source(tiktok):
    ds = Dataset.open(tiktok)
    src = pd.read_csv(TIKTOK / "tiktok.inter", sep="\t")
    for code, split in enumerate(("train", "valid", "test")):
        users, items = ds.interactions(split)
        part = src[src.x_label == code]
        assert users.dtype == np.int64 and items.dtype == np.int64
        np.testing.assert_array_equal(users, part.userID.to_numpy())
        np.testing.assert_array_equal(items, part.itemID.to_numpy())
    assert (ds.num_users, ds.num_items, ds.feat_dim) == (9308, 6710, 256)
    assert ds.meta["split_seed"] is None


@needs_tiktok
def test_tiktok_features_equal_npy_rows(tiktok):
    store = Dataset.open(tiktok).feature_store(cache_mb=8)
    assert list(store.modalities) == ["audio", "image"]
    ids = np.random.default_rng(0).permutation(6710)
    got = store.gather(ids)
    for name in ("audio", "image"):
        src = np.load(TIKTOK / f"{name}_feat.npy")
        np.testing.assert_array_equal(got[name], src[ids].astype(np.float32))
    concat = store.gather_concat(np.arange(6710))
    np.testing.assert_array_equal(concat[:, 128:], np.load(TIKTOK / "image_feat.npy").astype(np.float32))


@needs_tiktok
def test_verify_names_the_altered_shard(tiktok, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiktok, copy)
    rc, out, _ = run_cli(capsys, "info", copy, "--verify")
    assert rc == 0 and "sha256 OK" in out
    shard = copy / "features" / "shard-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    rc, _, err = run_cli(capsys, "info", copy, "--verify")
    assert rc != 0
    assert "shard-00000.parquet" in err and len(err.strip().splitlines()) == 1


@needs_tiktok
def test_info_in_a_real_subprocess(tiktok):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "metammf_dist", "info", str(tiktok)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "9,308" in proc.stdout and "59,541" in proc.stdout


@needs_tiktok
def test_existing_out_needs_overwrite(tiktok, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(tiktok, out)
    rc, _, err = run_cli(capsys, "prepare", "mmrec", TIKTOK, out)
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    (out / "features" / "manifest.json").unlink()  # damage it, then replace it
    rc, _, _ = run_cli(capsys, "prepare", "mmrec", TIKTOK, out, "--overwrite")
    assert rc == 0 and Dataset.open(out).num_items == 6710


# ---------------------------------------------------------------------------- missing pieces of a dataset
@needs_tiktok
def test_missing_dataset_json(tiktok, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiktok, copy)
    (copy / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json not found"):
        Dataset.open(copy)
    rc, _, err = run_cli(capsys, "info", copy)
    assert rc == 2 and str(copy / "dataset.json") in err
    rc, _, err = run_cli(capsys, "info", tmp_path / "nowhere")
    assert rc == 2 and "dataset.json" in err and "no such folder" in err


@needs_tiktok
def test_missing_manifest(tiktok, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiktok, copy)
    (copy / "features" / "manifest.json").unlink()
    rc, _, err = run_cli(capsys, "info", copy)
    assert rc == 2 and "features/manifest.json" in err and "manifest not found" in err


@needs_tiktok
def test_missing_parquet_and_bad_counts(tiktok, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiktok, copy)
    meta = json.loads((copy / "dataset.json").read_text())
    meta["interactions"]["test"] += 1
    (copy / "dataset.json").write_text(json.dumps(meta))
    rc, _, err = run_cli(capsys, "info", copy)
    assert rc == 2 and "68,722 rows" in err and "68,723" in err
    (copy / "interactions.parquet").unlink()
    rc, _, err = run_cli(capsys, "info", copy)
    assert rc == 2 and "interactions.parquet not found" in err


# ---------------------------------------------------------------------------- bad MMRec inputs
def make_mmrec(root: Path, *, inter: str = None, feats: dict = None) -> Path:
    """A tiny valid MMRec folder (3 users, 4 items), optionally with a replaced .inter text / feature arrays."""
    root.mkdir(parents=True)
    if inter is None:
        inter = "userID\titemID\tx_label\trating\n0\t0\t0\t5\n0\t1\t0\t4\n0\t2\t2\t3\n1\t3\t0\t1\n1\t0\t1\t2\n2\t1\t2\t2\n"
    (root / "toy.inter").write_text(inter)
    rng = np.random.default_rng(1)
    if feats is None:
        feats = {"image": rng.standard_normal((4, 6)).astype(np.float32),
                 "text": rng.standard_normal((4, 5)).astype(np.float16)}
    for name, arr in feats.items():
        np.save(root / f"{name}_feat.npy", arr)
    return root


def test_tiny_mmrec_roundtrip(tmp_path, capsys):
    src = make_mmrec(tmp_path / "src")
    rc, out, _ = run_cli(capsys, "prepare", "mmrec", src, tmp_path / "out", "--shard-size", "3")
    assert rc == 0 and "3 users, 4 items" in out
    ds = Dataset.open(tmp_path / "out")
    assert ds.modalities == {"image": 6, "text": 5} and ds.meta["feature_dtype"] == "float32"
    np.testing.assert_array_equal(ds.interactions("test")[1], [2, 1])
    got = ds.feature_store().gather([3, 0, 2])
    np.testing.assert_array_equal(got["image"], np.load(src / "image_feat.npy")[[3, 0, 2]])
    np.testing.assert_array_equal(got["text"], np.load(src / "text_feat.npy")[[3, 0, 2]].astype(np.float32))


BAD_CASES = {
    "missing_column": (dict(inter="userID\titemID\n0\t0\n"), ["toy.inter", "missing required column 'x_label'"]),
    "bad_label": (dict(inter="userID\titemID\tx_label\n0\t0\t0\n1\t1\t3\n"), ["toy.inter", "line 3", "x_label 3"]),
    "not_integer": (dict(inter="userID\titemID\tx_label\n0\tabc\t0\n"), ["toy.inter", "line 2", "itemID 'abc'"]),
    "item_beyond_rows": (dict(inter="userID\titemID\tx_label\n0\t0\t0\n1\t4\t2\n"),
                         ["toy.inter", "itemID 4", "4 feature rows"]),
    "duplicate_pair": (dict(inter="userID\titemID\tx_label\n0\t1\t0\n0\t1\t2\n"), ["toy.inter", "duplicate"]),
    "row_mismatch": (dict(feats={"image": np.zeros((4, 3), np.float32), "text": np.zeros((5, 3), np.float32)}),
                     ["image_feat.npy", "text_feat.npy", "5 rows"]),
    "nan_feature": (dict(feats={"image": np.where(np.arange(12).reshape(4, 3) == 7, np.nan, 1.0)}),
                    ["image_feat.npy", "row 2", "NaN/Inf"]),
    "float16_overflow": (dict(feats={"image": np.full((4, 2), 1e6)}), ["image_feat.npy", "row 0", "overflows"]),
    "no_features": (dict(feats={}), ["no feature files"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_mmrec_input_is_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    kwargs, needles = BAD_CASES[case]
    src = make_mmrec(tmp_path / "src", **kwargs)
    out = tmp_path / "out"
    argv = ["prepare", "mmrec", src, out] + (["--dtype", "float16"] if case == "float16_overflow" else [])
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert_nothing_written(out)


def test_nan_found_mid_stream_cleans_up(tmp_path):
    """The NaN is in the last chunk: earlier chunks were already written, and must be removed."""
    feats = np.ones((50, 4), np.float32)
    feats[47, 2] = np.inf
    src = make_mmrec(tmp_path / "src", inter="userID\titemID\tx_label\n0\t49\t0\n", feats={"image": feats})
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"image_feat.npy: row 47 \(item 47\)"):
        import_mmrec(src, out, shard_size=10, chunk_rows=16)
    assert_nothing_written(out)


def test_memory_filesystem_output(tmp_path):
    """fsspec URL output (memory://): written in place with dataset.json last; failures leave no dataset."""
    import fsspec

    memfs = fsspec.filesystem("memory")
    if memfs.exists("/mmrec-test"):
        memfs.rm("/mmrec-test", recursive=True)
    src = make_mmrec(tmp_path / "src")
    import_mmrec(src, "memory://mmrec-test/ok")
    ds = Dataset.open("memory://mmrec-test/ok")
    assert ds.num_interactions() == 6
    np.testing.assert_array_equal(ds.feature_store().gather_concat([1])[0, :6], np.load(src / "image_feat.npy")[1])
    bad = make_mmrec(tmp_path / "bad", feats={"image": np.full((4, 2), np.nan)})
    with pytest.raises(DataError, match="NaN"):
        import_mmrec(bad, "memory://mmrec-test/bad")
    assert not memfs.exists("/mmrec-test/bad/dataset.json")
    with pytest.raises(DataError, match="dataset.json not found"):
        Dataset.open("memory://mmrec-test/bad")
    with pytest.raises(DataError, match="already exists"):
        import_mmrec(src, "memory://mmrec-test/ok")
    import_mmrec(src, "memory://mmrec-test/ok", overwrite=True, dtype="float16")
    assert Dataset.open("memory://mmrec-test/ok").meta["feature_dtype"] == "float16"


def test_write_dataset_checks_ids(tmp_path):
    feats = {"f": np.zeros((3, 2), np.float32)}
    with pytest.raises(DataError, match="item id 3 is outside"):
        write_dataset(tmp_path / "o", [0, 1], [0, 3], [0, 0], 2, 3, feats, {"f": 2}, "test", None)
    assert_nothing_written(tmp_path / "o")
    with pytest.raises(DataError, match="got 2 feature rows for num_items=3"):
        write_dataset(tmp_path / "o", [0], [0], [0], 1, 3, {"f": feats["f"][:2]}, {"f": 2}, "test", None)
    assert_nothing_written(tmp_path / "o")


# ---------------------------------------------------------------------------- MetaMMF / MMGCN sample
@needs_movielens
def test_mmgcn_refuses_pickle_without_opt_in(tmp_path, capsys):
    out = tmp_path / "ml"
    rc, _, err = run_cli(capsys, "prepare", "mmgcn", MOVIELENS, out)
    assert rc == 2 and "--allow-pickle" in err and "arbitrary code" in err
    assert len(err.strip().splitlines()) == 1
    assert_nothing_written(out)


@needs_movielens
def test_mmgcn_movielens_sample(tmp_path, capsys):
    out = tmp_path / "ml"
    rc, _, _ = run_cli(capsys, "prepare", "mmgcn", MOVIELENS, out, "--allow-pickle")
    assert rc == 0
    rc, text, _ = run_cli(capsys, "info", out)
    assert rc == 0 and "100" in text and "1,141" in text and "2,071" in text
    ds = Dataset.open(out)
    assert (ds.num_users, ds.num_items) == (100, 1141)
    assert ds.modalities == {"acoustic": 128, "textual": 100} and ds.meta["split_seed"] == 2023
    counts = {s: len(ds.interactions(s)[0]) for s in ("train", "valid", "test")}
    assert sum(counts.values()) == 2071
    assert 0.74 < counts["train"] / 2071 < 0.84
    assert 0.07 < counts["valid"] / 2071 < 0.14 and 0.07 < counts["test"] / 2071 < 0.14

    source = np.load(MOVIELENS / "user_item_dict_sample.npy", allow_pickle=True).item()
    got = {}
    for split in ("train", "valid", "test"):
        for u, i in zip(*ds.interactions(split)):
            got.setdefault(int(u), []).append((int(i), split))
    for user, items in source.items():
        pairs = got.get(user, [])
        assert sorted(i for i, _ in pairs) == sorted(int(i) for i in items)  # no offset, nothing lost
        splits = [s for _, s in pairs]
        if len(items) >= 3:  # rule: at least one valid and one test item, at least one train item
            assert splits.count("valid") >= 1 and splits.count("test") >= 1 and splits.count("train") >= 1
        else:
            assert set(splits) == {"train"}

    store = ds.feature_store()
    np.testing.assert_array_equal(store.gather(np.arange(1141))["textual"],
                                  np.load(MOVIELENS / "t_feat_sample.npy").astype(np.float32))

    # same seed -> same split; another seed -> another split
    rc, _, _ = run_cli(capsys, "prepare", "mmgcn", MOVIELENS, tmp_path / "ml2", "--allow-pickle")
    assert (tmp_path / "ml2" / "interactions.parquet").read_bytes() == (out / "interactions.parquet").read_bytes()
    rc, _, _ = run_cli(capsys, "prepare", "mmgcn", MOVIELENS, tmp_path / "ml3", "--allow-pickle", "--split-seed", "7")
    assert not np.array_equal(Dataset.open(tmp_path / "ml3").interactions("test")[1], ds.interactions("test")[1])


def test_mmgcn_item_id_offset(tmp_path):
    """MMGCN-style ids (item = num_users + row) are detected and shifted back to feature rows."""
    from metammf_dist.data.mmgcn import import_mmgcn

    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "user_item_dict.npy", np.array({0: [2, 3, 4], 1: [4, 5]}, dtype=object), allow_pickle=True)
    np.save(src / "v_feat.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    meta = import_mmgcn(src, tmp_path / "out", allow_pickle=True)
    assert meta["source"]["item_id_offset"] == 2 and meta["num_items"] == 4
    ds = Dataset.open(tmp_path / "out")
    items = np.concatenate([ds.interactions(s)[1] for s in ("train", "valid", "test")])
    assert sorted(items.tolist()) == [0, 1, 2, 2, 3]
    np.save(src / "user_item_dict.npy", np.array({0: [9]}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="user_item_dict.npy: item id 9 is beyond the 4 feature rows of v_feat.npy"):
        import_mmgcn(src, tmp_path / "out2", allow_pickle=True)
    assert_nothing_written(tmp_path / "out2")


# ---------------------------------------------------------------------------- info --model
def test_info_model_needs_sizes(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "info", "--model", REPO / "no-such-config.yaml")
    assert rc == 2 and "no-such-config.yaml" in err


def test_info_model_parameter_table(tmp_path, capsys):
    pytest.importorskip("metammf_dist.model.summary")
    config = tmp_path / "model.yaml"
    config.write_text("model:\n  scorer: mf\n")
    rc, _, err = run_cli(capsys, "info", "--model", config, "--users", "100")
    assert rc == 2 and "--feat-dim" in err
    rc, out, _ = run_cli(capsys, "info", "--model", config, "--users", "100", "--items", "50", "--feat-dim", "16",
                         "model.fusion_dims=[8,4]", "model.item_id_dim=4", "model.user_id_dim=8")
    assert rc == 0 and "100 users" in out


def test_interactions_are_read_per_split_and_per_user_mask(tiktok_dataset):
    """Each call reads the split from the Parquet file (nothing cached); a user mask keeps those users' pairs, in
    file order; the splits are disjoint and together the whole file."""
    from metammf_dist.data.dataset import INTERACTIONS_FILE

    ds = Dataset.open(str(tiktok_dataset))
    table = pd.read_parquet(tiktok_dataset / INTERACTIONS_FILE)
    mask = np.zeros(ds.num_users, dtype=bool)
    mask[::7] = True
    for code, split in enumerate(("train", "valid", "test")):
        u, i = ds.interactions(split)
        want = table[table["split"] == code]
        assert u.dtype == i.dtype == np.int64 and u.size == ds.num_interactions(split)
        assert np.array_equal(u, want["user"].to_numpy()) and np.array_equal(i, want["item"].to_numpy())
        mu, mi = ds.interactions(split, users=mask)
        keep = mask[want["user"].to_numpy()]
        assert 0 < mu.size < u.size and np.array_equal(mu, u[keep]) and np.array_equal(mi, i[keep])
    assert not hasattr(ds, "_table")
    with pytest.raises(ValueError, match=r"users mask must have shape \(9308,\)"):
        ds.interactions("train", users=mask[:10])
