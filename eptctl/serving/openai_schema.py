"""The request bodies of the OpenAI-compatible routes, as OpenAI (and vLLM, for its sampling extras) name the fields.

Unknown fields are ignored, as the OpenAI API ignores them (``user``, ``metadata``, ``store``...). Fields that
change sampling in a way eptctl cannot honour are declared here with their neutral value, so that a request which
sets them is refused with 400 naming the field (``refuse_unsupported``) instead of being answered as if they had
not been sent. Type errors are 422 (``serving.errors``), as on eptctl's own routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eptctl.serving.errors import ApiError

MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit, vLLM's default --max-logprobs)
MAX_STOPS = 16  # stop strings per request
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range

TokenIds = list[int]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage (and ``"usage": null`` on the
    others)."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class Sampling(BaseModel):
    """The fields completions and chat share: the adapter (``model``), the decoding options eptctl honours, and the
    ones it refuses unless neutral. ``top_k`` and ``ignore_eos`` are vLLM's extensions (``top_k`` -1 or 0: every
    token). ``max_tokens`` omitted: the adapter's own budget (its longest training target and a quarter more)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, examples=["bbc-headline@latest", "bbc-headline@latest:raw"])
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    # refused unless neutral (refuse_unsupported)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    min_tokens: int = 0
    use_beam_search: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False

    def stops(self) -> tuple[str, ...]:
        """``stop`` as a tuple (empty strings dropped); 400 beyond ``MAX_STOPS``."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop has {len(stops)} strings; at most {MAX_STOPS} are allowed",
                           "send fewer stop strings", param="stop", code="invalid_value")
        return tuple(s for s in stops if s)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(Sampling):
    """``POST /v1/completions``: ``prompt`` a string, a list of strings, a list of token ids or a list of token-id
    lists; ``echo`` puts the prompt before the output (with ``logprobs``: its tokens' log-probabilities, the first
    ``null``); ``logprobs`` N: each output token's log-probability and the N most likely alternatives."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    """One part of a message's content: OpenAI's ``{"type": "text", "text": ...}`` (other types are refused)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message: ``role`` (system, developer, user, assistant) and its text ``content``."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``: ``messages``; ``max_completion_tokens`` (OpenAI's newer name) wins over
    ``max_tokens``; ``logprobs`` true with ``top_logprobs`` N alternatives per token."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @property
    def budget(self) -> int | None:
        """The tokens asked for: ``max_completion_tokens``, else ``max_tokens`` (None: the adapter's budget)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def top(self) -> int | None:
        """How many alternatives per token to report (None: no log-probabilities)."""
        return (self.top_logprobs or 0) if self.logprobs else None


def _text_format(value) -> bool:
    return value.get("type", "text") != "text"


# field -> (is it set to something eptctl cannot honour?, why not / what to do instead)
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v != 1, "eptctl returns one choice per prompt: send n 1 (repeat the request with other seeds "
                            "for more samples)"),
    "best_of": (lambda v: v not in (None, 1), "eptctl returns one choice per prompt: leave best_of out"),
    "presence_penalty": (bool, "penalties are not implemented: leave presence_penalty at 0"),
    "frequency_penalty": (bool, "penalties are not implemented: leave frequency_penalty at 0"),
    "repetition_penalty": (lambda v: v != 1, "penalties are not implemented: leave repetition_penalty at 1"),
    "logit_bias": (bool, "logit_bias is not implemented: leave it out"),
    "min_p": (bool, "min_p sampling is not implemented: use top_p or top_k"),
    "min_tokens": (bool, "min_tokens is not implemented: use ignore_eos with max_tokens"),
    "use_beam_search": (bool, "beam search is not implemented: decode greedily with temperature 0"),
    "stop_token_ids": (bool, "stop_token_ids is not implemented: use stop strings"),
    "include_stop_str_in_output": (bool, "the stop string is never returned: leave include_stop_str_in_output out"),
    "suffix": (lambda v: v is not None, "insertion (suffix) is not implemented: leave suffix out"),
    "tools": (bool, "tool calls are not implemented: leave tools out"),
    "functions": (bool, "function calls are not implemented: leave functions out"),
    "response_format": (lambda v: v is not None and _text_format(v),
                        "structured output is not implemented: leave response_format out"),
}


def refuse_unsupported(body: BaseModel) -> None:
    """400 naming the first field of ``body`` set to a value eptctl cannot honour (``UNSUPPORTED``)."""
    for name, (is_set, hint) in UNSUPPORTED.items():
        if name in type(body).model_fields and is_set(getattr(body, name)):
            raise ApiError(400, f"{name}={getattr(body, name)!r} is not supported by eptctl serve", hint,
                           param=name, code="unsupported_parameter")
