"""The running decode batch of a server (continuous batching): streams of any adapters share every decoding step.

Between two steps the worker thread may ``admit`` new requests (prefilled together, each with its own soft prompt and
offset, their first tokens sent at once, then merged into the running batch) and ``step`` the batch (one backbone pass
for every running row; each row's token chosen under its own sampling settings and sent). A row leaves the batch at
the step after it finished (eos, stop string, budget) or its client went away (``StreamRow.cancelled``).

Only the worker thread calls this class; it owns the backbone (``backbones.stepping``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from eptctl.backbones import sampling
from eptctl.backbones.stepping import StepState, stepper_for
from eptctl.serving.streams import StreamRow


class DecodeScheduler:
    """Rows decoding together. ``running``: how many; ``room()``: how many may join now (``max_rows`` in all; a
    seq2seq backbone admits only into an empty batch, see ``backbones.stepping``). ``on_step(rows)`` is called
    with the row count of every backbone pass (prefills and steps), for metrics and tests."""

    def __init__(self, backbone, max_rows: int = 64, on_step: Callable[[str, int], None] | None = None):
        self.backbone, self.max_rows, self.on_step = backbone, max_rows, on_step
        self.stepper = stepper_for(backbone)
        self.rows: list[StreamRow] = []
        self.state: StepState | None = None
        self.last: torch.Tensor | None = None  # [running] the token each row chose last (device)
        self.eos_id = backbone.tokenizer.eos_token_id

    @property
    def running(self) -> int:
        return len(self.rows)

    def room(self) -> int:
        """How many rows may join at the next step."""
        if self.rows and not self.stepper.can_join:
            return 0
        return max(0, self.max_rows - len(self.rows))

    def admit(self, rows: Sequence[StreamRow]) -> None:
        """Prefill ``rows`` in one pass, send their first tokens and keep the unfinished ones in the batch. A failure
        ends these rows with the error, never the running ones."""
        rows = [row for row in rows if not row.cancelled]
        if not rows:
            return
        servables = list({id(r.request.servable): r.request.servable for r in rows}.values())
        where = {id(s): a for a, s in enumerate(servables)}
        sources = [s.adapter.to(self.backbone.device) for s in servables]
        try:
            state, logits = self.stepper.prefill(sources, [r.request.input_ids for r in rows],
                                                 [where[id(r.request.servable)] for r in rows])
            chosen = self._choose(rows, logits)
        except Exception as err:  # noqa: BLE001  (the error goes to these requests; the worker lives on)
            for row in rows:
                row.fail(err)
            return
        self._count("prefill", len(rows))
        if self.state is None:
            self.rows, self.state, self.last = list(rows), state, chosen
        else:
            self.rows = self.rows + list(rows)
            self.state = self.stepper.merge(self.state, state)
            self.last = torch.cat([self.last, chosen])
        self._drop()

    def step(self) -> None:
        """One decoding step for every running row (after dropping the finished and abandoned ones)."""
        self._drop()
        if not self.rows:
            return
        try:
            logits = self.stepper.step(self.state, self.last)
            self.last = self._choose(self.rows, logits)
        except Exception as err:  # noqa: BLE001
            for row in self.rows:
                row.fail(err)
            self.rows, self.state, self.last = [], None, None
            return
        self._count("step", len(self.rows))
        self._drop()

    def cancel_all(self, err: BaseException) -> None:
        """End every running row with ``err`` (the server is stopping without finishing them)."""
        for row in self.rows:
            row.fail(err)
        self.rows, self.state, self.last = [], None, None

    def _choose(self, rows: Sequence[StreamRow], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token from ``logits`` [b, V] and send it (one host read of the step's choices):
        [b] the chosen ids on the device."""
        params = [r.request.params for r in rows]
        device = logits.device
        settings = sampling.RowSettings(
            temperature=torch.tensor([p.temperature for p in params]).to(device, non_blocking=True),
            top_k=torch.tensor([p.top_k for p in params]).to(device, non_blocking=True),
            top_p=torch.tensor([p.top_p for p in params]).to(device, non_blocking=True),
            uniform=torch.tensor([r.uniform() for r in rows]).to(device, non_blocking=True),
            sampled=any(p.temperature > 0 for p in params))
        chosen = sampling.choose(logits, settings)
        wanted = [p.logprobs for p in params if p.logprobs is not None]
        tokens = chosen.tolist()  # the step's one read: the host sends text, so it must know the tokens
        picked, tops = [None] * len(rows), [None] * len(rows)
        if wanted:
            lp, values, ids = sampling.logprobs(logits, chosen, max(wanted))
            picked = lp.tolist()
            if values is not None:
                tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        for row, p, token, logprob, top in zip(rows, params, tokens, picked, tops):
            if p.logprobs is None:
                logprob, top = None, None
            elif top is not None:
                top = top[: p.logprobs] if p.logprobs else None
            row.accept(token, logprob, top, self.eos_id)
        return chosen

    def _drop(self) -> None:
        """Remove finished and abandoned rows from the batch (index_select on the batch dimension)."""
        keep = [i for i, row in enumerate(self.rows) if not (row.done or row.cancelled)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.state, self.last = [], None, None
            return
        self.state = self.stepper.select(self.state, keep)
        self.last = self.last.index_select(0, torch.tensor(keep).to(self.last.device, non_blocking=True))
        self.rows = [self.rows[i] for i in keep]

    def _count(self, kind: str, rows: int) -> None:
        if self.on_step is not None:
            self.on_step(kind, rows)
