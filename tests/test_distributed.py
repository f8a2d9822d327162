"""Data-parallel training: real launchers (torchrun, accelerate launch) start 2 CPU ranks (gloo) on a tiny task, and
the adapter they register must equal a single-process run on the same global batches."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eptctl.engine import distributed

# 7 rows per global batch: 2 ranks get unequal slices (3 and 4 rows), and the two answers differ in token count,
# so the per-rank losses must be weighted by their share of the answer tokens to give the global mean.
TRAIN = ["--model", "tiny-random-llama", "--steps", "4", "--batch-size", "7", "--eval-every", "2",
         "--max-eval", "12", "--json"]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EPTCTL_REGISTRY_URL",
              "EPTCTL_ARTIFACTS")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(60):
        alphabet, label = ("ab", "no") if i % 2 else ("yz", "positive")
        rows.append("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) + f",{label}")
    path = tmp_path_factory.mktemp("dist-data") / "toy.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(EPTCTL_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# --multi_gpu selects accelerate's torchrun launcher; without CUDA eptctl then picks gloo. (--cpu alone would start a
# single process: accelerate runs several CPU processes only through mpirun with a hostfile.)
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def _stored(home: Path, ref: str) -> tuple[dict[str, torch.Tensor], dict]:
    from registry import Registry

    with sqlite3.connect(home / "registry.db") as conn:
        assert conn.execute("select count(*) from adapters").fetchone()[0] == 1  # rank 0 alone registered
    with Registry(f"sqlite:///{home / 'registry.db'}", artifacts=home / "artifacts") as reg:
        tensors, _ = reg.load_servable(ref)
        return tensors, reg.resolve(ref).summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_file):
    """Both launchers started at once (process start-up dominates on a small CPU), and meanwhile the same command in
    this process without a launcher: the reference."""
    homes = {name: tmp_path_factory.mktemp(f"dist-{name}") for name in ("torchrun", "accelerate", "single")}
    args = ["-m", "eptctl", "train", "toy", "--data", str(data_file), *TRAIN]
    procs = {name: subprocess.Popen([*launcher, *args], env=_env(homes[name]), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, launcher in (("torchrun", TORCHRUN), ("accelerate", ACCELERATE))}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in LAUNCH_ENV:
                mp.delenv(key, raising=False)
            mp.setenv("EPTCTL_HOME", str(homes["single"]))
            from typer.testing import CliRunner

            from eptctl.cli.app import app

            result = CliRunner().invoke(app, args[2:])
        outputs = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            outputs[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert result.exit_code == 0, result.output
    outputs["single"] = (0, result.stdout, "")
    return homes, outputs


def _check(runs, name: str) -> Path:
    homes, outputs = runs
    code, out, err = outputs[name]
    assert code == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out  # rank 0 prints; rank 1 stays quiet
    ref_out = json.loads(outputs["single"][1])
    got = json.loads(lines[0])
    assert got["ref"] == "toy@1" and got["best_step"] == ref_out["best_step"]
    assert got["metrics"] == ref_out["metrics"]  # sharded eval, scores gathered: the same metrics
    tensors, summary = _stored(homes[name], "toy@1")
    ref_tensors, ref_summary = _stored(homes["single"], "toy@1")
    assert set(tensors) == set(ref_tensors)
    for key, value in tensors.items():
        torch.testing.assert_close(value, ref_tensors[key], atol=1e-5, rtol=0, msg=key)
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert losses == pytest.approx([h["loss"] for h in ref_summary["history"] if "loss" in h], abs=1e-4)
    return homes[name]


def test_torchrun_two_cpu_ranks_equal_one_process(runs):
    home = _check(runs, "torchrun")
    assert not list((home / "runs").glob("*.safetensors"))  # rank 0's checkpoint is gone after registration


def test_accelerate_launch_two_cpu_ranks_equal_one_process(runs):
    _check(runs, "accelerate")


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(7) == (0, 7) and distributed.all_reduce_sum([1.5, 2]) == [1.5, 2]
    assert distributed.from_rank0(lambda: "x") == "x" and distributed.gather(3) == [3]
    assert not distributed.any_rank(False)
    p = torch.nn.Parameter(torch.ones(2))
    distributed.all_reduce_grads([p])
    assert p.grad is None
    with distributed.main_first():
        pass
