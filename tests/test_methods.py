"""The EPT family on tiny random backbones: shapes, counts, init identity, gradients, materialization, learning."""

from __future__ import annotations


import pytest
import torch

from eptctl import backbones
from eptctl.backbones.base import Batch
from eptctl.backbones.prompted import PromptedModel
from eptctl.core.errors import ConfigError
from eptctl.methods import EPTConfig, choose_short_and_rank, count_parameters
from eptctl.engine.config import TrainConfig
from eptctl.engine.loop import fit as train, new_adapter
from eptctl.engine.scoring import evaluate_encoded as evaluate
from device_support import on_cuda
from tests.tiny_task import encoded_task

FAMILY_MODELS = ["tiny-random-llama", "tiny-random-t5", "tiny-random-bert"]


@pytest.fixture(scope="module", params=FAMILY_MODELS)
def backbone(request):
    return backbones.load(request.param, device="cpu")


def make(backbone, **overrides):
    cfg = EPTConfig(**{"prompt_length": 10, "max_length": 32, **overrides})
    return new_adapter(backbone, cfg, num_labels=2, seed=0)


# --- shapes and budget --------------------------------------------------------------------------------------------
def test_budget_rule_reproduces_dept_t5_base():
    assert choose_short_and_rank(768, 256, 100) == (60, 30)


def test_budget_rule_for_smollm2_and_explicit_values():
    s, r = choose_short_and_rank(576, 256, 100)
    assert s == 60 and abs(s * 576 + 256 * r + r * 576 - 100 * 576) <= (256 + 576) / 2
    assert choose_short_and_rank(576, 256, 20, short_length=10) == (10, 7)
    assert choose_short_and_rank(576, 256, 20, rank=4) == (14, 4)


@pytest.mark.parametrize("overrides, expected", [
    (dict(method="pt"), {"prompt": 10 * 32, "low_rank": 0, "fusion": 0, "projection": 0, "gate": 0}),
    (dict(method="dept", short_length=6, rank=2), {"prompt": 6 * 32, "low_rank": 32 * 2 + 2 * 32, "fusion": 0}),
    (dict(method="ept", short_length=6, rank=2, fusion_dim=8, spaces=3, space_rank=2),
     {"prompt": 192, "low_rank": 128, "fusion": 4 * 32 * 8, "projection": 3 * 2 * 32 * 2, "gate": 32 * 3 + 3}),
    (dict(method="ept", short_length=6, rank=2, fusion=False), {"fusion": 0, "projection": 3 * 1 * 32 * 2, "gate": 3 * 32 + 3}),
    (dict(method="ept", short_length=6, rank=2, projection=False), {"fusion": 4 * 32 * 2, "projection": 0, "gate": 0}),
    (dict(method="ept", short_length=6, rank=2, fusion_dim=0, spaces=2), {"fusion": 1, "projection": 2 * 2 * 32 * 1, "gate": 66}),
])
def test_parameter_counts_match_formula(overrides, expected):
    backbone = backbones.load("tiny-random-llama")
    adapter = make(backbone, **overrides)
    counts = adapter.params_by_group()
    assert counts == count_parameters(adapter.cfg, 32)
    for group, value in expected.items():
        assert counts[group] == value, group
    assert counts["total"] == sum(p.numel() for p in adapter.parameters())


@pytest.mark.parametrize("width", [384, 576, 768, 2048])
def test_default_fusion_and_projection_stay_within_half_the_budget(width):
    from eptctl.methods.budget import extras_within_budget

    extras, half, ok = extras_within_budget(EPTConfig().resolved(width), width)
    assert ok and 0 < extras <= half


def test_encoder_head_is_counted(backbone):
    adapter = make(backbone)
    assert (adapter.params_by_group()["head"] > 0) == (backbone.family == "encoder")
    assert adapter.params_by_group() == adapter.expected_params()


def test_shapes_of_forward():
    backbone = backbones.load("tiny-random-llama")
    adapter = make(backbone, short_length=6, rank=2, spaces=3)
    prompt, offset, gate = adapter()
    assert prompt.shape == (6, 32) and offset.shape == (32, 32) and gate.shape == (3,)
    assert float(gate.detach().sum()) == pytest.approx(1.0, abs=1e-6)  # a Python float: the gate may be on a GPU


