"""The server's settings, one frozen dataclass validated in one place (errors name the flag)."""

from __future__ import annotations

from dataclasses import dataclass, field

from eptctl.core.errors import ConfigError

MIN_TOKEN_CHARS = 16  # a bearer token is a secret, not a password: 16 random characters are ~95 bits (urlsafe)
TOKEN_HINT = "generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Bytes of a JSON body beyond its texts (keys, quotes, adapter names per input, whitespace).
BODY_OVERHEAD_BYTES = 1 << 20
# Upper bounds of the numeric options: past these a value is a typo, not a setting (also the CLI's max=).
LIMITS = {"--max-batch-size": 4096, "--max-queue": 1_000_000, "--max-inputs": 100_000, "--max-tokens": 1_000_000,
          "--max-text-chars": 10_000_000, "--max-adapters": 100_000, "--max-body-bytes": 1 << 31,
          "--max-wait-ms": 60_000.0, "--resolve-ttl": 86_400.0, "--timeout-keep-alive": 3600.0,
          "--timeout-read": 3600.0, "--engine-timeout": 3600.0}


@dataclass(frozen=True)
class ServeConfig:
    """How ``eptctl serve`` runs. Times in milliseconds or seconds as named; sizes in rows (inputs) or bytes.

    Raises ``ConfigError`` (naming the flag) for a value out of range or a token that is not a secret: empty,
    whitespace, or shorter than ``MIN_TOKEN_CHARS``. Whether the host needs a token is ``server``'s check (it
    resolves the host name)."""

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
    max_tokens: int = 1024  # the most tokens one OpenAI-API completion may ask for (max_tokens); beyond: 400
    # a Jinja chat template for /v1/chat/completions (vLLM's --chat-template): replaces the tokenizer's own, or gives
    # one to a backbone without; the template's text, not a path
    chat_template: str | None = field(default=None, repr=False)
    # bearer token required on every route but the health checks; never in a repr (a log line, a traceback)
    token: str | None = field(default=None, repr=False)
    insecure_no_token: bool = False  # the user's explicit choice to serve off loopback without a token
    max_body_bytes: int | None = None  # request body limit; None: derived from max_inputs and max_text_chars
    timeout_keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    timeout_read_s: float = 10.0  # a request's head, and each part of its body, must arrive within this
    engine: str = "local"  # what runs the backbone: "local" (this process) or "vllm" (a vLLM server, engine_url)
    engine_url: str | None = None  # the vLLM server's base URL (http://host:port)
    engine_model: str | None = None  # the name vLLM serves the backbone under; None: the backbone's eptctl name
    engine_timeout_s: float = 120.0  # one request to the engine, at most (then 503)

    def __post_init__(self) -> None:
        for flag, value in (("--port", self.port), ("--max-batch-size", self.max_batch_size),
                            ("--max-queue", self.max_queue), ("--max-inputs", self.max_inputs),
                            ("--max-text-chars", self.max_text_chars), ("--max-adapters", self.max_adapters),
                            ("--max-body-bytes", self.max_body_bytes or 1), ("--max-tokens", self.max_tokens)):
            if value < 1:
                raise ConfigError(f"{flag} must be ≥ 1, got {value}", hint=f"set {flag} to a positive integer")
        if self.port > 65535:
            raise ConfigError(f"--port must be ≤ 65535, got {self.port}", hint="e.g. --port 8000")
        if self.max_wait_ms < 0 or self.resolve_ttl_s < 0:
            raise ConfigError("--max-wait-ms and --resolve-ttl must be ≥ 0", hint="e.g. --max-wait-ms 5")
        for flag, value in (("--timeout-keep-alive", self.timeout_keep_alive_s),
                            ("--timeout-read", self.timeout_read_s)):
            if not 0 < value <= LIMITS[flag]:
                raise ConfigError(f"{flag} must be in (0, {LIMITS[flag]:.0f}] seconds, got {value}",
                                  hint=f"e.g. {flag} 10")
        if self.chat_template is not None and not self.chat_template.strip():
            raise ConfigError("--chat-template is empty", hint="give a file holding a Jinja chat template")
        if self.token is not None:
            _check_token(self.token)
        _check_engine(self)

    @property
    def body_limit(self) -> int:
        """The largest request body accepted (bytes): ``max_body_bytes``, else room for ``max_inputs`` inputs of
        two texts of ``max_text_chars`` characters at 4 UTF-8 bytes each, plus ``BODY_OVERHEAD_BYTES``."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_inputs * self.max_text_chars * 2 * 4 + BODY_OVERHEAD_BYTES


ENGINES = ("local", "vllm")


def _check_engine(config: ServeConfig) -> None:
    """``--engine vllm`` needs ``--engine-url`` (http or https); the local engine takes none of the engine flags."""
    if config.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {config.engine!r}",
                          hint="--engine vllm --engine-url http://127.0.0.1:8100")
    if config.engine == "local":
        if config.engine_url is not None or config.engine_model is not None:
            raise ConfigError("--engine-url and --engine-model need --engine vllm",
                              hint="add --engine vllm, or drop them to run the backbone in this process")
        return
    url = config.engine_url or ""
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise ConfigError(f"--engine vllm needs --engine-url http(s)://HOST:PORT, got {config.engine_url!r}",
                          hint="the address vLLM's OpenAI server listens on, e.g. --engine-url http://127.0.0.1:8100")
    if not 0 < config.engine_timeout_s <= LIMITS["--engine-timeout"]:
        raise ConfigError(f"--engine-timeout must be in (0, {LIMITS['--engine-timeout']:.0f}] seconds, got "
                          f"{config.engine_timeout_s}", hint="e.g. --engine-timeout 120")


def _check_token(token: str) -> None:
    """Refuse a token that guards nothing (empty: authentication would be off) or little (short)."""
    if not token.strip():
        raise ConfigError("--token (EPTCTL_SERVE_TOKEN) is empty: authentication would be off",
                          hint=f"set a real secret of at least {MIN_TOKEN_CHARS} characters ({TOKEN_HINT}), "
                               "or unset it to serve on loopback without one")
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ConfigError(f"--token (EPTCTL_SERVE_TOKEN) must be at least {MIN_TOKEN_CHARS} characters without "
                          f"surrounding whitespace, got {len(token)}", hint=TOKEN_HINT)
