"""The store's ``manifest.json``: what was written, validated on the way in and out.

A store directory holds ``manifest.json`` plus ``shard-00000.parquet``, ``shard-00001.parquet``, ...
The manifest is written last, so its presence means every shard it lists is complete.  It records the
schema version, the modalities (ordered name -> dim), the value dtype, the column encoding, the item count,
the shard and row-group sizes, and per shard its item range ``[start, stop)``, byte size and sha256.

Column encodings (``encoding``): ``"binary"`` (what the writer makes) stores each modality as Parquet
FIXED_LEN_BYTE_ARRAY, one ``dim x dtype`` little-endian vector per row — a row group decodes about twice as
fast as a list column (random seed-item gathers of a 1M store, 256 MB cache: 315 vs 656 ms;
``experiments/bench_direct_reads.py``), and rows can be read directly (``rows.py``); ``"list"`` (manifests without the field) stores ``FixedSizeList<dtype>[dim]``,
which other Arrow tools read as numeric lists directly.  Readers handle both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "metammf-feature-store"
SCHEMA_VERSION = 1
DTYPES = ("float16", "float32")
ENCODINGS = ("binary", "list")
ITEM_COLUMN = "item"


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardInfo:
    """One shard: holds items ``[start, stop)``; ``bytes``/``sha256`` of the whole Parquet file.

    Also readable dict-style (``info["file"]``), matching the manifest's JSON objects.
    """

    file: str
    start: int
    stop: int
    bytes: int
    sha256: str

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict:
        return {"file": self.file, "start": self.start, "stop": self.stop, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    version: int
    num_items: int
    modalities: dict[str, int]  # ordered as written
    dtype: str
    shard_size: int
    row_group_size: int
    shards: list[ShardInfo] = field(default_factory=list)
    encoding: str = "list"  # column encoding (ENCODINGS); manifests written before the field existed: "list"

    @property
    def dim(self) -> int:
        """Sum of the modality dims (width of ``gather_concat``)."""
        return sum(self.modalities.values())

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "num_items": self.num_items,
            "dtype": self.dtype,
            "encoding": self.encoding,
            "modalities": dict(self.modalities),
            "shard_size": self.shard_size,
            "row_group_size": self.row_group_size,
            "shards": [s.to_dict() for s in self.shards],
        }
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> "Manifest":
        """Parse and validate; ``source`` (the manifest's URL) is named in every error."""
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != FORMAT_NAME:
            raise ManifestError(f"{source}: field 'format' is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
        version = _int_field(doc, "version", source, minimum=1)
        if version > SCHEMA_VERSION:
            raise ManifestError(f"{source}: schema version {version} is newer than supported ({SCHEMA_VERSION})")
        mods = doc.get("modalities")
        if not isinstance(mods, dict) or not mods:
            raise ManifestError(f"{source}: field 'modalities' must be a non-empty object name -> dim")
        for name, dim in mods.items():
            if name == ITEM_COLUMN or not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise ManifestError(f"{source}: modality {name!r} has invalid dim {dim!r}")
        dtype = doc.get("dtype")
        if dtype not in DTYPES:
            raise ManifestError(f"{source}: field 'dtype' is {dtype!r}, expected one of {DTYPES}")
        encoding = doc.get("encoding", "list")
        if encoding not in ENCODINGS:
            raise ManifestError(f"{source}: field 'encoding' is {encoding!r}, expected one of {ENCODINGS}")
        raw_shards = doc.get("shards")
        if not isinstance(raw_shards, list):
            raise ManifestError(f"{source}: field 'shards' must be a list")
        shards = []
        for i, s in enumerate(raw_shards):
            try:
                shards.append(ShardInfo(file=str(s["file"]), start=int(s["start"]), stop=int(s["stop"]),
                                        bytes=int(s["bytes"]), sha256=str(s["sha256"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ManifestError(f"{source}: shards[{i}] is malformed ({e!r})") from None
        m = cls(version=version, num_items=_int_field(doc, "num_items", source, minimum=1),
                modalities=dict(mods), dtype=dtype,
                shard_size=_int_field(doc, "shard_size", source, minimum=1),
                row_group_size=_int_field(doc, "row_group_size", source, minimum=1), shards=shards,
                encoding=encoding)
        m.check_layout(source)
        return m

    def check_layout(self, source: str) -> None:
        """Shards must tile ``[0, num_items)`` in order, each ``shard_size`` items except the last."""
        expect = 0
        for i, s in enumerate(self.shards):
            last = i == len(self.shards) - 1
            want_stop = self.num_items if last else expect + self.shard_size
            if s.file != shard_file_name(i) or s.start != expect or s.stop != want_stop \
                    or not 0 < s.num_rows <= self.shard_size:
                raise ManifestError(
                    f"{source}: shards[{i}] ({s.file}, items [{s.start}, {s.stop})) breaks the layout; expected "
                    f"{shard_file_name(i)} with items [{expect}, {want_stop}) (shard_size {self.shard_size})")
            expect = s.stop
        if expect != self.num_items or not self.shards:
            raise ManifestError(f"{source}: shards cover {expect} items but num_items is {self.num_items}")


def _int_field(doc: dict, name: str, source: str, *, minimum: int) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestError(f"{source}: field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value
