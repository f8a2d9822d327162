"""Is the vLLM server running the backbone this router's adapters were trained on?

An adapter is tied to its backbone by the sha256 of the input-embedding table and of the tokenizer (the registry's
backbone fingerprint); the router holds that table and checks every adapter against it (``AdapterCache``). vLLM
reports neither hash, so the router checks vLLM against its own table, in three steps (each refusal one line):

1. name: ``GET /v1/models`` must list the served model name the router asks for (``--engine-model``, default the
   backbone's eptctl name, which ``eptctl engine vllm prepare`` passes as ``--served-model-name``);
2. tokenizer: vLLM's ``POST /tokenize`` of a probe text must give the router's token ids;
3. embedding table: the next-token log-probabilities vLLM computes from those token ids (its own embedding table)
   must equal, within ``TOLERANCE``, those it computes from the router's embeddings of the same ids sent as
   ``prompt_embeds``. Another table (another model, or another width, which vLLM refuses) fails this step.

What it cannot see: a server whose embedding table and tokenizer equal the backbone's but whose transformer layers
differ (a fine-tune that froze its embeddings). eptctl's own fingerprint has the same blind spot.
"""

from __future__ import annotations

from eptctl.core.errors import EptctlError

PROBE_TEXT = "Pairing probe: the quick brown fox jumps over the lazy dog, 1234 times."
TOLERANCE = 0.05  # nats; fp32 gives ~1e-5, bf16 the same (both paths cast one table); another table differs by >1
TOP = 5


class EngineMismatch(EptctlError):
    """The vLLM server does not serve this router's backbone (the reason names which check failed)."""


def check_pairing(client, backbone) -> None:
    """Raise ``EngineMismatch`` unless the vLLM server behind ``client`` (a ``VllmClient``) serves ``backbone``
    (an ``EmbeddingBackbone``); ``VllmUnavailable`` when it does not answer."""
    from eptctl.serving.engines.vllm_http import VllmRefused

    fix = (f"start vLLM on the folder `eptctl engine vllm prepare --model {backbone.name} DIR` writes, with the "
           f"command it prints")
    served = [m.get("id") for m in client.get("/v1/models").get("data", [])]
    if client.model not in served:
        raise EngineMismatch(f"the vLLM server at {client.url} serves {', '.join(map(str, served)) or 'nothing'}, "
                             f"not '{client.model}'",
                             hint=f"{fix}, or pass --engine-model NAME if it serves the same backbone under NAME")
    ids = backbone.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = client.post("/tokenize", {"model": client.model, "prompt": PROBE_TEXT, "add_special_tokens": False})
    if list(theirs.get("tokens", [])) != list(ids):
        raise EngineMismatch(f"the vLLM server at {client.url} ('{client.model}') tokenizes differently from "
                             f"{backbone.name}", hint=fix)
    from eptctl.serving.engines.vllm_http import encode_embeds

    base = {"model": client.model, "max_tokens": 1, "temperature": 0.0, "logprobs": TOP,
            "return_tokens_as_token_ids": True}
    from_ids = _top(client.completion({**base, "prompt": list(ids)}))
    import torch

    with torch.no_grad():
        embeds = backbone.model.get_input_embeddings()(torch.tensor(ids))
    try:
        from_embeds = _top(client.completion({**base, "prompt_embeds": encode_embeds(embeds)}))
    except VllmRefused as err:  # e.g. vLLM's "hidden_size 576 does not match the model's hidden_size 960"
        raise EngineMismatch(f"the vLLM server at {client.url} refused {backbone.name}'s embeddings: {err.message}",
                             hint=fix) from None
    gap = _gap(from_ids, from_embeds)
    if gap > TOLERANCE:
        raise EngineMismatch(f"the vLLM server at {client.url} ('{client.model}') has another input-embedding table "
                             f"than {backbone.name} (probe log-probabilities differ by {gap:.3g})", hint=fix)


def _top(answer: dict) -> dict[str, float]:
    logprobs = answer["choices"][0].get("logprobs") or {}
    return dict((logprobs.get("top_logprobs") or [{}])[0] or {})


def _gap(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest log-probability difference over the tokens both top lists name; inf when their best tokens
    differ or they share fewer than ``TOP - 1`` tokens (a near tie may swap the last one)."""
    common = set(a) & set(b)
    if not a or not b or max(a, key=a.get) != max(b, key=b.get) or len(common) < min(len(a), len(b)) - 1:
        return float("inf")
    return max(abs(a[k] - b[k]) for k in common)
