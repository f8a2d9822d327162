"""Transfer across tasks on tiny random backbones: fused init, auto selection, lineage, similarity, continual."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from eptctl.cli.app import app
from eptctl.core.errors import EptctlError
from eptctl.workflows.transfer import fuse_states, normalise, parse_sources

TINY = ["--model", "tiny-random-llama", "--steps", "4", "--batch-size", "8", "--max-train", "48", "--max-eval", "16"]


def ok(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


def test_weights_are_normalised_and_a_single_source_is_reproduced_exactly():
    a = {"decomposition.prompt": torch.randn(3, 4), "head.weight": torch.randn(2, 4)}
    b = {"decomposition.prompt": torch.randn(3, 4), "head.weight": torch.randn(5, 4)}
    assert normalise([2, 6]) == [0.25, 0.75]
    fused = fuse_states([a, b], [2, 6])
    assert torch.allclose(fused["decomposition.prompt"], 0.25 * a["decomposition.prompt"] + 0.75 * b["decomposition.prompt"])
    assert "head.weight" not in fused  # heads belong to their own task's labels
    assert torch.equal(fuse_states([a], [1.0])["decomposition.prompt"], a["decomposition.prompt"])
    with pytest.raises(EptctlError, match="shape"):
        fuse_states([a, {"decomposition.prompt": torch.randn(2, 4)}], [1, 1])
    with pytest.raises(EptctlError):
        normalise([0, 0])


def test_parse_sources():
    sources = parse_sources("rt-polarity@1:0.7, rt-subjectivity@latest:0.3,abc123")
    assert [(s.ref, s.weight) for s in sources] == [("rt-polarity@1", 0.7), ("rt-subjectivity@latest", 0.3), ("abc123", 1.0)]
    with pytest.raises(EptctlError, match="weight"):
        parse_sources("rt-polarity@1:lots")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import os

    os.environ["EPTCTL_HOME"] = str(tmp_path_factory.mktemp("transfer-home"))
    a = json.loads(ok("train", "rt-polarity", *TINY, "--json").stdout)
    b = json.loads(ok("train", "rt-subjectivity", *TINY, "--json").stdout)
    return a, b


def test_fused_init_stores_weighted_lineage_and_starts_from_the_combination(sources):
    from eptctl import backbones
    from eptctl.methods import EPTConfig
    from eptctl.engine.loop import new_adapter
    from eptctl.workflows.transfer import Source, best_state, fused_init
    from registry import Registry

    reg = Registry()
    backbone = backbones.load("tiny-random-llama")
    template = new_adapter(backbone, EPTConfig(), 5, seed=0)
    fused, parents = fused_init(reg, [Source("rt-polarity@1", 3), Source("rt-subjectivity@1", 1)], backbone, template)
    pa, pb = best_state(reg, reg.resolve("rt-polarity@1")), best_state(reg, reg.resolve("rt-subjectivity@1"))
    for key in fused:
        assert torch.allclose(fused[key], 0.75 * pa[key] + 0.25 * pb[key])
    assert [p.weight for p in parents] == [0.75, 0.25]

    child = json.loads(ok("train", "bbc-topic", *TINY, "--init-from", "rt-polarity@1:3,rt-subjectivity@1:1",
                          "--json").stdout)
    shown = json.loads(ok("show", child["ref"], "--json").stdout)
    assert [(p["ref"], p["weight"], p["how"]) for p in shown["lineage"]["parents"]] == [
        ("rt-polarity@1", 0.75, "init-weighted"), ("rt-subjectivity@1", 0.25, "init-weighted")]
    tree = json.loads(ok("lineage", child["ref"], "--json").stdout)
    assert {p["ref"] for p in tree["parents"]} == {"rt-polarity@1", "rt-subjectivity@1"}
    assert "rt-polarity@1" in ok("lineage", child["ref"]).stdout
    assert child["ref"] in [c["ref"] for c in json.loads(ok("lineage", "rt-polarity@1", "--json").stdout)["children"]]


def test_auto_selection_picks_top_k_compatible_sources(sources):
    child = json.loads(ok("train", "bbc-topic", *TINY, "--init-from", "auto", "--top-k", "1", "--probe", "8",
                          "--json").stdout)
    parents = json.loads(ok("show", child["ref"], "--json").stdout)["lineage"]["parents"]
    assert len(parents) == 1 and parents[0]["weight"] == 1.0
    assert parents[0]["ref"].split("@")[0] in ("rt-polarity", "rt-subjectivity")


def test_auto_ranks_sources_that_answer_with_the_targets_words_first(sources):
    """tweet-sentiment answers negative/neutral/positive: rt-polarity (negative/positive) shares two of the three
    words, rt-subjectivity none; auto picks the one source (default --top-k 1) that shares the most."""
    probed = json.loads(ok("similar", "tweet-sentiment", "--probe", "8", "--model", "tiny-random-llama",
                           "--json").stdout)["by_probe"]
    shared = {r["ref"]: r["shared_answers"] for r in probed}
    assert shared["rt-polarity@1"] == pytest.approx(2 / 3, abs=1e-4) and shared["rt-subjectivity@1"] == 0.0
    assert probed[0]["ref"] == "rt-polarity@1"
    assert [r["shared_answers"] for r in probed] == sorted(shared.values(), reverse=True)
    child = json.loads(ok("train", "tweet-sentiment", *TINY, "--init-from", "auto", "--probe", "8",
                          "--json").stdout)
    parents = json.loads(ok("show", child["ref"], "--json").stdout)["lineage"]["parents"]
    assert [(p["ref"], p["weight"]) for p in parents] == [("rt-polarity@1", 1.0)]


def test_shared_answers_is_the_fraction_of_the_targets_answer_words():
    from eptctl.data import TaskSpec
    from eptctl.workflows.transfer import shared_answers

    def spec(*answers, task_type="classification"):
        labels = tuple(f"l{i}" for i in range(len(answers)))
        return TaskSpec(name="t", description="", labels=labels, verbalizer=answers, template="{text}",
                        task_type=task_type)

    assert shared_answers(spec("Negative", "positive"), spec("negative", "neutral", "positive")) == 2 / 3
    assert shared_answers(spec("yes", "no"), spec("no", "yes")) == 1.0
    assert shared_answers(spec("yes", "no"), spec("objective", "subjective")) == 0.0


def test_incompatible_sources_are_refused_with_reasons(sources):
    bert = json.loads(ok("train", "rt-polarity", *TINY, "--model", "tiny-random-bert", "--json").stdout)
    for extra, needle in ((["--init-from", f"rt-polarity@1,{bert['ref']}"], "tiny-random-bert"),
                          (["--init-from", "rt-polarity@1", "--short-length", "5"], "shape")):
        result = CliRunner().invoke(app, ["train", "bbc-topic", *TINY, *extra])
        assert result.exit_code == 2 and needle in result.stderr and "incompatible" in result.stderr, result.stderr


def test_similar_ranks_by_cosine_and_probe(sources):
    ranked = json.loads(ok("similar", "rt-polarity@1", "--json").stdout)
    assert ranked["by_cosine"] and all(-1 <= r["cosine"] <= 1 for r in ranked["by_cosine"])
    assert "rt-polarity@1" not in [r["ref"] for r in ranked["by_cosine"]]
    probed = json.loads(ok("similar", "rt-polarity@1", "--probe", "8", "--json").stdout)
    assert all(0 <= r["probe_accuracy"] <= 1 for r in probed["by_probe"])


def test_continual_run_has_no_forgetting_and_reports_forward_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path))
    report = json.loads(ok("continual", "rt-polarity", "rt-subjectivity", "--model", "tiny-random-llama", "--steps",
                           "3", "--batch-size", "8", "--max-train", "32", "--max-eval", "16", "--json").stdout)
    assert report["max_forgetting"] < 1e-9 and report["reeval_vs_stored_max_diff"] < 1e-9
    assert report["matrix"]["rt-polarity"][0] == report["matrix"]["rt-polarity"][1]
    assert report["matrix"]["rt-subjectivity"][0] is None
    assert set(report["forward_transfer"]) == {"rt-subjectivity"}
    second = report["adapters"][1]
    assert len(second["parents"]) == 1


def test_attention_mode_learns_a_mixture_over_frozen_source_prompts(sources):
    child = json.loads(ok("train", "bbc-topic", *TINY, "--init-from", "rt-polarity@1,rt-subjectivity@1",
                          "--transfer-mode", "attention", "--json").stdout)
    assert child["params_by_group"]["transfer"] == 32 * 16 + 1
    shown = json.loads(ok("show", child["ref"], "--json").stdout)
    parents = shown["lineage"]["parents"]
    assert [p["how"] for p in parents] == ["attention", "attention"]
    assert sum(p["weight"] for p in parents) == pytest.approx(1.0, abs=1e-6)
    assert shown["source_weights"] == pytest.approx([p["weight"] for p in parents])
    # the sources are frozen buffers of the new adapter: its training state carries them unchanged
    from registry import Registry

    reg = Registry()
    state, _ = reg.load_training_state(reg.resolve(child["ref"]))
    src, _ = reg.load_servable(reg.resolve("rt-polarity@1"))
    assert torch.equal(state["best.mixture.sources"][0], src["prompt"])
    assert json.loads(ok("predict", child["ref"], "a text").stdout)["label"]


@pytest.mark.parametrize("components, expected", [
    ("prompt", {"decomposition.prompt"}),
    ("prompt+low-rank", {"decomposition.prompt", "decomposition.lora_a", "decomposition.lora_b"}),
])
def test_transfer_components_limit_what_a_fused_start_takes(sources, components, expected):
    from eptctl import backbones, data
    from eptctl.methods import EPTConfig
    from eptctl.workflows.transfer import Source, TransferOptions, best_state, prepare_transfer
    from registry import Registry

    reg = Registry()
    backbone = backbones.load("tiny-random-llama")
    spec = data.builtin_task("bbc-topic")
    start = prepare_transfer(reg, TransferOptions([Source(sources[0]["ref"])], components=components), backbone,
                             EPTConfig().resolved(backbone.width), spec, [], seed=0)
    assert set(start.init_tensors) == expected
    source = best_state(reg, reg.resolve(sources[0]["ref"]))
    assert all(torch.equal(start.init_tensors[k], source[k]) for k in expected)
    with pytest.raises(EptctlError, match="--transfer-components"):
        TransferOptions([Source("x")], components="head")


def test_auto_considers_each_task_once_through_its_best_adapter(tmp_path, monkeypatch):
    """A quick try stored beside a task's real adapter must not compete with it as an auto source: each task is
    represented by the adapter TASK@best names, whatever order the registry lists them in."""
    from eptctl.workflows.transfer import best_per_task
    from registry import Registry

    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path))
    ok("train", "rt-polarity", *TINY)
    ok("train", "rt-polarity", *TINY, "--seed", "1", "--lr-prompt", "0.5")
    ok("train", "rt-subjectivity", *TINY)
    reg = Registry()
    records = reg.list_adapters()
    polarity = [r for r in records if r.task == "rt-polarity"]
    assert len(polarity) == 2
    best = reg.resolve("rt-polarity@best").id
    for order in (records, list(reversed(records))):
        chosen = best_per_task(reg, order)
        assert sorted(r.task for r in chosen) == ["rt-polarity", "rt-subjectivity"]
        assert next(r.id for r in chosen if r.task == "rt-polarity") == best
