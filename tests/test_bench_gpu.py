"""``python -m bench gpu``: the stage plan, and the runner's logs, timeouts and summary on stand-in stages (seconds)."""

from __future__ import annotations

import json
import sys

from bench import gpu


def test_plan_runs_the_most_valuable_stages_first_within_the_budget(tmp_path):
    for quick, budget in ((False, gpu.BUDGET_S), (True, gpu.QUICK_BUDGET_S)):
        stages = gpu.plan(quick, "cuda", tmp_path)
        assert tuple(s.name for s in stages) == gpu.STAGES
        assert sum(s.timeout_s for s in stages) <= budget + 60  # the budget cuts the last stage, never a first one
    full = {s.name: s for s in gpu.plan(False, "cuda", tmp_path)}
    assert full["step-time"].env["BENCH_BACKBONES"] == "t5-base,llama-1b"
    assert full["step-time"].env["BENCH_ROUNDS"] == "10" and full["step-time"].env["BENCH_BATCH"] == "16"
    assert full["generation"].env["BENCH_PRECISION"] == "bf16"
    assert full["serve"].env["BENCH_CONCURRENCY"] == "1,8,32"
    assert full["tests"].env == {"EPTCTL_TEST_DEVICE": "cuda"}
    assert "-rfE" in full["tests"].argv and "not slow" in full["tests"].argv
    quick = {s.name: s for s in gpu.plan(True, "cpu", tmp_path)}
    assert quick["step-time"].env["BENCH_BACKBONES"] == "tiny,tiny-t5"
    assert all(a.startswith("tests/") for a in quick["tests"].argv[-len(gpu.QUICK_TESTS):])


def test_runner_logs_each_stage_folds_its_json_and_names_a_timeout(tmp_path):
    result = tmp_path / "r.json"
    ok = gpu.Stage("ok", [sys.executable, "-c", f"import json; print('hello'); json.dump({{'rows': []}}, "
                                                 f"open({str(result)!r}, 'w'))", str(result)], timeout_s=30, bench=True)
    slow = gpu.Stage("slow", [sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)
    out = tmp_path / "out"
    rows = gpu.run_stages([ok, slow], out, budget_s=60, meta={"device": "cpu"})
    assert [(r["stage"], r["status"]) for r in rows] == [("ok", "ok"), ("slow", "timed out")]
    assert "hello" in (out / "01-ok.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["ok"]["result"] == {"rows": []} and summary["device"] == "cpu"
    assert sorted(p.name for p in out.iterdir()) == ["01-ok.log", "02-slow.log", "summary.json"]


def test_a_spent_budget_skips_the_remaining_stages(tmp_path):
    stage = gpu.Stage("late", [sys.executable, "-c", "pass"], timeout_s=30)
    rows = gpu.run_stages([stage], tmp_path, budget_s=1, meta={})
    assert rows[0]["status"] == "skipped (budget spent)"


def test_ondevice_builds_where_asked_and_leaves_other_tensors_alone():
    import torch

    from bench.ondevice import build_on
    from eptctl.backbones import tiny

    original = tiny.build_random
    try:
        build_on("cpu")
        build_on("cpu")  # idempotent: one wrapper
        assert tiny.build_random.__wrapped__ is original
        model, _, _ = tiny.build_random("tiny-random-llama")
        assert next(model.parameters()).device.type == "cpu"
        assert torch.zeros(1).device.type == "cpu"
    finally:
        tiny.build_random = original
