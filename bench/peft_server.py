"""The baseline a user would write today: one PEFT prompt-tuning adapter per task on one PeftModel, behind the same
kind of FastAPI app, switching adapters per request (``set_adapter``) and scoring one request per forward pass.

    python -m bench.peft_server --model tiny-random-llama --port 8100 --adapters 4 --virtual-tokens 12

Same request and response shape as ``eptctl serve`` (``{"adapter": "a0", "inputs": [...]}`` -> label scores at each
row's last token for the first token of every rt-polarity answer). Only for ``python -m bench serve``.
"""

from __future__ import annotations

import argparse
import threading


def build_app(model: str, adapters: int, virtual_tokens: int):
    import torch
    from fastapi import FastAPI
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from bench.ondevice import build_on_gpu_if_present
    from eptctl import backbones, data

    build_on_gpu_if_present()  # a random shape is born on the GPU, as the eptctl servers' are (same weights)
    backbone = backbones.load(model)
    spec = data.builtin_task("rt-polarity")
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual_tokens)
    peft_model = get_peft_model(backbone.model, config, adapter_name="a0")
    for i in range(1, adapters):
        peft_model.add_adapter(f"a{i}", config)
    peft_model.eval()
    answer_ids = [backbone.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in spec.verbalizer]
    tokenizer, lock = backbone.tokenizer, threading.Lock()
    tokenizer.padding_side = "left"  # the last position is every row's last token
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(body: dict):  # a plain def: FastAPI runs it in its thread pool, off the event loop
        texts = [spec.template.format(text=t, text_pair="") for t in body["inputs"]]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(backbone.device)  # where the model is
        with lock, torch.no_grad():  # one adapter active at a time: requests take turns
            peft_model.set_adapter(body["adapter"])
            logits = peft_model(**batch).logits[:, -1].float()
        scores = torch.log_softmax(logits, dim=-1)[:, answer_ids]
        return {"outputs": [{"adapter": body["adapter"], "label": spec.labels[int(row.argmax())],
                             "scores": dict(zip(spec.labels, map(float, row)))} for row in scores]}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.peft_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--virtual-tokens", type=int, default=12)
    args = parser.parse_args()
    app = build_app(args.model, args.adapters, args.virtual_tokens)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
