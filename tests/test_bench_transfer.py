"""`python -m bench transfer` end to end on a tiny random backbone: cells, resume, the summary's paired gains, the
auto ranking, the plot; and the task-vector start's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.transfer import summarise, task_vector_start


def _bench(tmp_path: Path, capsys, *extra: str) -> tuple[int | str, str, str]:
    """``python -m bench transfer`` on toy sizes, in this process (an interpreter start per run would cost more than
    its cells): (exit code or SystemExit message, stdout, stderr)."""
    from bench.__main__ import main

    command = ["transfer", "--model", "tiny-random-llama",
               "--pairs", "rt-polarity:tweet-sentiment", "--shots", "8,16", "--inits", "random,all,auto,vector",
               "--seeds", "0,1", "--steps", "2", "--test-rows", "12", "--source-steps", "2", "--source-max-eval", "12",
               "--auto-candidates", "rt-polarity,rt-subjectivity", "--home", str(tmp_path / "home"),
               "--cells", str(tmp_path / "cells.json"), "--plot", str(tmp_path / "transfer.png"),
               "--json", str(tmp_path / "out.json"), *extra]
    try:
        code = main(command)
    except SystemExit as exit_:  # the bench's refusals
        code = str(exit_.code)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_transfer_runs_every_cell_once_and_summarises(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))  # the bench sets it; this restores the test's
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    code, stdout, stderr = _bench(tmp_path, capsys)
    assert code == 0, stderr[-2000:]
    assert "training source rt-polarity for 2 steps" in stdout
    out = json.loads((tmp_path / "out.json").read_text())
    cells = out["cells"]
    assert len(cells) == 2 * 4 * 2  # K x inits x seeds
    assert {c["test_rows"] for c in cells} == {12}
    assert all(len(c["losses"]) == 2 for c in cells)
    random_ = [c for c in cells if c["init"] == "random"]
    assert {c["start_offset_norm"] for c in random_} == {0.0}  # a fresh B starts at 0
    # The source's offset moved in training, so a fused start carries it.
    assert all(c["start_offset_norm"] > 0 for c in cells if c["init"] == "all")
    # auto probed both stored candidates of other tasks and recorded what it fused.
    ranking = out["auto_rankings"]["tweet-sentiment"]
    assert {r["task"] for r in ranking} == {"rt-polarity", "rt-subjectivity"}
    assert all(c["auto_picked"] for c in cells if c["init"] == "auto")
    rows = out["rows"]
    assert [(r["K"], r["init"]) for r in rows] == [(k, i) for k in (8, 16) for i in ("random", "all", "auto", "vector")]
    assert all(r["gain_vs_random"].endswith(tuple("0123456789")) for r in rows if r["init"] != "random")
    assert (tmp_path / "transfer.png").stat().st_size > 10_000
    stored = (tmp_path / "cells.json").read_text()
    code, stdout, stderr = _bench(tmp_path, capsys)
    assert code == 0, stderr[-2000:]
    assert "training source" not in stdout and '{"' not in stdout.split("|")[0]  # nothing re-run
    assert (tmp_path / "cells.json").read_text() == stored
    # The other precision refuses this run's cells and sources (they are looked up by name, not precision).
    (precision,) = {c["precision"] for c in cells}
    other = "bf16" if precision == "fp32" else "fp32"
    code, _, _ = _bench(tmp_path, capsys, "--precision", other)
    assert f"holds {precision} cells; this run is {other}" in code
    code, _, _ = _bench(tmp_path, capsys, "--precision", other, "--cells", str(tmp_path / "other.json"))
    assert f"this run is {other}: pass --home" in code
    assert (tmp_path / "cells.json").read_text() == stored and not (tmp_path / "other.json").exists()


def test_summary_gain_is_the_paired_difference_over_seeds():
    def cell(init, seed, acc):
        return {"source": "a", "target": "b", "k": 16, "init": init, "seed": seed, "zero_step": 0.5,
                "test_accuracy": acc, "auto_picked": "", "seconds": 1.0}

    rows = summarise([cell("random", 0, 0.50), cell("random", 1, 0.60), cell("all", 0, 0.56), cell("all", 1, 0.62)])
    fused = next(r for r in rows if r["init"] == "all")
    assert fused["gain_vs_random"] == "+4.0 pt ± 2.8"  # gains 6 and 2 points: mean 4, sd 2.83
    assert fused["test_acc"] == "0.590 ± 0.042"
    # Cells of another precision form their own rows and are never paired with this precision's random init.
    bf16 = [dict(c, precision="bf16") for c in (cell("random", 0, 0.40), cell("all", 0, 0.45))]
    rows = summarise([dict(c, precision="fp32") for c in (cell("random", 0, 0.50), cell("all", 0, 0.56))] + bf16)
    gains = {(r["precision"], r["init"]): r["gain_vs_random"] for r in rows}
    assert gains == {("fp32", "random"): "", ("fp32", "all"): "+6.0 pt",
                     ("bf16", "random"): "", ("bf16", "all"): "+5.0 pt"}


def test_task_vector_start_adds_what_the_source_learned_to_a_fresh_start():
    fresh = {"decomposition.prompt": torch.ones(2, 3), "head.weight": torch.zeros(1)}
    source_init = {"decomposition.prompt": torch.full((2, 3), 2.0)}
    trained = {"decomposition.prompt": torch.full((2, 3), 2.5), "head.weight": torch.ones(1)}
    start = task_vector_start(trained, source_init | {"head.weight": torch.zeros(1)}, fresh)
    assert set(start) == {"decomposition.prompt"}  # heads are never transferred
    assert torch.equal(start["decomposition.prompt"], torch.full((2, 3), 1.5))
    unmoved = task_vector_start(source_init, source_init, fresh)
    assert torch.equal(unmoved["decomposition.prompt"], fresh["decomposition.prompt"])
