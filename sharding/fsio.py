"""fsspec helpers: resolve a store URL, join names, hash/stream files, write-then-rename.

Works for any fsspec URL: a plain local path, ``file://``, ``memory://``, ``s3://`` (``storage_options``
are passed to the filesystem, e.g. ``{"client_kwargs": {"endpoint_url": ...}, "key": ..., "secret": ...}``).
Local files are written under a temporary name and renamed into place; object stores get a plain PUT
(atomic per object), which is why the writer uploads the manifest last.

Bounded time on object stores: an ``s3://`` URL gets ``S3_DEFAULTS`` (a 5 s connect timeout and 2 attempts)
under whatever ``storage_options`` the caller gives, so an unreachable endpoint or a missing credential fails
in seconds, not after botocore's default retries; ``{"config_kwargs": {"retries": {"max_attempts": N}}}`` in
``storage_options`` (``data.storage_options``) overrides them.  ``describe`` turns a transport failure into a
short cause for a one-line message.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import uuid

import fsspec

from .errors import StoreError

HASH_CHUNK = 4 << 20  # bytes read per step when hashing a file (bounded memory)


S3_DEFAULTS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}}


def with_defaults(url: str, storage_options: dict | None) -> dict:
    """``storage_options`` on top of the bounded-time defaults of ``url``'s protocol (``S3_DEFAULTS`` for s3)."""
    options = dict(storage_options or {})
    if str(url).split("://", 1)[0] not in ("s3", "s3a"):
        return options
    merged = {**S3_DEFAULTS, **options}
    merged["config_kwargs"] = {**S3_DEFAULTS["config_kwargs"], **(options.get("config_kwargs") or {})}
    return merged


def describe(exc: BaseException) -> str:
    """A short cause for a storage failure: the exception's type and message, with a hint for the usual ones."""
    name = type(exc).__name__
    hints = {"NoCredentialsError": "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or "
                                   "key / secret / anon in the storage options)",
             "EndpointConnectionError": "cannot reach the endpoint",
             "ConnectTimeoutError": "the endpoint did not answer in time",
             "PermissionError": "permission denied"}
    if name in hints:
        return f"{hints[name]} ({name}: {exc})"
    return f"{name}: {exc}"


def resolve(url: str, storage_options: dict | None = None):
    """Return ``(filesystem, root_path)`` for ``url``; StoreError naming the URL if it cannot be used."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty string, got {url!r}")
    try:
        fs, root = fsspec.core.url_to_fs(url, **with_defaults(url, storage_options))
    except Exception as e:  # unknown protocol, missing backend (s3fs), bad option
        raise StoreError(f"{url}: cannot open filesystem ({describe(e)})") from None
    return fs, root.rstrip("/") or root


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def url_of(url: str, name: str) -> str:
    """Human-readable location of ``name`` inside the store at ``url`` (used in messages)."""
    return f"{url.rstrip('/')}/{name}"


def is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


@contextlib.contextmanager
def store_errors(url: str, action: str):
    """Turn transport failures (connection refused, timeouts, permissions, missing bucket) into a
    StoreError naming ``url``; StoreErrors pass through unchanged."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"{url}: cannot {action} ({describe(e)})") from None


def sha256_of(fs, path: str) -> tuple[str, int]:
    """Streamed sha256 hex digest and byte count of ``path``."""
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb") as f:
        while True:
            block = f.read(HASH_CHUNK)
            if not block:
                break
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def write_bytes(fs, path: str, data: bytes) -> None:
    """Write a small file: local -> temp name then atomic rename; object store -> one PUT."""
    if is_local(fs):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            remove_quietly(fs, tmp)
    else:
        fs.pipe_file(path, data)


def remove_quietly(fs, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:  # best effort cleanup only
        pass


class HashingWriter(io.RawIOBase):
    """Write-through file wrapper that counts bytes and computes sha256 as data streams out."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self._hash.update(view)
        self.nbytes += len(view)
        return len(view)

    def tell(self) -> int:
        return self.nbytes

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()  # flushes through to the raw file first
            finally:
                self._raw.close()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
