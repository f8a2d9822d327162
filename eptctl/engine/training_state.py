"""The training-state format: everything needed to resume a run exactly, and the best checkpoint's components.

One safetensors file (the registry stores it as the ``training_state`` artifact; an interrupted run keeps it under
``$EPTCTL_HOME/runs/<key>.safetensors``)::

    adapter.<name>          the adapter's parameters at the last step
    best.<name>             the adapter's parameters at the best validation step (what transfer starts from)
    optim.<pid>.<name>      AdamW state per parameter (exp_avg, exp_avg_sq, step)
    __metadata__            format, schema_version, step, best_step, best_metric (JSON), optim_param_groups (JSON),
                            scheduler (JSON, without its lambdas), history (JSON list of loss and eval points)

This module is the only reader and writer of the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from eptctl.core.errors import EptctlError
from eptctl.core.files import write_bytes_atomic

FORMAT = "eptctl-training-state"
SCHEMA_VERSION = 1
ADAPTER, BEST, OPTIM = "adapter.", "best.", "optim."


@dataclass
class TrainingState:
    """A run's state between two steps. ``adapter``/``best``: parameter name -> tensor (CPU)."""

    adapter: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict
    scheduler: dict  # LR scheduler state_dict, without ``lr_lambdas``
    step: int
    best_step: int
    best_metric: float | None
    history: list[dict]

    def to_file(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) as stored: flat safetensors names and string metadata."""
        tensors = {f"{ADAPTER}{k}": v.detach().cpu().contiguous() for k, v in self.adapter.items()}
        tensors.update({f"{BEST}{k}": v.detach().cpu().contiguous() for k, v in self.best.items()})
        for pid, state in self.optimizer["state"].items():
            for key, value in state.items():
                tensors[f"{OPTIM}{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta = {
            "format": FORMAT,
            "schema_version": str(SCHEMA_VERSION),
            "step": str(self.step),
            "best_step": str(self.best_step),
            "best_metric": json.dumps(self.best_metric),
            "optim_param_groups": json.dumps(self.optimizer["param_groups"]),
            "scheduler": json.dumps({k: v for k, v in self.scheduler.items() if k != "lr_lambdas"}),
            "history": json.dumps(self.history),
        }
        return tensors, meta

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str) -> TrainingState:
        """Parse a stored state; raises ``EptctlError`` naming ``where`` if it is not one."""
        check(meta, where)
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith(OPTIM):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        return cls(
            adapter=_strip(tensors, ADAPTER), best=_strip(tensors, BEST),
            optimizer={"state": opt_state, "param_groups": json.loads(meta["optim_param_groups"])},
            scheduler=json.loads(meta["scheduler"]), step=int(meta["step"]), best_step=int(meta["best_step"]),
            best_metric=json.loads(meta["best_metric"]), history=json.loads(meta["history"]),
        )


def check(meta: dict[str, str], where: str) -> None:
    """Raise ``EptctlError`` unless ``meta`` is a training state this eptctl reads."""
    if meta.get("format") != FORMAT:
        raise EptctlError(f"{where} is not an eptctl training checkpoint", hint="start without --resume")
    version = int(meta.get("schema_version", "1"))
    if version > SCHEMA_VERSION:
        raise EptctlError(f"{where} is a training state of schema version {version}; this eptctl reads up to "
                          f"{SCHEMA_VERSION}", hint="upgrade eptctl")


def best_components(tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str) -> dict[str, torch.Tensor]:
    """The adapter parameters at the best validation step, by name (what transfer fuses)."""
    check(meta, where)
    return _strip(tensors, BEST)


def save(path: Path, state: TrainingState) -> None:
    """Write a resumable checkpoint atomically and durably (the previous one stays intact on a crash)."""
    from safetensors.torch import save as to_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, to_bytes(*state.to_file()))


def load(path: Path) -> TrainingState:
    """Read a checkpoint written by :func:`save`; raises ``EptctlError`` if the file is not one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return TrainingState.from_file(tensors, meta, str(path))


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
