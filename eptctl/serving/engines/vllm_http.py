"""vLLM's OpenAI-compatible server as eptctl's remote LM, over HTTP (httpx); eptctl never imports vllm.

Every row goes as one ``POST /v1/completions`` with ``prompt_embeds``: the row's ``[n, d]`` fp32 embeddings
``torch.save``d and base64-encoded (vLLM casts them to its own ``--dtype``). vLLM batches concurrent requests
itself (continuous batching), so rows are sent concurrently, one thread each from a bounded pool.

- Decoding: ``ignore_eos`` with ``stop_token_ids = [tokenizer eos]``, so vLLM stops where eptctl's own decoding
  stops (the tokenizer's eos only, not every eos id a ``generation_config.json`` may list); token ids come back with
  ``return_token_ids``.
- Label scores: ``max_tokens: 1`` with ``logprobs`` and ``logprob_token_ids`` = the labels' answer tokens gives every
  label's log-probability in one request per row. vLLM reports raw log-probabilities (log-softmax of the logits
  before any processor), which is what eptctl's ``CausalBackbone._next_token_scores`` computes.

Errors: a connection that fails or times out, or a 5xx, raises ``VllmUnavailable`` (HTTP 503 with Retry-After);
vLLM's 4xx (a row longer than ``--max-model-len``, an unknown model) raises ``VllmRefused`` with vLLM's message.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from eptctl.serving.batcher import QueueFull
from eptctl.serving.engine import EngineUnavailable, Unsupported

RETRY_HINT = "retry in a moment; check that the vLLM server is running (eptctl engine vllm prepare prints its command)"


class VllmUnavailable(EngineUnavailable, QueueFull):
    """vLLM did not answer (down, restarting, timed out) or failed (5xx): HTTP 503 with Retry-After. Also a
    ``QueueFull``, so routes that map only the batcher's overload to 503 answer it the same way."""


class VllmRefused(Unsupported):
    """vLLM refused the request (4xx): its message, one line (HTTP 400)."""


