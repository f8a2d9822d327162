"""vLLM as the engine behind `eptctl serve --engine vllm`: a real vLLM server (its own environment, .venv-vllm) on a
loopback port, the embedded SmolLM2 prepared by `eptctl engine vllm prepare`, fp32 on both sides, and adapters
trained here for a few steps on the same backbone (equality needs real adapters, not good ones).

The tests at the top need no server (settings, error mapping, the pairing tolerance). One vLLM server for the module (about a minute to start on 2 cores); the outage test, last in the module, kills it
and starts it again. Skipped where vLLM is not installed, unless CI is set (then it fails).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest


MODEL = "smollm2-135m"
REPO = Path(__file__).resolve().parents[1]


def _vllm_python() -> str:
    from eptctl.serving.engines.vllm_launch import vllm_python

    python = vllm_python(REPO)
    if python is None or not Path(python).exists():
        reason = "vLLM is not installed: ./setup.sh --vllm-only makes .venv-vllm (or set EPTCTL_VLLM_PYTHON)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def test_engine_settings_are_checked_naming_the_flag():
    from eptctl.core.errors import ConfigError
    from eptctl.serving.config import ServeConfig

    assert ServeConfig(engine="vllm", engine_url="http://127.0.0.1:8100").engine_model is None
    for kwargs, flag in (({"engine": "vllm"}, "--engine-url"), ({"engine": "vllm", "engine_url": "127.0.0.1:8100"},
                          "--engine-url"), ({"engine_url": "http://h:1"}, "--engine vllm"),
                         ({"engine": "tgi", "engine_url": "http://h:1"}, "--engine must be"),
                         ({"engine": "vllm", "engine_url": "http://h:1", "engine_timeout_s": 0}, "--engine-timeout")):
        with pytest.raises(ConfigError, match=flag):
            ServeConfig(**kwargs)


def test_an_unreachable_vllm_is_a_503_error_and_vllm_refusals_keep_vllm_s_message():
    from eptctl.serving.batcher import QueueFull
    from eptctl.serving.engine import EngineUnavailable, Unsupported
    from eptctl.serving.engines.vllm_http import VllmClient, VllmRefused, VllmUnavailable, checked
    from eptctl.serving.launch import free_port

    client = VllmClient(f"http://127.0.0.1:{free_port()}", MODEL, eos_id=2, timeout_s=5)  # nobody listens there
    started = time.monotonic()
    with pytest.raises(VllmUnavailable, match="is unreachable") as err:
        client.get("/v1/models")
    client.close()
    assert time.monotonic() - started < 5
    # the routes answer it 503 with Retry-After (EngineUnavailable; QueueFull for routes that predate engines)
    assert isinstance(err.value, EngineUnavailable) and isinstance(err.value, QueueFull)
    answer = httpx.Response(400, json={"error": {"message": "This model's maximum context length is 512 tokens.\n"
                                                            "However, you requested 900 tokens."}})
    with pytest.raises(VllmRefused, match="maximum context length is 512 tokens. However") as refused:
        checked(answer)
    assert isinstance(refused.value, Unsupported) and "\n" not in refused.value.message
    with pytest.raises(VllmUnavailable, match="failed \\(500\\)"):
        checked(httpx.Response(500, text="Internal Server Error"))


def test_the_pairing_probe_compares_the_best_tokens_and_their_log_probabilities():
    from eptctl.serving.engines.pairing import TOLERANCE, _gap

    ours = {"token_id:5": -0.5, "token_id:7": -1.5, "token_id:9": -2.0}
    assert _gap(ours, {k: v + 1e-5 for k, v in ours.items()}) < TOLERANCE
    assert _gap(ours, {"token_id:5": -0.5, "token_id:7": -1.5, "token_id:11": -2.0}) < TOLERANCE  # a near tie swapped
    assert _gap(ours, {"token_id:7": -0.4, "token_id:5": -0.6, "token_id:9": -2.0}) == float("inf")  # another best
    assert _gap(ours, {k: v - 0.3 for k, v in ours.items()}) > TOLERANCE


def test_bench_serve_with_engine_vllm_runs_the_engines_benchmark():
    from bench.__main__ import _engine_variant

    rest = ["--engine", "vllm"]
    assert _engine_variant("serve", rest) == "serve_engines" and rest == []
    assert _engine_variant("serve", ["--engine=vllm"]) == "serve_engines"
    assert _engine_variant("serve", []) == "serve"
    with pytest.raises(SystemExit):
        _engine_variant("serve", ["--engine", "tgi"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home and registry with short-trained fp32 adapters on SmolLM2: bbc-headline (generation), rt-polarity
    (single-token labels), a custom task whose labels are several tokens, and rt-polarity on MiniLM (an encoder)."""
    from eptctl import backbones
    from eptctl.data import DataOptions
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    python = _vllm_python()
    home = tmp_path_factory.mktemp("vllm-home")
    csv = home / "verdicts.csv"
    rows = [("A triumph, warm and funny.", "thumbs up"), ("Dull and overlong.", "thumbs down")] * 12
    csv.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    url = f"sqlite:///{home / 'registry.db'}"
    with pytest.MonkeyPatch.context() as mp:  # for the whole module: the adapters' files live under this home
        mp.setenv("EPTCTL_HOME", str(home))
        reg = Registry(url)
        smol = backbones.load(MODEL, precision="fp32")
        method = EPTConfig(method="ept", prompt_length=6, max_length=64)
        # a few steps on a few rows, one small validation: equality needs real adapters, not good ones; headline
        # targets cut at 16 tokens keep the decoding budget (and the evaluation's decoding) short
        cfg = TrainConfig(steps=2, batch_size=2, seed=0, max_target_length=16, max_eval_examples=1)

        def train(task, backbone=smol, **kw):
            return train_task(task, registry=reg, backbone=backbone, model=backbone.name, max_train=8,
                              max_eval=1, method_cfg=method, train_cfg=cfg, **kw).record.ref

        refs = {"gen": train("bbc-headline"), "pol": train("rt-polarity"),
                "multi": train("verdicts", custom=DataOptions(path=str(csv))),
                "bert": train("rt-polarity", backbone=backbones.load("minilm-l6", precision="fp32"))}
        reg.close()
        yield {"home": home, "url": url, "refs": refs, "python": python, "backbone": smol}


