"""DePT's parameter budget rule and exact trainable-parameter counts by group."""

from __future__ import annotations

from eptctl.core.errors import ConfigError

GROUPS = ("prompt", "low_rank", "fusion", "projection", "gate", "transfer", "head")

# DePT keeps about 60% of the budget in the short prompt (T5-Base: l=100 -> s=60, r=30). eptctl's default config
# uses 0.3 instead: every prompt position costs a full backbone position per step, which dominates on a CPU.
DEPT_SHORT_FRACTION = 0.6


def choose_short_and_rank(
    width: int, max_length: int, prompt_length: int, short_length: int | None = None, rank: int | None = None,
    short_fraction: float = DEPT_SHORT_FRACTION,
) -> tuple[int, int]:
    """Choose ``(s, r)`` with ``s*d + n*r + r*d ≈ l*d`` (DePT). Given one of them, solve for the other."""
    d, n, l = width, max_length, prompt_length
    if short_length is not None and rank is not None:
        return short_length, rank
    if rank is not None:
        s = round((l * d - rank * (n + d)) / d)
        if s < 1:
            raise ConfigError(
                f"--rank {rank} leaves no room for a short prompt within the budget l*d = {l}*{d}",
                hint="lower --rank, raise --prompt-length, or give --short-length explicitly",
            )
        return s, rank
    s = short_length if short_length is not None else max(1, round(short_fraction * l))
    r = max(1, round((l - s) * d / (n + d)))
    return s, r


def count_parameters(cfg, width: int, num_labels: int | None = None) -> dict[str, int]:
    """Exact trainable parameters by group for a resolved config (matches the modules, checked by tests).

    prompt: s*d (l*d for pt); low_rank: n*r + r*d; fusion: 3*d*d_a + d_a*d (or 1 scalar when d_a = 0);
    projection: k*(d*m + m*d); gate: d*k + k; transfer (attention over t source prompts): d*16 + 1;
    head: d*c + c for encoder-only backbones with c labels.
    """
    d = width
    counts = dict.fromkeys(GROUPS, 0)
    if not cfg.has_offset:
        counts["prompt"] = cfg.prompt_length * d
    else:
        counts["prompt"] = cfg.short_length * d
        counts["low_rank"] = cfg.max_length * cfg.rank + cfg.rank * d
    if cfg.uses_fusion:
        counts["fusion"] = 4 * d * cfg.fusion_dim if cfg.fusion_dim else 1
    if cfg.uses_projection:
        counts["projection"] = cfg.spaces * 2 * d * cfg.space_rank
        counts["gate"] = d * cfg.spaces + cfg.spaces
    if cfg.source_prompts:
        from eptctl.methods.mixture import MIXTURE_DIM

        counts["transfer"] = d * MIXTURE_DIM + 1
    if num_labels:
        counts["head"] = d * num_labels + num_labels
    counts["total"] = sum(counts[g] for g in GROUPS)
    return counts


def extras_within_budget(cfg, width: int) -> tuple[int, int, bool]:
    """(fusion + projection + gate parameters, half the l*d budget, whether the first fits in the second).

    SPEC: with the default sizes these extras may add at most half of the l*d budget.
    """
    counts = count_parameters(cfg, width)
    extras = counts["fusion"] + counts["projection"] + counts["gate"]
    half = cfg.prompt_length * width // 2
    return extras, half, extras <= half
