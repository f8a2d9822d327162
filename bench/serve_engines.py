"""``python -m bench serve --engine vllm``: eptctl's own engine against vLLM behind eptctl, side by side in one run.

Two routers on one registry, each a real ``eptctl serve`` subprocess on a loopback port: ``local`` (the backbone in
the router, eptctl's batcher) and ``vllm`` (``--engine vllm`` in front of a vLLM server started here from the folder
``eptctl engine vllm prepare`` writes). Both run SmolLM2 in the precision eptctl picks on this machine (bf16 on a
CPU with bf16 units, else fp32), vLLM's OpenMP threads on every core.

- generation: 4 bbc-headline adapters (seeds 0-3), one input per request, greedy, each adapter's own token budget
  (targets cut at BENCH_TARGET_TOKENS): output tokens/s (the outputs re-tokenized) and time to first token where
  the router streams (``POST /v1/completions`` with ``stream``, the OpenAI-compatible routes); where it does not,
  TTFT is left empty and the request latency stands in.
- scoring: 4 classification adapters (rt-polarity twice, rt-subjectivity, bbc-topic): inputs/s.
- generation, ``vllm direct``: the same rows sent by this process straight to vLLM (``prompt_embeds`` built and
  encoded before the clock starts, the requests eptctl's router would send): vLLM's own speed here, without the
  router's work (encoding, embedding rows, HTTP in between).
At concurrency 1, 8 and 32 (BENCH_CONCURRENCY), BENCH_REQUESTS requests per concurrency slot (at least 8 per
cell); the engines take turns cell by cell so a slow moment of the shared machine hits both. Adapters are trained
for one step (serving cost does not depend on training).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODEL = "smollm2-135m"
GENERATION = (("bbc-headline", 0), ("bbc-headline", 1), ("bbc-headline", 2), ("bbc-headline", 3))
SCORING = (("rt-polarity", 0), ("rt-polarity", 1), ("rt-subjectivity", 0), ("bbc-topic", 0))


def _settings(quick: bool) -> dict:
    return {
        "concurrency": [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,8" if quick else "1,8,32").split(",")],
        "requests": int(os.environ.get("BENCH_REQUESTS", "1" if quick else "2")),
        "precision": __import__("eptctl.backbones", fromlist=["default_precision"]).default_precision("cpu"),
        "target_tokens": int(os.environ.get("BENCH_TARGET_TOKENS", "24")),
    }


def _adapters(workdir: Path, settings: dict) -> tuple[str, dict[str, list[str]]]:
    """A registry with the 4 generation and 4 scoring adapters: (URL, {"generation": refs, "scoring": refs})."""
    from eptctl import backbones
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    url = f"sqlite:///{workdir / 'registry.db'}"
    reg = Registry(url, artifacts=workdir / "artifacts")
    backbone = backbones.load(MODEL, precision=settings["precision"])
    refs: dict[str, list[str]] = {"generation": [], "scoring": []}
    for kind, adapters in (("generation", GENERATION), ("scoring", SCORING)):
        for task, seed in adapters:
            cfg = TrainConfig(steps=1, batch_size=2, seed=seed, max_target_length=settings["target_tokens"],
                              max_eval_examples=1)
            outcome = train_task(task, registry=reg, backbone=backbone, model=MODEL, max_train=4, max_eval=1,
                                 method_cfg=EPTConfig(), train_cfg=cfg)
            refs[kind].append(outcome.record.ref)
    reg.close()
    return url, refs


def _servers(workdir: Path, url: str, refs: dict, settings: dict, stack) -> dict[str, str]:
    """Start vLLM and the two routers; {"local": router URL, "vllm": router URL, "direct": vLLM's URL}. ``stack``
    stops them at the end."""
    from eptctl.serving import launch
    from eptctl.serving.engines.prepare import prepare
    from eptctl.serving.engines.vllm_launch import LaunchOptions, start_vllm, vllm_python

    python = vllm_python()
    if python is None:
        from eptctl.core.errors import EptctlError

        raise EptctlError("vLLM is not installed", hint="./setup.sh --vllm-only (or set EPTCTL_VLLM_PYTHON)")
    folder = prepare(MODEL, workdir / "vllm-model").path
    # every core for vLLM's compute threads (its default keeps one for its HTTP front end)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[settings["precision"]]
    server = start_vllm(folder, MODEL, python, workdir / "vllm.log", LaunchOptions(dtype=dtype, env=env))
    stack.callback(server.stop)
    every = ",".join(refs["generation"] + refs["scoring"])
    env = {**os.environ, "EPTCTL_ARTIFACTS": str(workdir / "artifacts")}
    base = [sys.executable, "-m", "eptctl", "serve", "--model", MODEL, "--registry", url, "--adapters", every]
    out = {}
    for name, extra in (("local", []), ("vllm", ["--engine", "vllm", "--engine-url", server.base])):
        proc, address = launch.start([*base, *extra], env=env, timeout_s=600, stdout=None)
        stack.callback(_stop, proc)
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        out[name] = address
    out["direct"] = server.base
    return out


def _direct_bodies(vllm_base: str, url: str, workdir: Path, refs: list[str], texts: list[str], n: int) -> list[dict]:
    """The ``n`` completion requests the vLLM router sends for the generation cell's rows (request ``i``: adapter
    ``i mod 4``, text ``i mod len(texts)``), built as ``VllmEngine`` builds them."""
    from eptctl.backbones.decoding import GenerationOptions
    from eptctl.serving.engines.embedding import load_embedding_backbone
    from eptctl.serving.engines.vllm import VllmEngine, VllmSettings
    from eptctl.serving.engines.vllm_http import encode_embeds
    from eptctl.workflows.inference import load_adapter
    from registry import Registry

    reg = Registry(url, artifacts=workdir / "artifacts")
    servables = [load_adapter(reg, ref) for ref in refs]
    reg.close()
    engine = VllmEngine(load_embedding_backbone(MODEL), VllmSettings(vllm_base))
    bodies = []
    for i in range(n):
        servable = servables[i % len(servables)]
        row = engine._row(servable, engine.encode(servable, texts[i % len(texts)]))
        budget = servable.max_new_tokens
        bodies.append(engine.client.generation_body(encode_embeds(row), GenerationOptions(max_new_tokens=budget),
                                                    budget))
    engine.stop()
    return bodies


def _drain(proc) -> None:
    for _ in proc.stderr:  # nobody reads the pipe otherwise: a full one would stall the router
        pass


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=120)


def _streams(base: str) -> bool:
    """Whether the router has the OpenAI-compatible streaming completions route."""
    import httpx

    return httpx.post(f"{base}/v1/completions", json={}, timeout=30).status_code != 404


def _one(client, streaming: bool, ref: str, text: str, tokenizer) -> tuple[float, float | None, int]:
    """(latency s, time to first token s or None, output tokens) of one generation request."""
    started = time.perf_counter()
    if not streaming:
        response = client.post("/v1/predict", json={"adapter": ref, "inputs": [text]})
        response.raise_for_status()
        output = response.json()["outputs"][0]["output"]
        return time.perf_counter() - started, None, len(tokenizer(output, add_special_tokens=False)["input_ids"])
    first, text_out = None, []
    with client.stream("POST", "/v1/completions", json={"model": ref, "prompt": text, "stream": True,
                                                         "temperature": 0}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                first = first if first is not None else time.perf_counter() - started
                text_out.append(choices[0]["text"])
    return time.perf_counter() - started, first, len(tokenizer("".join(text_out), add_special_tokens=False)["input_ids"])


def _cell(base: str, kind: str, refs: list[str], texts: list[str], c: int, n: int, tokenizer) -> dict:
    """``n`` requests from ``c`` threads against one router: the cell's row."""
    import httpx

    local = threading.local()
    streaming = kind == "generation" and _streams(base)

    def one(i: int):
        client = getattr(local, "client", None) or httpx.Client(base_url=base, timeout=600)
        local.client = client
        if kind == "direct":  # texts: the precomputed request bodies
            started = time.perf_counter()
            response = client.post("/v1/completions", json=texts[i % len(texts)])
            response.raise_for_status()
            return time.perf_counter() - started, None, len(response.json()["choices"][0]["token_ids"])
        if kind == "generation":
            return _one(client, streaming, refs[i % len(refs)], texts[i % len(texts)], tokenizer)
        started = time.perf_counter()
        client.post("/v1/predict", json={"adapter": refs[i % len(refs)],
                                         "inputs": [texts[i % len(texts)]]}).raise_for_status()
        return time.perf_counter() - started, None, 0

    with ThreadPoolExecutor(c) as pool:
        list(pool.map(one, range(c)))  # warm-up: connections, first passes
        started = time.perf_counter()
        results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    firsts = [r[1] for r in results if r[1] is not None]
    row = {"requests": n, "inputs_per_s": round(n / wall, 2), "p50_ms": round(statistics.median(latencies) * 1e3, 1)}
    if kind in ("generation", "direct"):
        row.update(output_tokens_per_s=round(sum(r[2] for r in results) / wall, 2),
                   ttft_p50_ms=round(statistics.median(firsts) * 1e3, 1) if firsts else None,
                   tokens_per_request=round(sum(r[2] for r in results) / n, 1))
    return row


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    from contextlib import ExitStack

    from eptctl import data
    from eptctl.serving.engines.embedding import load_embedding_backbone

    settings = _settings(quick)
    texts = {"generation": [e.text for e in data.load_task(data.builtin_task("bbc-headline"), max_eval=64).test],
             "scoring": [e.text for e in data.load_task(data.builtin_task("rt-polarity"), max_eval=64).validation]}
    tokenizer = load_embedding_backbone(MODEL).tokenizer
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp, ExitStack() as stack:
        url, refs = _adapters(Path(tmp), settings)
        bases = _servers(Path(tmp), url, refs, settings, stack)
        for c in settings["concurrency"]:
            n = max(8, settings["requests"] * c)
            bodies = _direct_bodies(bases["direct"], url, Path(tmp), refs["generation"], texts["generation"], n)
            cells = [("generation", "local", texts["generation"]), ("generation", "vllm", texts["generation"]),
                     ("direct", "direct", bodies), ("scoring", "local", texts["scoring"]),
                     ("scoring", "vllm", texts["scoring"])]
            for kind, engine, inputs in cells:  # interleaved cell by cell
                row = _cell(bases[engine], kind, refs["scoring" if kind == "scoring" else "generation"], inputs, c, n,
                            tokenizer)
                workload = "generation" if kind == "direct" else kind
                name = "vllm direct (no router)" if kind == "direct" else engine
                rows.append({"workload": workload, "engine": name, "concurrency": c, **row})
                print(f"{workload} {name} c={c}: {row}", file=sys.stderr, flush=True)
    return {"rows": rows, "ratios": _ratios(rows), "settings": settings}


def _ratios(rows: list[dict]) -> dict:
    """vLLM behind eptctl over eptctl's own engine, per workload and concurrency (above 1: vLLM is faster)."""
    out = {}
    for kind, key in (("generation", "output_tokens_per_s"), ("scoring", "inputs_per_s")):
        for c in sorted({r["concurrency"] for r in rows}):
            cell = {r["engine"]: r for r in rows if r["workload"] == kind and r["concurrency"] == c}
            for other in ("vllm", "vllm direct (no router)"):
                if {"local", other} <= set(cell) and cell["local"][key]:
                    out[f"{kind} c={c} {other}/local {key}"] = round(cell[other][key] / cell["local"][key], 2)
    return out
