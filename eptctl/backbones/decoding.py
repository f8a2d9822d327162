"""Decoding with a soft prompt: the options (greedy, sampling, stop strings) and the loop shared by the causal and
seq2seq families.

The families supply two closures: ``first()`` runs the whole input once (prompt rows included) and returns the
next-token logits with the key/value cache, ``step(ids)`` feeds the tokens just chosen and returns the next logits.
With ``use_cache`` the prompt's keys and values are computed once per batch and reused at every step; without it
each step reruns the whole sequence (for tests: both must give the same tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from eptctl.core.errors import ConfigError


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode. ``temperature`` 0 is greedy (the default); above 0 samples from the softmax at that
    temperature, restricted to the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling,
    Holtzman et al. 2020), drawn from a generator seeded with ``seed``. Decoding stops at the eos token, after
    ``max_new_tokens`` tokens, or when the text contains one of ``stop`` (which is cut off with what follows).
    ``max_new_tokens=None`` leaves the budget to each adapter (what its training used; ``workflows.inference``).
    Raises ``ConfigError`` naming the flag for an invalid value."""

    max_new_tokens: int | None = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    use_cache: bool = True
    ignore_eos: bool = False  # benchmarks: always write max_new_tokens tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ConfigError(f"--max-new-tokens must be ≥ 1, got {self.max_new_tokens}", hint="e.g. --max-new-tokens 32")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"--temperature must be ≥ 0, got {self.temperature}",
                              hint="0 decodes greedily; 0.7 samples")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}", hint="e.g. --top-p 0.9")


Logits = torch.Tensor  # [b, vocab] next-token logits


def cache_argument(module) -> str:
    """The keyword a model's forward takes the key/value cache under: ``cache`` since transformers 5.2x,
    ``past_key_values`` before (still accepted, with a deprecation warning)."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def returned_cache(output):
    """The key/value cache of a model output, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def decode(first: Callable[[], Logits], step: Callable[[torch.Tensor], Logits], rows: int, eos_id: int,
           options: GenerationOptions, tokenizer=None, limits: Sequence[int] | None = None) -> list[list[int]]:
    """Token ids generated for each of ``rows`` rows (eos excluded, stop strings not yet cut).

    ``first()`` returns the logits after the input, ``step(ids [rows])`` those after feeding one token per row.
    ``limits`` caps each row's new tokens (rows of different adapters keep their own budgets in a mixed batch;
    default ``options.max_new_tokens`` for all). Finished rows keep being fed their own choices (ignored) so every
    step stays one batched pass.
    """
    if limits is None and options.max_new_tokens is None:
        raise ConfigError("no token budget: max_new_tokens is None and no per-row limits were given",
                          hint="pass GenerationOptions(max_new_tokens=N)")
    limits = list(limits) if limits is not None else [options.max_new_tokens] * rows
    steps = max(limits, default=0)
    if options.ignore_eos:
        eos_id = -1
    generator = None
    if options.temperature > 0:
        generator = torch.Generator(device="cpu").manual_seed(options.seed)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [limit < 1 for limit in limits]
    # Stop strings need every step's text; otherwise the chosen tokens stay on the device and are read once every
    # READ_EVERY steps (one sync per chunk, not per step). A chunk may run past the step where every row finished:
    # those tokens are ignored, so the output is the same as reading every step.
    every = 1 if options.stop and tokenizer is not None else READ_EVERY
    pending: list[torch.Tensor] = []
    logits = first()
    for k in range(steps):
        chosen = _choose(logits.float(), options, generator)
        pending.append(chosen)
        if len(pending) == every or k == steps - 1:
            _take(torch.stack(pending, dim=1).tolist(), out, done, limits, eos_id, options, tokenizer)  # one read
            pending = []
            if all(done):
                break
        if k == steps - 1:
            break  # no step after the last token: its logits would go unused
        logits = step(chosen)
    return out


READ_EVERY = 8  # decoding steps between reads of the chosen tokens (greedy and sampling without stop strings)


def _take(chunk: list[list[int]], out: list[list[int]], done: list[bool], limits: Sequence[int], eos_id: int,
          options: GenerationOptions, tokenizer) -> None:
    """Append each row's tokens of ``chunk`` ([rows][steps] host ints) to ``out`` in step order until the row is
    done (eos, a stop string, or its limit); marks ``done``."""
    for i, tokens in enumerate(chunk):
        for token in tokens:
            if done[i]:
                break
            if token == eos_id:
                done[i] = True
                continue
            out[i].append(token)
            if options.stop and tokenizer is not None and _has_stop(tokenizer, out[i], options.stop):
                done[i] = True
            if len(out[i]) >= limits[i]:
                done[i] = True


def _choose(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> torch.Tensor:
    if options.temperature == 0:
        return logits.argmax(dim=-1)
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(options.temperature)(None, logits)
    if options.top_p < 1:
        scores = TopPLogitsWarper(options.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1).cpu()  # sampled on the CPU: one generator, the same draws on any device
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def _has_stop(tokenizer, ids: list[int], stop: Sequence[str]) -> bool:
    # Leading whitespace is not the output yet: a line break before the first word does not end it (to_text agrees).
    text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
    return any(s in text for s in stop)


def to_text(tokenizer, ids: Sequence[int], stop: Sequence[str] = ()) -> str:
    """Generated ids as text, cut at the first stop string after any leading whitespace, stripped."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True).lstrip()
    cuts = [text.index(s) for s in stop if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    return text.strip()