@pytest.fixture(scope="module")
def folder(world):
    """The folder `eptctl engine vllm prepare` writes, and the command it prints."""
    target = world["home"] / "vllm-model"
    done = subprocess.run([sys.executable, "-m", "eptctl", "engine", "vllm", "prepare", "--model", MODEL,
                           str(target), "--python", world["python"]], capture_output=True, text=True,
                          env={**os.environ, "EPTCTL_HOME": str(world["home"])}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "quantization_config" not in (target / "config.json").read_text()  # the GGUF leftover vLLM must not see
    assert done.stdout.startswith(world["python"]) and "--enable-prompt-embeds" in done.stdout
    return target


@pytest.fixture(scope="module")
def vllm(world, folder):
    """The module's vLLM server (the outage test replaces it: read ``vllm["server"]``)."""
    from eptctl.serving.engines.vllm_launch import start_vllm

    state = {"server": start_vllm(folder, MODEL, world["python"], world["home"] / "vllm.log")}
    yield state
    state["server"].stop()


@pytest.fixture(scope="module")
def router(world, vllm, eptctl_server):
    """`eptctl serve --engine vllm` in front of the module's vLLM server."""
    refs = world["refs"]
    return eptctl_server(world["home"], "--engine", "vllm", "--engine-url", vllm["server"].base,
                         "--adapters", f"{refs['gen']},{refs['pol']}", model=MODEL, registry=world["url"])


def _servable(world, name):
    from eptctl.workflows.inference import load_adapter
    from registry import Registry

    reg = Registry(world["url"])
    try:
        return load_adapter(reg, world["refs"][name])
    finally:
        reg.close()


def _split(task, split, n):
    from eptctl import data

    loaded = data.load_task(data.builtin_task(task), max_eval=n)
    return [e.text for e in getattr(loaded, split)][:n]


@pytest.mark.engine
@pytest.mark.slow
def test_greedy_generation_equals_local_cached_decoding_and_eptctl_predict(world, vllm, router, monkeypatch):
    from typer.testing import CliRunner

    from eptctl.backbones.decoding import GenerationOptions
    from eptctl.cli.app import app
    from eptctl.serving.engines.embedding import load_embedding_backbone
    from eptctl.serving.engines.vllm_http import VllmClient
    from eptctl.workflows.inference import encode_input, predict

    texts = _split("bbc-headline", "test", 8)
    servable = _servable(world, "gen")
    local = world["backbone"]
    # token for token: eptctl's cached decoding against vLLM's on the same [P_r; E(x) + H] rows
    monkeypatch.setenv("EPTCTL_HOME", str(world["home"]))
    remote = load_embedding_backbone(MODEL)
    remote.remote = VllmClient(vllm["server"].base, MODEL, remote.tokenizer.eos_token_id)
    encoded = [encode_input(remote, servable, t) for t in texts]
    options = GenerationOptions(max_new_tokens=servable.max_new_tokens)
    batch = local.collate(encoded, None, train=False)
    ours = local.generate([servable.adapter], batch, options)
    theirs = remote.generate([servable.adapter], remote.collate(encoded, None, train=False), options)
    remote.remote.close()
    assert theirs == ours
    assert sum(len(t) for t in ours) > 8  # real outputs, not eos at once
    # through the router: its outputs equal the library's prediction and `eptctl predict` (fp32 forced)
    served = router.post({"adapter": servable.record.ref, "inputs": texts})
    assert served.status_code == 200, served.text
    outputs = [o["output"] for o in served.json()["outputs"]]
    expected = [r["output"] for r in predict(local, servable, [(t, None) for t in texts])]
    assert outputs == expected
    monkeypatch.setattr("eptctl.backbones.loading.default_precision", lambda device: "fp32")
    article_file = world["home"] / "articles.jsonl"
    import json

    article_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = CliRunner().invoke(app, ["predict", servable.record.ref, "--file", str(article_file),
                                      "--registry", world["url"]])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["output"] for line in result.stdout.splitlines()] == outputs


