"""Serving every task from one frozen backbone over HTTP: a FastAPI app assembled by one factory (``app``) from a
router per API family (``routes``: health and metrics, eptctl's own API, the OpenAI-compatible one), with one JSON
error shape and the bearer-token check (``errors``) and the parts every route shares (``state``); uvicorn with a
graceful SIGTERM (``server``); a dynamic batcher that packs requests of all adapters that arrive within a few
milliseconds into one backbone pass (``batcher``); a bounded cache of materialized adapters resolved from the
registry at request time (``adapters``); Prometheus metrics (``metrics``); and ``launch``, which starts a server in a
subprocess and waits until it is ready (tests, benchmarks).

May import ``eptctl.workflows`` and everything below it, and ``registry``; never the CLI. FastAPI, uvicorn and
prometheus-client are imported here only.
"""
