"""Adapters registered by eptctl before the layered-house change (a committed registry, made by that code) still
load, evaluate to the same metrics, predict the same scores, and serve as transfer sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from registry import Registry, head_revision, upgrade

LEGACY = Path(__file__).parent / "data" / "legacy-registry"


@pytest.fixture()
def legacy(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    shutil.copytree(LEGACY, tmp_path / "legacy")
    url = f"sqlite:///{tmp_path / 'legacy' / 'registry.db'}"
    assert upgrade(url) == ("0002", head_revision())  # made at schema 0002: `eptctl db upgrade` brings it up
    reg = Registry(url, artifacts=tmp_path / "legacy" / "artifacts")
    yield reg, json.loads((LEGACY / "expected.json").read_text())
    reg.close()


def test_legacy_adapters_evaluate_and_predict_as_before(legacy):
    from eptctl.workflows.evaluation import evaluate_stored
    from eptctl.workflows.inference import backbone_for, load_adapter, predict

    reg, expected = legacy
    texts = [tuple(t) for t in expected["texts"]]
    assert len(expected["adapters"]) == 3  # one per family: causal ept, seq2seq dept, encoder pt
    for adapter_id, want in expected["adapters"].items():
        servable = load_adapter(reg, adapter_id)
        assert servable.record.ref == want["ref"] and servable.config.method == want["method"]
        backbone = backbone_for([servable])
        assert backbone.name == want["model"]
        result = evaluate_stored(reg, adapter_id, data_path=str(LEGACY / "short.csv"), store=False,
                                 backbone=backbone)
        # the same metrics as when it was made; metrics added since (mcc, f1) come on top
        assert {k: result["metrics"][k] for k in want["test"]} == want["test"] and result["truncated"] == 0
        got = predict(backbone, servable, texts)
        for row, old in zip(got, want["predict"]):
            assert not row["truncated"]  # rows that fit: the same tokens as before, so the same scores
            assert row["label"] == old["label"]
            assert row["scores"] == pytest.approx(old["scores"], abs=1e-5)


def test_legacy_adapters_are_transfer_sources(legacy):
    from eptctl import backbones
    from eptctl.engine.loop import new_adapter
    from eptctl.methods import EPTConfig
    from eptctl.workflows.transfer import Source, best_state, fused_init

    reg, expected = legacy
    causal = next(i for i, a in expected["adapters"].items() if a["model"] == "tiny-random-llama")
    record = reg.resolve(causal)
    state = best_state(reg, record)
    backbone = backbones.load("tiny-random-llama")
    template = new_adapter(backbone, EPTConfig.from_dict(record.config), 2, seed=0)
    fused, parents = fused_init(reg, [Source(causal, 1.0)], backbone, template)
    assert [p.parent_id for p in parents] == [causal]
    for key, value in fused.items():
        assert value.equal(state[key])