@pytest.mark.engine
@pytest.mark.slow
def test_label_scores_equal_local_scores_on_64_validation_rows(world, router):
    from eptctl.workflows.inference import predict

    texts = _split("rt-polarity", "validation", 64)
    servable = _servable(world, "pol")
    expected = predict(world["backbone"], servable, [(t, None) for t in texts])
    served = router.post({"adapter": servable.record.ref, "inputs": texts})
    assert served.status_code == 200, served.text
    outputs = served.json()["outputs"]
    assert len(outputs) == 64
    assert [o["label"] for o in outputs] == [e["label"] for e in expected]
    gaps = [abs(o["scores"][k] - e["scores"][k]) for o, e in zip(outputs, expected) for k in e["scores"]]
    assert max(gaps) < 1e-3, max(gaps)
    assert len({o["label"] for o in outputs}) == 2 or len({round(o["scores"]["fresh"], 3) for o in outputs}) > 8


@pytest.mark.engine
@pytest.mark.slow
def test_streamed_tokens_and_prompt_logprobs_match_the_engine_s_own_decoding(world, vllm, monkeypatch):
    """The Engine interface the OpenAI routes use: ``stream`` yields vLLM's greedy tokens (the same ids as the
    predict path), ``prompt_logprobs`` the local backbone's log-probabilities of the text after the prompt."""
    import asyncio

    import torch

    from eptctl.serving.engine import Finished, GenerateRequest, SamplingParams
    from eptctl.serving.engines.embedding import load_embedding_backbone
    from eptctl.serving.engines.vllm import VllmEngine, VllmSettings

    monkeypatch.setenv("EPTCTL_HOME", str(world["home"]))
    servable = _servable(world, "gen")
    engine = VllmEngine(load_embedding_backbone(MODEL), VllmSettings(vllm["server"].base))
    engine.verify()
    ids = engine.encode(servable, _split("bbc-headline", "test", 1)[0])

    async def run():
        events = [e async for e in engine.stream(GenerateRequest(servable, ids, SamplingParams(max_tokens=12)))]
        return events, await engine.prompt_logprobs(servable, ids[:10])

    events, logprobs = asyncio.run(run())
    engine.stop()
    *tokens, done = events
    assert isinstance(done, Finished) and done.completion_tokens == len(tokens) and done.prompt_tokens == len(ids)
    local = world["backbone"]
    from eptctl.backbones.base import EncodedExample
    from eptctl.backbones.decoding import GenerationOptions

    batch = local.collate([EncodedExample(list(ids), 0)], None, train=False)
    expected = local.generate([servable.adapter], batch, GenerationOptions(max_new_tokens=12))[0]
    assert [t.token_id for t in tokens] == expected
    assert "".join(t.text for t in tokens).strip() == local.tokenizer.decode(expected, skip_special_tokens=True).strip()
    # log p(x_t | P, x_<t) from the local model's full pass
    inputs = __import__("eptctl.backbones.prompted", fromlist=["PromptedModel"]).PromptedModel(
        local, [servable.adapter])(local.collate([EncodedExample(list(ids[:10]), 0)], None, train=False))
    with torch.no_grad():
        logits = local.model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits[0]
    s = servable.adapter.prompt.shape[0]
    ours = torch.log_softmax(logits.float(), -1)[s: s + 9].gather(1, torch.tensor(ids[1:10]).unsqueeze(1)).squeeze(1)
    assert logprobs[0] is None
    assert max(abs(a - b) for a, b in zip(logprobs[1:], ours.tolist())) < 1e-3


