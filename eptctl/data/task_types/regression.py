"""Regression: each example has a number. Decoder backbones write it as text on a grid (T5's STS-B recipe) and the
output is parsed back; encoder backbones read it from a scalar head."""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal, localcontext

from eptctl.core.errors import EptctlError
from eptctl.data.task_types.base import TaskType

# T5 rendered STS-B targets on a 0.2 grid with one decimal (Raffel et al. 2020, appendix B).
DEFAULT_GRID = 0.2
# A regression output is a short number: a few tokens are enough, more only cost time.
NEW_TOKENS = 8
# An optional sign, then digits with an optional fraction ("3", "3.40", "2.") or a bare fraction (".5"), then an
# optional exponent ("1e3"). Parsing of model output, not a metric.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def target_number(raw, where: str, column: str) -> float:
    """A regression row's target as a finite float; ``EptctlError`` naming the row for an empty or non-numeric one."""
    value = raw.label
    if isinstance(value, bool):  # True/False would pass float(); they are not scores
        value = str(value)
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        number = math.nan
    if value is None or not math.isfinite(number):
        shown = "" if value is None or (isinstance(value, float) and math.isnan(value)) else f" {str(value)[:40]!r}"
        raise EptctlError(f"row {raw.row} of {where}: the target{shown} in column '{column}' is not a number",
                          hint="a regression target is a number such as 3.2; fix or drop that row")
    return number


def parse_number(text: str) -> float | None:
    """The first number in a generated text ("3.4", " 3.40 ", "-1", "2.", ".5", "about 4.2 points", "1e3") as a
    float, or None when there is none or it is not finite (an overflowing exponent). Raises nothing; a regex, not a
    metric."""
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    value = float(match.group())
    return value if math.isfinite(value) else None


def render_number(value: float, grid: float, decimals: int) -> str:
    """The T5-style text target of ``value``: rounded to the nearest multiple of ``grid`` (ties half away from zero,
    in exact decimal arithmetic of the numbers as written, so 4.9 on a 0.2 grid is 24.5 steps -> "5.0") and formatted
    with ``decimals`` digits after the point ("3.4"); -0.0 prints as "0.0". Uses decimal.Decimal (ROUND_HALF_UP).

    Raises EptctlError when ``value`` is not finite, ``grid`` is not a positive finite number or ``decimals`` < 0.
    """
    if not math.isfinite(value):
        raise EptctlError(f"cannot render the regression target {value!r}", hint="targets must be finite numbers")
    if not (math.isfinite(grid) and grid > 0) or decimals < 0:
        raise EptctlError(f"invalid number grid {grid!r} with {decimals!r} decimals",
                          hint="the grid must be a positive number (e.g. 0.2) and decimals >= 0")
    with localcontext() as ctx:
        ctx.prec = 1000  # enough digits for any finite floats: the only rounding that matters is the one asked for
        step = Decimal(repr(float(grid)))
        steps = (Decimal(repr(float(value))) / step).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        rounded = (steps * step).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    return format(rounded, "f")


class Regression(TaskType):
    """A number per example, on a grid; trained as language modelling (encoders: a scalar head); Pearson first."""

    name = "regression"
    default_metric = "pearson"
    primary_metrics = ("pearson", "spearman")
    cue = "Score:"
    uses_grid = True
    new_tokens = NEW_TOKENS
    card_use = "Gives the number of the task `{task}` for an input"
    card_how = "The number is generated as text and parsed (encoders: the adapter's scalar head)."
    predicts = "the value"

    def head_size(self, num_labels: int) -> int:
        return 1

    def normalised(self, spec):
        grid = DEFAULT_GRID if spec.grid is None else float(spec.grid)
        if not (math.isfinite(grid) and grid > 0):
            raise EptctlError(f"task '{spec.name}' has grid {spec.grid!r}", hint="use a positive grid, e.g. 0.2")
        fields = {"grid": grid}
        if spec.value_range is not None:
            fields["value_range"] = tuple(float(v) for v in spec.value_range)
        return fields

    def record_source(self, spec):
        return {"grid": spec.grid, "value_range": list(spec.value_range) if spec.value_range else None}

    def fallback_value(self, spec) -> float:
        return spec.fallback_value

    def custom_fields(self, rows, where, column):
        values = [target_number(raw, where, column) for raw in rows]
        return {"value_range": (min(values), max(values))}

    def read_answers(self, rows, labels, where, column):
        return [{"label": 0, "value": target_number(raw, where, column)} for raw in rows]

    def target_text(self, spec, example):
        if example.value is None:
            return None
        return render_number(example.value, spec.grid, spec.decimals)

    def evaluate(self, run, encoded):
        values, _ = run.values(encoded)
        return run.metrics.regression_metrics(values, [float(e.value) for e in encoded], run.kind.fallback)

    def predict_rows(self, run, encoded, index):
        values, texts = run.values(encoded, index)
        return [_value_row(run.servables[a], v, t, e.truncated) for a, v, t, e in zip(index, values, texts, encoded)]


def _value_row(servable, value: float | None, text: str | None, truncated: bool) -> dict:
    row = {"adapter": servable.record.ref,
           "value": round(value if value is not None else servable.spec.fallback_value, 6)}
    if text is not None:
        row.update(output=text, parsed=value is not None)
    row["truncated"] = bool(truncated)
    return row


REGRESSION = Regression()
