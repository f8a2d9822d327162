"""Content-addressed safetensors files: ``<root>/<aa>/<sha256>.safetensors``.

The store knows nothing about what the tensors mean: it takes ``dict[str, Tensor]`` plus ``dict[str, str]`` metadata,
writes them atomically (temp file in the same folder, fsync, rename, fsync of the folder) and checks the sha256 of
every file it reads. Safetensors only, never pickle.

The root is a local folder (the default ``$EPTCTL_HOME/artifacts``, any path, or a ``file://`` URL: full atomic and
durable writes) or any fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``: write to a temp name, then
move). ``open_store`` picks the kind; docs/distributed.md states each kind's guarantee.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eptctl.core.files import write_bytes_atomic

if TYPE_CHECKING:
    import torch

ARTIFACTS_ENV = "EPTCTL_ARTIFACTS"  # the artifact root: a path or URL; default $EPTCTL_HOME/artifacts
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


class _VerifiedReads:
    """Reads shared by both stores: the bytes of a file, checked against its sha256 before anyone sees them."""

    def read(self, relpath: str, sha256: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors.torch import load

        data = self.read_bytes(relpath, sha256)
        return load(data), read_metadata(data)

    def read_bytes(self, relpath: str, sha256: str) -> bytes:
        """The file's exact bytes, after checking them against ``sha256`` (export copies them unchanged)."""
        path = self.path(relpath)
        try:
            data = self._raw_bytes(path)
        except FileNotFoundError:
            raise ArtifactError(f"file is missing: {path}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactError(f"file is corrupt (sha256 {actual[:12]}…, expected {sha256[:12]}…): {path}")
        return data


class ArtifactStore(_VerifiedReads):
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
        # temp file in the same folder, fsync, rename, fsync of the folder; the prefix marks leftovers for gc
        write_bytes_atomic(path, blob.data, tmp_prefix=TMP_PREFIX, tmp_suffix=SUFFIX)
        return path

    def _raw_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

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


# --- roots given as URLs ----------------------------------------------------------------------------------------------
def open_store(root: str | Path) -> ArtifactStore | FsspecStore:
    """The store for ``root``: a local path or ``file://`` URL (a local folder), else any fsspec URL."""
    text = str(root)
    if "://" not in text:
        return ArtifactStore(Path(text).expanduser())
    scheme, _, rest = text.partition("://")
    if scheme == "file":  # local: keep the fsync + rename guarantees of a plain folder
        from urllib.parse import unquote, urlparse

        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs name a local path (file:///abs/path), got {text!r}")
        return ArtifactStore(Path(unquote(parsed.path)))
    return FsspecStore(text)


class RemotePath(str):
    """A file under an fsspec root: its URL as a plain ``str``, plus the ``Path`` methods the registry calls on one."""

    fs: object
    key: str  # the path within ``fs`` (the URL without its protocol, as fsspec wants it)

    def __new__(cls, url: str, fs, key: str) -> RemotePath:
        obj = super().__new__(cls, url)
        obj.fs, obj.key = fs, key
        return obj

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def exists(self) -> bool:
        return self.fs.exists(self.key)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise


class FsspecStore(_VerifiedReads):
    """The same content-addressed layout under an fsspec URL (object stores, memory, SFTP, ...).

    Writes go to a temp name in the same folder and are then moved onto the final name: a rename where the filesystem
    has one; on object stores a server-side copy (an object only ever appears whole there anyway), which can leave a
    temp object behind after a crash for ``gc`` to remove. Every read checks the sha256, as for a local folder.
    """

    def __init__(self, url: str):
        from fsspec.core import url_to_fs

        self.root = url.rstrip("/")
        self.fs, self._base = url_to_fs(self.root)
        self._base = self._base.rstrip("/")

    def path(self, relpath: str) -> RemotePath:
        return RemotePath(f"{self.root}/{relpath}", self.fs, f"{self._base}/{relpath}")

    def put(self, blob: Blob) -> RemotePath:
        """Same contract as ``ArtifactStore.put``: an existing file of the right size is kept, its mtime refreshed."""
        path = self.path(blob.relpath)
        try:
            if self.fs.size(path.key) == blob.size:
                try:
                    self.fs.touch(path.key, truncate=False)
                except (NotImplementedError, ValueError, OSError):  # e.g. S3 cannot touch: write the same bytes
                    self._write(path, blob.data)
                return path
        except FileNotFoundError:
            pass
        self._write(path, blob.data)
        return path

    def _write(self, path: RemotePath, data: bytes) -> None:
        import uuid

        folder = path.key.rsplit("/", 1)[0]
        tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}{SUFFIX}"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path.key)
        except BaseException:
            try:
                self.fs.rm_file(tmp)
            except OSError:
                pass  # gc removes it later
            raise

    def _raw_bytes(self, path: RemotePath) -> bytes:
        return self.fs.cat_file(path.key)

    def remove(self, relpath: str) -> RemotePath | None:
        path = self.path(relpath)
        if not path.exists():
            return None
        path.unlink(missing_ok=True)
        return path

    def files(self, older_than: float | None = None) -> Iterator[tuple[str | None, RemotePath]]:
        """Same as ``ArtifactStore.files``. A file whose filesystem reports no modification time counts as young."""
        cutoff = time.time() - older_than if older_than is not None else None
        try:
            subs = sorted(self.fs.ls(self._base, detail=False))
        except FileNotFoundError:
            return
        for sub in subs:
            sub_name = sub.rstrip("/").rsplit("/", 1)[-1]
            if len(sub_name) != 2 or not self.fs.isdir(sub):
                continue
            for key in sorted(self.fs.ls(sub, detail=False)):
                name = key.rstrip("/").rsplit("/", 1)[-1]
                is_blob = bool(_BLOB_NAME.match(name))
                if not is_blob and not name.startswith(TMP_PREFIX):
                    continue  # not ours: leave it alone
                if cutoff is not None:
                    try:
                        mtime = self.fs.modified(key).timestamp()
                    except (NotImplementedError, FileNotFoundError):
                        continue
                    if mtime > cutoff:
                        continue
                yield (name[: -len(SUFFIX)] if is_blob else None), self.path(f"{sub_name}/{name}")