@pytest.mark.engine
@pytest.mark.slow
def test_the_openai_completions_route_on_the_vllm_engine_writes_what_predict_writes(world, router):
    """The OpenAI-compatible route over ``VllmEngine.stream``: greedy with the adapter's own budget, whole and
    streamed, the same text as ``/v1/predict`` (``model: REF`` fills the adapter's template, as predict does)."""
    import json

    ref, [text] = world["refs"]["gen"], _split("bbc-headline", "test", 1)
    expected = router.post({"adapter": ref, "inputs": [text]}).json()["outputs"][0]["output"]
    body = {"model": ref, "prompt": text, "temperature": 0}
    whole = httpx.post(f"{router.base}/v1/completions", json=body, timeout=120)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["text"].strip() == expected
    pieces = []
    with httpx.stream("POST", f"{router.base}/v1/completions", json={**body, "stream": True}, timeout=120) as streamed:
        assert streamed.status_code == 200
        for line in streamed.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces += [c.get("text", "") for c in json.loads(line[6:]).get("choices", [])]
    assert "".join(pieces).strip() == expected and len([p for p in pieces if p]) > 1


@pytest.mark.engine
@pytest.mark.slow
def test_multi_token_answers_and_encoder_adapters_are_refused_and_the_router_keeps_serving(world, router):
    refs = world["refs"]
    multi = router.post({"adapter": refs["multi"], "inputs": ["Great fun."]})
    assert multi.status_code in (400, 422), multi.text
    assert "several tokens" in multi.json()["error"] and "\n" not in multi.json()["error"]
    bert = router.post({"adapter": refs["bert"], "inputs": ["Great fun."]})
    assert bert.status_code == 409, bert.text  # trained on MiniLM: another backbone than the router's
    ok = router.post({"adapter": refs["pol"], "inputs": ["Great fun."]})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["label"] in ("rotten", "fresh")