@pytest.mark.parametrize("overrides, flag", [
    (dict(method="lora"), "--method"), (dict(short_length=0), "--short-length"), (dict(rank=-1), "--rank"),
    (dict(short_length=12), "--short-length"), (dict(fusion_dim=6, fusion_heads=4), "--fusion-dim"),
    (dict(alpha=0.0), "--alpha"), (dict(prompt_init="text"), "--init-text"), (dict(spaces=-2), "--spaces"),
])
def test_invalid_config_names_the_option(overrides, flag):
    with pytest.raises(ConfigError) as info:
        EPTConfig(**{"prompt_length": 10, **overrides})
    assert flag in info.value.message and info.value.hint


def test_config_json_round_trip_ignores_unknown_keys():
    cfg = EPTConfig(method="dept", prompt_length=30, short_length=12)
    data = {**cfg.to_dict(), "from_the_future": 1}
    assert EPTConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError):
        EPTConfig.from_dict({**cfg.to_dict(), "schema_version": 99})


# --- init identity, gradients ---------------------------------------------------------------------------------------
def test_identity_at_init(backbone):
    adapter = make(backbone)
    prompt, offset, _ = adapter()
    assert torch.equal(prompt, adapter.decomposition.prompt)  # P_r = P_f = P_s exactly
    assert torch.count_nonzero(offset) == 0
    encoded, answers = encoded_task(backbone, n=4)
    batch = backbone.collate(encoded, answers, train=False).to(backbone.device)
    embeds = PromptedModel(backbone, [adapter])(batch).inputs_embeds
    plain = backbone.model.get_input_embeddings()(batch.input_ids)
    s = prompt.shape[0]
    assert torch.equal(embeds[:, :s], prompt.expand(len(encoded), -1, -1))
    assert torch.equal(embeds[:, s:], plain)


