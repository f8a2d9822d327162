"""Frozen backbones: loading them by name (embedded packages, local folders, hub ids, tiny random test models) and
one class per model family (``causal``, ``seq2seq``, ``encoder``) behind one interface: ``encode``, ``collate``,
``loss``, ``score``.

May import ``eptctl.core``, ``eptctl.data`` and ``eptctl.methods`` (and torch/transformers); never the engine,
workflows, registry or CLI. ``loading`` imports torch and transformers only inside functions, so
``eptctl.backbones`` stays cheap to import.
"""

from eptctl.backbones.loading import (
    DEFAULT_MODEL,
    EMBEDDED,
    canonical_name,
    default_device,
    default_precision,
    detect_family,
    known_models,
    load,
    needs_conversion,
    resolve_source,
)

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "canonical_name",
    "default_device",
    "default_precision",
    "detect_family",
    "known_models",
    "load",
    "needs_conversion",
    "resolve_source",
]
