"""The training loop: parameter groups, warmup + linear decay, periodic eval, best checkpoint, exact resume.

No printing here: progress is reported as typed events (:mod:`eptctl.core.events`) that the CLI renders with Rich.
The loop knows nothing about the registry: it returns a :class:`TrainResult` that a workflow registers.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eptctl.backbones.base import Backbone, EncodedExample, TaskEncoding
from eptctl.core import events
from eptctl.core.errors import EptctlError, TrainingInterrupted
from eptctl.engine import distributed, training_state
from eptctl.engine.config import TrainConfig
from eptctl.engine.scoring import TaskKind, evaluate_encoded
from eptctl.methods import EPTAdapter, EPTConfig, initial_prompt, prompt_length_of


@dataclass
class TrainResult:
    """What :func:`fit` returns: the best adapter, its metrics and the state to store or resume from."""

    adapter: EPTAdapter  # the best adapter (by validation metric)
    best_step: int
    steps: int
    metrics: dict[str, dict[str, float]]  # split -> name -> value, of the best adapter
    history: list[dict]  # eval points and loss curve
    state: training_state.TrainingState  # the final state (stored as the adapter's training_state artifact)
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
def fit(
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
    kind: TaskKind | None = None,
    init_tensors: dict[str, torch.Tensor] | None = None,
    adapter: EPTAdapter | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_event: events.EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one adapter on encoded examples; returns the adapter of the last step, or with ``eval_every`` the best one
    by validation ``metric`` (higher is better) among the evaluated steps.

    ``kind`` says how to evaluate (generation decodes, regression parses numbers; default: classification with
    ``num_labels`` labels). ``num_labels`` also sizes an encoder's head (1 for regression).

    Raises ``EptctlError`` for an empty training set or a diverging loss, and ``TrainingInterrupted`` (after a
    clean checkpoint at ``checkpoint_path``) when ``should_stop()`` turns true; ``resume=True`` continues from it.
    """
    if not train_set:
        raise EptctlError("the training set is empty", hint="check the data file and its label column")
    emit = on_event or events.ignore
    started = time.perf_counter()
    adapter = adapter or new_adapter(backbone, method_cfg, num_labels, train_cfg.seed, init_tensors)
    objective = train_cfg.objective_for("classification" if kind is None else kind.task_type)
    total = train_cfg.total_steps(len(train_set))
    optimizer, scheduler = build_optimizer(adapter, train_cfg, total)
    # None: no in-training validation; the last step is kept (the schedule has decayed to 0 there) and validated once
    # at the end. Picking the best of a few 200-row evaluations cost a sixth of a default run and added noise.
    eval_every = train_cfg.eval_every
    val_for_training = list(validation_set)
    if train_cfg.max_eval_examples:
        val_for_training = val_for_training[: train_cfg.max_eval_examples]

    distributed.broadcast_params(adapter)  # data parallel: every replica starts from rank 0's adapter
    step, best_step, best_metric, history = 0, 0, None, []
    best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    # Only rank 0 writes checkpoints (other nodes may not share its disk), so rank 0 reads and hands it round.
    saved = distributed.from_rank0(lambda: training_state.load(checkpoint_path) if resume and checkpoint_path
                                   is not None and checkpoint_path.exists() else None)
    if saved is not None:
        adapter.load_state_dict(saved.adapter)
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict({**saved.scheduler, "lr_lambdas": [None] * len(optimizer.param_groups)})
        step, best_state, best_step, best_metric = saved.step, saved.best, saved.best_step, saved.best_metric
        history = saved.history
        emit(events.Resumed(step=step, total=total))
    emit(events.TrainingStarted(total=total, step=step, params=adapter.params_by_group(),
                                batch_size=train_cfg.batch_size, eval_every=eval_every or 0,
                                eval_rows=len(val_for_training), final_rows=len(validation_set) + len(test_set)))

    lengths = [len(e.input_ids) for e in train_set]
    per_epoch = math.ceil(len(train_set) / train_cfg.batch_size)

    def state() -> training_state.TrainingState:
        return training_state.TrainingState(
            adapter={k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()}, best=best_state,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), step=step, best_step=best_step,
            best_metric=best_metric, history=history)

    def checkpoint() -> None:
        if checkpoint_path is not None and distributed.is_main():
            training_state.save(checkpoint_path, state())

    params = [p for g in optimizer.param_groups for p in g["params"]]
    adapter.train()
    while step < total:
        epoch, within = divmod(step, per_epoch)
        # The same order on every rank (a function of the seed); each rank then takes its slice of the batch.
        order = length_bucketed_batches(lengths, train_cfg.batch_size, train_cfg.seed, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss = _forward_backward(backbone, adapter, [train_set[i] for i in order[within]], answers,
                                 objective, params, step)
        torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({"step": step, "loss": round(loss, 6)})
        emit(events.StepDone(step=step, total=total, loss=loss, lr=scheduler.get_last_lr()[0]))
        if eval_every and (step % eval_every == 0 or step == total):
            adapter.eval()
            val = evaluate_encoded(backbone, adapter, val_for_training, answers, train_cfg.eval_batch_size,
                                   sharded=True, kind=kind)
            adapter.train()
            value = val.get(metric)
            history.append({"step": step, "validation": val})
            if value is not None and (best_metric is None or value > best_metric):
                best_metric, best_step = value, step
                best_state = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
            emit(events.Evaluated(step=step, total=total, metrics=val, best_step=best_step,
                                  examples=len(val_for_training)))
            checkpoint()
        elif step % train_cfg.checkpoint_every == 0:
            checkpoint()
        if should_stop is not None and distributed.any_rank(should_stop()) and step < total:
            checkpoint()
            raise TrainingInterrupted(f"stopped at step {step} of {total}; checkpoint saved",
                                      hint="run the same command with --resume to continue")

    if not eval_every:
        best_step, best_state = step, {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    final = state()
    adapter.load_state_dict(best_state)
    adapter.eval()
    emit(events.FinalEvaluation(best_step=best_step))
    metrics = {"validation": evaluate_encoded(backbone, adapter, validation_set, answers, train_cfg.eval_batch_size,
                                              sharded=True, kind=kind)}
    if test_set:
        metrics["test"] = evaluate_encoded(backbone, adapter, test_set, answers, train_cfg.eval_batch_size,
                                           sharded=True, kind=kind)
    if not eval_every:  # the one validation of the run, on every validation row, as the curve's point
        history.append({"step": step, "validation": metrics["validation"]})
    emit(events.TrainingDone(metrics=metrics, best_step=best_step))
    return TrainResult(
        adapter=adapter,
        best_step=best_step,
        steps=step,
        metrics=metrics,
        history=history,
        state=final,
        duration_s=time.perf_counter() - started,
        truncated=sum(e.truncated for e in (*train_set, *validation_set, *test_set)),
        params_by_group=adapter.params_by_group(),
    )
