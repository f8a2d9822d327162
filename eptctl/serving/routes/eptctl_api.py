"""eptctl's own API: ``POST /v1/predict`` (one output per input, inputs of many adapters in one request) and
``GET /v1/adapters`` (the loaded adapters). Errors: 422 malformed request, 404 unknown adapter, 409 adapter of another
backbone, 413 too many inputs or too long a text, 503 queue full (with ``Retry-After``)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from eptctl.core.errors import EptctlError
from eptctl.data.text import clean_inputs
from eptctl.serving.adapters import AdapterCache, AdapterNotFound, BackboneMismatch
from eptctl.serving.config import ServeConfig
from eptctl.serving.errors import ApiError, engine_errors
from eptctl.serving.routes import State
from eptctl.serving.state import ServingState

router = APIRouter()


class Input(BaseModel):
    """One input: a text, an optional second text (pair tasks), and optionally its own adapter (mixed requests)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt or unsupported field is a 422, never silently ignored

    text: str
    text_pair: str | None = None
    adapter: str | None = None


class PredictRequest(BaseModel):
    """``adapter`` for every input, or an ``adapter`` on each input (mixed-task requests). Generation rows decode
    greedily with their adapter's own budget; decoding options are a command-line feature (``eptctl predict``)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, examples=["rt-polarity@latest"])
    inputs: list[str | Input] = Field(examples=[["A triumph.", {"text": "Dull.", "adapter": "rt-polarity@1"}]])


@router.get("/v1/adapters")
async def adapters(state: State):
    """The loaded (materialized) adapters that are still in the registry: reference, task, labels, backbone,
    metrics. An adapter removed from the registry (``eptctl rm``) is evicted here, not listed."""
    servable = await asyncio.to_thread(state.cache.servable)
    return {"backbone": state.backbone.name, "adapters": [_describe(s) for s in servable]}


@router.post("/v1/predict")
async def predict(body: PredictRequest, state: State):
    """One output per input: ``adapter``, ``text``, ``truncated`` and, by task type, ``label`` with every
    label's ``scores`` and ``probabilities`` (their softmax), the generated ``output``, or the ``value``."""
    with state.metrics.in_flight.track_inprogress():
        return await _predict(body, state)


async def _predict(body: PredictRequest, state: ServingState) -> dict:
    """The answer, counted in ``eptctl_requests`` when it succeeds; an error is raised as ``ApiError`` carrying
    its adapter label, and counted where it is answered (``errors.error_response``), as are the refusals before
    this route runs (401, 413 body, 422 shape)."""
    started = time.perf_counter()
    label = "unresolved"  # a label per registry adapter, never per string a client sends
    try:
        rows = await _rows(body, state.cache, state.config)
        refs = {servable.record.ref for servable, _, _ in rows}
        label = refs.pop() if len(refs) == 1 else "mixed"
        with engine_errors():  # 503 queue full or engine down, 400 what it cannot do, 422 an input it refuses
            outputs = await state.engine.predict(rows)
    except ApiError as err:
        err.adapter = label
        raise
    except EptctlError as err:  # e.g. an empty text after normalisation
        raise ApiError(422, err.message, err.hint or "", adapter=label) from None
    state.metrics.requests.labels(label, "200").inc()
    state.metrics.latency.observe(time.perf_counter() - started)
    return {"outputs": outputs}


async def _rows(body: PredictRequest, cache: AdapterCache, config: ServeConfig) -> list:
    """(servable, text, text_pair) per input, every limit and reference checked first."""
    if not body.inputs:
        raise ApiError(422, "malformed request: inputs: the list is empty", "send at least one input")
    if len(body.inputs) > config.max_inputs:
        raise ApiError(413, f"{len(body.inputs)} inputs in one request; the limit is {config.max_inputs}",
                       "split the request, or start the server with a larger --max-inputs")
    items = [Input(text=i) if isinstance(i, str) else i for i in body.inputs]
    for n, item in enumerate(items, start=1):
        longest = max(len(item.text), len(item.text_pair or ""))
        if longest > config.max_text_chars:
            raise ApiError(413, f"input {n} has {longest} characters; the limit is {config.max_text_chars}",
                           "shorten it, or start the server with a larger --max-text-chars")
        if not (item.adapter or body.adapter):
            raise ApiError(422, f"malformed request: input {n} names no adapter",
                           'give "adapter" for the request, or on every input')
    try:  # the one normalisation of every text; an empty one is refused here, named by its position
        texts = clean_inputs([(item.text, item.text_pair) for item in items], where="input")
    except EptctlError as err:
        raise ApiError(422, err.message, err.hint or "") from None
    items = [item.model_copy(update={"text": t, "text_pair": p}) for item, (t, p) in zip(items, texts)]
    refs = {item.adapter or body.adapter for item in items}
    try:
        resolved = {ref: await asyncio.to_thread(cache.get, ref) for ref in refs}
    except AdapterNotFound as err:
        raise ApiError(404, err.message, err.hint or "") from None
    except BackboneMismatch as err:
        raise ApiError(409, err.message, err.hint or "") from None
    from eptctl.workflows.inference import check_pair

    try:  # a pair where the task takes one text (or a three-column task) fails this request, not its batch
        for n, item in enumerate(items, start=1):
            check_pair(resolved[item.adapter or body.adapter], item.text_pair, f"input {n}")
    except EptctlError as err:
        raise ApiError(422, err.message, err.hint or "") from None
    return [(resolved[item.adapter or body.adapter], item.text, item.text_pair) for item in items]


def _describe(servable) -> dict:
    rec = servable.record
    return {"ref": rec.ref, "id": rec.id, "task": rec.task, "task_type": servable.spec.task_type,
            "method": rec.method, "labels": list(servable.spec.labels),
            "backbone": rec.backbone.name, "aliases": list(rec.aliases),
            "metrics": {f"{m.split}:{m.name}": m.value for m in rec.metrics if m.step is None}}
