"""Serving every task from one frozen backbone over HTTP: a FastAPI app (``app``) on uvicorn (``server``), a dynamic
batcher that packs requests of all adapters that arrive within a few milliseconds into one backbone pass
(``batcher``), and a bounded cache of materialized adapters resolved from the registry at request time
(``adapters``), with Prometheus metrics (``metrics``).

May import ``eptctl.workflows`` and everything below it, and ``registry``; never the CLI. FastAPI, uvicorn and
prometheus-client are imported here only.
"""
