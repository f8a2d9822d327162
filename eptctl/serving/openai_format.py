"""The JSON of the OpenAI-compatible answers: completions and chat completions, whole or as stream chunks, with
OpenAI's two log-probability shapes (the legacy completions one: ``tokens``, ``token_logprobs``, ``top_logprobs``,
``text_offset``; chat's ``content`` list), and the usage.

``usage.prompt_tokens`` counts every position before the output: the soft prompt's and the text's;
``usage.eptctl_soft_prompt_tokens`` says how many of them were the soft prompt's (the client never sent those).
Every answer carries ``eptctl.adapter``, the registry reference ``model`` resolved to.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from eptctl.serving.openai_run import Done, Output, TokenLogprob


@dataclass(frozen=True)
class Header:
    """What every answer and chunk of one request repeats: its id, creation time, the model as sent, the adapter."""

    id: str
    created: int
    model: str
    adapter: str

    @classmethod
    def new(cls, prefix: str, model: str, adapter: str) -> Header:
        """A fresh id (``cmpl-...``, ``chatcmpl-...``) stamped now."""
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, adapter)

    def fields(self, kind: str) -> dict:
        """The fields every answer of type ``kind`` (``text_completion``, ``chat.completion.chunk``...) starts with."""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "eptctl": {"adapter": self.adapter}}


def usage(ends: Sequence[Done]) -> dict:
    """The usage of a request whose choices ended with ``ends``."""
    soft = sum(d.soft_prompt_tokens for d in ends)
    prompt = sum(d.prompt_tokens for d in ends) + soft
    completion = sum(d.completion_tokens for d in ends)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "eptctl_soft_prompt_tokens": soft}


def legacy_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict:
    """The completions shape; ``offset``: where the first token starts in the choice's text."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.top is None else dict(t.top) for t in tokens], "text_offset": offsets}


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict:
    """The chat shape: per token its text, log-probability, UTF-8 bytes and alternatives."""

    def entry(token: str, logprob: float | None) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(s, lp) for s, lp in t.top or ()]}
                        for t in tokens]}


def completion(header: Header, outputs: Sequence[Output], logprobs: bool) -> dict:
    """A whole ``text_completion``; ``logprobs``: the request asked for them (tokens come only then, but for a
    scored label's answer, which always carries every label's score)."""
    choices = [{"index": i, "text": out.text,
                "logprobs": legacy_logprobs(out.tokens) if logprobs or out.tokens else None,
                "finish_reason": out.done.reason} for i, out in enumerate(outputs)]
    return {**header.fields("text_completion"), "choices": choices, "usage": usage([o.done for o in outputs])}


def chat(header: Header, outputs: Sequence[Output], logprobs: bool) -> dict:
    """A whole ``chat.completion``."""
    choices = [{"index": i, "message": {"role": "assistant", "content": out.text},
                "logprobs": chat_logprobs(out.tokens) if logprobs or out.tokens else None,
                "finish_reason": out.done.reason} for i, out in enumerate(outputs)]
    return {**header.fields("chat.completion"), "choices": choices, "usage": usage([o.done for o in outputs])}


class ChunkWriter:
    """Server-sent events of one streamed request: ``piece``/``done`` per choice as they come, then ``end``
    (the usage chunk when asked for, and ``[DONE]``). ``chat`` picks the chunk shape (``chat.completion.chunk``
    with ``delta``; else ``text_completion`` with ``text``)."""

    def __init__(self, header: Header, chat: bool, include_usage: bool):
        self.header, self.chat, self.include_usage = header, chat, include_usage
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.offsets: dict[int, int] = {}  # choice -> characters sent (legacy text_offset)
        self.ends: list[Done] = []

    def piece(self, index: int, text: str, tokens: Sequence[TokenLogprob]) -> str | None:
        """The event for new output of choice ``index`` (None when there is nothing to send)."""
        first = index not in self.offsets
        if not text and not tokens and not (first and self.chat):
            return None
        offset = self.offsets.get(index, 0)
        self.offsets[index] = offset + len(text)
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(tokens) if tokens else None}
        else:
            choice = {"index": index, "text": text,
                      "logprobs": legacy_logprobs(tokens, offset) if tokens else None}
        return self._event([{**choice, "finish_reason": None}])

    def done(self, index: int, end: Done) -> str:
        """The last event of choice ``index``."""
        self.ends.append(end)
        empty = {"delta": {}} if self.chat else {"text": ""}
        return self._event([{"index": index, **empty, "logprobs": None, "finish_reason": end.reason}])

    def end(self) -> str:
        """The usage chunk (if asked for) and ``[DONE]``."""
        tail = self._event([], usage(self.ends)) if self.include_usage else ""
        return tail + "data: [DONE]\n\n"

    def _event(self, choices: list, usage_: dict | None = None) -> str:
        body = {**self.header.fields(self.kind), "choices": choices}
        if self.include_usage:
            body["usage"] = usage_
        return f"data: {json.dumps(body)}\n\n"


def error_event(payload: dict) -> str:
    """An error after the stream started (its status is already sent): OpenAI's error object as an event."""
    return f"data: {json.dumps(payload)}\n\n"
