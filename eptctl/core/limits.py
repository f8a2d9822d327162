"""The real ranges of numeric options: one place, so every command and config field states the same maximum.

Why maxima at all: a value Python accepts can still overflow what a library or the database takes (a seed past
2**32-1 in numpy, a limit past SQL BIGINT), and then a command ends in a traceback instead of a one-line refusal.
"""

from __future__ import annotations

SEED_MAX = 2**32 - 1  # numpy's and python's random seeding accept 0..2**32-1; torch accepts more
SQL_BIGINT_MAX = 2**63 - 1  # a LIMIT bound as a parameter must fit SQL BIGINT (SQLite and PostgreSQL)
ROWS_MAX = 2**31 - 1  # examples of a data set (counts, samples, probes)
STEPS_MAX = 10**9  # optimiser steps, warmup, intervals
EPOCHS_MAX = 1e6
BATCH_MAX = 2**20  # examples per step or per scoring batch
TOKENS_MAX = 2**20  # sequence lengths, prompt lengths, ranks, widths (far beyond any model's positions)
HEADS_MAX = 4096  # attention heads, subspaces
LR_MAX = 1e3  # learning rates
SCALE_MAX = 1e6  # alpha, weight decay, gradient-norm clip, regression grid
SECONDS_MAX = 100 * 365 * 86400.0  # durations in seconds (100 years)
