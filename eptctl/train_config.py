"""Optimisation settings of a training run (torch-free, so the CLI can build its options without importing torch)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from eptctl.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are tuned on SmolLM2-135M + rt-polarity (docs/method.md#defaults)."""

    steps: int | None = 150
    epochs: float | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    lr_prompt: float = 0.1
    lr_low_rank: float = 3e-3
    lr_fusion: float = 1e-2  # fusion, projection and gate
    lr_head: float = 1e-2
    warmup_steps: int | None = None  # None: 10% of the steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int | None = None  # None: 5 evaluations per run
    checkpoint_every: int = 10
    max_eval_examples: int | None = 200  # validation rows used to pick the best step (speed); final eval uses all
    objective: str = "lm"  # lm: answer-token cross-entropy | classify: cross-entropy over label scores
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in ("lm", "classify"):
            raise ConfigError(f"--objective must be lm or classify, got {self.objective!r}", hint="use --objective lm")
        for flag, value in (("--batch-size", self.batch_size), ("--eval-batch-size", self.eval_batch_size),
                            ("--checkpoint-every", self.checkpoint_every)):
            if value < 1:
                raise ConfigError(f"{flag} must be ≥ 1, got {value}", hint=f"set {flag} to a positive integer")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}", hint="e.g. --steps 150")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}", hint="e.g. --epochs 1")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"--eval-every must be ≥ 1, got {self.eval_every}", hint="e.g. --eval-every 50")
        for flag, lr in (("--lr-prompt", self.lr_prompt), ("--lr-low-rank", self.lr_low_rank),
                         ("--lr-fusion", self.lr_fusion), ("--lr-head", self.lr_head)):
            if not (lr > 0 and math.isfinite(lr)):
                raise ConfigError(f"{flag} must be a positive number, got {lr}", hint=f"e.g. {flag} 1e-3")

    def total_steps(self, train_size: int) -> int:
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * math.ceil(train_size / self.batch_size)))
        return self.steps or 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
