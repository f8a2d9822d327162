"""Optimisation settings of a training run (torch-free, so the CLI can build its options without importing torch)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from eptctl.core.errors import ConfigError
from eptctl.core.limits import (BATCH_MAX, EPOCHS_MAX, LR_MAX, ROWS_MAX, SCALE_MAX, SEED_MAX,
                                 STEPS_MAX)


# The default validation schedule draws a learning curve and picks nothing: CURVE_POINTS validations on the first
# CURVE_EXAMPLES validation rows, the last at 4/5 of the run (the final evaluation on every row is the curve's last
# point), cost 256 scored rows where a default rt-polarity run scores 1,500 at its end and trains 1,200
# (docs/method.md, "Validation during training"). --eval-every N picks the best step on SELECT_EXAMPLES rows.
CURVE_POINTS = 4
CURVE_EXAMPLES = 64
SELECT_EXAMPLES = 200


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are tuned on SmolLM2-135M + rt-polarity (docs/method.md#defaults).

    Every field with help text is a flag of ``eptctl train`` (``eptctl.cli.options``). Raises ``ConfigError``
    naming the flag for an invalid value.
    """

    steps: int | None = field(default=75, metadata={"min": 1, "max": STEPS_MAX, "help": "Optimiser steps."})
    epochs: float | None = field(default=None, metadata={
        "min": 0.0, "max": EPOCHS_MAX, "help": "Epochs (overrides --steps)."})
    batch_size: int = field(default=16, metadata={"min": 1, "max": BATCH_MAX, "help": "Examples per step."})
    eval_batch_size: int = field(default=64, metadata={
        "min": 1, "max": BATCH_MAX, "help": "Examples per scoring batch in evaluations."})
    lr_prompt: float = field(default=0.1, metadata={"min": 0.0, "max": LR_MAX, "help": "Learning rate of the prompt."})
    lr_low_rank: float = field(default=3e-3, metadata={"min": 0.0, "max": LR_MAX, "help": "Learning rate of A and B."})
    lr_fusion: float = field(default=1e-2, metadata={
        "min": 0.0, "max": LR_MAX, "help": "Learning rate of fusion, projection and gate."})
    lr_head: float = field(default=1e-2, metadata={
        "min": 0.0, "max": LR_MAX, "help": "Learning rate of the head (encoder backbones)."})
    warmup_steps: int | None = field(default=None, metadata={
        "min": 0, "max": STEPS_MAX, "help": "Linear warmup steps (default: 10% of the steps)."})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0, "max": SCALE_MAX, "help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={
        "min": 0.0, "max": SCALE_MAX, "help": "Clip the adapter's gradient norm to this."})
    eval_every: int | None = field(default=None, metadata={"min": 0, "max": STEPS_MAX,
        "help": "Validate every N steps and keep the best step. Default: validate 4 times during the run on "
                f"{CURVE_EXAMPLES} rows, for the curve of `eptctl plot`, and keep the last step; 0: no validation "
                "during the run."})
    checkpoint_every: int = field(default=10, metadata={
        "min": 1, "max": STEPS_MAX, "help": "Save a resumable checkpoint every N steps."})
    max_eval_examples: int | None = field(default=None, metadata={"min": 1, "max": ROWS_MAX,
        "help": f"Validation rows scored at each validation during the run (default: {SELECT_EXAMPLES} with "
                f"--eval-every, {CURVE_EXAMPLES} for the default curve); the final evaluation uses all."})
    max_target_length: int = field(default=64, metadata={"min": 2, "max": 4096,
        "help": "Generation and regression: target tokens kept per example (eos included); also the default "
                "--max-new-tokens of predict and eval."})
    objective: str = field(default="auto", metadata={
        "help": "auto (classify for classification tasks, lm otherwise) | lm (answer tokens) | classify (label "
                "scores)."})
    seed: int = field(default=0, metadata={"min": 0, "max": SEED_MAX, "help": "Seed for init and data order."})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the frozen backbone's layer stack before training (inductor; on a GPU mode "
                "reduce-overhead, CUDA graphs where they apply). For GPU runs whose batch shapes repeat; leave it "
                "off on the CPU: compiling took 11-13 minutes there for steps within 3 % of eager "
                "(docs/benchmarks.md)."})

    def objective_for(self, task_type: str) -> str:
        """The loss this run trains with: ``objective``, where ``auto`` is ``classify`` for classification (the
        cross-entropy of the label scores, the prediction rule itself: on rt-polarity it reached 0.888 validation
        accuracy where ``lm`` reached 0.864 at the same 90 steps, docs/method.md) and ``lm`` for every other task
        type (no labels to score)."""
        if self.objective != "auto":
            return self.objective
        from eptctl.data.task_types import task_type as task_type_of  # the CLI reads this module at start-up

        return task_type_of(task_type).objective

    def __post_init__(self) -> None:
        if self.objective not in ("auto", "lm", "classify"):
            raise ConfigError(f"--objective must be auto, lm or classify, got {self.objective!r}",
                              hint="use --objective auto")
        for flag, value in (("--batch-size", self.batch_size), ("--eval-batch-size", self.eval_batch_size),
                            ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise ConfigError(f"{flag} must be ≥ 1, got {value}", hint=f"set {flag} to a positive integer")
        if not 2 <= self.max_target_length <= 4096:
            raise ConfigError(f"--max-target-length must be in [2, 4096], got {self.max_target_length}",
                              hint="e.g. --max-target-length 64 (the target and its eos token)")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}", hint="e.g. --steps 75")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}", hint="e.g. --epochs 1")
        if self.eval_every is not None and self.eval_every < 0:
            raise ConfigError(f"--eval-every must be ≥ 0, got {self.eval_every}", hint="e.g. --eval-every 50")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be ≥ 0, got {self.warmup_steps}", hint="e.g. --warmup-steps 15")
        if self.max_eval_examples is not None and self.max_eval_examples < 1:
            raise ConfigError(f"--max-eval-examples must be ≥ 1, got {self.max_eval_examples}",
                              hint="e.g. --max-eval-examples 200")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"--weight-decay must be ≥ 0, got {self.weight_decay}", hint="e.g. --weight-decay 0")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"--max-grad-norm must be a positive number, got {self.max_grad_norm}",
                              hint="e.g. --max-grad-norm 1.0")
        for flag, lr in (("--lr-prompt", self.lr_prompt), ("--lr-low-rank", self.lr_low_rank),
                         ("--lr-fusion", self.lr_fusion), ("--lr-head", self.lr_head)):
            if not (lr > 0 and math.isfinite(lr)):
                raise ConfigError(f"{flag} must be a positive number, got {lr}", hint=f"e.g. {flag} 1e-3")

    @property
    def keeps_best(self) -> bool:
        """Whether the run keeps its best validated step (``--eval-every N``) rather than its last."""
        return bool(self.eval_every)

    def validation_steps(self, total: int) -> list[int]:
        """The steps validated during a run of ``total`` steps, in order. ``--eval-every N``: every N-th and the
        last; 0: none; default: ``CURVE_POINTS`` steps spread evenly before the last (``total`` 75: 15, 30, 45,
        60), whose final evaluation on every validation row ends the curve."""
        if self.eval_every is not None:
            every = self.eval_every
            return sorted({*range(every, total + 1, every), total}) if every else []
        points = min(CURVE_POINTS, total - 1)
        return sorted({max(1, round(total * i / (points + 1))) for i in range(1, points + 1)})

    @property
    def validation_examples(self) -> int:
        """Validation rows scored at each validation during the run: ``max_eval_examples`` or its default."""
        if self.max_eval_examples is not None:
            return self.max_eval_examples
        return SELECT_EXAMPLES if self.keeps_best else CURVE_EXAMPLES

    def total_steps(self, train_size: int) -> int:
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * math.ceil(train_size / self.batch_size)))
        return self.steps or 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_options(options: dict, groups: dict[str, type], caller: str) -> dict:
    """Sort keyword arguments into frozen option groups (``groups``: keyword -> dataclass), so a function can take
    its options grouped and still accept them one by one.

    Each group is given whole by its keyword (``run=FitRun(...)``) or field by field (``resume=True``); fields given
    next to a whole group replace its values, and the group validates again. Returns keyword -> group object.
    Raises ``TypeError`` for an unknown keyword or a missing required field, as a Python call would, and what the
    group's own validation raises.
    """
    options, built = dict(options), {}
    for name, cls in groups.items():
        base = options.pop(name, None)
        fields = {f.name: options.pop(f.name) for f in dataclasses.fields(cls) if f.name in options}
        built[name] = cls(**fields) if base is None else dataclasses.replace(base, **fields) if fields else base
    if options:
        raise TypeError(f"{caller}() got an unexpected keyword argument {next(iter(options))!r}")
    return built
