"""AdapterRecords read from the database, with their JSON fields decoded on first access.

Decoding ``config``, ``params_by_group``, ``summary`` and the run's package versions is a quarter of the time of
listing 10,000 adapters, and a listing rarely looks at them. A ``StoredAdapterRecord`` keeps their JSON text and
decodes a field the first time it is read; in every other way it is an ``AdapterRecord``: ``isinstance``,
equality (with any AdapterRecord), ``repr``, ``dataclasses.asdict``/``replace``, pickling, copying and ``json`` of
any field all see the decoded values. Every record the registry returns is one of these.
"""

from __future__ import annotations

import dataclasses
import json

from eptctl.core.secrets import mask_secrets
from registry.records import AdapterRecord, RunInfo

_LAZY = ("config", "params_by_group", "summary", "run")


def _decode_run(raw: tuple | None) -> RunInfo | None:
    if raw is None:
        return None
    seed, data_fingerprint, package_versions, command_line, duration_s, device = raw
    # a row written before masking existed (until `eptctl db scrub-secrets`) never shows its secret
    return RunInfo(seed, data_fingerprint, json.loads(package_versions), mask_secrets(command_line), duration_s,
                   device)


_DECODERS = {"config": json.loads, "params_by_group": json.loads, "summary": json.loads, "run": _decode_run}


def _lazy_field(name: str) -> property:
    raw_key, decode = f"_raw_{name}", _DECODERS[name]

    def get(self):
        d = self.__dict__
        if name not in d:  # two threads may both decode: the same value, harmless
            d[name] = decode(d[raw_key])
        return d[name]

    def set_(self, value):  # reached only through object.__setattr__, i.e. the frozen __init__ (``replace``)
        self.__dict__[name] = value

    return property(get, set_, doc=f"{name}, decoded from its stored JSON on first access")


class StoredAdapterRecord(AdapterRecord):
    """An ``AdapterRecord`` whose JSON fields are decoded when first read (see the module docstring)."""

    config = _lazy_field("config")
    params_by_group = _lazy_field("params_by_group")
    summary = _lazy_field("summary")
    run = _lazy_field("run")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in _NAMES)

    def __eq__(self, other):  # the dataclass __eq__ only compares objects of the very same class
        if isinstance(other, AdapterRecord):
            return self._values() == tuple(getattr(other, name) for name in _NAMES)
        return NotImplemented

    __hash__ = AdapterRecord.__hash__

    def __reduce__(self):  # pickle and copy: rebuilt through the frozen __init__, with every field decoded
        return StoredAdapterRecord, self._values()


_NAMES = tuple(f.name for f in dataclasses.fields(AdapterRecord))
_KEYS = tuple(f"_raw_{name}" if name in _LAZY else name for name in _NAMES)  # where stored_record puts each value
_new = object.__new__


def stored_record(*values) -> StoredAdapterRecord:
    """A record from AdapterRecord's field values in order; config, params_by_group and summary as JSON text, run
    as None or (seed, data_fingerprint, package_versions JSON text, command_line, duration_s, device)."""
    obj = _new(StoredAdapterRecord)
    obj.__dict__.update(zip(_KEYS, values))  # one call, not the frozen __init__'s object.__setattr__ per field
    return obj
