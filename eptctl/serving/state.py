"""What the routes of one app share: the registry, the backbone, the settings, the adapter cache, the batcher and
the metrics, and the engine that runs the backbone (``engine``), kept on ``app.state.serving`` and handed to a route as a FastAPI dependency (``eptctl.serving.routes.State``)."""

from __future__ import annotations

from dataclasses import dataclass

from eptctl.serving.adapters import AdapterCache
from eptctl.serving.batcher import Batcher
from eptctl.serving.config import ServeConfig
from eptctl.serving.engine import Engine
from eptctl.serving.local import LocalEngine
from eptctl.serving.metrics import ServeMetrics


@dataclass(frozen=True)
class ServingState:
    """One server's moving parts; ``build`` makes them from a registry, a backbone and a ``ServeConfig``."""

    registry: object
    backbone: object
    config: ServeConfig
    cache: AdapterCache
    batcher: Batcher | None  # the local engine's; None with a remote engine (it batches itself)
    metrics: ServeMetrics
    engine: Engine

    @classmethod
    def build(cls, registry, backbone, config: ServeConfig, engine: Engine | None = None) -> ServingState:
        """The cache, batcher and metrics for ``config`` (nothing starts: the app's lifespan starts the engine);
        ``engine``: a remote engine already built for ``backbone`` (``engines.vllm``), else the local one over the
        batcher."""
        metrics = ServeMetrics()
        cache = AdapterCache(registry, backbone, config.max_adapters, config.resolve_ttl_s)
        if engine is not None:  # a remote engine: the backbone here is its embedding table, nothing to batch on
            return cls(registry, backbone, config, cache, None, metrics, engine)
        batcher = Batcher(backbone, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                          max_queue=config.max_queue, batching=config.batching, metrics=metrics)
        return cls(registry, backbone, config, cache, batcher, metrics, LocalEngine(backbone, batcher))

