"""The OpenAI-compatible API of `eptctl serve` (`/v1/models`, `/v1/completions`, `/v1/chat/completions`), talked to
by the official ``openai`` Python client and by httpx, against a real server subprocess on a loopback port.

One server for the module: the tiny random Llama (fp32) with a registry of four tiny adapters (two generation
adapters of one task, a classifier whose labels are one and four tokens long, a regression adapter), a bearer token
(the client's ``api_key``) and a chat template given with ``--chat-template`` (the tiny byte-level tokenizer has
none; the embedded SmolLM2-135M-Instruct has its own). Every loop is bounded in count and time.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import random
import re
import time

import httpx
import pytest

from registry import Registry
from serve_support import LLAMA, tiny_adapters

openai = pytest.importorskip("openai")

TOKEN = "openai-test-token-0123456789"
TEXTS = ["Shares in the carmaker fell sharply after it cut its forecast.", "The striker scored twice in the final.",
         "Rain is expected across the north tomorrow.", "A new law on data privacy passed its first vote."]
# A small chat template in Jinja (ChatML-like), given to the server with --chat-template.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _custom_files(home):
    """A classification file (labels "y": one token, "nope": four) and a regression file."""
    rng = random.Random(0)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "yn.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(40):
            writer.writerow(["".join(rng.choice("ab" if i % 2 else "yz") for _ in range(5)), "y" if i % 2 else "nope"])
    with (home / "count.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "target"])
        for i in range(40):
            writer.writerow(["a" * (1 + i % 4), str(i % 4)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The registry: ``gen`` (bbc-headline, alias ``prod``), ``yn`` (labels y and nope), ``num`` (regression) on the
    tiny Llama, and ``t5`` (the yes/no task on the tiny T5: another backbone)."""
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import DataChoice, train_task

    home = tmp_path_factory.mktemp("openai-home")
    _custom_files(home)

    def more(reg, refs):
        def train(task, custom, seed=0, target=8, model=LLAMA):
            return train_task(task, registry=reg, model=model, max_train=16, max_eval=8, custom=custom,
                              method_cfg=EPTConfig(method="ept", prompt_length=6, max_length=64),
                              train_cfg=TrainConfig(steps=2, batch_size=8, eval_every=1, seed=seed,
                                                    max_target_length=target)).record.ref

        refs["gen"] = train("bbc-headline", None)
        refs["yn"] = train("yesno", DataChoice(str(home / "yn.csv")).options())
        refs["num"] = train("count", DataChoice(str(home / "count.csv"), task_type="regression").options(), target=4)
        refs["t5"] = train("yesno-t5", DataChoice(str(home / "yn.csv")).options(), model="tiny-random-t5")
        reg.set_alias(refs["gen"], "prod")

    world = tiny_adapters(home, (), prepare=more)
    (home / "chat.jinja").write_text(CHAT_TEMPLATE)
    return world


@pytest.fixture(scope="module")
def server(world, eptctl_server):
    srv = eptctl_server(world["home"], "--chat-template", str(world["home"] / "chat.jinja"), "--max-tokens", "512",
                        "--max-inputs", "8", registry=world["url"], token=TOKEN)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.base}/v1", api_key=TOKEN, max_retries=0, timeout=60) as c:
        yield c


def _post(server, path: str, body: dict, **kw) -> httpx.Response:
    kw.setdefault("headers", server.auth)
    return httpx.post(f"{server.base}{path}", json=body, timeout=60, **kw)


def _metrics(server) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}, names with colons (vLLM's convention) included."""
    text = httpx.get(f"{server.base}/metrics", timeout=10, headers=server.auth).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z0-9_:]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def _servable(world, name):
    from eptctl.workflows.inference import load_adapter

    reg = Registry(world["url"], artifacts=world["home"] / "artifacts")
    try:
        return load_adapter(reg, world["refs"][name])
    finally:
        reg.close()


