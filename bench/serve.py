"""HTTP serving: throughput (inputs/s) and latency (p50/p99) of ``eptctl serve`` at concurrency 1, 8 and 32.

Servers, each a real subprocess on a free loopback port, the load from this process (one httpx client per thread,
one input per request, requests spread round-robin over the adapters):
  eptctl batched, 4 adapters: dynamic batching across requests and adapters (defaults: 16 rows, 5 ms);
  eptctl batched, 1 adapter: the same server, single-task traffic;
  eptctl unbatched, 4 adapters: ``--no-batching``, one request per backbone pass;
  peft, 4 adapters: one PEFT prompt-tuning model per adapter on one PeftModel, ``set_adapter`` per request
  (bench/peft_server.py), the way a user would serve PEFT prompt tuning today.
Adapters: four eptctl EPT adapters of three tasks (rt-polarity twice, rt-subjectivity, bbc-topic), trained for one
step (serving cost does not depend on training) in a temporary registry. Inputs: rt-polarity validation texts.
All servers run at once and the modes take turns cell by cell, BENCH_ROUNDS times (the median round is reported), so
a slow moment of the shared machine hits every mode alike.
With CUDA every process (this one, the servers) builds a random backbone directly on the GPU (bench/ondevice.py)
and the servers start in parallel.
Streaming rows (bench/serve_stream.py): streamed ``/v1/completions`` of four generation adapters, batched
(continuous batching) against ``--no-batching``: time to first token p50/p99 and output tokens/s.
Environment: BENCH_BACKBONES (tiny, smollm2, llama-1b), BENCH_CONCURRENCY (1,8,32), BENCH_REQUESTS (x concurrency, at least
16, per cell), BENCH_ROUNDS, BENCH_SERVE_PARTS (predict,stream), and serve_stream's BENCH_STREAM_*.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.serve_stream import stream_ratios, stream_rows, stream_settings
from bench.step_time import BACKBONES

MODES = ("eptctl batched, 4 adapters", "eptctl batched, 1 adapter", "eptctl unbatched, 4 adapters",
         "peft, 4 adapters")


def _settings(quick: bool) -> dict:
    return {
        "backbones": os.environ.get("BENCH_BACKBONES", "tiny" if quick else "tiny,smollm2").split(","),
        "concurrency": [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8,32").split(",")],
        "requests": int(os.environ.get("BENCH_REQUESTS", "4")),  # x concurrency (min 16) per cell
        "rounds": int(os.environ.get("BENCH_ROUNDS", "1" if quick else "3")),
        "parts": os.environ.get("BENCH_SERVE_PARTS", "predict,stream").split(","),  # /v1/predict rows, stream rows
        **stream_settings(quick),
    }


def _adapters(model: str, workdir: Path) -> tuple[str, list[str]]:
    """A registry URL with four adapters on ``model`` and their refs."""
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    url = f"sqlite:///{workdir / 'registry.db'}"
    reg = Registry(url, artifacts=workdir / "artifacts")
    refs = []
    for task, seed in (("rt-polarity", 0), ("rt-polarity", 1), ("rt-subjectivity", 0), ("bbc-topic", 0)):
        outcome = train_task(task, registry=reg, model=model, method_cfg=EPTConfig(), max_train=8, max_eval=8,
                             train_cfg=TrainConfig(steps=1, batch_size=8, seed=seed))
        refs.append(outcome.record.ref)
    reg.close()
    return url, refs


def _load(base: str, adapters: list[str], texts: list[str], concurrency: int, requests: int) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; inputs/s and latency percentiles (ms)."""
    import httpx

    local = threading.local()

    def one(i: int) -> float:
        client = getattr(local, "client", None) or httpx.Client(base_url=base, timeout=600)
        local.client = client
        started = time.perf_counter()
        response = client.post("/v1/predict", json={"adapter": adapters[i % len(adapters)],
                                                    "inputs": [texts[i % len(texts)]]})
        response.raise_for_status()
        return time.perf_counter() - started

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: connections, first passes
        started = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"inputs_per_s": round(requests / wall, 2), "p50_ms": round(cuts[49] * 1000, 1),
            "p99_ms": round(cuts[98] * 1000, 1), "requests": requests}


def pass_ceiling(model: str, texts: list[str], sizes=(1, 4, 8, 16, 32)) -> dict[int, float]:
    """Inputs/s of scoring 64 texts in this process, no HTTP, at each rows-per-pass size: what batching can gain on
    this hardware before any server overhead."""
    from eptctl import backbones, data
    from eptctl.engine.encoding import encode_examples
    from eptctl.engine.loop import new_adapter
    from eptctl.engine.scoring import score_mixed
    from eptctl.methods import EPTConfig

    backbone = backbones.load(model)
    spec = data.builtin_task("rt-polarity")
    answers = backbone.encode_answers(spec.verbalizer)
    adapter = new_adapter(backbone, EPTConfig(), spec.num_labels, seed=0).materialize()
    encoded = encode_examples(backbone, spec, [data.Example(t, 0) for t in texts[:64]], answers, 256)
    out = {}
    for size in sizes:
        score_mixed(backbone, [adapter], [answers], encoded[:8], [0] * 8, size)  # warm-up
        started = time.perf_counter()
        score_mixed(backbone, [adapter], [answers], encoded, [0] * len(encoded), size)
        out[size] = round(len(encoded) / (time.perf_counter() - started), 2)
    return out


