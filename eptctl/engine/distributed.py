"""Data-parallel training over ``torch.distributed``, as launched by ``torchrun`` or ``accelerate launch``.

The backbone is frozen, so replicas differ only by their adapter: every rank computes the loss of its own slice of
each global batch, the adapter gradients are summed over ranks (each rank's loss weighted by its share of the global
batch, so the sum is the gradient of the global mean) and every rank then takes the same optimizer step.

Every helper is a no-op for a single process, and torch is imported only when a launcher started us (the CLI imports
this module and must start without torch). See docs/distributed.md.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

from eptctl.core.launch import LAUNCH_ENV, launched, local_rank  # noqa: F401  (re-exported)

T = TypeVar("T")
def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group (ours or one the caller set up)."""
    if "torch" not in sys.modules:  # nothing can have initialised a group without importing torch
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if not is_distributed():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    if not is_distributed():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main() -> bool:
    """Rank 0: the only rank that writes checkpoints, registers adapters and prints."""
    return rank() == 0


def init() -> bool:
    """Join the group the launcher describes (``env://``: RANK, WORLD_SIZE, MASTER_ADDR/PORT); idempotent.

    Backend: NCCL when CUDA is available, gloo on CPU. Returns whether this process is in a process group.
    """
    if not launched() or is_distributed():
        return is_distributed()
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)  # object collectives and barriers use the current device
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    atexit.register(teardown)
    return True


def teardown() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a one-time model conversion into a shared cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous slice ``[lo, hi)`` of ``n`` items; slices are disjoint, cover all, differ by ≤ 1."""
    r, w = rank(), world_size()
    return n * r // w, n * (r + 1) // w


def _comm_device() -> torch.device:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks, in float64 (one collective)."""
    if not is_distributed():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    return all_reduce_sum([float(flag)])[0] > 0


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every gradient over ranks, in one flat buffer (one collective).

    A parameter no rank produced a gradient for keeps ``grad=None`` (the optimizer then skips it, as in one process);
    a rank with an empty slice contributes zeros.
    """
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    comm = _comm_device()
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).float().to(comm)
             for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=comm)
    flat = torch.cat([*parts, present])
    dist.all_reduce(flat)
    offset = 0
    for p, seen in zip(params, flat[-len(params):].tolist()):
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone() if seen else None
        offset += n


def broadcast_params(module: torch.nn.Module) -> None:
    """Rank 0's parameter values on every rank (replicas start identical even if their init was not)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    comm = _comm_device()
    for p in module.parameters():
        buf = p.data.to(comm)
        dist.broadcast(buf, src=0)
        p.data.copy_(buf)


def gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def from_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` evaluated on rank 0 only and its (picklable) result handed to every rank, e.g. a file only rank 0's
    host has (another node may not share its disk)."""
    if not is_distributed():
        return fn()
    import torch.distributed as dist

    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
