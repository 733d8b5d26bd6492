"""Stage 5, feature fetch: item features for a batch's input items, optionally one batch ahead.

``attach_features(batch, store)`` takes a ``MiniBatch`` and any store with
``gather_concat(ids: np.ndarray) -> np.ndarray [len(ids), dim] float32`` (the sharded feature store,
or anything array-backed); gives the batch with ``item_feats`` filled, rows in ``input_items`` order.
With ``seeds_only`` (fusion cache on) only the seed items' rows are read: ``output_items``, which are
the first rows of ``input_items``.

``prefetch(batches, store, ahead)`` takes an iterator of batches (sampling happens when it is
advanced); gives the same batches with features attached, produced ``ahead`` batches in advance by
one background thread (``ahead=0``: inline).  Sampling is seeded per step, so the batches are
identical whichever thread makes them.  Closing the returned generator (or dropping it, e.g. after
``break``) stops the thread; an exception in the thread is re-raised in the consumer.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

_DONE = object()


def attach_features(batch, store, seeds_only: bool = False):
    """Fills ``batch.item_feats`` from ``store`` (no-op if already filled); returns the batch."""
    if batch.item_feats is not None:
        return batch
    wanted = batch.output_items if seeds_only else batch.input_items
    ids = np.ascontiguousarray(wanted.cpu().numpy(), dtype=np.int64)
    feats = np.asarray(store.gather_concat(ids))
    if feats.ndim != 2 or feats.shape[0] != ids.size:
        raise ValueError(
            f"feature store returned shape {feats.shape} for {ids.size} item ids (expected [{ids.size}, dim])"
        )
    batch.item_feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    return batch


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def to_device_async(batch, device: torch.device, stream) -> None:
    """Stage 6, to device (CUDA, in the prefetch thread): pin the batch's tensors and copy them on ``stream`` with
    ``non_blocking`` copies, so the copy of the next batch overlaps the current step; ``batch.ready`` is the event
    the consumer waits on (``MiniBatch.wait_ready``) before it uses the batch."""
    for name, value in batch.tensors().items():
        if value.device.type == "cpu":
            setattr(batch, name, value.pin_memory())
    with torch.cuda.stream(stream):  # the tensor fields only: ``wait_ready`` can record them on the consumer's
        batch.to(device, non_blocking=True, blocks=False)  # stream; the (small) blocks move there, in ``to``
        batch.ready = torch.cuda.Event()
        batch.ready.record(stream)


def prefetch(batches: Iterable, store=None, ahead: int = 1, seeds_only: bool = False,
             device: Optional[torch.device] = None) -> Iterator:
    """Yields ``batches`` (features attached when ``store`` is given), made ``ahead`` steps early; with a CUDA
    ``device`` (and ``ahead`` > 0) also copied to it ahead, on a side stream (``to_device_async``)."""
    if ahead <= 0:
        for batch in batches:
            yield attach_features(batch, store, seeds_only) if store is not None else batch
        return

    slots: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    copy_stream = torch.cuda.Stream(device) if device is not None and device.type == "cuda" else None

    def produce() -> None:
        try:
            for batch in batches:
                if store is not None:
                    attach_features(batch, store, seeds_only)
                if copy_stream is not None:
                    to_device_async(batch, device, copy_stream)
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))

    worker = threading.Thread(target=produce, name="metammf-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
