"""Few-shot runs (`--train-examples K`): the K examples are recorded with the run, and continual runs report the
K-shot forward transfer. Tiny random backbone, a real SQLite registry."""

from __future__ import annotations

import json

from cli_support import ok

from registry import Registry

TINY = ["--model", "tiny-random-llama", "--batch-size", "4", "--max-eval", "8"]


def test_train_examples_are_recorded_and_continual_reports_k_shot_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    trained = json.loads(ok("train", "tweet-sentiment", "--train-examples", "12", "--steps", "2", *TINY,
                            "--json").stdout)
    reg = Registry()
    record = reg.resolve(trained["ref"])
    assert record.summary["train_examples"] == 12 and record.summary["data_sizes"]["train"] == 12
    reg.close()
    result = ok("continual", "rt-polarity", "tweet-sentiment", "--train-examples", "8", "--steps", "2",
                "--batch-size", "4", "--max-eval", "8", "--model", "tiny-random-llama")
    assert "forward transfer tweet-sentiment (8-shot)" in result.stdout
