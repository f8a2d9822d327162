"""Training loop: exact resume after an interruption, checkpoints, registration of a complete run."""

from __future__ import annotations

import pytest
import torch

from eptctl import backbones
from eptctl.methods import EPTConfig
from eptctl.core.errors import TrainingInterrupted
from eptctl.engine.config import TrainConfig
from eptctl.engine.loop import fit as train, length_bucketed_batches
from eptctl.workflows.train import train_task
from device_support import on_cuda, same
from tests.tiny_task import encoded_task


def _stop_after(n):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


def test_interrupted_then_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path):
    backbone = backbones.load("tiny-random-llama")
    encoded, answers = encoded_task(backbone, n=48)
    cfg = EPTConfig(prompt_length=10, max_length=32)
    tc = TrainConfig(steps=14, batch_size=8, eval_every=5, checkpoint_every=3, seed=3)
    straight = train(backbone, encoded, encoded[:8], answers, cfg, tc, num_labels=2)
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train(backbone, encoded, encoded[:8], answers, cfg, tc, num_labels=2, checkpoint_path=ckpt,
              should_stop=_stop_after(7))
    assert "--resume" in info.value.hint and ckpt.exists()
    resumed = train(backbone, encoded, encoded[:8], answers, cfg, tc, num_labels=2, checkpoint_path=ckpt,
                    resume=True)
    assert resumed.steps == straight.steps == 14 and resumed.best_step == straight.best_step
    for (name, a), (_, b) in zip(straight.adapter.state_dict().items(), resumed.adapter.state_dict().items()):
        assert same(a, b), name  # bit for bit on the CPU; within float rounding on CUDA
    losses = [[h for h in run.history if "loss" in h] for run in (resumed, straight)]
    assert len(losses[0]) == len(losses[1])
    for got, want in zip(*losses):
        assert got == (pytest.approx(want, rel=1e-4) if on_cuda() else want)


def test_train_task_resume_registers_once_and_removes_the_checkpoint(eptctl_home):
    from registry import Registry

    reg = Registry()
    common = dict(registry=reg, model="tiny-random-bert", max_train=48, max_eval=16,
                  method_cfg=EPTConfig(prompt_length=10, max_length=64),
                  train_cfg=TrainConfig(steps=8, batch_size=8, checkpoint_every=2))
    with pytest.raises(TrainingInterrupted):
        train_task("rt-polarity", should_stop=_stop_after(3), **common)
    assert reg.list_adapters() == []  # nothing registered by an interrupted run
    assert len(list((eptctl_home / "runs").glob("*.safetensors"))) == 1
    outcome = train_task("rt-polarity", resume=True, **common)
    assert outcome.record.ref == "rt-polarity@1" and outcome.result.steps == 8
    assert not list((eptctl_home / "runs").glob("*.safetensors"))
    with pytest.raises(Exception) as info:
        train_task("rt-polarity", resume=True, **common)
    assert "no checkpoint" in str(info.value)


def test_registered_run_is_complete(eptctl_home):
    from registry import Registry

    reg = Registry()
    outcome = train_task("rt-polarity", registry=reg, model="tiny-random-llama", max_train=32, max_eval=16,
                              method_cfg=EPTConfig(prompt_length=10, max_length=64),
                              train_cfg=TrainConfig(steps=4, batch_size=8), command_line="eptctl train test")
    rec = reg.resolve("rt-polarity@latest")
    assert rec.id == outcome.record.id
    assert {m.split for m in rec.metrics} >= {"validation", "test"}
    assert rec.run.data_fingerprint and rec.run.package_versions["torch"] and rec.run.command_line == "eptctl train test"
    assert rec.backbone.embedding_sha256 == backbones.load("tiny-random-llama").fingerprint()["embedding_sha256"]
    assert sum(rec.params_by_group.values()) == rec.trainable_params == outcome.result.params_by_group["total"]
    assert len(rec.summary["space_weights"]) == 3
    tensors, meta = reg.load_servable(rec)
    assert set(tensors) == {"prompt", "offset", "gate"} and meta["format"] == "eptctl-servable"
    state, _ = reg.load_training_state(rec)
    assert any(k.startswith("optim.") for k in state)


def test_batches_are_length_bucketed_and_deterministic():
    lengths = [i % 37 for i in range(400)]
    a = length_bucketed_batches(lengths, 16, seed=1, epoch=0)
    assert a == length_bucketed_batches(lengths, 16, seed=1, epoch=0)
    assert a != length_bucketed_batches(lengths, 16, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 5  # random batches would spread over ~30 lengths


def test_grouped_options_accept_a_whole_group_or_its_fields_and_refuse_unknown_keywords():
    from eptctl.engine.config import split_options
    from eptctl.engine.loop import FIT_OPTIONS, FitRun, FitTask
    from eptctl.workflows.train import TRAIN_OPTIONS, DataLimits, RecordInfo

    groups = split_options({"limits": DataLimits(max_train=8), "max_eval": 4, "tags": ["a"]}, TRAIN_OPTIONS, "f")
    assert groups["limits"] == DataLimits(max_train=8, max_eval=4)  # a field next to its group replaces its value
    assert groups["record"] == RecordInfo(tags=("a",))  # a list of tags is kept as a tuple
    assert groups["run"].resume is False and groups["loading"].backbone is None
    fit_groups = split_options({"num_labels": 2, "resume": True, "checkpoint_path": "x"}, FIT_OPTIONS, "fit")
    assert fit_groups["task"] == FitTask(2) and fit_groups["run"] == FitRun(checkpoint_path="x", resume=True)
    with pytest.raises(TypeError, match="train_task\\(\\) got an unexpected keyword argument 'max_trian'"):
        train_task("rt-polarity", registry=None, max_trian=8)
    with pytest.raises(TypeError, match="num_labels"):
        train(None, [], [], None, EPTConfig())


def test_option_groups_validate_on_construction():
    from eptctl.core.errors import ConfigError, EptctlError
    from eptctl.engine.loop import FitRun, FitTask
    from eptctl.workflows.train import DataChoice, DataLimits

    with pytest.raises(ConfigError, match="--max-eval must be at least 1, got 0"):
        DataLimits(max_eval=0)
    with pytest.raises(ValueError, match="checkpoint_path"):
        FitRun(resume=True)
    with pytest.raises(ValueError, match="num_labels"):
        FitTask(-1)
    # The CLI's rules, owned by the library: the same one-line messages and hints as `eptctl train` prints.
    with pytest.raises(EptctlError, match="--task-type must be one of") as info:
        DataChoice("rows.csv", task_type="ranking")
    assert info.value.hint == "e.g. --task-type generation"
    with pytest.raises(EptctlError, match="--template, --hub describe a custom task's data file and need --data"):
        DataChoice(template="{text}", hub=True)
    with pytest.raises(EptctlError, match="--task-type, --metric and --grid define a new task and need --data"):
        DataChoice(metric="f1")
    with pytest.raises(EptctlError, match="--grid applies to regression tasks, not generation"):
        DataChoice("rows.csv", task_type="generation", grid=0.5)
    assert DataChoice().options() is None
    custom = DataChoice("rows.csv", task_type="regression", grid=0.5).options()
    assert (custom.path, custom.label_column, custom.grid) == ("rows.csv", "target", 0.5)
    assert DataChoice("rows.csv").options().label_column == "label"
