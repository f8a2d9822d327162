"""Hot paths are host-free (issue #28): a training step, a scoring pass and a decoding step read no device scalar
per row. A dispatch mode counts the ops that make the host wait for the device (``.item()``, ``int(t)``,
``bool(t)``, ``.tolist()``, ``nonzero``, boolean-mask indexing, ...).

What is left and allowed (measured on the tiny backbones, identical for any batch size):
- transformers' SDPA mask builder asks once per backbone forward with a padding mask whether the mask can be skipped
  (``padding_mask.all()``): 0-2 per training step or scoring pass, 1 per decoding step;
- AdamW's ``step`` counters live on the host unless ``capturable``: reading them is no device sync, so they are left
  out of the count (they are recognised by identity);
- the loop reads the losses once every ``LOSS_READ_EVERY`` steps, outside the step counted here.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from eptctl import backbones
from eptctl.backbones.decoding import GenerationOptions
from eptctl.engine.config import TrainConfig
from eptctl.engine.loop import build_optimizer, new_adapter
from eptctl.methods import EPTConfig
from tests.tiny_task import encoded_task

SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
           "unique_consecutive"}
TRAIN_STEP_BOUND = 4  # at most PEFT's count; transformers' mask checks included
SCORE_BOUND = 3  # per scoring pass, whatever the batch size
FAMILIES = ("tiny-random-llama", "tiny-random-t5", "tiny-random-bert")
METHODS = ("pt", "dept", "ept")


class SyncCounter(TorchDispatchMode):
    """Counts the dispatched ops that need a device value on the host; ``ignore``: tensors whose reads are host-only
    (the optimizer's step counters)."""

    def __init__(self, ignore=()):
        super().__init__()
        self.count, self.ops = 0, []
        self.ignore = {id(t) for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        tensor_repeats = name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor")
        if (name in SYNCING or tensor_repeats) and not (args and id(args[0]) in self.ignore):
            self.count += 1
            self.ops.append(name)
        return func(*args, **kwargs)


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request):
    return backbones.load(request.param)


@contextmanager
def _cuda_sync_check():
    """On a GPU, also let CUDA itself report the synchronisations (warnings, counted by the caller)."""
    if not torch.cuda.is_available():
        yield []
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _train_step_count(backbone, method: str, objective: str, batch_size: int = 8) -> tuple[int, list, int]:
    encoded, answers = encoded_task(backbone, n=batch_size)
    adapter = new_adapter(backbone, EPTConfig(method=method, prompt_length=10, max_length=32), 2, seed=0)
    adapter.train()
    optimizer, _ = build_optimizer(adapter, TrainConfig(), total_steps=10)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batch = backbone.collate(encoded, answers, train=True).to(backbone.device)
    for _ in range(2):  # the second step is the steady state (the optimizer's state exists)
        steps = [s["step"] for s in optimizer.state.values() if isinstance(s.get("step"), torch.Tensor)]
        with _cuda_sync_check() as cuda_syncs, SyncCounter(ignore=steps) as counter:
            loss = backbone.loss(adapter, batch, answers, objective)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return counter.count, counter.ops, len(cuda_syncs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", ["lm", "classify"])
def test_a_training_step_reads_no_device_scalar_per_row(backbone, method, objective):
    if objective == "classify" and backbone.has_head:
        pytest.skip("encoders train their head: one objective")
    count, ops, cuda_syncs = _train_step_count(backbone, method, objective)
    assert count <= TRAIN_STEP_BOUND, (count, ops)
    assert cuda_syncs <= TRAIN_STEP_BOUND


@pytest.mark.parametrize("method", METHODS)
def test_a_scoring_pass_reads_a_constant_number_of_device_scalars(backbone, method):
    encoded, answers = encoded_task(backbone, n=16)
    adapter = new_adapter(backbone, EPTConfig(method=method, prompt_length=10, max_length=32), 2, seed=0).eval()
    counts = []
    for size in (4, 16):
        batch = backbone.collate(encoded[:size], answers, train=False).to(backbone.device)
        with SyncCounter() as counter:
            backbone.score([adapter], batch, [answers])
        counts.append(counter.count)
    assert counts[0] == counts[1] <= SCORE_BOUND, counts


@pytest.mark.parametrize("method", METHODS)
def test_a_cached_decoding_step_reads_at_most_one_device_scalar(backbone, method):
    if not backbone.can_generate:
        pytest.skip("encoders do not generate")
    encoded, _ = encoded_task(backbone, n=8)
    adapter = new_adapter(backbone, EPTConfig(method=method, prompt_length=10, max_length=32), 2, seed=0).eval()
    batch = backbone.collate(encoded, None, train=False).to(backbone.device)
    counts = {}
    for tokens in (2, 18):
        with SyncCounter() as counter:
            backbone.generate([adapter], batch, GenerationOptions(max_new_tokens=tokens, ignore_eos=True))
        counts[tokens] = counter.count
    per_step = (counts[18] - counts[2]) / 16
    assert per_step <= 1, counts  # transformers' mask check; eptctl reads the tokens once every 8 steps


def test_the_counter_sees_a_loop_over_device_rows():
    """The bound would catch a per-row ``int(tensor)`` loop coming back (the issue's cause)."""
    lengths = torch.tensor([3, 5, 7, 2, 4, 6, 1, 8])
    with SyncCounter() as counter:
        [int(n) for n in lengths]
    assert counter.count == len(lengths) > TRAIN_STEP_BOUND