def encode_embeds(row: torch.Tensor) -> str:
    """``row`` [n, d] as vLLM's ``prompt_embeds``: a ``torch.save``d tensor, base64 (vLLM loads it with
    ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(row.detach().to("cpu", torch.float32).contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VllmClient:
    """Requests to one vLLM server (``url``) serving ``model``; ``eos_id`` is the tokenizer's eos. ``timeout_s``
    bounds every request (connect: ``connect_s``); at most ``concurrency`` requests are in flight."""

    def __init__(self, url: str, model: str, eos_id: int, timeout_s: float = 120.0, concurrency: int = 64,
                 connect_s: float = 2.0):
        self.url, self.model, self.eos_id = url.rstrip("/"), model, eos_id
        self.timeout = httpx.Timeout(timeout_s, connect=connect_s)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout, limits=limits)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="eptctl-vllm")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # --- the RemoteLM interface -----------------------------------------------------------------------------------
    def generate_rows(self, rows: Sequence[torch.Tensor], options, limits: Sequence[int]) -> list[list[int]]:
        """Generated ids per row (eos excluded; a stop string's tokens kept, eptctl cuts the text), decoded by vLLM
        with ``options`` (``decoding.GenerationOptions``): greedy at temperature 0, else vLLM's own sampler seeded
        with ``options.seed``."""
        bodies = [self.generation_body(encode_embeds(row), options, limit) for row, limit in zip(rows, limits)]
        answers = list(self._pool.map(self._completion_or_none, bodies))
        return [self.generated_ids(a) if a is not None else [] for a in answers]

    def next_token_logprobs(self, rows: Sequence[torch.Tensor], token_ids: Sequence[Sequence[int]]
                            ) -> list[list[float]]:
        """Per row, the raw next-token log-probability of each of its ``token_ids`` (one request per row)."""
        bodies = [self.scoring_body(encode_embeds(row), ids) for row, ids in zip(rows, token_ids)]
        answers = list(self._pool.map(self.completion, bodies))
        return [self.token_logprobs(a, ids) for a, ids in zip(answers, token_ids)]

    # --- request bodies and answers ------------------------------------------------------------------------------
    def generation_body(self, embeds: str, options, max_tokens: int, stream: bool = False, logprobs=None) -> dict:
        """The completion request that decodes like eptctl (see the module docstring)."""
        body = {"model": self.model, "prompt_embeds": embeds, "max_tokens": max_tokens,
                "temperature": float(options.temperature), "top_p": float(options.top_p),
                "ignore_eos": True, "stop_token_ids": [] if options.ignore_eos else [self.eos_id],
                "return_token_ids": True, "skip_special_tokens": True}
        if options.temperature > 0 and options.seed is not None:
            body["seed"] = int(options.seed)
        if getattr(options, "top_k", 0):
            body["top_k"] = int(options.top_k)
        if options.stop:
            body["stop"] = list(options.stop)
        if logprobs is not None:
            body.update(logprobs=int(logprobs), return_tokens_as_token_ids=True)
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def scoring_body(self, embeds: str, token_ids: Sequence[int]) -> dict:
        """One next-token step reporting the raw log-probabilities of ``token_ids``."""
        return {"model": self.model, "prompt_embeds": embeds, "max_tokens": 1, "temperature": 0.0,
                "logprobs": len(token_ids), "logprob_token_ids": list(token_ids), "return_tokens_as_token_ids": True,
                "ignore_eos": True}

    def generated_ids(self, answer: dict) -> list[int]:
        ids = list(answer["choices"][0].get("token_ids") or [])
        if ids and ids[-1] == self.eos_id and answer["choices"][0].get("finish_reason") == "stop":
            ids = ids[:-1]  # the eos that ended the row is not part of the output (eptctl's decode drops it too)
        return ids

    @staticmethod
    def token_logprobs(answer: dict, token_ids: Sequence[int]) -> list[float]:
        """The log-probabilities of ``token_ids`` at the first generated position of ``answer``."""
        logprobs = answer["choices"][0].get("logprobs") or {}
        top = (logprobs.get("top_logprobs") or [None])[0] or {}
        found = {int(k.split(":", 1)[1]) if k.startswith("token_id:") else k: v for k, v in top.items()}
        missing = [t for t in token_ids if t not in found]
        if missing:
            raise VllmRefused(f"vLLM reported no log-probability for token(s) {missing}",
                              hint="this vLLM version may lack logprob_token_ids (vLLM ≥ 0.32 has it)")
        return [float(found[t]) for t in token_ids]

    # --- transport -----------------------------------------------------------------------------------------------
    def _completion_or_none(self, body: dict) -> dict | None:
        return None if body["max_tokens"] < 1 else self.completion(body)

    def completion(self, body: dict) -> dict:
        """``POST /v1/completions`` with ``body``; its JSON answer. Raises ``VllmUnavailable`` or ``VllmRefused``."""
        try:
            response = self._http.post("/v1/completions", json=body)
        except httpx.HTTPError as err:
            raise unavailable(self.url, err) from None
        return checked(response)

    def healthy(self, timeout_s: float = 2.0) -> None:
        """``GET /health`` answers 2xx (its body is empty). Raises ``VllmUnavailable`` otherwise."""
        try:
            response = self._http.get("/health", timeout=timeout_s)
        except httpx.HTTPError as err:
            raise unavailable(self.url, err) from None
        if not response.is_success:
            raise VllmUnavailable(f"the vLLM server at {self.url} is not healthy ({response.status_code})",
                                  hint=RETRY_HINT)

    def get(self, path: str, timeout_s: float = 5.0) -> dict:
        """``GET path`` as JSON. Raises ``VllmUnavailable`` or ``VllmRefused``."""
        try:
            return checked(self._http.get(path, timeout=timeout_s))
        except httpx.HTTPError as err:
            raise unavailable(self.url, err) from None

    def post(self, path: str, body: dict, timeout_s: float = 30.0) -> dict:
        """``POST path`` with ``body`` as JSON. Raises ``VllmUnavailable`` or ``VllmRefused``."""
        try:
            return checked(self._http.post(path, json=body, timeout=timeout_s))
        except httpx.HTTPError as err:
            raise unavailable(self.url, err) from None


def unavailable(url: str, err: Exception) -> VllmUnavailable:
    """The one-line 503 for a transport failure (refused connection, timeout, a connection dropped mid-answer)."""
    kind = "timed out" if isinstance(err, httpx.TimeoutException) else "is unreachable"
    return VllmUnavailable(f"the vLLM server at {url} {kind} ({type(err).__name__})", hint=RETRY_HINT)


def checked(response: httpx.Response) -> dict:
    """The JSON body of a 2xx answer; 5xx raises ``VllmUnavailable``, 4xx ``VllmRefused`` (vLLM's message)."""
    if response.is_success:
        try:
            return response.json()
        except ValueError:  # a 2xx that is not JSON: not a vLLM answer (a proxy page, a server starting up)
            raise VllmUnavailable(f"the server at {response.request.url} answered {response.status_code} without "
                                  "JSON", hint=RETRY_HINT) from None
    message = vllm_message(response.text)
    if response.status_code >= 500:
        raise VllmUnavailable(f"the vLLM server failed ({response.status_code}): {message}", hint=RETRY_HINT)
    raise VllmRefused(f"vLLM refused the request ({response.status_code}): {message}",
                      hint="see the vLLM server's flags (--max-model-len, --served-model-name)")


def vllm_message(text: str) -> str:
    """vLLM's error message from an error body (``{"error": {"message": ...}}`` or ``{"message": ...}``), one line."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip().splitlines()[0][:300] if text.strip() else "no message"
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error) if isinstance(error, dict) else error
    return " ".join(str(message).split())[:300]
