"""A tiny synthetic classification task that a prompt on a random tiny backbone can learn."""

from __future__ import annotations

import random

from eptctl.backbones.base import Backbone

TEMPLATE = "{text} ="
VERBALIZER = ("cat", "dog")  # equal lengths: length-normalised scores are then unbiased


def synthetic_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        alphabet = "ab" if label == 0 else "yz"
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8))))
        labels.append(label)
    return texts, labels


def encoded_task(backbone: Backbone, n: int = 64, seed: int = 0, max_length: int = 32):
    texts, labels = synthetic_texts(n, seed)
    answers = backbone.encode_answers(VERBALIZER)
    encoded = backbone.encode([TEMPLATE.format(text=t) for t in texts], labels, answers, max_length)
    return encoded, answers
