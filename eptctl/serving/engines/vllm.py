"""``VllmEngine``: the ``serving.engine.Engine`` interface over a vLLM server (``eptctl serve --engine vllm``).

The router keeps the registry, the adapters, the tokenizer and the input-embedding table (``embedding``); for each
row it builds ``[P_r; E(x) + H]`` exactly as eptctl's own forward pass does and vLLM runs the frozen transformer
(``vllm_http``). ``/v1/predict`` runs eptctl's own prediction code (``workflows.inference.predict_mixed``: templates,
truncation, the task-type table, output fields) on the embedding-only backbone, so outputs have the same shape and,
in fp32, the same tokens and scores as the local engine.

Health: a watcher polls vLLM's ``/health``; the engine is ``alive`` (``/readyz`` 200) only while vLLM answers and
has passed the pairing check (``pairing``), which runs again every time vLLM comes back. A request while vLLM is
down, restarting or mismatched, or one whose connection fails, is a ``VllmUnavailable`` (503 with Retry-After).

Refused, one line each: encoder and seq2seq backbones (at start), labels whose answers are several tokens long (at
start for preloaded adapters, else per request; the local engine scores them), and, per request, what vLLM itself
refuses (a row longer than its ``--max-model-len``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from eptctl.core.errors import EptctlError
from eptctl.serving.engine import Finished, GenerateRequest, TokenEvent, Unsupported
from eptctl.serving.engines.embedding import EmbeddingBackbone
from eptctl.serving.engines.pairing import EngineMismatch, check_pairing
from eptctl.serving.engines.vllm_http import RETRY_HINT, VllmClient, VllmUnavailable, checked, encode_embeds, unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VllmSettings:
    """Where vLLM is and how long to wait for it: ``url`` of its OpenAI server, the served ``model`` name (``None``:
    the backbone's eptctl name), ``timeout_s`` per request, ``poll_s`` between health checks, at most
    ``concurrency`` requests in flight."""

    url: str
    model: str | None = None
    timeout_s: float = 120.0
    poll_s: float = 1.0
    concurrency: int = 64


class VllmEngine:
    """The ``Engine`` for a vLLM server; ``backbone`` is the router's ``EmbeddingBackbone``."""

    name = "vllm"

    def __init__(self, backbone: EmbeddingBackbone, settings: VllmSettings):
        self.backbone, self.settings = backbone, settings
        self.backbone_name, self.tokenizer = backbone.name, backbone.tokenizer
        self.client = VllmClient(settings.url, settings.model or backbone.name, backbone.tokenizer.eos_token_id,
                                 settings.timeout_s, settings.concurrency)
        backbone.remote = self.client
        self._async = httpx.AsyncClient(base_url=self.client.url, timeout=self.client.timeout)
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="eptctl-vllm-rows")
        self._state, self._reason = "unknown", "not checked yet"
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- lifecycle and health ------------------------------------------------------------------------------------
    def verify(self) -> None:
        """Check the pairing now (``pairing.check_pairing``); the engine is alive after it passes. Raises
        ``EngineMismatch`` or ``VllmUnavailable``."""
        try:
            check_pairing(self.client, self.backbone)
        except EngineMismatch as err:
            self._set("mismatch", f"{err.message} ({err.hint})")
            raise
        except VllmUnavailable as err:
            self._set("down", err.message)
            raise
        self._set("paired", "")

    def start(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="eptctl-vllm-health", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=self.settings.poll_s + 5)
        self._pool.shutdown(wait=True)  # the requests in flight finish (each bounded by timeout_s)
        self.client.close()

    @property
    def alive(self) -> bool:
        return self._state == "paired"

    @property
    def status(self) -> str:
        """``paired``, ``down``, ``mismatch`` or ``unknown``, and why (for logs and errors)."""
        return f"{self._state}: {self._reason}" if self._reason else self._state

    def _set(self, state: str, reason: str) -> None:
        with self._lock:
            if state != self._state:
                (log.info if state == "paired" else log.warning)(
                    "vLLM engine at %s: %s%s", self.client.url, state, f" ({reason})" if reason else "")
            self._state, self._reason = state, reason

    def _watch(self) -> None:
        """Poll ``/health``; after vLLM was down (or before the first check) run the pairing check again. Nothing
        ends this loop but ``stop``: an unexpected answer is logged and counts as vLLM being down."""
        while not self._stopping.is_set():
            try:
                if self._state == "paired":
                    self.client.healthy(timeout_s=max(1.0, self.settings.poll_s * 2))
                else:
                    self.verify()
            except EptctlError as err:
                if self._state == "paired":
                    self._set("down", err.message)
            except Exception as err:  # noqa: BLE001 - e.g. a body that is not JSON: the watcher must keep watching
                log.exception("vLLM health check failed")
                self._set("down", f"unexpected answer from the vLLM server ({type(err).__name__})")
            self._stopping.wait(self.settings.poll_s)

    def _ready(self) -> None:
        """Raise ``VllmUnavailable`` (503) unless vLLM is up and paired."""
        if self._state != "paired":
            raise VllmUnavailable(f"the vLLM engine is not ready ({self.status})", hint=RETRY_HINT)

    def _failed(self, err: VllmUnavailable) -> None:
        """A request could not reach vLLM: not ready until the watcher has seen it back and paired again."""
        self._set("down", err.message)

    # --- the Engine interface ------------------------------------------------------------------------------------
    def check(self, servable) -> None:
        """Refuse (``Unsupported``) an adapter this engine cannot serve: labels whose answers are several tokens."""
        answers = self.backbone.encode_answers(servable.spec.verbalizer)
        if answers.answers and not answers.single_token:
            long = [w for w, a in zip(servable.spec.verbalizer, answers.answers) if len(a) > 1]
            raise Unsupported(f"{servable.record.ref}: label answer(s) {', '.join(map(repr, long))} are several "
                              f"tokens long; the vLLM engine scores single-token answers only",
                              hint="serve this adapter with the local engine (eptctl serve without --engine)")

    def encode(self, servable, text: str, text_pair: str | None = None) -> tuple[int, ...]:
        from eptctl.workflows.inference import encode_input

        return tuple(encode_input(self.backbone, servable, text, text_pair).input_ids)

    @property
    def running(self) -> int:
        """Requests of this router in flight to vLLM (predictions and streams)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Always 0: vLLM queues what it cannot run yet itself (its own /metrics shows that queue)."""
        return 0

    def _track(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    async def predict(self, rows: Sequence) -> list[dict]:
        from eptctl.workflows.inference import predict_mixed

        self._ready()
        index_of: dict[str, int] = {}
        servables, flat = [], []
        for servable, text, pair in rows:
            if servable.record.id not in index_of:
                self.check(servable)
                index_of[servable.record.id] = len(servables)
                servables.append(servable)
            flat.append((index_of[servable.record.id], text, pair))
        loop = asyncio.get_running_loop()
        self._track(1)
        try:
            return await loop.run_in_executor(self._pool, predict_mixed, self.backbone, servables, flat, len(flat))
        except VllmUnavailable as err:
            self._failed(err)
            raise
        finally:
            self._track(-1)

    async def prompt_logprobs(self, servable, input_ids: Sequence[int],
                              offset_tokens: int | None = None) -> list[float | None]:
        """One next-token request per position (vLLM cannot name a prompt token it only saw as an embedding):
        position ``t`` sends the row's first ``s + t`` embeddings and asks for ``input_ids[t]``; the offset goes on
        the first ``offset_tokens`` ids (``Engine.prompt_logprobs``). ``ConfigError`` for an empty prompt or one
        longer than the adapter's offset."""
        from eptctl.core.errors import ConfigError

        self._ready()
        if not input_ids:
            raise ConfigError("the prompt has no tokens", hint="send at least one token")
        row = await asyncio.to_thread(self._row, servable, input_ids, offset_tokens)
        s = row.shape[0] - len(input_ids)
        prefixes = [row[: s + t] for t in range(1, len(input_ids))]
        self._track(1)
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.client.next_token_logprobs, prefixes, [[t] for t in input_ids[1:]])
        except VllmUnavailable as err:
            self._failed(err)
            raise
        finally:
            self._track(-1)
        return [None, *(v[0] for v in values)]

    def _row(self, servable, input_ids: Sequence[int], offset_tokens: int | None = None):
        """``[P_r; E(x) + H]`` [s + n, d] of ``input_ids`` under ``servable``, the offset on the first
        ``offset_tokens`` ids (default all; the rest are embedded as written tokens are, without one)."""
        import torch

        from eptctl.backbones.base import Batch, HostRows

        n = len(input_ids)
        k = n if offset_tokens is None else max(0, min(n, offset_tokens))
        ids = torch.tensor([list(input_ids)], dtype=torch.long)
        host = HostRows([n], [0], answer_start=[k], answer_len=[n - k])
        batch = Batch(ids, torch.ones_like(ids), torch.zeros(1, dtype=torch.long), answer_start=torch.tensor([k]),
                      answer_len=torch.tensor([n - k]), host=host)
        return self.backbone.rows([servable.adapter], batch)[0]

    async def stream(self, request: GenerateRequest) -> AsyncIterator[TokenEvent | Finished]:
        """vLLM's streamed completion of the request's row, one ``TokenEvent`` per token."""
        self._ready()
        self.check(request.servable)
        params, soft = request.params, int(request.servable.adapter.prompt.shape[0])
        if params.max_tokens == 0:  # nothing to decode (vLLM refuses max_tokens 0)
            yield Finished("length", "", len(request.input_ids), soft, 0)
            return
        row = await asyncio.to_thread(self._row, request.servable, request.input_ids)
        body = self.client.generation_body(encode_embeds(row), params, params.max_tokens, stream=True,
                                           logprobs=params.logprobs)
        counts = {"tokens": 0, "reason": "length"}
        self._track(1)
        try:
            async with self._async.stream("POST", "/v1/completions", json=body) as response:
                if not response.is_success:
                    await response.aread()
                    checked(response)
                async for line in response.aiter_lines():
                    for event in self._events(line, counts):
                        yield event
        except httpx.HTTPError as err:
            failure = unavailable(self.client.url, err)
            self._failed(failure)
            raise failure from None
        finally:
            self._track(-1)
        yield Finished(counts["reason"], "", len(request.input_ids), soft, counts["tokens"])

    def _events(self, line: str, counts: dict) -> list[TokenEvent]:
        """The token events of one server-sent-events line of vLLM's stream (``data: {...}``)."""
        if not line.startswith("data: ") or line == "data: [DONE]":
            return []
        choices = json.loads(line[len("data: "):]).get("choices") or []
        if not choices:
            return []
        choice = choices[0]
        ids = list(choice.get("token_ids") or [])
        finish = choice.get("finish_reason")
        if finish:
            counts["reason"] = "length" if finish == "length" else "stop"
            if finish == "stop" and ids and ids[-1] == self.client.eos_id:
                ids = ids[:-1]  # the eos that ended the stream is not output
        logprobs = choice.get("logprobs") or {}
        values = logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        events = []
        for k, token in enumerate(ids):
            top = _top_pairs(tops[k]) if k < len(tops) and tops[k] else None
            events.append(TokenEvent(token, choice.get("text", "") if k == len(ids) - 1 else "",
                                     values[k] if k < len(values) else None, top))
        counts["tokens"] += len(ids)
        return events


