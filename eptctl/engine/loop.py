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
from eptctl.data.task_types import DEFAULT_TASK_TYPE
from eptctl.engine import distributed, training_state
from eptctl.engine.config import TrainConfig, split_options
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
                      objective: str, params: list, step: int) -> tuple[torch.Tensor | None, int, int]:
    """This rank's share of the loss of one global batch, with the gradient left in ``params``' ``.grad``:
    ``(loss, terms, all_terms)``, the loss a detached device scalar (None on a rank without rows) that is read later
    (``_Loop._read_losses``), never here: no host-device sync in a step. ``step`` is kept for callers' timings.

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
    all_terms = int(distributed.all_reduce_sum([terms])[0])  # host ints: terms come from collate's bookkeeping
    if loss is not None:
        (loss * (terms / all_terms)).backward()
    distributed.all_reduce_grads(params)
    return (None if loss is None else loss.detach()), terms, all_terms


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise EptctlError(f"training diverged at step {step + 1} (loss {loss})",
                          hint="lower the learning rates, e.g. --lr-prompt and --lr-low-rank")


LOSS_READ_EVERY = 10  # steps between reads of the losses (also read at step 1, the last step, evals, checkpoints)


# --- the loop -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitTask:
    """The task as the loop sees it: what it learns and how it is judged.

    ``num_labels``: label count of classification scoring, and the size of an encoder's head (1 for regression);
    ``metric``: the validation metric that picks the best step (higher is better); ``kind``: how to evaluate
    (generation decodes, regression parses numbers; None: classification with ``num_labels`` labels); ``test_set``:
    encoded rows evaluated once at the end (none: no test metrics). Raises ``ValueError`` for a negative
    ``num_labels`` or an empty ``metric``.
    """

    num_labels: int
    metric: str = "accuracy"
    kind: TaskKind | None = None
    test_set: Sequence[EncodedExample] = ()

    def __post_init__(self) -> None:
        if self.num_labels < 0:
            raise ValueError(f"num_labels must be at least 0, got {self.num_labels}")
        if not self.metric:
            raise ValueError("metric must name the validation metric, e.g. 'accuracy'")

    @classmethod
    def of(cls, spec, max_new_tokens: int, test_set: Sequence[EncodedExample] = (), stop: tuple[str, ...] = ()
           ) -> FitTask:
        """The ``FitTask`` of a ``data.TaskSpec`` whose generated answers may take ``max_new_tokens`` tokens and
        end at ``stop`` (the default stop strings the adapter will record)."""
        return cls(num_labels=spec.head_size, metric=spec.metric,
                   kind=TaskKind.of(spec, max_new_tokens=max_new_tokens, stop=stop), test_set=test_set)


@dataclass(frozen=True)
class FitRun:
    """Where a run of :func:`fit` starts and how it is driven; nothing here changes the numbers of a fresh run.

    Start: ``adapter`` (train this one) or ``init_tensors`` (a fresh adapter loaded with them, e.g. a fused
    transfer); ``checkpoint_path`` with ``resume=True`` continues from the training state saved there (a missing
    file starts fresh). Driving: ``on_event`` receives the typed events; the loop stops with a clean checkpoint when
    ``should_stop()`` turns true. Raises ``ValueError`` for ``resume`` without ``checkpoint_path`` or for both
    ``adapter`` and ``init_tensors``.
    """

    init_tensors: dict[str, torch.Tensor] | None = None
    adapter: EPTAdapter | None = None
    checkpoint_path: Path | None = None
    resume: bool = False
    on_event: events.EventHandler | None = None
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs the checkpoint_path to resume from")
        if self.adapter is not None and self.init_tensors is not None:
            raise ValueError("give either an adapter to train or init_tensors for a fresh one, not both")


# fit's keyword groups: a group by its name (run=FitRun(...)) or its fields one by one (resume=True).
FIT_OPTIONS = {"task": FitTask, "run": FitRun}


def _copy(adapter: EPTAdapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


def fit(
    backbone: Backbone,
    train_set: Sequence[EncodedExample],
    validation_set: Sequence[EncodedExample],
    answers: TaskEncoding,
    method_cfg: EPTConfig,
    train_cfg: TrainConfig = TrainConfig(),
    **options,
) -> TrainResult:
    """Train one adapter on encoded examples; returns the adapter of the last step, or with ``eval_every`` the best one
    by validation ``task.metric`` (higher is better) among the evaluated steps.

    ``options`` are two keyword groups, each given whole or field by field (``FIT_OPTIONS``): ``task``
    (:class:`FitTask`, required: what is learned and how it is evaluated: ``num_labels``, ``metric``, ``kind``,
    ``test_set``) and ``run`` (:class:`FitRun`: where the run starts, where it checkpoints, who watches it:
    ``init_tensors``, ``adapter``, ``checkpoint_path``, ``resume``, ``on_event``, ``should_stop``). Raises
    ``TypeError`` for an unknown keyword or without ``num_labels``.

    Raises ``EptctlError`` for an empty training set or a diverging loss, and ``TrainingInterrupted`` (after a
    clean checkpoint at ``run.checkpoint_path``) when ``run.should_stop()`` turns true; ``run.resume`` continues
    from it.
    """
    groups = split_options(options, FIT_OPTIONS, "fit")
    task: FitTask = groups["task"]
    run: FitRun = groups["run"]
    if not train_set:
        raise EptctlError("the training set is empty", hint="check the data file and its label column")
    started = time.perf_counter()
    adapter = run.adapter or new_adapter(backbone, method_cfg, task.num_labels, train_cfg.seed, run.init_tensors)
    kind = task.kind
    objective = train_cfg.objective_for(DEFAULT_TASK_TYPE if kind is None else kind.task_type)
    loop = _Loop(backbone, adapter, answers, train_cfg, task, run, objective,
                 total=train_cfg.total_steps(len(train_set)))
    # By default the validations only draw the curve, on a few rows; the last step is kept (the schedule has decayed
    # to 0 there). Picking the best of a few 200-row evaluations cost a sixth of a default run and added noise.
    val_for_training = list(validation_set)[: train_cfg.validation_examples]
    loop.resume()
    loop.emit(events.TrainingStarted(total=loop.total, step=loop.step, params=adapter.params_by_group(),
                                     batch_size=train_cfg.batch_size, eval_every=train_cfg.eval_every or 0,
                                     eval_steps=tuple(sorted(loop.eval_steps)), eval_rows=len(val_for_training),
                                     final_rows=len(validation_set) + len(task.test_set)))
    loop.train(train_set, val_for_training)
    final, metrics = loop.finish(validation_set)
    return TrainResult(
        adapter=adapter,
        best_step=loop.best_step,
        steps=loop.step,
        metrics=metrics,
        history=loop.history,
        state=final,
        duration_s=time.perf_counter() - started,
        truncated=sum(e.truncated for e in (*train_set, *validation_set, *task.test_set)),
        params_by_group=adapter.params_by_group(),
    )


class _Loop:
    """One run of :func:`fit`: the adapter, its optimiser and schedule, and the bookkeeping a checkpoint stores."""

    def __init__(self, backbone: Backbone, adapter: EPTAdapter, answers: TaskEncoding, cfg: TrainConfig,
                 task: FitTask, run: FitRun, objective: str, total: int):
        self.backbone, self.adapter, self.answers, self.cfg, self.task, self.run = (
            backbone, adapter, answers, cfg, task, run)
        self.objective, self.total = objective, total
        self.eval_steps = set(cfg.validation_steps(total))
        self.emit = run.on_event or events.ignore
        self.optimizer, self.scheduler = build_optimizer(adapter, cfg, total)
        distributed.broadcast_params(adapter)  # data parallel: every replica starts from rank 0's adapter
        self.step, self.best_step, self.best_metric, self.history = 0, 0, None, []
        self.best_state = _copy(adapter)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.pending: list[tuple[int, torch.Tensor | None, int, int]] = []  # (step, loss, terms, all_terms) unread
        self.last_loss = math.nan  # the last loss read (what StepDone reports between reads)
        self.last_loss_step = 0  # the step that loss belongs to

    def resume(self) -> None:
        """With ``run.resume``, continue from the checkpoint if there is one."""
        path = self.run.checkpoint_path
        # Only rank 0 writes checkpoints (other nodes may not share its disk), so rank 0 reads and hands it round.
        saved = distributed.from_rank0(lambda: training_state.load(path) if self.run.resume and path
                                       is not None and path.exists() else None)
        if saved is None:
            return
        self.adapter.load_state_dict(saved.adapter)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict({**saved.scheduler, "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        self.step, self.best_state, self.best_step, self.best_metric = (
            saved.step, saved.best, saved.best_step, saved.best_metric)
        self.history = saved.history
        self.emit(events.Resumed(step=self.step, total=self.total))

    def state(self) -> training_state.TrainingState:
        self._read_losses()  # the history a checkpoint stores is complete
        return training_state.TrainingState(
            adapter={k: v.detach().cpu().clone() for k, v in self.adapter.state_dict().items()},
            best=self.best_state, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            step=self.step, best_step=self.best_step, best_metric=self.best_metric, history=self.history)

    def checkpoint(self) -> None:
        if self.run.checkpoint_path is not None and distributed.is_main():
            training_state.save(self.run.checkpoint_path, self.state())

    def train(self, train_set: Sequence[EncodedExample], val_rows: list[EncodedExample]) -> None:
        """Step until ``total``: validate at the schedule's steps, checkpoint, stop when asked."""
        cfg, should_stop = self.cfg, self.run.should_stop
        lengths = [len(e.input_ids) for e in train_set]
        per_epoch = math.ceil(len(train_set) / cfg.batch_size)
        self.adapter.train()
        while self.step < self.total:
            epoch, within = divmod(self.step, per_epoch)
            # The same order on every rank (a function of the seed); each rank then takes its slice of the batch.
            order = length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch)
            self._step([train_set[i] for i in order[within]])
            if self.step in self.eval_steps:
                self._evaluate(val_rows)
                self.checkpoint()
            elif self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
            if should_stop is not None and distributed.any_rank(should_stop()) and self.step < self.total:
                self.checkpoint()
                raise TrainingInterrupted(f"stopped at step {self.step} of {self.total}; checkpoint saved",
                                          hint="run the same command with --resume to continue")

    def _step(self, examples: list[EncodedExample]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, all_terms = _forward_backward(self.backbone, self.adapter, examples, self.answers,
                                                   self.objective, self.params, self.step)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.pending.append((self.step, loss, terms, all_terms))
        if self.step == 1 or self.step % LOSS_READ_EVERY == 0 or self.step == self.total:
            self._read_losses()
        self.emit(events.StepDone(step=self.step, total=self.total, loss=self.last_loss,
                                  lr=self.scheduler.get_last_lr()[0], loss_step=self.last_loss_step))

    def _read_losses(self) -> None:
        """Read the unread steps' losses in one transfer (one collective across ranks), record them in the history
        and check them: the run stops with ``EptctlError`` at the first step whose global loss is not finite."""
        if not self.pending:
            return
        local = [loss for _, loss, _, _ in self.pending if loss is not None]
        read = iter(torch.stack(local).tolist() if local else [])  # the one host-device sync of these steps
        weighted = [0.0 if loss is None else next(read) * terms for _, loss, terms, _ in self.pending]
        totals = distributed.all_reduce_sum(weighted)
        pending, self.pending = self.pending, []
        for (step, _, _, all_terms), total in zip(pending, totals):
            _check_finite(total / all_terms, step - 1)  # the global loss: every rank raises, or none
            self.history.append({"step": step, "loss": round(total / all_terms, 6)})
            self.last_loss, self.last_loss_step = total / all_terms, step

    def _score(self, rows: Sequence[EncodedExample], name: str) -> dict[str, float]:
        """The metrics of ``rows`` as one progress phase ``name`` (decoding, for a task that generates)."""
        decodes = self.task.kind is not None and self.task.kind.strategy.decodes_text
        with events.phase(name + (" (decoding)" if decodes else ""), len(rows), emit=self.emit):
            return evaluate_encoded(self.backbone, self.adapter, rows, self.answers, self.cfg.eval_batch_size,
                                    sharded=True, kind=self.task.kind)

    def _evaluate(self, val_rows: list[EncodedExample]) -> None:
        """An in-training validation; keeps the adapter's state when it is the best so far."""
        self._read_losses()  # the history lists the steps' losses before this validation
        self.adapter.eval()
        val = self._score(val_rows, f"validation at step {self.step}")
        self.adapter.train()
        value = val.get(self.task.metric)
        self.history.append({"step": self.step, "validation": val, "rows": len(val_rows)})
        if self.cfg.keeps_best and value is not None and (self.best_metric is None or value > self.best_metric):
            self.best_metric, self.best_step = value, self.step
            self.best_state = _copy(self.adapter)
        kept = self.best_step if self.cfg.keeps_best else self.step  # the step the run would keep if it ended now
        self.emit(events.Evaluated(step=self.step, total=self.total, metrics=val, best_step=kept,
                                   examples=len(val_rows)))

    def finish(self, validation_set: Sequence[EncodedExample]) -> tuple[training_state.TrainingState, dict]:
        """Load the kept step into the adapter and evaluate it; returns the final training state and the metrics."""
        if not self.cfg.keeps_best:
            self.best_step, self.best_state = self.step, _copy(self.adapter)
        final = self.state()
        self.adapter.load_state_dict(self.best_state)
        self.adapter.eval()
        self.emit(events.FinalEvaluation(best_step=self.best_step))
        metrics = {"validation": self._score(validation_set, "final evaluation: validation")}
        if self.task.test_set:
            metrics["test"] = self._score(self.task.test_set, "final evaluation: test")
        if not self.cfg.keeps_best:  # the validation of the kept step, on every row, ends the curve
            self.history.append({"step": self.step, "validation": metrics["validation"], "rows": len(validation_set)})
        self.emit(events.TrainingDone(metrics=metrics, best_step=self.best_step))
        return final, metrics
