"""Checking a checkpoint before anything loads it: complete, undamaged, and free of code.

* **Integrity.**  At save time ``COMPLETE.json`` records the size and sha256 of every file of the checkpoint
  (``file_digests``); ``verify`` recomputes them, so a truncated, emptied or altered file is found before a
  loader reads it (and named, instead of a loader's traceback).
* **No code.**  A ``.pt`` file is a zip whose ``data.pkl`` is a pickle, and unpickling can call any importable
  function (an object's ``__reduce__``).  DeepSpeed reads its own files with full pickle, so before it does,
  ``unsafe_globals`` reads the pickle's opcodes (``data.pkl`` only, never the tensor data) with every global
  replaced by an inert stub and lists the globals outside ``SAFE_GLOBALS`` — the tensor rebuilders, ``torch.Size``,
  dtypes, ``OrderedDict``/``set`` and the few DeepSpeed classes its checkpoints hold (its loss scaler, ZeRO stage
  enum, fragment addresses).  A file naming anything else (``os.system``, ``builtins.eval``, ...) is refused
  unless the user passes ``--trust-checkpoint``.  Our own files (ID tables, strategy state) hold only tensors
  and plain values and are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

MARKER = "COMPLETE.json"
HASH_CHUNK = 4 << 20

SAFE_GLOBALS = frozenset({
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex",
    "__builtin__.set", "__builtin__.frozenset", "__builtin__.slice", "__builtin__.complex",
    "torch.Size", "torch.Tensor", "torch.device", "torch.nn.parameter.Parameter",
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_sparse_tensor", "torch._tensor._rebuild_from_type_v2", "torch.storage._load_from_bytes",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
})
_TORCH_DTYPES = frozenset({
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32", "int64",
    "uint8", "bool", "complex64", "complex128", "long", "int", "short",
})


def _is_safe(global_name: str) -> bool:
    if global_name in SAFE_GLOBALS:
        return True
    module, _, name = global_name.rpartition(".")
    if module == "torch" and (name.endswith("Storage") or name in _TORCH_DTYPES):
        return True
    return False


class _Stub:
    """Stands in for every global while scanning: accepts any construction, state or item, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def add(self, value):
        pass


class _ScanUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.globals: List[str] = []

    def find_class(self, module: str, name: str):
        self.globals.append(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid):  # tensor storages: never read
        return None


def unsafe_globals(path: Path) -> List[str]:
    """The globals a ``torch.save`` file would import and call when unpickled, outside ``SAFE_GLOBALS``.
    Raises ValueError when ``path`` is not a readable torch zip file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise ValueError(f"{len(names)} data.pkl records")
            data = archive.read(names[0])
        scanner = _ScanUnpickler(data)
        scanner.load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"not a readable torch checkpoint file ({type(exc).__name__}: {exc})") from None
    return sorted({g for g in scanner.globals if not _is_safe(g)})


def file_digests(tag_dir: Path) -> Dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under ``tag_dir`` but the marker."""
    out = {}
    for path in sorted(p for p in Path(tag_dir).rglob("*") if p.is_file() and p.name != MARKER):
        out[path.relative_to(tag_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(tag_dir: Path, trust: bool = False) -> Optional[str]:
    """Why the checkpoint in ``tag_dir`` must not be loaded (one line, naming the file), or None if it may.

    Checks the marker, every recorded file's size and sha256 (markers written before digests were recorded
    are checked for the marker only), and — unless ``trust`` — that no ``.pt`` file would run code."""
    tag_dir = Path(tag_dir)
    marker = tag_dir / MARKER
    if not marker.is_file():
        return f"{tag_dir}: incomplete ({MARKER} missing: the save did not finish)"
    try:
        recorded = json.loads(marker.read_text()).get("files")
    except (ValueError, OSError) as exc:
        return f"{marker}: unreadable ({exc})"
    for rel, want in sorted((recorded or {}).items()):
        path = tag_dir / rel
        if not path.is_file():
            return f"{path}: missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{path}: {size:,} bytes, {want['bytes']:,} when saved (truncated or altered)"
        if _sha256(path) != want["sha256"]:
            return f"{path}: sha256 differs from the one recorded at save time (altered)"
    if not trust:
        for path in sorted(tag_dir.glob("*.pt")):
            try:
                bad = unsafe_globals(path)
            except ValueError as exc:
                return f"{path}: {exc}"
            if bad:
                return (f"{path}: holds {', '.join(bad)}, which loading would call; refused (pass "
                        f"--trust-checkpoint only if you trust where this run folder came from)")
    return None
