"""Deterministic train/validation/test splits and subsamples.

Splits use a fixed seed, never the training seed: every run of a task, whatever its seed, trains and evaluates on the
same examples, so registry metrics stay comparable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from eptctl.core.errors import EptctlError

SPLIT_SEED = 20240917

T = TypeVar("T")


@dataclass(frozen=True)
class SplitPolicy:
    """How much of a task's data goes to validation and test when the data does not say."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    # Caps keep evaluation quick on a 2-core CPU; more examples add little precision past this point.
    max_validation: int = 500
    max_test: int = 1000


def shuffled(items: Sequence[T], seed: int = SPLIT_SEED) -> list[T]:
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def _carve_size(total: int, fraction: float, cap: int) -> int:
    return min(cap, max(1, round(total * fraction)))


def make_splits(
    given: dict[str, list[T]], policy: SplitPolicy, *, where: str
) -> dict[str, list[T]]:
    """Keeps the splits the data names; cuts a missing test, then a missing validation split from shuffled train."""
    train = given.get("train")
    if not train:
        raise EptctlError(f"{where} has no training rows", hint="add rows marked train, or drop the split marking")
    validation, test = given.get("validation"), given.get("test")
    n_test = 0 if test else _carve_size(len(train), policy.test_fraction, policy.max_test)
    n_validation = 0 if validation else _carve_size(len(train), policy.validation_fraction, policy.max_validation)
    if n_test or n_validation:
        if len(train) - n_test - n_validation < 1:
            raise EptctlError(
                f"{where} has only {len(train)} training row(s), too few to cut validation and test splits from",
                hint="add rows, or give validation and test rows yourself",
            )
        train = shuffled(train)
        test = test or train[:n_test]
        validation = validation or train[n_test : n_test + n_validation]
        train = train[n_test + n_validation :]
    return {"train": train, "validation": validation, "test": test}


MIN_VALIDATION = 50  # validation rows below which one row moves a metric by more than two points


def small_validation_note(splits: dict[str, list], where: str) -> str | None:
    """A one-line warning when a custom task's validation split has fewer than ``MIN_VALIDATION`` rows, else None:
    its metric is coarse (one row is 100/n points) yet it picks ``--eval-every``'s kept step and ``@best``."""
    n = len(splits["validation"])
    if n >= MIN_VALIDATION:
        return None
    sizes = "/".join(str(len(splits[k])) for k in ("train", "validation", "test"))
    return (f"{where}: only {n} validation row{'s' if n != 1 else ''} ({sizes} train/validation/test); one row moves "
            f"the validation metric by {100 / n:.1f} points, and it picks @best and the --eval-every step; "
            f"aim for {MIN_VALIDATION}+")


def subsample(items: list[T], limit: int | None, *, seed: int | None) -> list[T]:
    """At most ``limit`` items in their original order.

    With ``seed=None`` the first ``limit`` items (splits are already shuffled, so this is a random sample, and a
    smaller limit is a subset of a larger one); otherwise a sample drawn with that seed.
    """
    if limit is not None and limit < 1:
        raise EptctlError(f"a sample size must be at least 1, got {limit}")
    if limit is None or limit >= len(items):
        return items
    if seed is None:
        return items[:limit]
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def stratified_sample(items: list[T], k: int | None, key) -> list[T]:
    """``k`` items drawn class by class, the same whatever the training seed: each class (``key(item)``) gets its
    share of ``k`` in proportion to its frequency (largest remainders, at least one per class while ``k`` allows)
    and keeps the first items of its own fixed shuffle, so a smaller ``k`` is (nearly always) a subset of a larger
    one. Items keep their split order. ``key=None`` (no classes) keeps the first ``k`` items. Raises
    ``EptctlError`` for ``k`` < 1.
    """
    if k is not None and k < 1:
        raise EptctlError(f"--train-examples must be at least 1, got {k}", hint="e.g. --train-examples 64")
    if k is None or k >= len(items):
        return items
    if key is None:
        return items[:k]
    by_class: dict = {}
    for index, item in enumerate(items):
        by_class.setdefault(key(item), []).append(index)
    classes = sorted(by_class, key=str)
    floor = 1 if k >= len(classes) else 0  # every class gets one while k allows
    exact = {c: k * len(by_class[c]) / len(items) for c in classes}
    counts = {c: min(len(by_class[c]), max(floor, int(exact[c]))) for c in classes}
    for c in sorted(classes, key=lambda c: exact[c] - int(exact[c]), reverse=True):  # largest remainders
        if sum(counts.values()) >= k:
            break
        if counts[c] < len(by_class[c]):
            counts[c] += 1
    while sum(counts.values()) > k:  # the at-least-one floor can overshoot: trim the largest classes
        counts[max(classes, key=lambda c: counts[c])] -= 1
    keep = sorted(i for c in classes for i in shuffled(by_class[c], SPLIT_SEED + 1)[: counts[c]])
    return [items[i] for i in keep]
