"""Running the app on uvicorn: load the registry and one backbone, preload adapters, serve until SIGTERM/SIGINT.

uvicorn stops accepting on SIGTERM, waits for the requests in flight, then runs the app's shutdown, which lets the
batcher answer every queued request; the process then exits 0.
"""

from __future__ import annotations

import signal

from eptctl.serving.config import ServeConfig


def build(config: ServeConfig, registry_url: str | None = None):
    """(app, registry, backbone) for ``config``: the backbone is ``config.model``, else the one the preloaded
    adapters were trained on, else eptctl's default model (with ``--engine vllm`` its tokenizer and embedding table
    only, ``engines.vllm.build_vllm_engine``). Raises ``EptctlError`` for an unknown adapter or model, or adapters
    of different backbones."""
    from eptctl import backbones
    from eptctl.serving.app import create_app
    from eptctl.workflows.inference import backbone_for, load_adapter
    from registry import Registry

    registry = Registry(registry_url)
    servables = [load_adapter(registry, ref) for ref in config.adapters]
    engine = None
    if config.engine == "vllm":  # the backbone is its embedding table; vLLM runs the rest
        from eptctl.serving.engines.vllm import build_vllm_engine

        backbone, engine = build_vllm_engine(config, servables)
    elif servables:
        backbone = backbone_for(servables, model=config.model)
    else:
        backbone = backbones.load(config.model or backbones.DEFAULT_MODEL)
    app = create_app(registry, backbone, config, engine)
    for ref in config.adapters:
        app.state.serving.cache.get(ref)  # loaded and checked now, not on the first request
    return app, registry, backbone


def serve(config: ServeConfig, registry_url: str | None = None, on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT; ``on_ready(url)`` is called once the socket listens. Raises ``EptctlError``
    before anything loads for a host off loopback without a token, or an address or port it cannot bind."""
    import uvicorn

    from eptctl.serving.binding import bind, check_exposure
    from eptctl.serving.protocol import with_head_timeout

    check_exposure(config)
    sock = bind(config)  # before the backbone loads: a busy port fails in a second, not after the model
    try:
        app, registry, backbone = build(config, registry_url)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=60, access_log=False,
        http=with_head_timeout(config.timeout_read_s), timeout_keep_alive=config.timeout_keep_alive_s))
    if on_ready is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            on_ready(f"http://{config.host}:{config.port}")

        server.startup = startup
    # uvicorn re-raises a captured SIGTERM/SIGINT once its graceful shutdown is done, to the handler that was there
    # before it; by then every request is answered, so that handler only has to let the process end normally (exit 0).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        registry.close()


def _drained(signum, frame) -> None:
    """The signal arrives again after the shutdown it asked for has finished: nothing left to do."""
