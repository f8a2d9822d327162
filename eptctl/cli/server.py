"""``eptctl serve``: every task's adapter on one frozen backbone over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from eptctl.cli.common import QUICK_PHASE_S, RegistryUrl, console_progress, err
from eptctl.serving.config import LIMITS, MIN_TOKEN_CHARS

ENGINE = "Engine"


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless you say otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    adapters: Annotated[str | None, typer.Option(help="Comma-separated refs to load at start (others load on first use).")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone (default: the one --adapters were trained on, else the default model).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Rows per backbone pass (raise it on a GPU).", min=1, max=LIMITS["--max-batch-size"])] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its pass (ms).", min=0.0, max=LIMITS["--max-wait-ms"])] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a pass before new ones get 503.", min=1, max=LIMITS["--max-queue"])] = 256,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request before 413.", min=1, max=LIMITS["--max-inputs"])] = 64,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text before 413.", min=1, max=LIMITS["--max-text-chars"])] = 20_000,
    max_adapters: Annotated[int, typer.Option(help="Materialized adapters kept in memory (LRU).", min=1, max=LIMITS["--max-adapters"])] = 32,
    resolve_ttl: Annotated[float, typer.Option(help="Seconds a reference (alias, @latest) is trusted before it is resolved again.", min=0.0, max=LIMITS["--resolve-ttl"])] = 1.0,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="One request per backbone pass (for comparison).")] = False,
    max_tokens: Annotated[int, typer.Option(help="Most tokens one OpenAI-API completion may ask for (max_tokens); more is refused with 400.", min=1, max=LIMITS["--max-tokens"])] = 1024,
    chat_template: Annotated[Path | None, typer.Option(help="File holding a Jinja chat template for /v1/chat/completions (replaces the tokenizer's own, or gives one to a backbone without).")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Request body limit in bytes, refused with 413 as it streams in (default: --max-inputs x --max-text-chars x 8 + 1 MiB).", min=1, max=LIMITS["--max-body-bytes"])] = None,
    timeout_keep_alive: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection is kept open.", min=0.1, max=LIMITS["--timeout-keep-alive"])] = 5.0,
    timeout_read: Annotated[float, typer.Option(help="Seconds a request's head, and each part of its body, may take to arrive (slow clients are disconnected, 408 for a body).", min=0.1, max=LIMITS["--timeout-read"])] = 10.0,
    token: Annotated[str | None, typer.Option(envvar="EPTCTL_SERVE_TOKEN", show_envvar=True, help=f"Bearer token required on every route but /healthz and /readyz (at least {MIN_TOKEN_CHARS} characters; never logged).")] = None,
    insecure_no_token: Annotated[bool, typer.Option("--insecure-no-token", help="Allow a --host off loopback without a token (e.g. behind an authenticating proxy).")] = False,
    engine: Annotated[str, typer.Option(help="What runs the backbone: local (this process) or vllm (a vLLM server at --engine-url; see docs/serving.md).", rich_help_panel=ENGINE)] = "local",
    engine_url: Annotated[str | None, typer.Option(help="The vLLM server's URL, e.g. http://127.0.0.1:8100 (with --engine vllm).", rich_help_panel=ENGINE)] = None,
    engine_model: Annotated[str | None, typer.Option(help="The name vLLM serves the backbone under (default: the backbone's eptctl name, as `eptctl engine vllm prepare` starts it).", rich_help_panel=ENGINE)] = None,
    engine_timeout: Annotated[float, typer.Option(help="Seconds one request to the engine may take before 503.", min=0.1, max=LIMITS["--engine-timeout"], rich_help_panel=ENGINE)] = 120.0,
    registry: RegistryUrl = None,
) -> None:
    """Serve the registry's adapters over HTTP (FastAPI on uvicorn), batching requests of all adapters together.

    POST /v1/predict {"adapter": "rt-polarity@prod", "inputs": ["A triumph."]}; GET /v1/adapters, /healthz,
    /readyz, /metrics (Prometheus); the OpenAI-compatible POST /v1/completions, POST /v1/chat/completions and
    GET /v1/models (model: an adapter reference, or REF:raw); OpenAPI docs at /docs. SIGTERM drains the requests
    in flight and exits 0.

    Example: eptctl serve --adapters rt-polarity@latest,bbc-topic@latest --port 8000

    Example: eptctl serve --engine vllm --engine-url http://127.0.0.1:8100 --adapters bbc-headline@latest
    """
    from eptctl.serving.config import ServeConfig
    from eptctl.serving.server import serve as run_server

    if token is None and os.environ.get("EPTCTL_SERVE_TOKEN") == "":
        token = ""  # Click reads an empty variable as unset: a token meant to be set is refused, never dropped
    refs = tuple(r.strip() for r in (adapters or "").split(",") if r.strip())
    config = ServeConfig(host=host, port=port, model=model, adapters=refs, max_batch_size=max_batch_size,
                         max_tokens=max_tokens, chat_template=_read_template(chat_template),
                         max_wait_ms=max_wait_ms, max_queue=max_queue, max_inputs=max_inputs,
                         max_text_chars=max_text_chars, max_adapters=max_adapters, resolve_ttl_s=resolve_ttl,
                         batching=not no_batching, token=token, insecure_no_token=insecure_no_token,
                         max_body_bytes=max_body_bytes, timeout_keep_alive_s=timeout_keep_alive,
                         timeout_read_s=timeout_read, engine=engine, engine_url=engine_url,
                         engine_model=engine_model, engine_timeout_s=engine_timeout)

    def ready(url: str) -> None:
        err.print(f"serving {len(refs)} preloaded adapter(s) at {url} (API docs: {url}/docs; Ctrl-C to stop)")

    with console_progress(delay=QUICK_PHASE_S):  # a first use converts the model: one line says so
        run_server(config, registry, on_ready=ready)


def _read_template(path: Path | None) -> str | None:
    """The chat template's text, read before anything loads (one line and a hint if it cannot be read)."""
    from eptctl.core.errors import EptctlError

    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EptctlError(f"--chat-template {path}: cannot read it ({error})",
                          hint="give a UTF-8 text file holding a Jinja chat template") from None
