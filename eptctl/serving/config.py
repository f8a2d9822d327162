"""The server's settings, one frozen dataclass validated in one place (errors name the flag)."""

from __future__ import annotations

from dataclasses import dataclass

from eptctl.core.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    """How ``eptctl serve`` runs. Times in milliseconds or seconds as named; sizes in rows (inputs)."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # the backbone; default: the one of --adapters, else eptctl's default model
    adapters: tuple[str, ...] = ()  # loaded at start (and checked against the backbone)
    # rows per backbone pass: on a 2-core CPU SmolLM2 scores most inputs/s at 8-16 rows a pass (bench serve); raise
    # it on a GPU, where a pass of 16 short rows leaves the device mostly idle
    max_batch_size: int = 16
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting for a pass; beyond: 503 with Retry-After
    max_inputs: int = 64  # inputs per request; beyond: 413
    max_text_chars: int = 20_000  # characters per text; beyond: 413
    max_adapters: int = 32  # materialized adapters kept (LRU)
    resolve_ttl_s: float = 1.0  # how long a reference (an alias, @latest) is trusted before it is resolved again
    batching: bool = True  # off: one request per backbone pass (for comparison)
    token: str | None = None  # bearer token required on every route but the health checks

    def __post_init__(self) -> None:
        for flag, value in (("--port", self.port), ("--max-batch-size", self.max_batch_size),
                            ("--max-queue", self.max_queue), ("--max-inputs", self.max_inputs),
                            ("--max-text-chars", self.max_text_chars), ("--max-adapters", self.max_adapters)):
            if value < 1:
                raise ConfigError(f"{flag} must be ≥ 1, got {value}", hint=f"set {flag} to a positive integer")
        if self.port > 65535:
            raise ConfigError(f"--port must be ≤ 65535, got {self.port}", hint="e.g. --port 8000")
        if self.max_wait_ms < 0 or self.resolve_ttl_s < 0:
            raise ConfigError("--max-wait-ms and --resolve-ttl must be ≥ 0", hint="e.g. --max-wait-ms 5")