def _serve_refused(world, *args: str) -> str:
    """`eptctl serve --engine vllm ARGS` must exit 2 with one line on stderr; that line."""
    from eptctl.serving.launch import free_port

    done = subprocess.run([sys.executable, "-m", "eptctl", "serve", "--engine", "vllm", "--registry", world["url"],
                           "--port", str(free_port()), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EPTCTL_HOME": str(world["home"])})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.engine
@pytest.mark.slow
def test_encoder_backbones_and_multi_token_adapters_are_refused_at_start(world, vllm):
    base = vllm["server"].base
    assert "causal" in _serve_refused(world, "--engine-url", base, "--model", "minilm-l6")
    assert "several tokens" in _serve_refused(world, "--engine-url", base, "--adapters", world["refs"]["multi"])


@pytest.mark.engine
@pytest.mark.slow
def test_a_vllm_server_serving_another_model_is_refused(world, vllm, tmp_path):
    """By name (what /v1/models lists) and by the embedding table (the probe): a router whose backbone is SmolLM2
    with another embedding table (same tokenizer and width, as a fine-tune that trained them would be) is refused
    by the vLLM server that runs the original."""
    import shutil

    import torch
    from safetensors.torch import save_file

    base = vllm["server"].base
    line = _serve_refused(world, "--engine-url", base, "--model", MODEL, "--engine-model", "another-model")
    assert "not 'another-model'" in line
    source = Path(world["home"]) / "vllm-model"
    other = tmp_path / "smollm2-retrained-embeddings"
    other.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, other / name)
    table = world["backbone"].model.get_input_embeddings().weight.detach().float()
    generator = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": (table + 0.5 * table.std() * torch.randn(table.shape, generator=generator))
               .contiguous()}, str(other / "model.safetensors"))
    line = _serve_refused(world, "--engine-url", base, "--model", str(other), "--engine-model", MODEL)
    assert "another input-embedding table" in line


@pytest.mark.engine
@pytest.mark.slow
def test_killing_vllm_gives_503_with_retry_after_and_the_router_recovers(world, vllm, router, folder):
    """Last in the module: it kills the module's vLLM server mid-traffic and starts a new one on the same port."""
    from eptctl.serving.engines.vllm_launch import LaunchOptions, start_vllm

    body = {"adapter": world["refs"]["gen"], "inputs": _split("bbc-headline", "test", 2)}
    before = router.post(body)
    assert before.status_code == 200, before.text
    results: list[tuple] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=router.base, timeout=60) as client:
            while not stop.is_set() and len(results) < 500:
                started = time.monotonic()
                response = client.post("/v1/predict", json=body)
                results.append((response.status_code, response.headers.get("retry-after"),
                                time.monotonic() - started))
                if response.status_code != 200:
                    time.sleep(0.05)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(r[0] == 200 for r in results) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    port = int(vllm["server"].base.rsplit(":", 1)[1])
    vllm["server"].kill()
    deadline = time.monotonic() + 30
    while sum(r[0] == 503 for r in results) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 10
    assert all(r[1] for r in results if r[0] == 503)  # Retry-After on every 503
    assert max(r[2] for r in results) < 30  # nothing hangs
    assert httpx.get(f"{router.base}/readyz", timeout=10).status_code == 503
    vllm["server"] = start_vllm(folder, MODEL, world["python"], world["home"] / "vllm.log", LaunchOptions(port=port))
    deadline = time.monotonic() + 60
    while httpx.get(f"{router.base}/readyz", timeout=10).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    after = router.post(body)
    assert after.status_code == 200, after.text
    assert after.json()["outputs"] == before.json()["outputs"]
