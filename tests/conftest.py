"""Shared test setup: where the read-only shared data lives, and a TikTok dataset imported once per session.

The shared data sits beside the checkout (``../shared/data``, as in CI) unless METAMMF_SHARED_DATA says
otherwise.  Tests that need it FAIL when it is missing: a silent skip would hide a broken CI setup.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from metammf_dist.engine.dist import free_port  # noqa: F401  (the tests' free-port helper)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAMMF_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (set METAMMF_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiktok_dataset(tmp_path_factory) -> Path:
    """The shared TikTok data imported into the canonical form (once per test session)."""
    from metammf_dist.data.mmrec import import_mmrec

    out = tmp_path_factory.mktemp("tiktok") / "ds"
    import_mmrec(str(shared("tiktok")), str(out))
    return out


@pytest.fixture(scope="session")
def synth_ds(tmp_path_factory) -> Path:
    """A small synthetic catalog (300 users, 200 items, 5,000 pairs, 24-d) shared by the training tests."""
    from metammf_dist.data.synth import SynthSpec, generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(SynthSpec(num_users=300, num_items=200, num_interactions=5000, modalities={"image": 16, "text": 8}, seed=3),
             str(out))
    return out