def test_models_lists_adapters_latest_aliases_and_raw(client, world):
    refs = world["refs"]
    loaded = client.completions.create(model=refs["yn"], prompt="ab")  # loads yesno@1 into the server
    assert loaded.choices[0].text in ("y", "nope")
    models = {m.id: m for m in client.models.list().data}
    assert {"bbc-headline@latest", "bbc-headline@prod", "yesno@latest", "count@latest", refs["yn"]} <= models.keys()
    assert not any(m.startswith("yesno-t5") for m in models)  # another backbone's adapter is not servable here
    assert all(ref + ":raw" in models for ref in [r for r in models if not r.endswith(":raw")])
    entry = models["yesno@latest"]
    assert entry.owned_by == "eptctl" and entry.model_extra["root"] == LLAMA == entry.model_extra["parent"]
    info = entry.model_extra["eptctl"]
    assert info["task"] == "yesno" and info["task_type"] == "classification" and info["labels"] == ["nope", "y"]
    assert info["adapter"] == refs["yn"] and "validation:accuracy" in info["metrics"]
    assert models["bbc-headline@prod"].model_extra["eptctl"]["adapter"] == refs["gen"]
    assert models["count@latest:raw"].model_extra["eptctl"]["raw"] and not models["count@latest"].model_extra[
        "eptctl"]["raw"]


