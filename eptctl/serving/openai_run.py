"""Running one prompt of an OpenAI-API request on the engine, as a sequence of output pieces ending in ``Done``.

Three ways, chosen by the request's target (``openai_inputs``): a scored answer (``REF`` on classification and
regression adapters: ``engine.predict``, the label with every label's score, or the number); the prompt's own
log-probabilities (``echo``: ``engine.prompt_logprobs``); decoded tokens (``engine.stream``). The same pieces feed a
whole answer (``collect``) and a stream of server-sent events, so both carry the same text token for token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from eptctl.serving.engine import Finished, GenerateRequest, SamplingParams
from eptctl.serving.errors import ApiError, engine_errors
from eptctl.serving.metrics import Timing
from eptctl.serving.openai_inputs import Prompt, Target, offset_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One token of the output (or of an echoed prompt): its text, its log-probability (None: the prompt's first
    token, which has no context) and, when asked for, the most likely alternatives, best first."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Piece:
    """Text added to a choice's output, with its tokens' log-probabilities when the request asked for them."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Done:
    """The end of a choice: why (``stop``, ``length``), and its token counts (the text after the soft prompt, the
    soft prompt's positions, the generated tokens)."""

    reason: str
    prompt_tokens: int
    soft_prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Job:
    """One prompt to answer: decoded with ``params`` (None: a scored answer), ``echo`` the prompt first, and
    ``logprobs`` alternatives per token (None: no log-probabilities)."""

    target: Target
    prompt: Prompt
    params: SamplingParams | None
    echo: bool = False
    logprobs: int | None = None


@dataclass
class Output:
    """A whole choice: its text, tokens (when log-probabilities were asked for) and end."""

    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    done: Done | None = None


async def pieces(engine, job: Job) -> AsyncIterator[Piece | Done]:
    """The pieces of ``job``'s answer, then one ``Done``. Closing this iterator early closes the engine's stream
    (a client that went away frees its row). Engine errors are raised as ``ApiError`` (``engine_errors``)."""
    with engine_errors():
        if job.params is None:
            for item in await _scored(engine, job):
                yield item
            return
        if job.echo:
            yield await _echoed(engine, job)
        if job.params.max_tokens == 0:
            yield Done("length", len(job.prompt.ids), job.target.soft_prompt_tokens, 0)
            return
        stream = engine.stream(GenerateRequest(job.target.servable, job.prompt.ids, job.params))
        try:
            async for event in stream:
                if isinstance(event, Finished):
                    if event.text:
                        yield Piece(event.text)
                    yield Done(event.reason, event.prompt_tokens, event.soft_prompt_tokens, event.completion_tokens)
                    return
                tokens = _generated(engine.tokenizer, event) if job.logprobs is not None else ()
                yield Piece(event.text, tokens)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()


async def _scored(engine, job: Job) -> list[Piece | Done]:
    """``engine.predict``'s answer: the label (its score, every label's score as the alternatives) or the number."""
    servable, text = job.target.servable, job.prompt.text
    [row] = await engine.predict([(servable, text, None)])
    prompt_tokens = len(engine.encode(servable, text))
    if "scores" in row:
        ranked = tuple(sorted(row["scores"].items(), key=lambda kv: -kv[1]))
        piece = Piece(row["label"], (TokenLogprob(row["label"], row["scores"][row["label"]], ranked),))
    else:
        piece = Piece(str(row["value"]))
    return [piece, Done("stop", prompt_tokens, job.target.soft_prompt_tokens, 0)]


async def _echoed(engine, job: Job) -> Piece:
    """The prompt as the start of the output: the client's text for a raw string prompt, else its tokens decoded;
    with log-probabilities, each prompt token's under the soft prompt and offset (the first: None)."""
    ids, tokenizer = job.prompt.ids, engine.tokenizer
    text = job.prompt.text if job.target.raw and job.prompt.text is not None else tokenizer.decode(list(ids))
    if job.logprobs is None:
        return Piece(text)
    covered = offset_tokens(tokenizer, job.target, ids)
    extra = {} if covered is None else {"offset_tokens": covered}
    logprobs = await engine.prompt_logprobs(job.target.servable, ids, **extra)
    tokens = tuple(TokenLogprob(_text(tokenizer, t), lp, None if lp is None else ((_text(tokenizer, t), lp),))
                   for t, lp in zip(ids, logprobs))
    return Piece(text, tokens)


def _generated(tokenizer, event) -> tuple[TokenLogprob, ...]:
    top = None
    if event.top_logprobs is not None:
        top = tuple((_text(tokenizer, t), lp) for t, lp in event.top_logprobs)
    return (TokenLogprob(_text(tokenizer, event.token_id), event.logprob, top),)


def _text(tokenizer, token_id: int) -> str:
    """One token's text as the client sees it (a byte-level piece of a multi-byte character decodes to U+FFFD)."""
    return tokenizer.decode([token_id])


async def timed(items: AsyncIterator[Piece | Done], metrics, model_name: str, started: float
                ) -> AsyncIterator[Piece | Done]:
    """``items`` unchanged, reporting the choice's time to first output, latency and tokens to ``metrics`` (a
    ``GenerationMetrics``) at its ``Done``; ``started``: the request's ``time.perf_counter()``."""
    first = None
    try:
        async for item in items:
            if isinstance(item, Done):
                now = time.perf_counter()
                metrics.finished(model_name, Timing(now - started, None if first is None else first - started,
                                                    item.prompt_tokens + item.soft_prompt_tokens,
                                                    item.completion_tokens, item.reason))
            elif first is None and item.text:
                first = time.perf_counter()
            yield item
    finally:  # closed early (a client gone): close the engine's stream now, not when collected
        await items.aclose()


async def collect(items: AsyncIterator[Piece | Done]) -> Output:
    """A whole choice from its pieces."""
    out = Output()
    async for item in items:
        if isinstance(item, Done):
            out.done = item
        else:
            out.text += item.text
            out.tokens.extend(item.tokens)
    return out


async def started(streams: Sequence[AsyncIterator]) -> list[AsyncIterator]:
    """Each stream with its first item already produced (so an engine that refuses, e.g. a full queue, is answered
    with its HTTP status before a streamed answer starts), and then the rest. If one fails, all are closed."""
    firsts = await asyncio.gather(*(anext(s) for s in streams), return_exceptions=True)
    failed = next((f for f in firsts if isinstance(f, BaseException)), None)
    if failed is not None:
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
        raise failed
    return [_prepend(first, s) for first, s in zip(firsts, streams)]


async def _prepend(first, rest: AsyncIterator) -> AsyncIterator:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


_END = object()


async def merged(streams: Sequence[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """``(index, item)`` from every stream as items arrive (each stream read by its own task). Closing this
    iterator cancels the tasks, which closes the streams; a stream's error is raised here."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
            await queue.put((i, _END))
        except Exception as err:  # handed to the reader, which raises it
            await queue.put((i, err))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is _END:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
