"""Learning-rate schedule (``train.lr_schedule``), a pure function of the global step.

``constant`` keeps ``train.lr``.  ``cosine`` decays it from ``train.lr`` at step 0 to
``train.lr * train.lr_min_ratio`` at the last step of ``train.epochs`` epochs (half a cosine period), so the
later epochs take smaller steps and the model stops swinging between evaluations.  Being a function of the
step, it needs no state in checkpoints: a resumed run gets the same rates as a straight one.  The same factor
scales the sparse ID tables' rate (``train.id_lr``).
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for 0-based ``step`` of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"train.lr_schedule: unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    progress = min(max(step, 0) / max(total_steps - 1, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(train_cfg, step: int, steps_per_epoch: int, base_lr: float = 0.0) -> float:
    """The rate at 0-based global ``step`` of a run of ``train_cfg.epochs`` epochs of ``steps_per_epoch`` steps:
    ``base_lr`` (default ``train_cfg.lr``) times ``lr_factor``."""
    factor = lr_factor(train_cfg.lr_schedule, step, train_cfg.epochs * steps_per_epoch, train_cfg.lr_min_ratio)
    return (base_lr or train_cfg.lr) * factor


def set_lr(param_groups, lr: float) -> None:
    for group in param_groups:
        group["lr"] = lr
