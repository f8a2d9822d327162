"""Every GPU measurement of issue #28 in one script, each stage a subprocess under its own timeout.

    python -m bench gpu [--quick] [--out DIR] [--only step-time,serve] [--budget-s 470] [--list]

Stages, most valuable first (a machine lent for minutes may be taken back before the end):
  step-time   training step time and allocator peak memory: random t5-base and Llama-1B shapes, fixed-256 and
              dynamic padding, batch 16, 10 rounds; eptctl ept s=60, floor s=60, eptctl pt l=100, PEFT pt-100/pt-60;
  scoring     scoring throughput (bench inference) on the same two shapes;
  generation  greedy generation tokens/s, eptctl vs PEFT prompt tuning (bench generation), Llama-1B, bf16;
  serve       ``bench serve`` at concurrency 1/8/32 on the Llama-1B shape (servers built on the GPU, started at once);
  tests       the fast suite on CUDA: ``EPTCTL_TEST_DEVICE=cuda pytest -m "not slow"`` with per-test timeouts.
Every stage runs under ``timeout`` (the whole process group, so a stage's servers go too), its stdout and stderr
to its own log ``DIR/NN-STAGE.log``; a stage's own JSON is folded into ``DIR/summary.json``, rewritten after every
stage, so what finished survives a machine taken back mid-run. At most 7 files in DIR (5 logs, summary.json and
the ``--json`` report when pointed there). Each stage's timeout is cut to what is left of ``--budget-s``.
``--quick`` runs the same stages on this machine's device with the tiny backbones (tiny-random-llama,
tiny-random-t5), short rounds and a few test files: a check, before any GPU minute is spent, that the script runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("step-time", "scoring", "generation", "serve", "tests")
TIMEOUTS = {"step-time": 130, "scoring": 50, "generation": 60, "serve": 120, "tests": 150}
# --quick: ~40 s on an idle 2-core machine; the timeouts leave room for a machine shared with other work.
QUICK_TIMEOUTS = {"step-time": 45, "scoring": 30, "generation": 30, "serve": 50, "tests": 20}
BUDGET_S, QUICK_BUDGET_S = 470, 175  # under 8 minutes on the GPU, under 3 minutes for --quick
STEP_VARIANTS = "eptctl ept s=60,floor s=60,eptctl pt l=100,peft pt-100,peft pt-60"
QUICK_TESTS = ("tests/test_cli_flags.py",)  # a few seconds: proves the stage's pytest command line works


@dataclass
class Stage:
    """One subprocess: ``argv`` with ``env`` added, killed after ``timeout_s``; ``bench`` when it writes a JSON."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60
    bench: bool = False


def parse(argv: list[str]) -> argparse.Namespace:
    """The script's own options (``python -m bench gpu --help``)."""
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default .bench-out/gpu[-quick])")
    parser.add_argument("--only", default=None, help=f"comma list of stages ({','.join(STAGES)})")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for all stages (default {BUDGET_S}, --quick {QUICK_BUDGET_S})")
    parser.add_argument("--list", action="store_true", help="print the planned stages and run nothing")
    return parser.parse_args(argv)


def _bench(stage: str, bench: str, tmp: Path, env: dict[str, str], timeout_s: float) -> Stage:
    # bench.ondevice: with CUDA the random shapes are born on the GPU (seconds, not tens of seconds for 1B)
    argv = [sys.executable, "-m", "bench.ondevice", "bench", bench, "--json", str(tmp / f"{stage}.json")]
    return Stage(stage, argv, env, timeout_s, bench=True)


def test_command(quick: bool) -> list[str]:
    """The tests stage's pytest command line: per-test timeouts only where pytest-timeout is installed, and parallel
    workers (pytest-xdist) on the GPU machine."""
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-rfE", "--tb=short", "-p", "no:benchmark",
            "-p", "no:cacheprovider"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        argv.append("--timeout=60")  # one hung test must not eat the stage (GPU.md)
    if not quick and importlib.util.find_spec("xdist") is not None:
        argv += ["-n", "4"]
    return [*argv, *QUICK_TESTS] if quick else argv


def plan(quick: bool, device: str, tmp: Path) -> list[Stage]:
    """Every stage in order, with its command, environment and timeout; bench JSONs go to ``tmp``."""
    t = QUICK_TIMEOUTS if quick else TIMEOUTS
    shapes = "tiny,tiny-t5" if quick else "t5-base,llama-1b"
    common = {"BENCH_DEVICE": device, "BENCH_BACKBONES": shapes}
    stages = [
        _bench("step-time", "step-time", tmp, {
            **common, "BENCH_ROUNDS": "1" if quick else "10", "BENCH_BATCH": "16", "BENCH_VARIANTS": STEP_VARIANTS,
            "BENCH_MEMORY": "0"}, t["step-time"]),  # on CUDA the allocator's peak is read in the timing process
        _bench("scoring", "inference", tmp, {
            **common, "BENCH_ROUNDS": "1" if quick else "5", "BENCH_ROWS": "16" if quick else "128"}, t["scoring"]),
        _bench("generation", "generation", tmp, {
            "BENCH_BACKBONE": "tiny-random-llama" if quick else "random-llama-1b",
            "BENCH_PRECISION": "bf16" if device == "cuda" else "fp32", "BENCH_ROWS": "16" if quick else "32",
            "BENCH_NEW_TOKENS": "4" if quick else "32", "BENCH_ROUNDS": "1" if quick else "3"}, t["generation"]),
        _bench("serve", "serve", tmp, {
            "BENCH_BACKBONES": "tiny" if quick else "llama-1b", "BENCH_CONCURRENCY": "1,8" if quick else "1,8,32",
            "BENCH_ROUNDS": "1", "BENCH_REQUESTS": "2" if quick else "4",
            "BENCH_SERVE_PARTS": "predict"}, t["serve"]),  # the stream rows need a stage (and a budget) of their own
        Stage("tests", test_command(quick), {"EPTCTL_TEST_DEVICE": device}, t["tests"]),
    ]
    return stages


