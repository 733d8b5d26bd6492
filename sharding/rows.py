"""Direct row reads: where a requested row's bytes sit inside a shard file, so a gather reads only them.

Parquet is read a row group at a time: to get 6 rows of a 1024-row group of 384-d float16 features the
reader decodes 768 KB, and a training step of a 1M-item catalog, whose ~6k seed items are spread over the
whole catalog, touches nearly every row group — ~0.5 s of decoding per step here, through any cache smaller
than the store.  With the store's ``binary`` encoding (``manifest``) a modality column is
FIXED_LEN_BYTE_ARRAY, PLAIN, uncompressed and required (no levels), and the writer puts each row group's
column chunk in ONE data page; row ``r`` of the chunk then starts at a fixed file offset:

    values_start = data_page_offset + (total_compressed_size - page_size)      (skip the page header)
    row r        = values_start + r * dim * itemsize

``chunk_values_start`` derives ``values_start`` from the footer metadata and the page header (the first
three fields of the Thrift compact ``PageHeader``: type, uncompressed and compressed page size) and
refuses chunks that are not exactly one uncompressed PLAIN page of the expected size — a store written
by another tool then falls back to row-group reads.  ``pread_rows`` reads the rows with one ``preadv`` per
row and modality straight into the output: no decoding, no cache of our own (the OS page cache serves
repeated reads, outside the process's memory).  Local files only: on object stores every row would be a
request, and the reader keeps row-group reads there.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

_HEADER_PROBE = 64  # bytes read at a chunk's data page offset: the header's first fields fit easily
_PAGE_TYPES = {0: "DATA_PAGE", 3: "DATA_PAGE_V2"}
_PLAIN_ENCODINGS = {"PLAIN", "RLE", "BIT_PACKED"}  # RLE/BIT_PACKED: level encodings listed even with no levels


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def page_header_sizes(buf: bytes) -> Tuple[int, int, int]:
    """(page type, uncompressed size, compressed size): fields 1-3 (i32) of a Thrift compact PageHeader."""
    pos, field, out = 0, 0, []
    while len(out) < 3:
        if pos >= len(buf):
            raise ValueError("truncated page header")
        head = buf[pos]
        pos += 1
        delta, ftype = head >> 4, head & 0x0F
        if delta == 0 or ftype != 5:  # long-form field ids or a non-i32 field: not a header we know
            raise ValueError(f"unexpected Thrift field header byte {head:#x}")
        field += delta
        if field != len(out) + 1:
            raise ValueError(f"PageHeader field {field} where field {len(out) + 1} was expected")
        raw, pos = _varint(buf, pos)
        out.append((raw >> 1) ^ -(raw & 1))  # zigzag
    return out[0], out[1], out[2]


def chunk_values_start(fd: int, column, num_rows: int, width: int) -> Tuple[Optional[int], str]:
    """File offset of row 0's bytes in one column chunk (``pyarrow`` ColumnChunkMetaData), or ``(None, why)``."""
    if column.compression != "UNCOMPRESSED":
        return None, f"column chunk is {column.compression}"
    if column.has_dictionary_page:
        return None, "column chunk has a dictionary page"
    if not set(column.encodings) <= _PLAIN_ENCODINGS:
        return None, f"column chunk encodings {column.encodings}"
    page_bytes = num_rows * width
    try:
        ptype, uncompressed, compressed = page_header_sizes(os.pread(fd, _HEADER_PROBE, column.data_page_offset))
    except ValueError as e:
        return None, f"page header at byte {column.data_page_offset}: {e}"
    if ptype not in _PAGE_TYPES or uncompressed != page_bytes or compressed != page_bytes:
        return None, (f"first page is type {ptype} of {compressed} bytes, not one data page of {page_bytes} "
                      f"({num_rows} rows x {width} bytes)")
    header = column.total_compressed_size - page_bytes
    if not 0 < header <= _HEADER_PROBE * 4:
        return None, f"column chunk of {column.total_compressed_size} bytes holds more than one page"
    return column.data_page_offset + header, ""


def pread_rows(shards: np.ndarray, offsets: np.ndarray, widths: np.ndarray, out: np.ndarray, fds) -> None:
    """Fill the C-contiguous ``out`` (``[n, ...]``, ``sum(widths)`` bytes per row) by reading, for row k and
    part m, ``widths[m]`` bytes at file offset ``offsets[k, m]`` of file ``fds[shards[k]]``; parts are laid
    side by side in ``out``'s row."""
    raw = memoryview(out).cast("B")
    row_bytes = int(widths.sum())
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    widths_l = widths.tolist()
    offsets_l = offsets.tolist()
    shards_l = shards.tolist()
    preadv = os.preadv
    for k, (shard, row_offsets) in enumerate(zip(shards_l, offsets_l)):
        fd = fds[shard]
        base = k * row_bytes
        for start, width, offset in zip(starts, widths_l, row_offsets):
            if preadv(fd, [raw[base + start:base + start + width]], offset) != width:
                raise OSError(f"short read of {width} bytes at offset {offset}")
