"""The training loop: parameter groups, warmup + linear decay, periodic eval, best checkpoint, exact resume.

No printing here: progress is reported through an ``on_event`` callback that the CLI renders with Rich.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from eptctl import distributed
from eptctl.backbones import Backbone, EncodedExample, TaskEncoding
from eptctl.errors import EptctlError, TrainingInterrupted
from eptctl.train_config import TrainConfig
from eptctl.methods import EPTAdapter, EPTConfig, initial_prompt, prompt_length_of

Event = dict
TRAIN_SCHEMA_VERSION = 1


@dataclass
class TrainResult:
    adapter: EPTAdapter  # the best adapter (by validation metric)
    best_step: int
    steps: int
    metrics: dict[str, dict[str, float]]  # split -> name -> value, of the best adapter
    history: list[dict]  # eval points and loss curve
    training_state: dict[str, torch.Tensor]
    training_metadata: dict[str, str]
    duration_s: float
    truncated: int
    params_by_group: dict[str, int]


# --- batching -------------------------------------------------------------------------------------------------------
def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle, then sort within windows of 50 batches so rows of a batch have similar length (less padding)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start: start + window], key=lambda i: lengths[i])
        batches += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[j: j + batch_size] for j in range(0, len(order), batch_size)]


# --- evaluation -----------------------------------------------------------------------------------------------------
def predict_scores(backbone: Backbone, source, encoded: Sequence[EncodedExample], answers: TaskEncoding,
                   batch_size: int = 64) -> torch.Tensor:
    """[N, num_labels] label scores for encoded examples, in input order."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    with torch.no_grad():
        for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
            batch = backbone.collate([encoded[i] for i in idx], answers, train=False).to(backbone.device)
            for i, scores in zip(idx, backbone.score([source], batch, [answers])):
                out[i] = scores.float().cpu()
    return torch.stack(out) if out else torch.empty(0)


