"""The in-process engine: the backbone in this process behind the ``Batcher`` (one worker thread owns it).

Predictions go through the batcher's mixed-task passes; streams join its running decode batch
(``scheduler.DecodeScheduler``); prompt log-probabilities run as one forward pass on the worker between steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from eptctl.backbones.stepping import stepper_for
from eptctl.core.errors import ConfigError
from eptctl.serving.engine import Finished, GenerateRequest, Row, TokenEvent, Unsupported
from eptctl.serving.streams import StreamRow, TextTracker
from eptctl.workflows.inference import ServableAdapter, encode_input


class LocalEngine:
    """``serving.engine.Engine`` over a local backbone and its ``Batcher``."""

    name = "local"

    def __init__(self, backbone, batcher):
        self.backbone, self.batcher = backbone, batcher
        self.backbone_name, self.tokenizer = backbone.name, backbone.tokenizer
        self.stepper = stepper_for(backbone)  # used on the worker thread only

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    @property
    def alive(self) -> bool:
        return self.batcher.alive

    @property
    def running(self) -> int:
        """Streams in the running decode batch."""
        return self.batcher.running

    @property
    def waiting(self) -> int:
        """Requests queued and not started."""
        return self.batcher.waiting

    def encode(self, servable: ServableAdapter, text: str, text_pair: str | None = None) -> tuple[int, ...]:
        return tuple(encode_input(self.backbone, servable, text, text_pair).input_ids)

    async def predict(self, rows: Sequence[Row]) -> list[dict]:
        return await self.batcher.submit(list(rows))

    def stream(self, request: GenerateRequest) -> AsyncIterator[TokenEvent | Finished]:
        """The events of ``request`` (see ``Engine.stream``). Checks run now, before anything is queued: a
        ``ConfigError`` for an input the adapter cannot read or a budget past the model's positions, ``Unsupported``
        on a backbone that cannot generate, ``QueueFull``. Must be called on the event loop that reads the events."""
        if self.stepper is None:
            raise Unsupported(f"{self.backbone_name} is an encoder-only model and cannot generate text",
                              hint="serve a causal or seq2seq backbone")
        soft = self._check_input(request.servable, request.input_ids, request.params.max_tokens)
        row = StreamRow(request, asyncio.get_running_loop(), TextTracker(self.tokenizer, request.params.stop), soft)
        if request.params.max_tokens == 0:
            row.finish("length")  # nothing to decode: the Finished is already on its way
        else:
            self.batcher.submit_stream(row)
        return _events(row)

    async def prompt_logprobs(self, servable: ServableAdapter, input_ids: Sequence[int],
                              offset_tokens: int | None = None) -> list[float | None]:
        if self.stepper is None or not self.stepper.can_join:
            raise Unsupported(f"prompt log-probabilities need a causal backbone; {self.backbone_name} is not one",
                              hint="echo scoring works on decoder-only backbones")
        ids = list(input_ids)
        if not ids:
            raise ConfigError("the prompt has no tokens", hint="send at least one token")
        self._check_input(servable, ids, 0)
        source = servable.adapter
        return await self.batcher.call(
            lambda: self.stepper.prompt_logprobs(source.to(self.backbone.device), ids, offset_tokens))

    def _check_input(self, servable: ServableAdapter, ids: Sequence[int], new_tokens: int) -> int:
        """The soft prompt's length after checking that ``ids`` fit the adapter's offset and, with ``new_tokens``
        more, the model's positions (``ConfigError`` naming the limit otherwise)."""
        soft = int(servable.adapter.prompt.shape[0])
        offset = servable.adapter.offset
        if not ids:
            raise ConfigError("the prompt has no tokens", hint="send some text")
        if offset is not None and len(ids) > offset.shape[0]:
            raise ConfigError(f"the prompt has {len(ids)} tokens; {servable.record.ref} reads at most "
                              f"{offset.shape[0]}", hint="shorten the prompt")
        limit = self.backbone.max_positions
        if limit is not None and soft + len(ids) + new_tokens > limit:
            raise ConfigError(f"{soft} soft-prompt positions + {len(ids)} prompt tokens + max_tokens {new_tokens} "
                              f"exceed the {limit} positions of {self.backbone_name}",
                              hint=f"use max_tokens {max(0, limit - soft - len(ids))} or less")
        return soft


async def _events(row: StreamRow) -> AsyncIterator[TokenEvent | Finished]:
    """``row``'s events as the worker sends them, ending with its ``Finished`` (or raising its error). Closing this
    iterator early marks the row abandoned: the worker drops it at the next step."""
    try:
        while True:
            item = await row.events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    finally:
        row.cancelled = True  # harmless after the end; frees the row otherwise
