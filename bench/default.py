"""The README's first command, measured: `eptctl train rt-polarity` with no options, per seed and precision.

    python -m bench default [--seeds 0,1,2] [--precisions fp32,bf16] [--shared-home] [--extra "ARGS"]

Each cell runs the real command in a subprocess (`eptctl train rt-polarity --seed S --precision P --json`; with
no other option, the defaults are what is measured) and records the wall time of the whole process, the steps, the
best step, test and validation accuracy, and from the recorded history the largest training loss after warmup
relative to the first step's (a loss spike shows as a ratio above 1). Every cell starts from a fresh EPTCTL_HOME,
so its time includes the one-time model conversion, as a new user's first run does (`--shared-home` reuses one home
and measures warm runs; `--beside-load` runs each cell beside a CPU-heavy process, the noisy neighbour of a shared
machine). Cells are kept in `.bench-out/default-cells.json` as they finish; the same command again
skips them. Run it on an otherwise idle machine: the point is the time a user waits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLS = Path(".bench-out") / "default-cells.json"


def _cpu() -> dict:
    flags = ""
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                     model)
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return {"model": model, "bf16_units": any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")),
            "cores": os.cpu_count()}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench default", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--shared-home", action="store_true", help="one EPTCTL_HOME for all cells (warm runs)")
    parser.add_argument("--extra", default="", help="extra train options, quoted (a variant, not the default)")
    parser.add_argument("--task", default="rt-polarity")
    parser.add_argument("--beside-load", nargs="?", const="matmul", default=None, metavar="COMMAND",
                        help="run each cell beside a CPU-heavy process: a 2-thread matmul loop (stopped with the cell), or "
                             "COMMAND (a shell command, e.g. the test suite; left to finish), the noisy neighbour")
    parser.add_argument("--cells", type=Path, default=CELLS)
    return parser.parse_args(argv)


def loss_spike(history: list[dict], warmup: int) -> float | None:
    """max(training loss after warmup) / first step's loss; None without a recorded loss."""
    losses = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    if not losses:
        return None
    after = [loss for step, loss in losses if step > warmup]
    return round(max(after) / losses[0][1], 3) if after else None


# A CPU-heavy neighbour: fp32 matmuls on two threads, as a second training job on the same cores would be.
NEIGHBOUR = "import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def run_cell(task: str, seed: int, precision: str, home: Path, extra: list[str], beside_load: str | None = None
             ) -> dict:
    # The model cache inside the cell's home: a fresh home converts again, as a new machine does.
    env = {**os.environ, "EPTCTL_HOME": str(home), "EPTCTL_MODELS": str(home / "models"), "HF_HUB_OFFLINE": "1"}
    eptctl = [sys.executable, "-m", "eptctl"]
    command = [*eptctl, "train", task, "--seed", str(seed), "--precision", precision, *extra, "--json"]
    neighbour = None
    if beside_load == "matmul":
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    elif beside_load:
        neighbour = subprocess.Popen(beside_load, shell=True)
    try:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        if beside_load == "matmul":
            neighbour.kill()
        if neighbour is not None:  # a COMMAND neighbour (a test suite, a second training) is left to finish
            neighbour.wait()
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    shown = subprocess.run([*eptctl, "show", out["ref"], "--json"], env=env, capture_output=True, text=True, check=True)
    record = json.loads(shown.stdout)
    steps = record["config"].get("train", {}).get("steps") if isinstance(record.get("config"), dict) else None
    history = record.get("history", [])
    steps = steps or max((h["step"] for h in history), default=0)
    warmup = max(1, round(0.1 * steps))
    return {"seed": seed, "precision": precision, "wall_s": round(wall, 1), "train_s": out.get("duration_s"),
            "steps": steps, "best_step": out.get("best_step"),
            "test_acc": round(out["metrics"]["test"]["accuracy"], 4),
            "val_acc": round(out["metrics"]["validation"]["accuracy"], 4),
            "loss_peak_after_warmup_vs_first": loss_spike(history, warmup),
            "command": shlex.join(["eptctl", *command[3:]])}


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    from eptctl.core.files import write_atomic

    args = parse(list(argv or []))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    extra = shlex.split(args.extra)
    if quick:
        seeds, extra = seeds[:1], [*extra, "--steps", "5", "--max-eval", "50"]
    cpu = _cpu()
    key_extra = " ".join(extra)
    done = json.loads(args.cells.read_text()) if args.cells.exists() else {}
    shared = Path(tempfile.mkdtemp(prefix="eptctl-bench-home-")) if args.shared_home else None
    for seed in seeds:
        for precision in precisions:
            key = f"{cpu['model']}|{args.task}|{seed}|{precision}|{key_extra}|{'warm' if shared else 'fresh'}"
            key += f"|beside-load:{args.beside_load}" if args.beside_load else ""
            if key in done:
                continue
            home = shared or Path(tempfile.mkdtemp(prefix="eptctl-bench-home-"))
            cell = run_cell(args.task, seed, precision, home, extra, args.beside_load)
            done[key] = {**cell, "task": args.task, "cpu": cpu["model"], "bf16_units": cpu["bf16_units"], "extra": key_extra,
                         "home": "warm" if shared else "fresh",
                         "beside_load": args.beside_load, "load_average_1min": round(os.getloadavg()[0], 2)}
            args.cells.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(args.cells, (json.dumps(done, indent=1) + "\n").encode())
            print(f"seed {seed} {precision}: {cell['wall_s']} s, test {cell['test_acc']}", file=sys.stderr,
                  flush=True)
    home_kind = "warm" if shared else "fresh"
    rows = [{k: c[k] for k in ("seed", "precision", "wall_s", "steps", "best_step", "test_acc", "val_acc",
                               "loss_peak_after_warmup_vs_first")}
            for c in done.values() if c["cpu"] == cpu["model"] and c["extra"] == key_extra
            and c.get("task", "rt-polarity") == args.task
            and c["home"] == home_kind and c["seed"] in seeds and c["precision"] in precisions
            and (c.get("beside_load") or None) == args.beside_load]
    summary = {}
    for precision in precisions:
        tests = [r["test_acc"] for r in rows if r["precision"] == precision]
        if tests:
            summary[precision] = {"mean_test": round(statistics.mean(tests), 4), "min_test": min(tests),
                                  "sd_test": round(statistics.stdev(tests), 4) if len(tests) > 1 else None,
                                  "max_wall_s": max(r["wall_s"] for r in rows if r["precision"] == precision)}
    return {"rows": rows, "summary": summary, "cpu": cpu, "extra": key_extra, "home": home_kind,
            "beside_load": args.beside_load}