def test_greedy_completion_equals_eptctl_predict_token_for_token(client, world):
    from typer.testing import CliRunner

    from eptctl.cli.app import app

    ref = world["refs"]["gen"]
    cli = CliRunner().invoke(app, ["predict", ref, *TEXTS[:2], "--registry", world["url"]],
                             env={"EPTCTL_HOME": str(world["home"])})
    assert cli.exit_code == 0, cli.output
    want = [json.loads(line)["output"] for line in cli.stdout.splitlines()]
    got = client.completions.create(model=ref, prompt=TEXTS[:2], temperature=0, logprobs=0)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == want
    for choice in got.choices:
        tokens = choice.logprobs.tokens
        assert "".join(tokens).startswith(choice.text) and len(tokens) == len(choice.logprobs.token_logprobs)
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    usage, soft = got.usage, int(_servable(world, "gen").adapter.prompt.shape[0])
    assert usage.model_extra["eptctl_soft_prompt_tokens"] == 2 * soft
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == sum(len(c.logprobs.tokens) for c in got.choices)
    streamed = client.completions.create(model=ref, prompt=TEXTS[0], temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == got.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(got.choices[0].logprobs.tokens)


def test_classification_completion_carries_every_label_score(client, server, world):
    ref = world["refs"]["yn"]
    predicted = _post(server, "/v1/predict", {"adapter": ref, "inputs": TEXTS}).json()["outputs"]
    got = client.completions.create(model=ref, prompt=TEXTS)
    for want, choice in zip(predicted, sorted(got.choices, key=lambda c: c.index)):
        assert choice.text == want["label"] and choice.finish_reason == "stop"
        scores = choice.logprobs.top_logprobs[0]
        assert scores.keys() == want["scores"].keys()
        assert all(abs(scores[k] - want["scores"][k]) <= 1e-5 for k in scores)
    chat = client.chat.completions.create(model=ref, messages=[{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": TEXTS[0]}])
    assert chat.choices[0].message.content == predicted[0]["label"]
    scored = {t.token: t.logprob for t in chat.choices[0].logprobs.content[0].top_logprobs}
    assert all(abs(scored[k] - v) <= 1e-5 for k, v in predicted[0]["scores"].items())


def test_regression_completion_is_the_number(client, server, world):
    ref = world["refs"]["num"]
    value = _post(server, "/v1/predict", {"adapter": ref, "inputs": ["aaa"]}).json()["outputs"][0]["value"]
    got = client.completions.create(model=ref, prompt="aaa")
    assert float(got.choices[0].text) == value and got.choices[0].finish_reason == "stop"


def test_raw_echo_logprobs_equal_label_scores(server, world):
    """The evaluation-harness convention: REF:raw, the adapter's template filled and followed by an answer word,
    echo + logprobs + max_tokens 0; the mean log-probability of the answer's tokens is the label score."""
    from eptctl import backbones, data

    ref, servable = world["refs"]["yn"], _servable(world, "yn")
    answers = backbones.load(LLAMA).encode_answers(servable.spec.verbalizer).answers
    texts = ["abab", "zyzzy"]  # the prompt fits the adapter's 64 tokens
    predicted = _post(server, "/v1/predict", {"adapter": ref, "inputs": texts}).json()["outputs"]
    for text, want in zip(texts, predicted):
        context = servable.spec.prompt(data.Example(text=text, label=0))
        prompts = [context + " " + word for word in servable.spec.verbalizer]
        body = {"model": ref + ":raw", "prompt": prompts, "echo": True, "logprobs": 0, "max_tokens": 0}
        got = _post(server, "/v1/completions", body).json()
        for label, word_ids, prompt, choice in zip(servable.spec.labels, answers, prompts, got["choices"]):
            logprobs = choice["logprobs"]
            assert choice["text"] == prompt and choice["finish_reason"] == "length"
            assert logprobs["token_logprobs"][0] is None and len(logprobs["tokens"]) == len(logprobs["text_offset"])
            answer = logprobs["token_logprobs"][-len(word_ids):]
            assert abs(sum(answer) / len(answer) - want["scores"][label]) <= 1e-4, (label, len(word_ids))
        assert sorted(len(w) for w in answers) == [1, 4]  # a single- and a multi-token answer
        by_ids = _post(server, "/v1/completions", {**body, "prompt": _token_ids(prompts)}).json()
        assert [c["logprobs"]["token_logprobs"] for c in by_ids["choices"]] == \
            [c["logprobs"]["token_logprobs"] for c in got["choices"]]


def _token_ids(texts):
    from eptctl import backbones

    tokenizer = backbones.load(LLAMA).tokenizer
    return [tokenizer(t)["input_ids"] for t in texts]


def test_chat_completion_renders_the_conversation(client, world):
    from jinja2 import Template

    ref = world["refs"]["gen"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rain today."}]
    chat = client.chat.completions.create(model=ref + ":raw", messages=messages, temperature=0, max_tokens=10)
    rendered = Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    completion = client.completions.create(model=ref + ":raw", prompt=rendered, temperature=0, max_tokens=10)
    assert chat.choices[0].message.content == completion.choices[0].text
    assert chat.choices[0].finish_reason == completion.choices[0].finish_reason and chat.object == "chat.completion"
    streamed = list(client.chat.completions.create(model=ref + ":raw", messages=messages, temperature=0,
                                                   max_tokens=10, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
    assert streamed[0].choices[0].delta.role == "assistant"
    # REF: the last user message fills the adapter's template, as /v1/completions with that text
    templated = client.chat.completions.create(model=ref, messages=messages, temperature=0)
    assert templated.choices[0].message.content == client.completions.create(
        model=ref, prompt="Rain today.", temperature=0).choices[0].text


def test_sixteen_concurrent_streams_over_three_adapters(client, world):
    refs = world["refs"]
    models = [refs["gen"], refs["yn"] + ":raw", refs["num"] + ":raw"]  # every adapter decodes with :raw
    jobs = [(models[i % 3], TEXTS[i % len(TEXTS)], 6 + i % 5) for i in range(16)]
    want = {job: client.completions.create(model=job[0], prompt=job[1], max_tokens=job[2], temperature=0)
            for job in set(jobs)}

    def streamed(job):
        model, prompt, max_tokens = job
        with openai.OpenAI(base_url=str(client.base_url), api_key=TOKEN, max_retries=0, timeout=60) as own:
            chunks = list(own.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True))
        return job, chunks

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answered = list(pool.map(streamed, jobs, timeout=180))
    assert time.monotonic() - started < 180
    for job, chunks in answered:
        choice = want[job].choices[0]
        assert "".join(c.choices[0].text for c in chunks) == choice.text, job
        assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_seed_makes_sampling_reproducible(client, world):
    ref = world["refs"]["gen"]

    def sample(seed):
        return client.completions.create(model=ref + ":raw", prompt=TEXTS[2], temperature=1.0, top_p=0.95,
                                         seed=seed, max_tokens=12,
                                         extra_body={"top_k": 50, "ignore_eos": True}).choices[0].text

    first = sample(7)
    assert sample(7) == first and len(first) > 0
    assert len({first, sample(8), sample(9)}) > 1  # the seed decides: other seeds sample other texts


def test_stop_strings_and_max_tokens(client, world):
    ref = world["refs"]["gen"] + ":raw"
    full = client.completions.create(model=ref, prompt=TEXTS[3], temperature=0, max_tokens=12,
                                     extra_body={"ignore_eos": True})
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 12
    text = full.choices[0].text
    # a printable ASCII character past the start (a random model writes bytes; U+FFFD marks a partial character,
    # which a stop string cannot match)
    stop = next(c for c in text[2:] if c.isascii() and c.isprintable())
    cut = client.completions.create(model=ref, prompt=TEXTS[3], temperature=0, max_tokens=12,
                                    stop=[stop, "never-there"], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"


BAD = [  # (body, status, param)
    ({"model": "nope@1", "prompt": "x"}, 404, "model"),
    ({"model": "{t5}", "prompt": "x"}, 409, "model"),
    ({"model": "{gen}", "prompt": "x", "n": 2}, 400, "n"),
    ({"model": "{gen}", "prompt": "x", "best_of": 3}, 400, "best_of"),
    ({"model": "{gen}", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": "{gen}", "prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ({"model": "{gen}", "prompt": "x", "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ({"model": "{gen}", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ({"model": "{gen}", "prompt": "x", "max_tokens": 513}, 400, "max_tokens"),
    ({"model": "{gen}", "prompt": [1, 2, 3]}, 400, "prompt"),
    ({"model": "{gen}:raw", "prompt": [1, 10 ** 6]}, 400, "prompt"),
    ({"model": "{gen}:raw", "prompt": "a" * 70}, 400, "prompt"),
    ({"model": "{gen}", "prompt": ["x"] * 9}, 413, "prompt"),
    ({"model": "{gen}", "prompt": 3}, 422, "prompt"),
    ({"model": "{gen}", "prompt": "x", "temperature": -1}, 422, "temperature"),
    ({"model": "{yn}", "prompt": "x", "echo": True}, 400, "echo"),
    ({"model": "{gen}", "prompt": "   "}, 422, "prompt"),
]


def test_bad_input_gets_openai_shaped_errors_and_the_server_keeps_answering(server, client, world):
    refs = world["refs"]
    for body, status, param in BAD:
        body = {k: v.format(**refs) if isinstance(v, str) and k == "model" else v for k, v in body.items()}
        response = _post(server, "/v1/completions", body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (body, error)
        assert error["message"] and "\n" not in error["message"]
    chat = _post(server, "/v1/chat/completions", {"model": refs["gen"], "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    unauthorised = _post(server, "/v1/completions", {"model": refs["gen"], "prompt": "x"}, headers={})
    assert unauthorised.status_code == 401 and unauthorised.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope@latest", prompt="x")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=refs["gen"], messages=[{"role": "user", "content": "x"}], n=2)
    assert refused.value.body["param"] == "n"
    # unknown fields are ignored, as OpenAI does; eptctl's own route keeps its own shape
    fine = _post(server, "/v1/completions", {"model": refs["gen"], "prompt": "x", "max_tokens": 2, "user": "u",
                                             "metadata": {"a": 1}})
    assert fine.status_code == 200, fine.text
    own = _post(server, "/v1/predict", {"adapter": "nope@1", "inputs": ["x"]})
    assert own.status_code == 404 and set(own.json()) == {"error", "hint"}


def test_no_chat_template_is_a_400_with_a_hint(world, monkeypatch):
    """In process (the module's server has a template): the app on the tiny Llama without --chat-template."""
    from fastapi.testclient import TestClient

    from eptctl import backbones
    from eptctl.serving.app import create_app
    from eptctl.serving.config import ServeConfig

    monkeypatch.setenv("EPTCTL_HOME", str(world["home"]))
    reg = Registry(world["url"])
    with TestClient(create_app(reg, backbones.load(LLAMA), ServeConfig())) as http:
        answer = http.post("/v1/chat/completions", json={"model": "bbc-headline@prod:raw",
                                                         "messages": [{"role": "user", "content": "hi"}]})
        templated = http.post("/v1/chat/completions", json={"model": "bbc-headline@prod", "max_tokens": 2,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    reg.close()
    assert templated.status_code == 200  # REF fills the adapter's template: no chat template needed
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "chat_template_missing" and "--chat-template" in error["message"]


def test_disconnected_stream_frees_its_row(server, world):
    """A client that goes away after 20 of 500 tokens: its row leaves the running batch well before the 480 left
    would have taken (timed from the stream's own pace)."""
    body = {"model": world["refs"]["gen"] + ":raw", "prompt": TEXTS[0], "max_tokens": 500, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.base}/v1/completions", json=body, headers=server.auth, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = (line for line in r.iter_lines() if line.startswith("data: {"))
        next(events)
        first = time.monotonic()
        for _ in range(19):
            next(events)
        per_token = (time.monotonic() - first) / 19
        assert _metrics(server)["eptctl:num_requests_running"] == 1  # decoding, as the stream is read
    gone = time.monotonic()
    left = 480 * per_token  # what finishing the stream would have taken
    while _metrics(server)["eptctl:num_requests_running"] > 0 and time.monotonic() - gone < left:
        time.sleep(0.02)
    freed = time.monotonic() - gone
    assert _metrics(server)["eptctl:num_requests_running"] == 0 and freed < left / 2, (freed, left)


def test_metrics_in_vllm_names_and_predict_422_counted(server, world):
    ref = world["refs"]["gen"]
    _post(server, "/v1/completions", {"model": ref, "prompt": TEXTS[0], "max_tokens": 3})
    counted = ('eptctl_requests_total{adapter="unresolved",status="422"}',
               'eptctl_requests_total{adapter="unresolved",status="401"}',
               'eptctl_errors_total{route="/v1/predict",status="401"}',
               'eptctl_errors_total{route="/v1/completions",status="401"}')
    before = _metrics(server)
    assert _post(server, "/v1/predict", {"adapter": 3}).status_code == 422  # refused by validation
    assert _post(server, "/v1/predict", {"adapter": ref, "inputs": ["x"]}, headers={}).status_code == 401
    assert _post(server, "/v1/completions", {"model": ref, "prompt": "x"}, headers={}).status_code == 401
    metrics = _metrics(server)  # every answer of /v1/predict is a request; refusals before routing are the route's
    assert all(metrics[key] == before.get(key, 0) + 1 for key in counted), {k: metrics.get(k) for k in counted}
    for name in ("time_to_first_token_seconds_count", "e2e_request_latency_seconds_count",
                 "time_per_output_token_seconds_count", "generation_tokens_total", "prompt_tokens_total"):
        assert metrics[f'eptctl:{name}{{model_name="{ref}"}}'] > 0, name
    assert any(re.fullmatch(rf'eptctl:request_success_total\{{finished_reason="\w+",model_name="{re.escape(ref)}"\}}',
                            k) for k in metrics)
    assert "eptctl:num_requests_waiting" in metrics
