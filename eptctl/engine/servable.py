"""The servable-artifact format: what inference needs, and nothing it would have to recompute.

One safetensors file (the registry stores it as the ``servable`` artifact)::

    prompt [s, d]            the reconstructed prompt P_r (fusion and projection folded in)
    offset [n, d]            H = (alpha/sqrt(r)) A@B, absent for pt
    gate [k]                 the space weights g, when the adapter has a projection
    head_weight, head_bias   encoder backbones: the classification head [c, d], [c]
    __metadata__             format "eptctl-servable", eptctl_version, config (EPTConfig JSON), task (TaskSpec JSON),
                             backbone (fingerprint JSON: name, revision, embedding/tokenizer sha256, width, family,
                             max_length)

This module is the only reader and writer of the format: :func:`to_file` builds it, :func:`from_file` validates it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from eptctl import __version__
from eptctl.core.errors import EptctlError
from eptctl.data.spec import TaskSpec
from eptctl.methods import EPTConfig, MaterializedAdapter

FORMAT = "eptctl-servable"


@dataclass
class Servable:
    """A materialized adapter with the task and config it was trained with, and its backbone's fingerprint."""

    adapter: MaterializedAdapter
    spec: TaskSpec
    config: EPTConfig
    backbone: dict  # Backbone.fingerprint(max_length): name, family, embedding_sha256, width, ...


def to_file(adapter: MaterializedAdapter, config: EPTConfig, spec: TaskSpec, backbone_fingerprint: dict
            ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a servable artifact, tensors contiguous on the CPU."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.tensors().items()}
    meta = {
        "format": FORMAT,
        "eptctl_version": __version__,
        "config": config.to_json(),
        "task": json.dumps(spec.to_dict(), sort_keys=True),
        "backbone": json.dumps(backbone_fingerprint, sort_keys=True),
    }
    return tensors, meta


def backbone_family(meta: dict[str, str]) -> str | None:
    """The model family recorded in a servable artifact's metadata, or None where it is not recorded."""
    return json.loads(meta.get("backbone") or "{}").get("family")


def from_file(tensors: dict[str, torch.Tensor], meta: dict[str, str], ref: str) -> Servable:
    """Parse a stored servable artifact of adapter ``ref``; raises ``EptctlError`` if it is not one."""
    if meta.get("format") != FORMAT:
        raise EptctlError(f"adapter {ref}: servable artifact has no eptctl metadata",
                          hint="re-register the adapter with this eptctl")
    return Servable(MaterializedAdapter.from_tensors(tensors), TaskSpec.from_dict(json.loads(meta["task"])),
                    EPTConfig.from_dict(json.loads(meta["config"])), json.loads(meta.get("backbone") or "{}"))
