"""Build eptctl's random backbones directly on the GPU, and a launcher that does so for any ``python -m`` module.

    python -m bench.ondevice MODULE [ARGS...]      # e.g. python -m bench.ondevice eptctl serve --model random-llama-1b

``eptctl.backbones.tiny.build_random`` constructs a model on the CPU, and ``Backbone`` then moves it: for the 1B
Llama shape that took tens of seconds per process on the GPU machine (docs/benchmarks.md, GPU runs), and ``bench
serve``'s three servers did not reach concurrency 32 in time. With CUDA present, :func:`build_on` makes the
construction itself run under ``torch.device("cuda")`` (the weights are born there). Without CUDA nothing changes.
Every process of one benchmark must build the same way: the random weights (and so the backbone fingerprint that
ties an adapter to its backbone) come from the CUDA generator when built there.
"""

from __future__ import annotations

import runpy
import sys


def cuda_present() -> bool:
    """Whether this process sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def build_on(device: str) -> None:
    """From now on, construct eptctl's random (tiny and shaped) backbones under ``torch.device(device)``.
    Idempotent; only the construction is affected, every other tensor keeps the usual default device."""
    import torch

    from eptctl.backbones import tiny

    original = tiny.build_random
    if getattr(original, "built_on", None) == device:
        return
    original = getattr(original, "__wrapped__", original)

    def build_random(name: str):
        with torch.device(device):
            return original(name)

    build_random.__wrapped__ = original
    build_random.built_on = device
    tiny.build_random = build_random  # eptctl.backbones.loading imports it at call time, so the patch is seen


def build_on_gpu_if_present() -> bool:
    """:func:`build_on` ``("cuda")`` when CUDA is present; whether it was."""
    if not cuda_present():
        return False
    build_on("cuda")
    return True


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m MODULE ARGS`` in this process after :func:`build_on_gpu_if_present`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m bench.ondevice MODULE [ARGS...]")
    build_on_gpu_if_present()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
