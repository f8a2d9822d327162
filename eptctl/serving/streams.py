"""One streamed request on the worker side: its text so far (incremental detokenization with stop strings held
back), its random generator, and the queue its events travel through to the event loop that awaits them.

Text deltas: after each token the generated ids are decoded whole (``tokenizer.decode``, special tokens skipped, as
``eptctl predict`` decodes them), and only what is certain is sent: not a trailing U+FFFD (the first bytes of a
character whose last byte comes with a later token) and not a tail that could still become a stop string. So the
concatenated deltas are the decoded text cut before its first stop string, and no delta ever shows part of one.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import torch

from eptctl.serving.engine import Finished, GenerateRequest, TokenEvent

REPLACEMENT = "\ufffd"  # what decode shows for an incomplete UTF-8 sequence


class TextTracker:
    """The text of a growing list of generated ids and how much of it has been sent. ``add(token)`` returns
    ``(delta, stopped)``; ``rest()`` the held text once decoding ends without a stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text, self.sent = "", 0

    def add(self, token: int) -> tuple[str, bool]:
        """Append ``token``; the text now safe to send and whether a stop string appeared (the text is then cut
        before it, and the delta ends there)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        stable = len(self.text.rstrip(REPLACEMENT))  # a trailing U+FFFD may still become another character
        cut = self._stop_at(stable)
        if cut is not None:
            return self._send(max(cut, self.sent)), True
        return self._send(min(stable, len(self.text) - self._held())), False

    def rest(self) -> str:
        """Everything not sent yet (the end of the output: held characters go out as they are)."""
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        delta = self.text[self.sent: upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return delta

    def _stop_at(self, end: int) -> int | None:
        """Where the first stop string starts in the text's first ``end`` characters, or None. Only the unsent tail
        and the longest stop's reach before it are searched: an earlier match would have been found earlier."""
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        found = [i for i in (self.text.find(s, start, end) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held(self) -> int:
        """How many trailing characters could be the start of a stop string (held back until they cannot)."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held


@dataclass(eq=False)
class StreamRow:
    """A request on its way through the running batch. The worker thread calls ``emit``/``finish``/``fail`` (they
    hand the event to ``loop``); the event loop reads ``events`` and sets ``cancelled`` when the client goes away
    (a plain flag: the worker reads it between steps and drops the row)."""

    request: GenerateRequest
    loop: asyncio.AbstractEventLoop
    tracker: TextTracker
    soft_prompt_tokens: int
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    seed: int | None = None
    produced: int = 0
    cancelled: bool = False
    done: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        seed = self.request.params.seed
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def uniform(self) -> float:
        """This row's next draw in [0, 1) from its own generator (one per step, sampled or not, so a row's draws
        depend on its seed and step only)."""
        return float(torch.rand((), generator=self.generator))

    def accept(self, token: int, logprob: float | None, top: tuple | None, eos_id: int) -> bool:
        """Take the token chosen for this row: send its event (or end the stream at eos, a stop string or the
        budget). Returns True when the row is finished."""
        params = self.request.params
        if token == eos_id and not params.ignore_eos:
            return self.finish("stop")
        self.produced += 1
        delta, stopped = self.tracker.add(token)
        self._put(TokenEvent(token, delta, logprob, top))
        if stopped:
            return self.finish("stop", held="")
        if self.produced >= params.max_tokens:
            return self.finish("length")
        return False

    def finish(self, reason: str, held: str | None = None) -> bool:
        """Send the closing ``Finished`` (with the held text unless ``held`` is given); returns True."""
        text = self.tracker.rest() if held is None else held
        self.done = True
        self._put(Finished(reason, text, len(self.request.input_ids), self.soft_prompt_tokens, self.produced))
        return True

    def fail(self, err: BaseException) -> None:
        """End the stream with ``err`` (raised to the reader)."""
        self.done = True
        self._put(err)

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the reader's event loop is closed: nobody is listening
            self.cancelled = True