def classification_metrics(scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    preds = scores.argmax(dim=1).tolist()
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def evaluate(backbone: Backbone, source, encoded: Sequence[EncodedExample], answers: TaskEncoding,
             batch_size: int = 64, *, sharded: bool = False) -> dict[str, float]:
    """Metrics over ``encoded``. ``sharded`` (data parallel): each rank scores its slice, the scores are gathered, and
    every rank computes the same metrics from the same full score matrix (so all ranks pick the same best step)."""
    if not encoded:
        return {}
    if sharded and distributed.is_distributed():
        lo, hi = distributed.shard(len(encoded))
        parts = distributed.gather(predict_scores(backbone, source, encoded[lo:hi], answers, batch_size))
        scores = torch.cat([p for p in parts if p.numel()])
    else:
        scores = predict_scores(backbone, source, encoded, answers, batch_size)
    return classification_metrics(scores, [e.label for e in encoded])


# --- optimisation ---------------------------------------------------------------------------------------------------
def build_optimizer(adapter: EPTAdapter, cfg: TrainConfig, total_steps: int):
    lrs = {"prompt": cfg.lr_prompt, "low_rank": cfg.lr_low_rank, "fusion": cfg.lr_fusion,
           "projection": cfg.lr_fusion, "gate": cfg.lr_fusion, "transfer": cfg.lr_fusion, "head": cfg.lr_head}
    groups = [{"params": ps, "lr": lrs[name], "name": name}
              for name, ps in adapter.parameter_groups().items() if ps]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total_steps // 10)

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def new_adapter(backbone: Backbone, cfg: EPTConfig, num_labels: int, seed: int,
                init_tensors: dict[str, torch.Tensor] | None = None) -> EPTAdapter:
    """A fresh adapter for this backbone: DePT init, or given init tensors (fused transfer)."""
    cfg = cfg.resolved(backbone.width)
    length = prompt_length_of(cfg)
    generator = torch.Generator().manual_seed(seed)
    token_ids = None
    if cfg.prompt_init == "text":
        token_ids = backbone.tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
    embeddings = backbone.model.get_input_embeddings().weight.detach().float().cpu()
    prompt = initial_prompt(cfg, embeddings, length, token_ids=token_ids, generator=generator,
                            tensors=None if init_tensors is None else init_tensors.get("decomposition.prompt"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # A, fusion and space maps are random: make them a function of the seed
        adapter = EPTAdapter(cfg, backbone.width, prompt, num_labels if backbone.family == "encoder" else None)
    if init_tensors:
        missing = adapter.load_state_dict(init_tensors, strict=False)
        del missing
    return adapter.to(backbone.device)


# --- checkpoints ----------------------------------------------------------------------------------------------------
def _flatten_state(adapter, best_state, optimizer, scheduler, step, best_step, best_metric, history) -> tuple[dict, dict]:
    tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "format": "eptctl-training-state",
        "schema_version": str(TRAIN_SCHEMA_VERSION),
        "step": str(step),
        "best_step": str(best_step),
        "best_metric": json.dumps(best_metric),
        "optim_param_groups": json.dumps(opt["param_groups"]),
        "scheduler": json.dumps(sched),
        "history": json.dumps(history),
    }
    return tensors, meta


def save_checkpoint(path: Path, tensors: dict, meta: dict) -> None:
    """Atomic: temp file, fsync, rename; a crash mid-write leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("format") != "eptctl-training-state":
        raise EptctlError(f"{path} is not an eptctl training checkpoint", hint="start without --resume")
    return tensors, meta


def _restore(tensors, meta, adapter, optimizer, scheduler):
    adapter.load_state_dict({k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    best_state = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["optim_param_groups"])})
    sched = json.loads(meta["scheduler"])
    sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(sched)
    return (int(meta["step"]), best_state, int(meta["best_step"]), json.loads(meta["best_metric"]),
            json.loads(meta["history"]))


def _forward_backward(backbone: Backbone, adapter: EPTAdapter, examples: list[EncodedExample], answers: TaskEncoding,
                      objective: str, params: list, step: int) -> float:
    """The loss of one global batch, with its gradient left in ``params``' ``.grad``.

    Data parallel: this rank takes its slice; its mean loss is weighted by its share of the global batch's loss terms
    and the gradients are summed over ranks, which is the gradient of the mean over the whole global batch. In one
    process the slice is the whole batch, the weight is exactly 1 and the collectives are no-ops.
    """
    lo, hi = distributed.shard(len(examples))
    loss, terms = None, 0
    if hi > lo:  # a global batch smaller than the world leaves some ranks without rows
        batch = backbone.collate(examples[lo:hi], answers, train=True).to(backbone.device)
        loss = backbone.loss(adapter, batch, answers, objective)
        terms = backbone.loss_terms(batch, answers, objective)
    total, all_terms = distributed.all_reduce_sum([0.0 if loss is None else loss.item() * terms, terms])
    _check_finite(total / all_terms, step)  # the global loss: every rank raises, or none
    if loss is not None:
        (loss * (terms / all_terms)).backward()
    distributed.all_reduce_grads(params)
    return total / all_terms


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise EptctlError(f"training diverged at step {step + 1} (loss {loss})",
                          hint="lower the learning rates, e.g. --lr-prompt and --lr-low-rank")


# --- the loop -------------------------------------------------------------------------------------------------------
def train(
    backbone: Backbone,
    train_set: Sequence[EncodedExample],
    validation_set: Sequence[EncodedExample],
    answers: TaskEncoding,
    method_cfg: EPTConfig,
    train_cfg: TrainConfig = TrainConfig(),
    *,
    num_labels: int,
    test_set: Sequence[EncodedExample] = (),
    metric: str = "accuracy",
    init_tensors: dict[str, torch.Tensor] | None = None,
    adapter: EPTAdapter | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one adapter on encoded examples; returns the best adapter by validation ``metric``."""
    if not train_set:
        raise EptctlError("the training set is empty", hint="check the data file and its label column")
    emit = on_event or (lambda event: None)
    started = time.perf_counter()
    adapter = adapter or new_adapter(backbone, method_cfg, num_labels, train_cfg.seed, init_tensors)
    total = train_cfg.total_steps(len(train_set))
    optimizer, scheduler = build_optimizer(adapter, train_cfg, total)
    eval_every = train_cfg.eval_every or max(1, total // 5)
    val_for_training = list(validation_set)
    if train_cfg.max_eval_examples:
        val_for_training = val_for_training[: train_cfg.max_eval_examples]

    distributed.broadcast_params(adapter)  # data parallel: every replica starts from rank 0's adapter
    step, best_step, best_metric, history = 0, 0, None, []
    best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    # Only rank 0 writes checkpoints (other nodes may not share its disk), so rank 0 reads and hands it round.
    saved = distributed.from_rank0(lambda: load_checkpoint(checkpoint_path) if resume and checkpoint_path is not None
                                   and checkpoint_path.exists() else None)
    if saved is not None:
        step, best_state, best_step, best_metric, history = _restore(*saved, adapter, optimizer, scheduler)
        emit({"event": "resumed", "step": step, "total": total})
    emit({"event": "start", "total": total, "step": step, "params": adapter.params_by_group()})

    lengths = [len(e.input_ids) for e in train_set]
    per_epoch = math.ceil(len(train_set) / train_cfg.batch_size)

    def checkpoint() -> None:
        if checkpoint_path is not None and distributed.is_main():
            save_checkpoint(checkpoint_path, *_flatten_state(adapter, best_state, optimizer, scheduler, step,
                                                             best_step, best_metric, history))

    params = [p for g in optimizer.param_groups for p in g["params"]]
    adapter.train()
    while step < total:
        epoch, within = divmod(step, per_epoch)
        # The same order on every rank (a function of the seed); each rank then takes its slice of the batch.
        order = length_bucketed_batches(lengths, train_cfg.batch_size, train_cfg.seed, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss = _forward_backward(backbone, adapter, [train_set[i] for i in order[within]], answers,
                                 train_cfg.objective, params, step)
        torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({"step": step, "loss": round(loss, 6)})
        emit({"event": "step", "step": step, "total": total, "loss": loss, "lr": scheduler.get_last_lr()[0]})
        if step % eval_every == 0 or step == total:
            adapter.eval()
            val = evaluate(backbone, adapter, val_for_training, answers, train_cfg.eval_batch_size, sharded=True)
            adapter.train()
            value = val.get(metric)
            history.append({"step": step, "validation": val})
            if value is not None and (best_metric is None or value > best_metric):
                best_metric, best_step = value, step
                best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
            emit({"event": "eval", "step": step, "total": total, "metrics": val, "best_step": best_step})
            checkpoint()
        elif step % train_cfg.checkpoint_every == 0:
            checkpoint()
        if should_stop is not None and distributed.any_rank(should_stop()) and step < total:
            checkpoint()
            raise TrainingInterrupted(f"stopped at step {step} of {total}; checkpoint saved",
                                      hint="run the same command with --resume to continue")

    final_state, final_meta = _flatten_state(adapter, best_state, optimizer, scheduler, step, best_step,
                                             best_metric, history)
    adapter.load_state_dict(best_state)
    adapter.eval()
    emit({"event": "final_eval", "best_step": best_step})
    metrics = {"validation": evaluate(backbone, adapter, validation_set, answers, train_cfg.eval_batch_size,
                                      sharded=True)}
    if test_set:
        metrics["test"] = evaluate(backbone, adapter, test_set, answers, train_cfg.eval_batch_size, sharded=True)
    emit({"event": "done", "metrics": metrics, "best_step": best_step})
    return TrainResult(
        adapter=adapter,
        best_step=best_step,
        steps=step,
        metrics=metrics,
        history=history,
        training_state=final_state,
        training_metadata=final_meta,
        duration_s=time.perf_counter() - started,
        truncated=sum(e.truncated for e in (*train_set, *validation_set, *test_set)),
        params_by_group=adapter.params_by_group(),
    )
