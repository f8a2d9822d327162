"""``eptctl serve``: every task's adapter on one frozen backbone over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from eptctl.cli.common import RegistryUrl, err


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless you say otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    adapters: Annotated[str | None, typer.Option(help="Comma-separated refs to load at start (others load on first use).")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone (default: the one --adapters were trained on, else the default model).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Rows per backbone pass (raise it on a GPU).", min=1)] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its pass (ms).", min=0.0)] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a pass before new ones get 503.", min=1)] = 256,
    max_inputs: Annotated[int, typer.Option(help="Inputs per request before 413.", min=1)] = 64,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text before 413.", min=1)] = 20_000,
    max_adapters: Annotated[int, typer.Option(help="Materialized adapters kept in memory (LRU).", min=1)] = 32,
    resolve_ttl: Annotated[float, typer.Option(help="Seconds a reference (alias, @latest) is trusted before it is resolved again.", min=0.0)] = 1.0,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="One request per backbone pass (for comparison).")] = False,
    token: Annotated[str | None, typer.Option(envvar="EPTCTL_SERVE_TOKEN", show_envvar=True, help="Bearer token required on every route but /healthz and /readyz.")] = None,
    registry: RegistryUrl = None,
) -> None:
    """Serve the registry's adapters over HTTP (FastAPI on uvicorn), batching requests of all adapters together.

    POST /v1/predict {"adapter": "rt-polarity@prod", "inputs": ["A triumph."]}; GET /v1/adapters, /healthz,
    /readyz, /metrics (Prometheus); OpenAPI docs at /docs. SIGTERM drains the requests in flight and exits 0.

    Example: eptctl serve --adapters rt-polarity@latest,bbc-topic@latest --port 8000
    """
    from eptctl.serving.config import ServeConfig
    from eptctl.serving.server import serve as run_server

    refs = tuple(r.strip() for r in (adapters or "").split(",") if r.strip())
    config = ServeConfig(host=host, port=port, model=model, adapters=refs, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, max_queue=max_queue, max_inputs=max_inputs,
                         max_text_chars=max_text_chars, max_adapters=max_adapters, resolve_ttl_s=resolve_ttl,
                         batching=not no_batching, token=token)

    def ready(url: str) -> None:
        err.print(f"serving {len(refs)} preloaded adapter(s) at {url} (API docs: {url}/docs; Ctrl-C to stop)")

    run_server(config, registry, on_ready=ready)
