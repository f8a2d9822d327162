"""The device the suite runs on (``EPTCTL_TEST_DEVICE``, tests/conftest.py) and comparisons that hold on it.

On the CPU eptctl's results are bit-for-bit reproducible and the tests say so (``torch.equal``); CUDA kernels may
reduce in another order from one call to the next (atomic adds in embedding backward, attention kernels chosen by
shape), so there the same checks allow float rounding: ``FLOAT_TOLERANCE`` (tiny backbones stay fp32 on every
device, eptctl.backbones.loading, so no bf16 tolerance is needed for them).
"""

from __future__ import annotations

import os

FLOAT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def device() -> str:
    """Where ``backbones.load`` puts a model in this run: ``EPTCTL_TEST_DEVICE``, else eptctl's own choice."""
    chosen = os.environ.get("EPTCTL_TEST_DEVICE", "")
    if chosen:
        return chosen
    from eptctl.backbones.loading import default_device

    return default_device()


def on_cuda() -> bool:
    """Whether this run's models live on a GPU."""
    return device().startswith("cuda")


def same(a, b) -> bool:
    """``a`` equals ``b``: exactly on the CPU, within float rounding on CUDA; either may be on any device."""
    import torch

    a, b = a.detach().cpu(), b.detach().cpu()
    if a.shape != b.shape:
        return False
    if not on_cuda() or not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a, b, **FLOAT_TOLERANCE)
