"""The OpenAI-compatible API: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, whole
or streamed as server-sent events, on the same engine, adapter cache, token and metrics as ``/v1/predict``.

``model`` names an adapter, or an adapter with ``:raw`` (``serving.openai_inputs`` says what each means); the
fields honoured and refused are ``serving.openai_schema``'s; errors are OpenAI-shaped (``serving.errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from eptctl.core.errors import EptctlError
from eptctl.serving.engine import SamplingParams
from eptctl.serving.errors import ApiError, openai_error
from eptctl.serving.openai_format import ChunkWriter, Header, chat, completion, error_event
from eptctl.serving.openai_inputs import Target, chat_prompt, check_sizes, encode, prompt_list, resolve
from eptctl.serving.openai_models import model_list
from eptctl.serving.openai_run import Done, Job, collect, merged, pieces, started, timed
from eptctl.serving.openai_schema import ChatRequest, CompletionRequest, Sampling, refuse_unsupported
from eptctl.serving.routes import State
from eptctl.serving.state import ServingState

router = APIRouter(tags=["openai"])
log = logging.getLogger(__name__)


@router.get("/v1/models")
async def models(state: State):
    """Every adapter reference this server answers for, each also as ``REF:raw``."""
    return await asyncio.to_thread(model_list, state.registry, state.cache, state.engine.backbone_name)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, state: State):
    """One choice per prompt: the generated text, the label (with every label's score) or the number; ``echo``
    with ``logprobs`` and ``max_tokens`` 0 scores the prompt itself."""
    refuse_unsupported(body)
    target = await resolve(state, body.model)
    items = prompt_list(body.prompt)
    check_sizes(items, state.config)
    if body.echo and not target.decodes:
        raise ApiError(400, f"echo needs a decoded answer; {target.ref} answers with a scored label or a number",
                       f"send model {target.ref}:raw to score or continue the prompt itself", param="echo",
                       code="invalid_value")
    prompts = [encode(state.engine, target, item, f"prompt[{n}]" if len(items) > 1 else "prompt")
               for n, item in enumerate(items)]
    jobs = [Job(target, p, _params(body, target, state, body.logprobs), body.echo, body.logprobs)
            for p in prompts]
    header = Header.new("cmpl", body.model, target.ref)
    return await _answer(state, jobs, body, header, lambda outs: completion(header, outs, body.logprobs is not None))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, state: State):
    """The assistant's reply to ``messages`` (``REF``: the adapter's answer to the last user message; ``REF:raw``:
    the rendered conversation continued)."""
    refuse_unsupported(body)
    target = await resolve(state, body.model)
    prompt = chat_prompt(state.engine, target, body.messages, state.config.chat_template)
    job = Job(target, prompt, _params(body, target, state, body.top, budget=body.budget), logprobs=body.top)
    header = Header.new("chatcmpl", body.model, target.ref)
    return await _answer(state, [job], body, header, lambda outs: chat(header, outs, body.logprobs))


def _params(body: Sampling, target: Target, state: ServingState, logprobs: int | None,
            budget: int | None = None) -> SamplingParams | None:
    """The decoding options of a decoded answer (None for a scored one); 400 for ``max_tokens`` over the server's
    ``--max-tokens``."""
    if not target.decodes:
        return None
    budget = budget if budget is not None else body.max_tokens
    limit = state.config.max_tokens
    tokens = min(target.servable.max_new_tokens, limit) if budget is None else budget
    if tokens > limit:
        raise ApiError(400, f"max_tokens {tokens} is over this server's maximum of {limit}",
                       "ask for fewer, or start the server with a larger --max-tokens", param="max_tokens",
                       code="invalid_value")
    try:
        return SamplingParams(max_tokens=tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=max(body.top_k, 0), seed=body.seed, stop=body.stops(), logprobs=logprobs,
                              ignore_eos=body.ignore_eos)
    except EptctlError as err:  # SamplingParams' own checks: a value the fields' bounds let through
        raise ApiError(400, err.message, err.hint or "see /docs", code="invalid_value") from None


async def _answer(state: ServingState, jobs: Sequence[Job], body: Sampling, header: Header, whole):
    """Run ``jobs`` and answer with ``whole(outputs)``, or stream them as server-sent events."""
    metrics, begun = state.metrics.generation, time.perf_counter()
    streams = [timed(pieces(state.engine, job), metrics, job.target.ref, begun) for job in jobs]
    if not body.stream:
        metrics.begin()
        tasks = [asyncio.ensure_future(collect(s)) for s in streams]
        try:
            return whole(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one prompt failed (or the request was cancelled): the others stop decoding
                task.cancel()
            raise
        finally:
            metrics.end()
    streams = await started(streams)  # an engine that refuses at once answers with its status, not a stream
    writer = ChunkWriter(header, chat=isinstance(body, ChatRequest), include_usage=body.include_usage)
    return StreamingResponse(_events(streams, writer, metrics), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(streams: Sequence[AsyncIterator], writer: ChunkWriter, metrics) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; a client that disconnects cancels this generator, which
    closes every engine stream (freeing their rows)."""
    metrics.begin()
    try:
        async for index, item in merged(streams):
            event = writer.done(index, item) if isinstance(item, Done) else writer.piece(index, item.text,
                                                                                          item.tokens)
            if event:
                yield event
        yield writer.end()
    except ApiError as err:  # the status is sent already: the error becomes the last event
        yield error_event(openai_error(err))
        yield "data: [DONE]\n\n"
    except Exception as err:  # an engine failure mid-stream: said in the stream, and logged by the server
        log.exception("stream failed")
        yield error_event(openai_error(ApiError(500, f"the engine failed: {type(err).__name__}: {err}",
                                                "see the server log")))
        yield "data: [DONE]\n\n"
    finally:
        metrics.end()

