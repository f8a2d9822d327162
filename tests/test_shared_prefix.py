"""The shared prompt prefix (causal family) computes the same loss, gradients and label scores as running every row
in full, on the tiny Llama in fp32, and falls back to the full layout where it cannot apply; and every family's loss,
scoring and generation run the one forward pass (``PromptedModel.forward``)."""

from __future__ import annotations

import pytest
import torch

from eptctl import backbones
from eptctl.backbones.decoding import GenerationOptions
from eptctl.backbones.prompted import PromptedModel
from eptctl.engine.loop import new_adapter
from eptctl.methods import EPTAdapter, EPTConfig
from tests.tiny_task import encoded_task


@pytest.fixture(scope="module")
def llama():
    return backbones.load("tiny-random-llama", device="cpu")


def _adapter(backbone):
    adapter = new_adapter(backbone, EPTConfig(prompt_length=10, max_length=32), num_labels=2, seed=0)
    with torch.no_grad():  # a trained-looking adapter: non-zero offset and fusion, so every part reaches the loss
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return adapter


def _loss_and_grads(backbone, adapter, batch, answers, shared: bool, objective: str = "lm"):
    backbone.share_prompt_prefix = shared
    try:
        adapter.zero_grad(set_to_none=True)
        loss = backbone.loss(adapter, batch, answers, objective)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}
    finally:
        backbone.share_prompt_prefix = True


@pytest.mark.parametrize("objective", ["lm", "classify"])
def test_loss_and_gradients_match_the_full_layout(llama, objective):
    encoded, answers = encoded_task(llama, n=12)
    adapter = _adapter(llama)
    batch = llama.collate(encoded, answers, train=True)
    assert len(set(batch.attention_mask.sum(dim=1).tolist())) > 1  # rows of different lengths: padding is exercised
    full_loss, full_grads = _loss_and_grads(llama, adapter, batch, answers, shared=False, objective=objective)
    loss, grads = _loss_and_grads(llama, adapter, batch, answers, shared=True, objective=objective)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys() and "decomposition.prompt" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _single_token_task(backbone, n):
    encoded, _ = encoded_task(backbone, n=n)
    answers = backbone.encode_answers(["n", "y"])  # " n", " y": one token each on the byte-level tokenizer
    assert answers.single_token
    return encoded, answers


def test_scores_match_the_full_layout(llama):
    encoded, answers = _single_token_task(llama, 12)
    adapter = _adapter(llama).eval()
    batch = llama.collate(encoded, answers, train=False)
    shared = llama.score([adapter], batch, [answers])
    llama.share_prompt_prefix = False
    try:
        full = llama.score([adapter], batch, [answers])
    finally:
        llama.share_prompt_prefix = True
    torch.testing.assert_close(torch.stack(shared), torch.stack(full), rtol=1e-5, atol=1e-5)


def test_the_shared_path_runs_the_prompt_once(llama):
    """One backbone call on the prompt alone (a batch of one, s positions), one on the text rows: the prompt rows are
    not repeated per row."""
    encoded, answers = _single_token_task(llama, 8)
    adapter = _adapter(llama).eval()
    batch = llama.collate(encoded, answers, train=False)
    shapes = []
    hook = llama.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        llama.score([adapter], batch, [answers])
    finally:
        hook.remove()
    rows = adapter().prompt.shape[0]  # EPT's short prompt: s of the 10-token budget
    assert shapes == [(1, rows), (8, batch.input_ids.shape[1])]


# --- the one forward pass -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-t5", "tiny-random-bert"])
def test_loss_score_and_generate_each_run_the_one_forward_once(name, monkeypatch):
    """Every family's loss, scoring and generation (encoder: regression values) go through ``PromptedModel.forward``
    exactly once per call, and it runs the adapter's ``forward`` once: nothing else composes prompt and text."""
    backbone = backbones.load(name, device="cpu")
    adapter = _adapter(backbone)
    encoded, answers = encoded_task(backbone, n=6)
    train, batch = backbone.collate(encoded, answers, train=True), backbone.collate(encoded, answers, train=False)
    runs, parts = [], []
    forward, adapter_forward = PromptedModel.forward, EPTAdapter.forward
    monkeypatch.setattr(PromptedModel, "forward", lambda self, b: runs.append(forward(self, b)) or runs[-1])
    monkeypatch.setattr(EPTAdapter, "forward", lambda self: parts.append(adapter_forward(self)) or parts[-1])
    uses = {"loss": lambda: backbone.loss(adapter, train, answers),
            "score": lambda: backbone.score([adapter], batch, [answers])}
    if backbone.can_generate:
        uses["generate"] = lambda: backbone.generate([adapter], batch, GenerationOptions(max_new_tokens=2))
    else:
        uses["predict_values"] = lambda: backbone.predict_values([adapter], batch)
    for use, call in uses.items():
        runs.clear()
        parts.clear()
        call()
        assert (len(runs), len(parts)) == (1, 1), use


def test_scores_are_the_model_run_on_the_forward_outputs(llama):
    """The label scores, shared prefix or not, are the frozen model's next-token log-probabilities on exactly what
    ``PromptedModel.forward`` returns."""
    encoded, answers = _single_token_task(llama, 6)
    adapter = _adapter(llama).eval()
    batch = llama.collate(encoded, answers, train=False)
    with torch.no_grad():
        inputs = PromptedModel(llama, [adapter])(batch)
        logits = llama.model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits
    last = inputs.prompt_len + batch.attention_mask.sum(dim=1) - 1  # each row's last prefix position
    logp = torch.log_softmax(logits[torch.arange(len(batch)), last].float(), dim=-1)
    expected = logp[:, [a[0] for a in answers.answers]]
    shared = torch.stack(llama.score([adapter], batch, [answers]))
    llama.share_prompt_prefix = False
    try:
        full = torch.stack(llama.score([adapter], batch, [answers]))
    finally:
        llama.share_prompt_prefix = True
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)
