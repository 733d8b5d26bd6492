"""Session fixtures: the shared TikTok data imported once, and a small synthetic catalog (helpers: ``helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import shared


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
