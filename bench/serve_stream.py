"""Streaming rows of ``python -m bench serve``: time to first token and output tokens/s of streamed completions.

Driven over HTTP: ``POST /v1/completions`` with ``stream: true`` (server-sent events) against real ``eptctl serve``
subprocesses on loopback ports, one with continuous batching (streams of the four adapters share every decoding
step) and one with ``--no-batching`` (one request at a time to its end), the same requests to both, cells taken in
turns so a slow moment of the shared machine hits both. Every request asks for ``max_tokens`` tokens with
``ignore_eos`` (equal work whatever the adapters write) and reads the usage chunk for its token count.

Adapters: four generation adapters (bbc-headline, four seeds) trained for one step in a temporary registry (serving
cost does not depend on training). Inputs: rt-polarity validation texts, wrapped in each adapter's template.
Arrivals: "staggered" (clients start spread over one request's time) and "burst" (all at once; see ``stream_load``).
Environment: BENCH_STREAM_TOKENS (tokens per request), BENCH_STREAM_REQUESTS (requests per cell = this x concurrency,
at least 8), BENCH_STREAM_LIMIT_S (a cell stops sending after this many seconds), BENCH_STREAM_ARRIVALS.

The functions here take a server's base URL and model names, so another engine behind the same routes (a vLLM
server) is measured by the same load loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

STREAM_MODES = ("stream batched, 4 adapters", "stream unbatched, 4 adapters")


def stream_settings(quick: bool) -> dict:
    """The streaming cells' sizes from the environment (smaller with ``quick``)."""
    return {
        "stream_tokens": int(os.environ.get("BENCH_STREAM_TOKENS", "8" if quick else "32")),
        "stream_requests": int(os.environ.get("BENCH_STREAM_REQUESTS", "2")),
        "stream_limit_s": float(os.environ.get("BENCH_STREAM_LIMIT_S", "300")),
        "stream_arrivals": os.environ.get("BENCH_STREAM_ARRIVALS", "staggered,burst").split(","),
    }


def generation_adapters(model: str, workdir: Path, count: int = 4) -> tuple[str, list[str]]:
    """A registry URL under ``workdir`` with ``count`` bbc-headline adapters on ``model`` (one step each) and their
    references."""
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    url = f"sqlite:///{workdir / 'registry.db'}"
    reg = Registry(url, artifacts=workdir / "artifacts")
    refs = [train_task("bbc-headline", registry=reg, model=model, method_cfg=EPTConfig(), max_train=8, max_eval=2,
                       train_cfg=TrainConfig(steps=1, batch_size=8, seed=seed, max_target_length=8)).record.ref
            for seed in range(count)]
    reg.close()
    return url, refs


