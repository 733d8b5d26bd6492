"""Errors a user can fix. Each message names the file, field or ID at fault."""


class DataError(ValueError):
    """Bad dataset input (interactions, features, ids, splits); message names the file/field/ID."""


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (NaN loss, dataset/checkpoint mismatch)."""