def _start_servers(commands: dict[str, list[str]], env: dict) -> dict:
    """Start every server at once (each loads its backbone: a 1B shape takes a while): name -> (process, base URL).
    A server that fails to start stops the others before the error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    from eptctl.serving.launch import start as start_server

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(start_server, command, env=env, timeout_s=300, stdout=subprocess.DEVNULL)
                   for name, command in commands.items()}
    servers, errors = {}, []
    for name, future in futures.items():
        try:
            servers[name] = future.result()
        except Exception as err:  # noqa: BLE001 - reported after the others are stopped
            errors.append(err)
    if errors:
        _stop(servers)
        raise errors[0]
    for name, (proc, _) in servers.items():  # nobody reads the stderr pipe now: a full one would stall the server
        threading.Thread(target=_forward, args=(name, proc.stderr), daemon=True).start()
    return servers


def _forward(name: str, stream) -> None:
    for line in stream:
        print(f"[{name}] {line.decode(errors='replace').rstrip()}", file=sys.stderr, flush=True)


def _stop(servers: dict) -> None:
    for proc, _ in servers.values():
        proc.terminate()
        proc.wait(timeout=120)


def _measure(short: str, model: str, servers: dict, refs: list[str], texts: list[str], settings: dict) -> list[dict]:
    """The table's rows of one backbone: every mode at every concurrency, rounds interleaved cell by cell."""
    rows = []
    for c in settings["concurrency"]:
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(settings["rounds"]):  # interleaved: a slow moment of the machine hits every mode
            for mode in MODES:
                name = mode.split(",")[0]
                adapters = [f"a{i}" for i in range(4)] if name == "peft" else \
                    [refs[0]] if "1 adapter" in mode else refs
                n = max(16, settings["requests"] * c)
                results[mode].append(_load(servers[name][1], adapters, texts, c, n))
        for mode, cells in results.items():
            best = sorted(cells, key=lambda r: r["inputs_per_s"])[len(cells) // 2]  # the median round
            rows.append({"backbone": short, "model": model, "mode": mode, "concurrency": c, **best,
                         "rounds": len(cells)})
            print(f"{short} {mode} c={c}: {best}", file=sys.stderr, flush=True)
    return rows


def run(quick: bool = False) -> dict:
    from bench.ondevice import build_on_gpu_if_present
    from eptctl import data

    settings = _settings(quick)
    # With CUDA, every process builds the random backbone on the GPU: seconds instead of tens of seconds for the 1B
    # shape, and the same weights (the fingerprint) in the trainer here and in the servers.
    settings["built_on_gpu"] = build_on_gpu_if_present()
    texts = [e.text for e in data.load_task(data.builtin_task("rt-polarity"), max_eval=200).validation]
    rows, streamed, ceiling = [], [], {}
    for short in settings["backbones"]:
        model = BACKBONES[short]
        if "stream" in settings["parts"]:
            streamed += stream_rows(short, model, texts, settings, _start_servers, _stop)
        if "predict" not in settings["parts"]:
            continue
        ceiling[short] = pass_ceiling(model, texts)
        print(f"{short} in-process inputs/s by rows per pass: {ceiling[short]}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            url, refs = _adapters(model, Path(tmp))
            env = {**os.environ, "EPTCTL_ARTIFACTS": str(Path(tmp) / "artifacts")}
            serve = [sys.executable, "-m", "bench.ondevice", "eptctl", "serve", "--model", model, "--registry", url,
                     "--adapters", ",".join(refs)]
            commands = {
                "eptctl batched": serve,
                "eptctl unbatched": [*serve, "--no-batching"],
                "peft": [sys.executable, "-m", "bench.peft_server", "--model", model, "--adapters", "4"],
            }
            servers = _start_servers(commands, env)  # all up at once, idle but one: the modes take turns
            try:
                rows += _measure(short, model, servers, refs, texts, settings)
            finally:
                _stop(servers)
    return {"rows": _same_keys(rows + streamed), "ratios": _ratios(rows), "stream_ratios": stream_ratios(streamed),
            "pass_ceiling": ceiling, "settings": settings}


def _same_keys(rows: list[dict]) -> list[dict]:
    """Every row with every key of all rows (None where a row has none): one table for predictions and streams."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def _ratios(rows: list[dict]) -> dict:
    """The issue's targets at the highest concurrency: batched vs unbatched, mixed vs single, eptctl vs PEFT."""
    out = {}
    for backbone in sorted({r["backbone"] for r in rows}):
        top = max(r["concurrency"] for r in rows if r["backbone"] == backbone)
        rate = {r["mode"]: r["inputs_per_s"] for r in rows if r["backbone"] == backbone and r["concurrency"] == top}
        mixed = rate.get("eptctl batched, 4 adapters")
        out[backbone] = {
            "concurrency": top,
            "batched_vs_unbatched": round(mixed / rate["eptctl unbatched, 4 adapters"], 2),
            "mixed_vs_single": round(mixed / rate["eptctl batched, 1 adapter"], 2),
            "batched_vs_peft": round(mixed / rate["peft, 4 adapters"], 2),
        }
    return out
