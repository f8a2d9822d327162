"""Adapters as the server sees them: references resolved at request time (trusted for a short TTL, so a moved alias
or a new adapter is served without a restart), materialized adapters kept in a bounded LRU cache, and every adapter
checked against the served backbone."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from eptctl.core.errors import EptctlError
from eptctl.workflows.inference import ServableAdapter, load_adapter


class AdapterNotFound(EptctlError):
    """The reference names no adapter (HTTP 404)."""


class BackboneMismatch(EptctlError):
    """The adapter was trained on another backbone than the one served (HTTP 409)."""


class AdapterCache:
    """Thread-safe: request handlers resolve from worker threads while the batcher scores.

    ``get(ref)`` resolves ``ref`` (an id prefix, TASK@VERSION, TASK@ALIAS) in the registry unless it was resolved
    less than ``ttl_s`` seconds ago, then returns the materialized adapter of that id from an LRU cache of at most
    ``max_adapters``. Raises ``AdapterNotFound`` or ``BackboneMismatch``.
    """

    def __init__(self, registry, backbone, max_adapters: int = 32, ttl_s: float = 1.0):
        self.registry, self.backbone = registry, backbone
        self.max_adapters, self.ttl_s = max_adapters, ttl_s
        self._fingerprint = backbone.fingerprint()
        self._refs: dict[str, tuple[str, float]] = {}  # ref -> (adapter id, monotonic time it expires)
        self._loaded: OrderedDict[str, ServableAdapter] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: str) -> ServableAdapter:
        now = time.monotonic()
        with self._lock:
            cached = self._refs.get(ref)
            adapter_id = cached[0] if cached and cached[1] > now else None
            if adapter_id is not None and adapter_id in self._loaded:
                self._loaded.move_to_end(adapter_id)
                return self._loaded[adapter_id]
        try:
            record = self.registry.resolve(ref)
        except EptctlError as err:
            raise AdapterNotFound(err.message, hint=err.hint or "GET /v1/adapters lists the loaded ones") from None
        self._check(record)
        with self._lock:
            servable = self._loaded.get(record.id)
        if servable is None:
            servable = load_adapter(self.registry, record.id)  # outside the lock: reading a file takes a while
        with self._lock:
            self._refs[ref] = (record.id, now + self.ttl_s)
            self._loaded[record.id] = servable
            self._loaded.move_to_end(record.id)
            while len(self._loaded) > self.max_adapters:
                self._loaded.popitem(last=False)
        return servable

    def _check(self, record) -> None:
        if record.backbone.embedding_sha256 != self._fingerprint["embedding_sha256"]:
            raise BackboneMismatch(
                f"adapter {record.ref} was trained on backbone '{record.backbone.name}', but this server runs "
                f"'{self.backbone.name}'",
                hint=f"serve it from a server started with --model {record.backbone.name}")

    def servable(self) -> list[ServableAdapter]:
        """The materialized adapters still in the registry, least recently used first: one lookup by id per cached
        adapter (at most ``max_adapters``); one removed meanwhile (``eptctl rm``) is evicted, with every reference
        resolved to it."""
        gone = []
        for adapter_id in [s.record.id for s in self.loaded()]:
            try:
                self.registry.get(adapter_id)
            except EptctlError:  # the registry's "no adapter with id"
                gone.append(adapter_id)
        with self._lock:
            for adapter_id in gone:
                self._loaded.pop(adapter_id, None)
            self._refs = {ref: entry for ref, entry in self._refs.items() if entry[0] not in gone}
            return list(self._loaded.values())

    def loaded(self) -> list[ServableAdapter]:
        """The materialized adapters in the cache, least recently used first."""
        with self._lock:
            return list(self._loaded.values())
