"""``eptctl train --compile``: accepted, recorded with the run, and applied to the modules the backbone calls.
Nothing is compiled for real here (minutes on the CPU): ``Module.compile`` is lazy until the first call."""

from __future__ import annotations

import json

from cli_support import ok

from eptctl import backbones
from eptctl.engine.config import TrainConfig
from eptctl.workflows import train as train_workflow
from registry import Registry


def test_compile_flag_is_recorded_and_applied_once_to_the_loaded_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    compiled = []
    monkeypatch.setattr(train_workflow, "compile_backbone", compiled.append)
    trained = json.loads(ok("train", "rt-polarity", "--compile", "--model", "tiny-random-llama", "--steps", "1",
                            "--batch-size", "4", "--max-train", "8", "--max-eval", "8", "--json").stdout)
    reg = Registry()
    assert reg.resolve(trained["ref"]).summary["train_config"]["compile"] is True
    reg.close()
    assert [b.name for b in compiled] == ["tiny-random-llama"]
    assert TrainConfig().compile is False


def test_compile_backbone_wraps_the_layer_stack_and_a_seq2seq_encoder_once():
    for name in ("tiny-random-llama", "tiny-random-t5"):
        backbone = backbones.load(name, device="cpu")
        train_workflow.compile_backbone(backbone)
        stack = backbone.model.base_model
        first = stack._compiled_call_impl
        assert first is not None
        if backbone.family == "seq2seq":
            assert backbone.model.get_encoder()._compiled_call_impl is not None
        train_workflow.compile_backbone(backbone)  # a second call keeps the first compilation
        assert stack._compiled_call_impl is first
