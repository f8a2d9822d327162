"""Content-addressed safetensors files: ``<root>/<aa>/<sha256>.safetensors``.

The store knows nothing about what the tensors mean: it takes ``dict[str, Tensor]`` plus ``dict[str, str]`` metadata,
writes them atomically (temp file in the same folder, fsync, rename, fsync of the folder) and checks the sha256 of
every file it reads. Safetensors only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"
_BLOB_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")


class ArtifactError(Exception):
    """A file is missing or its bytes do not match their sha256; the registry turns it into a user error."""


@dataclass(frozen=True)
class Blob:
    """Serialized bytes and their content address; kept in memory so a file can be re-written if it vanished."""

    sha256: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def relpath(self) -> str:
        return f"{self.sha256[:2]}/{self.sha256}{SUFFIX}"


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Blob:
    from safetensors.torch import save  # torch is imported only when tensors are actually stored

    if not tensors:
        raise ValueError("an artifact needs at least one tensor")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; offending keys: {bad}")
    # safetensors refuses non-contiguous tensors and tensors sharing storage; a copy makes any input storable.
    data = _canonical(save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata))
    return Blob(hashlib.sha256(data).hexdigest(), data)


def _canonical(data: bytes) -> bytes:
    """The same file with its JSON header in one fixed order.

    safetensors writes header entries from a Rust HashMap, so equal tensors and metadata can give different bytes;
    content addressing needs equal inputs to give equal bytes. Tensor data is already laid out deterministically.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None) or {}
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header so that tensor data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: 8-byte little-endian header length, then a JSON header."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def put(self, blob: Blob) -> Path:
        """Make sure the file for ``blob`` exists with the right size; returns its path.

        An existing file of the right size is kept and its mtime refreshed, so that ``gc``'s grace period counts
        from this registration, not from the first one that wrote these bytes.
        """
        path = self.path(blob.relpath)
        try:
            if path.stat().st_size == blob.size:
                os.utime(path)
                return path
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one, never a part
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)  # the rename itself survives a power cut only once the folder is synced
        return path

    def read(self, relpath: str, sha256: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors.torch import load

        path = self.path(relpath)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"file is missing: {path}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactError(f"file is corrupt (sha256 {actual[:12]}…, expected {sha256[:12]}…): {path}")
        return load(data), read_metadata(data)

    def remove(self, relpath: str) -> Path | None:
        path = self.path(relpath)
        try:
            path.unlink()
        except FileNotFoundError:
            return None
        return path

    def files(self, older_than: float | None = None) -> Iterator[tuple[str | None, Path]]:
        """(sha256 or None for a temp file, path) of every file of the store, optionally only old ones."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - older_than if older_than is not None else None
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for path in sorted(sub.iterdir()):
                is_blob = bool(_BLOB_NAME.match(path.name))
                if not is_blob and not path.name.startswith(TMP_PREFIX):
                    continue  # not ours: leave it alone
                try:
                    mtime = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if cutoff is None or mtime <= cutoff:
                    yield (path.name[: -len(SUFFIX)] if is_blob else None), path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