def test_gradient_reaches_every_component():
    backbone = backbones.load("tiny-random-llama")
    adapter = make(backbone, short_length=6, rank=2)
    encoded, answers = encoded_task(backbone, n=16)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    for step in range(4):
        batch = backbone.collate(encoded, answers, train=True).to(backbone.device)
        optimizer.zero_grad()
        backbone.loss(adapter, batch, answers).backward()
        if step == 0:
            assert all(p.grad is not None for p in adapter.parameters())
        optimizer.step()
    zero = [n for n, p in adapter.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not zero, f"no gradient after a few steps: {zero}"


def test_only_adapter_parameters_get_gradients_and_backbone_is_unchanged(backbone):
    before = backbone.backbone_state_hash()
    encoded, answers = encoded_task(backbone, n=16)
    cfg = EPTConfig(prompt_length=10, max_length=32)
    result = train(backbone, encoded, encoded[:8], answers, cfg, TrainConfig(steps=5, batch_size=8),
                   num_labels=2)
    assert all(p.grad is None for p in backbone.model.parameters())
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert backbone.backbone_state_hash() == before
    assert result.steps == 5


# --- materialization --------------------------------------------------------------------------------------------
_TRAINED: dict = {}


def _trained(backbone, steps=10, **overrides):
    """Briefly trained adapters (so B != 0 and the gate moved), cached across tests to keep the suite fast."""
    key = (backbone.name, steps, tuple(sorted(overrides.items())))
    if key not in _TRAINED:
        _TRAINED[key] = _train_briefly(backbone, steps, **overrides)
    return _TRAINED[key]


def _train_briefly(backbone, steps, **overrides):
    encoded, answers = encoded_task(backbone, n=32)
    cfg = EPTConfig(**{"prompt_length": 10, "max_length": 32, **overrides})
    result = train(backbone, encoded, encoded[:8], answers, cfg, TrainConfig(steps=steps, batch_size=8,
                   lr_prompt=0.05, lr_low_rank=0.02, lr_fusion=0.02), num_labels=2)
    return result.adapter, encoded, answers


@pytest.mark.parametrize("method", ["pt", "dept", "ept"])
def test_materialized_equals_training_forward(backbone, method):
    adapter, encoded, answers = _trained(backbone, method=method)
    if method != "pt":
        assert torch.count_nonzero(adapter.decomposition.lora_b) > 0  # the offset is really in play
    materialized = adapter.materialize()
    batch = backbone.collate(encoded, answers, train=False).to(backbone.device)
    with torch.no_grad():
        live = backbone.score([adapter], batch, [answers])
        served = backbone.score([materialized], batch, [answers])
    diff = max(float((a - b).abs().max()) for a, b in zip(live, served))
    assert diff <= 1e-5


def test_mixed_task_batch_matches_single_task_scores(backbone):
    first, encoded, answers = _trained(backbone, method="ept")
    second, _, _ = _trained(backbone, method="dept", short_length=4, rank=3)
    sources = [first.materialize(), second.materialize()]
    index = [i % 2 for i in range(len(encoded))]
    mixed = backbone.collate(encoded, answers, train=False, adapter_index=index).to(backbone.device)
    scores = backbone.score(sources, mixed, [answers, answers])
    for adapter_id in (0, 1):
        rows = [i for i in range(len(encoded)) if index[i] == adapter_id]
        single = backbone.collate([encoded[i] for i in rows], answers, train=False).to(backbone.device)
        alone = backbone.score([sources[adapter_id]], single, [answers])
        for k, row in enumerate(rows):
            assert torch.allclose(scores[row], alone[k], atol=1e-4 if on_cuda() else 1e-5)  # CUDA: other kernels by shape


def test_offset_uses_position_within_own_text_for_any_padding():
    backbone = backbones.load("tiny-random-llama")
    adapter, encoded, answers = _trained(backbone, method="dept", short_length=4, rank=3)
    prompted = PromptedModel(backbone, [adapter])
    right = backbone.collate(encoded[:4], answers, train=False).to(backbone.device)
    left_ids = torch.full_like(right.input_ids, backbone.tokenizer.pad_token_id)
    left_mask = torch.zeros_like(right.attention_mask)
    for i in range(4):
        n = int(right.attention_mask[i].sum())
        left_ids[i, -n:], left_mask[i, -n:] = right.input_ids[i, :n], 1
    with torch.no_grad():
        a = prompted(right).text
        b = prompted(Batch(left_ids, left_mask, right.labels)).text
    for i in range(4):
        n = int(right.attention_mask[i].sum())
        assert torch.allclose(a[i, :n], b[i, -n:])
        assert torch.equal(b[i, :-n], backbone.model.get_input_embeddings()(left_ids[i, :-n]).float())


def test_long_inputs_are_truncated_to_max_length_and_counted():
    backbone = backbones.load("tiny-random-llama")
    answers = backbone.encode_answers(("no", "yes"))
    encoded = backbone.encode(["x" * 100 + " =", "ab ="], [0, 1], answers, max_length=20)
    assert encoded[0].truncated and not encoded[1].truncated
    assert len(encoded[0].input_ids) + len(answers.answers[0]) <= 20
    assert encoded[0].input_ids[-2:] == backbone.tokenizer(" =", add_special_tokens=False)["input_ids"]


def test_batches_are_padded_to_their_longest_row_not_max_length():
    backbone = backbones.load("tiny-random-llama")
    encoded, answers = encoded_task(backbone, n=8, max_length=256)
    batch = backbone.collate(encoded, answers, train=True)
    longest = max(len(e.input_ids) + len(answers.answers[e.label]) for e in encoded)
    assert batch.input_ids.shape[1] == longest < 256


# --- learning ---------------------------------------------------------------------------------------------------
def test_ept_learns_a_synthetic_task_on_every_family(backbone):
    encoded, answers = encoded_task(backbone, n=64)
    cfg = EPTConfig(prompt_length=10, max_length=32)
    # A random tiny decoder cannot learn the answer continuations, which then swamp the LM loss: train the
    # seq2seq model on the label-scoring objective instead (the same rule it is evaluated with).
    objective = "classify" if backbone.family == "seq2seq" else "lm"
    tc = TrainConfig(steps=150, batch_size=16, lr_prompt=0.05, lr_low_rank=0.02, lr_fusion=0.01, lr_head=0.05,
                     eval_every=25, objective=objective)
    result = train(backbone, encoded, encoded, answers, cfg, tc, num_labels=2)
    assert evaluate(backbone, result.adapter, encoded, answers)["accuracy"] >= 0.95