async def stream_once(client, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """One streamed completion: (seconds to the first token's event, completion tokens, seconds in all). Raises on
    an HTTP error or an error event."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            if chunk.get("choices") and first is None:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else float("nan")), tokens, time.perf_counter() - started


async def stream_load(base: str, models: list[str], prompts: list[str], concurrency: int, requests: int,
                      max_tokens: int, limit_s: float, arrivals: str = "staggered") -> dict:
    """``requests`` streamed completions from ``concurrency`` concurrent clients (request ``i`` to
    ``models[i % len(models)]``), stopping early after ``limit_s`` seconds: time to first token p50/p99 (ms) and
    output tokens/s over the wall time.

    ``arrivals``: ``"burst"`` starts every client at once; ``"staggered"`` starts client ``j`` after ``j / c`` of one
    request's time alone (measured in the warm-up), so clients are not in step. Every request asks for the same
    tokens, so clients started together stay together: each finishes at the same step and all ask again at once,
    a burst every ``max_tokens`` steps that real traffic does not have."""
    import httpx

    done: list[tuple[float, int, float]] = []
    counter = iter(range(requests))
    deadline = time.monotonic() + limit_s
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async with httpx.AsyncClient(base_url=base, timeout=limit_s + 60, limits=limits) as client:
        async def worker(j: int, gap: float):
            await asyncio.sleep(j * gap)
            for i in counter:
                if time.monotonic() > deadline:
                    return
                done.append(await stream_once(client, models[i % len(models)], prompts[i % len(prompts)],
                                              max_tokens))

        for m in models:  # warm-up, unmeasured: one whole request per adapter, one at a time
            alone = (await stream_once(client, m, prompts[0], max_tokens))[2]
        gap = alone / concurrency if arrivals == "staggered" else 0.0
        started = time.perf_counter()
        await asyncio.gather(*[worker(j, gap) for j in range(concurrency)])
        wall = time.perf_counter() - started
    ttft = sorted(t for t, _, _ in done)
    cuts = statistics.quantiles(ttft, n=100) if len(ttft) > 1 else ttft * 99
    return {"ttft_p50_ms": round(cuts[49] * 1000, 1), "ttft_p99_ms": round(cuts[98] * 1000, 1),
            "output_tok_per_s": round(sum(n for _, n, _ in done) / wall, 2), "requests": len(done),
            "complete": len(done) == requests}


def measure_streams(short: str, model: str, bases: dict[str, str], refs: list[str], prompts: list[str],
                    settings: dict) -> list[dict]:
    """The streaming rows of one backbone: each mode of ``bases`` (mode -> base URL) at every concurrency, the modes
    interleaved cell by cell, the median of ``settings["rounds"]`` rounds by output tokens/s."""
    rows = []
    for arrivals in settings["stream_arrivals"]:
        for c in settings["concurrency"]:
            rows += _cell(short, model, bases, refs, prompts, settings, c, arrivals)
    return rows


def _cell(short, model, bases, refs, prompts, settings, c: int, arrivals: str) -> list[dict]:
    """The rows of one concurrency and arrival pattern: every mode, ``rounds`` times in turns, the median round."""
    cells: dict[str, list[dict]] = {mode: [] for mode in bases}
    for _ in range(settings["rounds"]):
        for mode, base in bases.items():
            n = max(8, settings["stream_requests"] * c)
            cells[mode].append(asyncio.run(stream_load(base, refs, prompts, c, n, settings["stream_tokens"],
                                                       settings["stream_limit_s"], arrivals)))
    rows = []
    for mode, results in cells.items():
        best = sorted(results, key=lambda r: r["output_tok_per_s"])[len(results) // 2]
        rows.append({"backbone": short, "model": model, "mode": mode, "arrivals": arrivals, "concurrency": c,
                     **best, "tokens_per_request": settings["stream_tokens"], "rounds": len(results)})
        print(f"{short} {mode} {arrivals} c={c}: {best}", file=sys.stderr, flush=True)
    return rows


def stream_rows(short: str, model: str, prompts: list[str], settings: dict, start_servers, stop_servers
                ) -> list[dict]:
    """Train the adapters, start a batched and an unbatched ``eptctl serve`` (``start_servers(commands, env)`` ->
    name -> (process, base), as ``bench.serve`` starts them), measure, stop them."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        url, refs = generation_adapters(model, Path(tmp))
        env = {**os.environ, "EPTCTL_ARTIFACTS": str(Path(tmp) / "artifacts")}
        serve = [sys.executable, "-m", "bench.ondevice", "eptctl", "serve", "--model", model, "--registry", url,
                 "--adapters", ",".join(refs)]
        servers = start_servers({STREAM_MODES[0]: serve, STREAM_MODES[1]: [*serve, "--no-batching"]}, env)
        try:
            return measure_streams(short, model, {m: servers[m][1] for m in STREAM_MODES}, refs, prompts, settings)
        finally:
            stop_servers(servers)


def stream_ratios(rows: list[dict]) -> dict:
    """The issue's targets per backbone and arrival pattern: batched / unbatched output tokens/s at the highest
    concurrency (target ≥ 3), and the batched time to first token p50 at concurrency 8 over that at 1 (≤ 2)."""
    out = {}
    for backbone, arrivals in sorted({(r["backbone"], r["arrivals"]) for r in rows}):
        mine = {(r["mode"], r["concurrency"]): r for r in rows
                if r["backbone"] == backbone and r["arrivals"] == arrivals}
        top = max(c for _, c in mine)
        batched, unbatched = (mine.get((m, top)) for m in STREAM_MODES)
        entry = {"concurrency": top}
        if batched and unbatched:
            entry["batched_vs_unbatched_tok_per_s"] = round(batched["output_tok_per_s"] /
                                                            unbatched["output_tok_per_s"], 2)
        one, eight = mine.get((STREAM_MODES[0], 1)), mine.get((STREAM_MODES[0], 8))
        if one and eight:
            entry["ttft_p50_c8_vs_c1"] = round(eight["ttft_p50_ms"] / one["ttft_p50_ms"], 2)
        out[f"{backbone}, {arrivals}"] = entry
    return out
