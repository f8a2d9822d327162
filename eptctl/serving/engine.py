"""The engine behind the routes: what runs the frozen backbone for a server.

Routes never touch a backbone; they hand an :class:`Engine` rows to predict (``/v1/predict``, label and number
completions) or a :class:`GenerateRequest` to stream (completions and chat of generation adapters), and ask it for
prompt log-probabilities (the ``echo`` scoring convention of evaluation harnesses). Two engines implement it:
:class:`eptctl.serving.local.LocalEngine` runs the backbone in this process (one worker thread, batched across adapters and, for decoding,
step by step across streams); ``eptctl.serving.engines.vllm`` sends each row's embedding sequence ``[P_r; E(x) + H]``
to a vLLM server.

Token ids here are the ids of the text after the soft prompt, as the adapter's encoding puts them (its template and
special tokens for ``model: REF``; the client's text or ids verbatim for ``model: REF:raw``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from eptctl.core.errors import ConfigError
from eptctl.workflows.inference import ServableAdapter

Row = tuple[ServableAdapter, str, "str | None"]  # (adapter, text, text_pair): one /v1/predict input


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request (OpenAI's names). ``temperature`` 0 is greedy; above 0 samples from the softmax at
    that temperature restricted to the ``top_k`` most likely tokens (0: all) and then to the nucleus ``top_p``
    (Holtzman et al. 2020), from a generator seeded with ``seed`` (``None``: a fresh seed per request).
    Decoding ends at eos (unless ``ignore_eos``), after ``max_tokens`` tokens, or where the text contains one of
    ``stop`` (the stop string and what follows are not returned). ``logprobs``: how many alternatives per generated
    token to report with their raw log-probabilities (log-softmax of the logits before temperature, as vLLM
    reports them); ``None`` reports none, 0 only the chosen token's. Raises ``ConfigError`` for a value out of range."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be ≥ 0, got {self.max_tokens}", hint="e.g. max_tokens 32")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be ≥ 0, got {self.temperature}", hint="0 decodes greedily")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}", hint="e.g. top_p 0.9")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0, got {self.top_k}", hint="0 keeps every token")
        if self.logprobs is not None and self.logprobs < 0:
            raise ConfigError(f"logprobs must be ≥ 0, got {self.logprobs}", hint="e.g. logprobs 5")


@dataclass(frozen=True)
class GenerateRequest:
    """One sequence to decode: ``input_ids`` (the text after ``servable``'s soft prompt, see the module docstring)
    decoded with ``params``."""

    servable: ServableAdapter
    input_ids: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text it adds to the output (``""`` while a multi-byte character or a possible
    stop string is held back; the held text comes with a later event), its raw log-probability and, when
    ``params.logprobs`` asked for them, the top alternatives ``((token id, log-probability), ...)``, best first."""

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


@dataclass(frozen=True)
class Finished:
    """The last event of every stream: why it ended (``"stop"``: eos or a stop string; ``"length"``: ``max_tokens``),
    any text still held back, and the token counts: the request's text tokens, the soft prompt's positions (counted
    apart: the client did not send them) and the generated tokens."""

    reason: Literal["stop", "length"]
    text: str
    prompt_tokens: int
    soft_prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Engine(Protocol):
    """What a server's routes need from whatever runs the backbone. ``start``/``stop`` belong to the app's lifespan;
    every other method is called from the event loop. Errors are ``EptctlError`` subclasses the routes map to HTTP
    statuses (``batcher.QueueFull`` -> 503, ``EngineUnavailable`` -> 503, ``Unsupported`` -> 400, others 422)."""

    name: str  # "local", "vllm"
    backbone_name: str
    tokenizer: object  # the backbone's Hugging Face tokenizer (raw prompts, chat templates, token strings)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def alive(self) -> bool: ...

    def encode(self, servable: ServableAdapter, text: str, text_pair: str | None = None) -> tuple[int, ...]:
        """The ids ``eptctl predict`` feeds after ``servable``'s soft prompt for this input: its template filled with
        the normalised text, special tokens as training put them, truncated to the adapter's max length."""

    async def predict(self, rows: Sequence[Row]) -> list[dict]:
        """One ``/v1/predict`` result dict per row (``workflows.inference.predict`` documents the keys)."""

    def stream(self, request: GenerateRequest) -> AsyncIterator[TokenEvent | Finished]:
        """The tokens of ``request`` as they are decoded, then one ``Finished``. Closing the iterator early (a client
        that went away) frees the request's place in the running batch."""

    @property
    def running(self) -> int:
        """Streams decoding now (a gauge for ``/metrics``)."""

    @property
    def waiting(self) -> int:
        """Requests accepted and not started yet (a gauge for ``/metrics``)."""

    async def prompt_logprobs(self, servable: ServableAdapter, input_ids: Sequence[int],
                              offset_tokens: int | None = None) -> list[float | None]:
        """``log p(input_ids[t] | soft prompt, input_ids[:t])`` for every ``t ≥ 1`` (``None`` for ``t = 0``) under
        ``servable``'s soft prompt and offset: the ``echo`` + ``logprobs`` + ``max_tokens: 0`` convention.

        The offset ``H`` is added to the first ``offset_tokens`` ids (default: all of them). A causal adapter's
        label score adds it to the template-filled text only and appends the answer without it (the answer is what
        the model writes, and written tokens never get one), so the mean over a label's answer tokens equals that
        score when ``offset_tokens`` is the text's length; with the default the two agree for single-token answers
        and differ slightly for longer ones. ``ConfigError`` for an empty prompt or one longer than the adapter's
        offset; ``Unsupported`` on a backbone that is not decoder-only."""


class Unsupported(ConfigError):
    """A request this engine cannot honour as asked (HTTP 400 naming the field or the reason)."""


class EngineUnavailable(ConfigError):
    """The engine cannot answer now (a remote engine is down or timed out): HTTP 503 with ``Retry-After``."""
