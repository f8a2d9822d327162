"""Benchmarks: ``python -m bench <name> [--quick] [--json PATH]`` runs ``bench/<name>.py``.

A benchmark module defines ``run(quick: bool) -> list[dict]``: the rows of one table, all with the same keys.
"""