def _top_pairs(top: dict) -> tuple[tuple[int, float], ...]:
    """vLLM's ``{"token_id:N": logprob}`` as ``((N, logprob), ...)``, best first."""
    pairs = [(int(k.split(":", 1)[1]), float(v)) for k, v in top.items() if k.startswith("token_id:")]
    return tuple(sorted(pairs, key=lambda p: -p[1]))


def build_vllm_engine(config, servables) -> tuple[EmbeddingBackbone, VllmEngine]:
    """The embedding-only backbone and engine for ``eptctl serve --engine vllm`` (``config``: a ``ServeConfig``):
    the backbone is ``config.model``, else the preloaded adapters' (``servables``), else eptctl's default model.
    vLLM is checked now when it answers (a mismatch stops the start); when it does not, the router starts unready
    and pairs once vLLM is up. Raises ``EptctlError`` for an encoder or seq2seq backbone, adapters of another
    backbone, an adapter this engine cannot serve, or a mismatched vLLM server."""
    import torch

    from eptctl import backbones
    from eptctl.serving.engines.embedding import load_embedding_backbone
    from eptctl.workflows.inference import check_backbone

    # The router's tensor work is tiny (an embedding lookup and a sum per row) and runs in many request threads at
    # once: one intra-op thread each, rather than every thread's OpenMP pool spinning on the cores vLLM (or the
    # next router) needs.
    torch.set_num_threads(1)
    names = {s.record.backbone.name for s in servables}
    if config.model is None and len(names) > 1:
        raise EptctlError(f"adapters come from different backbones: {', '.join(sorted(names))}",
                          hint="one router serves one backbone; start one per backbone")
    backbone = load_embedding_backbone(config.model or (names.pop() if names else backbones.DEFAULT_MODEL))
    engine = VllmEngine(backbone, VllmSettings(config.engine_url, config.engine_model, config.engine_timeout_s))
    for servable in servables:
        check_backbone(servable.record, backbone)
        engine.check(servable)
    try:
        engine.verify()
    except VllmUnavailable as err:
        log.warning("%s; the router starts unready and pairs when vLLM answers", err.message)
    return backbone, engine