def run_stage(stage: Stage, log: Path, timeout_s: float) -> dict:
    """Run one stage under ``timeout`` with its output in ``log``; its status, exit code and seconds. The stage's
    process group is killed afterwards, so no server it started outlives it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
    argv = [str(a) for a in stage.argv]
    if shutil.which("timeout"):  # signals the whole group: a stage's servers stop with it
        argv = ["timeout", "-k", "10", f"{max(1.0, timeout_s):.0f}", *argv]
    started = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(f"$ {' '.join(stage.argv)}\n# env: {json.dumps(stage.env)}\n# timeout: {timeout_s:.0f} s\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s + 30)  # a backstop where ``timeout`` is missing or ignored
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    seconds = round(time.perf_counter() - started, 1)
    status = "ok" if rc == 0 else "timed out" if rc in (124, 137, -9) else "failed"
    return {"stage": stage.name, "status": status, "rc": rc, "seconds": seconds, "timeout_s": round(timeout_s)}


def headline(name: str, result: dict | None, log: Path) -> str:
    """One short line of a stage's figures, for the table (the full figures are in summary.json)."""
    if name == "tests" or result is None:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:160] if lines else ""
    rows = result.get("rows", [])
    if name == "step-time":
        ms = {(r["backbone"], r["padding"], r["variant"]): r["step_ms_median"] for r in rows}
        shown = ("eptctl ept s=60", "floor s=60", "peft pt-100")
        return "; ".join(f"{b} {p}: ept / floor / peft pt-100 " + " / ".join(str(ms[(b, p, v)]) for v in shown) + " ms"
                         for b, p in dict.fromkeys((r["backbone"], r["padding"]) for r in rows)
                         if all((b, p, v) in ms for v in shown))
    if name == "scoring":
        return "; ".join(f"{r['backbone']} {r['variant']}: {r['examples_per_s']}/s" for r in rows)
    if name == "generation":
        return "; ".join(f"{r['variant']}: {r['tokens_per_s']} tok/s" for r in rows)
    return json.dumps(result.get("ratios", {}))


def _environment(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": sys.version.split()[0]}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_stages(stages: list[Stage], out: Path, budget_s: float, meta: dict) -> list[dict]:
    """Run ``stages`` in order within ``budget_s``; write ``out/summary.json`` after each. The table's rows."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    summary = {**meta, "budget_s": budget_s, "stages": {}}
    rows = []
    for i, stage in enumerate(stages, 1):
        left = deadline - time.monotonic()
        log = out / f"{i:02d}-{stage.name}.log"
        if left < 5:
            row = {"stage": stage.name, "status": "skipped (budget spent)", "rc": None, "seconds": 0,
                   "timeout_s": round(stage.timeout_s)}
            result = None
        else:
            row = run_stage(stage, log, min(stage.timeout_s, left))
            result = _read_json(Path(stage.argv[-1])) if stage.bench else None
            row["headline"] = headline(stage.name, result, log)
        rows.append(row)
        summary["stages"][stage.name] = {**row, "log": log.name, "result": result}
        _write_json(out / "summary.json", summary)
        print(f"[bench gpu] {stage.name}: {row['status']} in {row['seconds']} s", file=sys.stderr, flush=True)
    return rows


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict) -> None:
    from eptctl.core.files import write_atomic

    write_atomic(path, (json.dumps(value, indent=1) + "\n").encode())


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    """``python -m bench gpu``: plan the stages, run them, return one row per stage."""
    args = parse(list(argv or []))
    from bench.ondevice import cuda_present

    device = "cuda" if cuda_present() else "cpu"
    out = args.out or Path(".bench-out") / ("gpu-quick" if quick else "gpu")
    budget = args.budget_s or (QUICK_BUDGET_S if quick else BUDGET_S)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        stages = plan(quick, device, Path(tmp))
        if args.only:
            wanted = args.only.split(",")
            unknown = sorted(set(wanted) - set(STAGES))
            if unknown:
                raise SystemExit(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGES)}")
            stages = [s for s in stages if s.name in wanted]
        if args.list:
            return {"rows": [{"stage": s.name, "timeout_s": s.timeout_s, "command": " ".join(map(str, s.argv)),
                              "env": json.dumps(s.env)} for s in stages]}
        meta = {"quick": quick, "out": str(out), **_environment(device)}
        rows = run_stages(stages, out, budget, meta)
    return {"rows": rows, "out": str(out), "environment": meta}
