"""The interface between the training loop and a big-catalog strategy.

A strategy trades exactness for speed on big catalogs by giving some of a step's rows from state it keeps
across steps (a fusion snapshot, layer histories).  The loop knows nothing else about it; per step it calls

1. ``prepare(batch, global_step, full_model)`` before the forward: refresh the state if due (``full_model()``
   is a context manager yielding a module with every parameter whole, also under ZeRO-3), then return the
   extra forward inputs for this batch (keyword arguments of ``BPRObjective.forward``);
2. ``after_step(batch, fresh)`` after the optimizer step: write back the seeds' exact rows the model returned
   (``fresh``, computed in this step's forward, before the update).  Collective on several ranks.

and at checkpoints ``state_dict()`` / ``load_state_dict(state)`` (tensors and plain values only: checkpoints
are read with ``torch.load(weights_only=True)``), saved as ``file_name`` inside each checkpoint — by rank 0 for
replicated state, or, for a ``sharded`` strategy, by every rank (``load_state_dict`` then gets every rank's state,
saved at any world size).
``seed_features_only`` tells the sampler's feature stage to read only the seed items' rows.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Dict, Optional

import torch

from metammf_dist.errors import TrainingError

FullModel = Callable[[], ContextManager[torch.nn.Module]]


class Strategy:
    file_name: str = ""
    seed_features_only: bool = False
    sharded: bool = False  # each rank holds (and saves) its own part of the state

    def __init__(self) -> None:
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.last_refresh_seconds = 0.0

    def prepare(self, batch, global_step: int, full_model: FullModel) -> Dict[str, object]:
        raise NotImplementedError

    def after_step(self, batch, fresh: Optional[dict]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> bool:
        """Restore ``state``; False (and nothing changed) when it does not fit this catalog."""
        raise NotImplementedError

    @contextlib.contextmanager
    def timed_refresh(self):
        """Wraps a refresh: counts it and its seconds (``usage.json``)."""
        started = time.perf_counter()
        yield
        self.last_refresh_seconds = time.perf_counter() - started
        self.refreshes += 1
        self.refresh_seconds += self.last_refresh_seconds


def seed_counts(batch) -> Dict[str, int]:
    """Seed nodes (the last block's dst nodes) per type; they lead the batch's input nodes."""
    n_item = int(batch.output_items.numel())
    if batch.item_feats is None or batch.item_feats.shape[0] != n_item \
            or not torch.equal(batch.input_items[:n_item], batch.output_items):
        raise TrainingError("strategy: the batch's seed items are not the first input items, or its features are "
                           "not the seeds' only")
    return {"user": int(batch.output_users.numel()), "item": n_item}
