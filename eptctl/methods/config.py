"""The one configuration of the EPT family (pt, dept, ept), validated in one place.

Every choice that SPEC-ept.md marks as ours is a field here, so users can ablate it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from eptctl.core.errors import ConfigError
from eptctl.core.limits import HEADS_MAX, SCALE_MAX, TOKENS_MAX

SCHEMA_VERSION = 1
METHODS = ("pt", "dept", "ept")
PROMPT_INITS = ("vocab", "text", "tensors")


@dataclass(frozen=True)
class EPTConfig:
    """Shapes and switches of one adapter. ``None`` for ``short_length``/``rank`` means: pick by DePT's budget rule.

    Every field with help text and without ``cli=False`` is a flag of ``eptctl train`` (``eptctl.cli.options``).
    Raises ``ConfigError`` naming the flag for an invalid value.
    """

    method: str = field(default="ept", metadata={"help": "pt | dept | ept"})
    prompt_length: int = field(default=40, metadata={
        "min": 1, "max": TOKENS_MAX, "help": "l: PT prompt length, and the parameter budget l*d."})
    short_length: int | None = field(default=None, metadata={
        "min": 1, "max": TOKENS_MAX, "help": "s: short prompt length (dept/ept) (default: by the budget rule)."})
    rank: int | None = field(default=None, metadata={
        "min": 1, "max": TOKENS_MAX, "help": "r: rank of the embedding offset A@B (default: by the budget rule)."})
    short_fraction: float = field(default=0.3, metadata={
        "min": 0.0, "max": 1.0, "help": "s = round(fraction * l) when --short-length is not given."})
    max_length: int = field(default=256, metadata={
        "min": 1, "max": TOKENS_MAX, "help": "n: max input tokens (longer inputs are truncated); rows of the offset."})
    alpha: float = field(default=1.0, metadata={
        "min": 0.0, "max": SCALE_MAX, "help": "Offset scale: H = alpha/sqrt(r) * A@B."})
    fusion: bool = field(default=True, metadata={
        "help": "Prompt fusion (ept): the prompt attends over the offset rows."})
    fusion_dim: int = field(default=2, metadata={
        "min": 0, "max": TOKENS_MAX, "help": "d_a: attention width of fusion; 0 = parameter-free."})
    fusion_heads: int = field(default=1, metadata={
        "min": 1, "max": HEADS_MAX, "help": "Attention heads of fusion (must divide --fusion-dim)."})
    projection: bool = field(default=True, metadata={"help": "Multi-space projection with a gate (ept)."})
    spaces: int = field(default=3, metadata={"min": 0, "max": HEADS_MAX, "help": "k: number of gated subspaces."})
    space_rank: int = field(default=1, metadata={"min": 1, "max": TOKENS_MAX, "help": "m: rank of each subspace map."})
    source_prompts: int = field(default=0, metadata={
        "help": "t: frozen source prompts mixed by attention (set by --transfer-mode attention)", "cli": False})
    prompt_init: str = field(default="vocab", metadata={
        "help": "vocab | text (tensors: given init tensors, library only)."})
    init_text: str | None = field(default=None, metadata={
        "help": "Text whose token embeddings initialise the prompt (--prompt-init text)."})
    schema_version: int = field(default=SCHEMA_VERSION, metadata={"cli": False})

    def __post_init__(self) -> None:
        validate(self)

    # --- derived shapes -------------------------------------------------------------------------------------------
    @property
    def has_offset(self) -> bool:
        return self.method in ("dept", "ept")

    @property
    def uses_fusion(self) -> bool:
        return self.method == "ept" and self.fusion

    @property
    def uses_projection(self) -> bool:
        return self.method == "ept" and self.projection and self.spaces > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        version = data.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"adapter config has schema version {version}, newer than this eptctl understands ({SCHEMA_VERSION})",
                hint="upgrade eptctl: pip install -U eptctl",
            )
        # Unknown keys from a newer minor version are dropped rather than fatal, so older readers keep working.
        return cls(**{k: v for k, v in data.items() if k in known})

    def resolved(self, width: int) -> "EPTConfig":
        """A copy with ``short_length`` and ``rank`` filled in by the budget rule for width ``d``."""
        if not self.has_offset:
            return dataclasses.replace(self, short_length=None, rank=None)
        from eptctl.methods.budget import choose_short_and_rank

        s, r = choose_short_and_rank(width, self.max_length, self.prompt_length, self.short_length, self.rank,
                                     short_fraction=self.short_fraction)
        return dataclasses.replace(self, short_length=s, rank=r)


def _positive(name: str, flag: str, value: int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        bound = "≥ 0" if allow_zero else "≥ 1"
        raise ConfigError(f"{flag} must be an integer {bound}, got {value!r}", hint=f"set {flag} to a valid {name}")


def validate(cfg: EPTConfig) -> None:
    """All validation lives here; each message names the CLI flag of the offending option."""
    if cfg.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}", hint="use --method ept")
    _positive("prompt length", "--prompt-length", cfg.prompt_length)
    _positive("short prompt length", "--short-length", cfg.short_length)
    _positive("rank", "--rank", cfg.rank)
    _positive("max length", "--max-length", cfg.max_length)
    _positive("fusion width", "--fusion-dim", cfg.fusion_dim, allow_zero=True)
    _positive("fusion heads", "--fusion-heads", cfg.fusion_heads)
    _positive("number of spaces", "--spaces", cfg.spaces, allow_zero=True)
    _positive("space rank", "--space-rank", cfg.space_rank)
    _positive("source prompts", "--init-from", cfg.source_prompts, allow_zero=True)
    if not (0 < cfg.short_fraction < 1):
        raise ConfigError(f"--short-fraction must be in (0, 1), got {cfg.short_fraction}", hint="DePT uses 0.6")
    if not (isinstance(cfg.alpha, (int, float)) and math.isfinite(cfg.alpha) and cfg.alpha > 0):
        raise ConfigError(f"--alpha must be a positive number, got {cfg.alpha!r}", hint="the default is 1.0")
    if cfg.has_offset and cfg.short_length is not None and cfg.short_length >= cfg.prompt_length:
        raise ConfigError(
            f"--short-length ({cfg.short_length}) must be below --prompt-length ({cfg.prompt_length})",
            hint="the short prompt replaces part of a length-l prompt; lower --short-length or raise --prompt-length",
        )
    if cfg.fusion_dim and cfg.fusion_dim % cfg.fusion_heads:
        raise ConfigError(
            f"--fusion-dim ({cfg.fusion_dim}) must be divisible by --fusion-heads ({cfg.fusion_heads})",
            hint="each head gets fusion_dim / fusion_heads dimensions",
        )
    if cfg.prompt_init not in PROMPT_INITS:
        raise ConfigError(
            f"--prompt-init must be one of {', '.join(PROMPT_INITS)}, got {cfg.prompt_init!r}", hint="use vocab"
        )
    if cfg.prompt_init == "text" and not cfg.init_text:
        raise ConfigError("--prompt-init text needs --init-text", hint='e.g. --init-text "classify the sentiment"')
    if cfg.schema_version > SCHEMA_VERSION:
        raise ConfigError(f"unknown config schema version {cfg.schema_version}", hint="upgrade eptctl")
