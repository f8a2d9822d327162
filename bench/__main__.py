"""python -m bench <name> [--quick] [--json PATH]: run one benchmark, print a markdown table, write JSON."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
import timeit
from pathlib import Path


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _engine_variant(name: str, rest: list[str]) -> str:
    """``serve --engine vllm`` (or ``--engine=vllm``): the engines side by side, bench/serve_engines.py; the option
    is taken out of ``rest``."""
    if name != "serve":
        return name
    for i, arg in enumerate(rest):
        if arg == "--engine" or arg.startswith("--engine="):
            engine = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            del rest[i: i + (1 if "=" in arg else 2)]
            if engine != "vllm":
                raise SystemExit(f"python -m bench serve: --engine must be vllm, got {engine!r}")
            return "serve_engines"
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", help="benchmark module under bench/, e.g. registry")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, finishes in well under a minute")
    parser.add_argument("--json", type=Path, default=None, help="JSON output path (default .bench-out/NAME.json)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and any(a in ("-h", "--help") for a in argv[1:]):
        module = importlib.import_module(f"bench.{argv[0].replace('-', '_')}")
        if hasattr(module, "parse"):  # a benchmark with options of its own shows them
            module.parse(["--help"])
    args, rest = parser.parse_known_args(argv)
    args.name = _engine_variant(args.name, rest)  # its own name: its JSON never overwrites serve's
    module = importlib.import_module(f"bench.{args.name.replace('-', '_')}")  # step-time == step_time
    # A benchmark with options of its own (bench paper) takes the rest of the command line; the others refuse it.
    takes_argv = "argv" in inspect.signature(module.run).parameters
    if rest and not takes_argv:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    t0 = time.perf_counter()
    from eptctl.core.errors import EptctlError

    try:
        result = module.run(quick=args.quick, argv=rest) if takes_argv else module.run(quick=args.quick)
    except EptctlError as err:  # a user error (missing data, a bad option): one line, as eptctl prints it
        print(f"error: {err.message}" + (f"  (hint: {err.hint})" if err.hint else ""), file=sys.stderr)
        return 2
    # A benchmark returns its rows, or a dict of rows plus extra top-level keys (e.g. "ratios").
    extra = dict(result) if isinstance(result, dict) else {"rows": result}
    rows = extra.pop("rows")
    print(markdown(rows))
    for key, value in extra.items():
        shown = json.dumps(value, indent=1)
        print(f"\n{key}: {shown if len(shown) < 2000 else '(long: see the JSON)'}")
    out = args.json or Path(".bench-out") / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench", *argv])
    report = {
        "benchmark": args.name,
        "quick": args.quick,
        "command": command,
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine inflates the numbers
            # A yardstick of this interpreter's speed right now, to compare runs across machines and loads.
            "sum_range_1000_us": round(min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6, 2),
        },
        **extra,
        "rows": rows,
    }
    from eptctl.core.files import write_atomic

    write_atomic(out, (json.dumps(report, indent=2) + "\n").encode())  # a resumed sweep never reads half a file
    print(f"\nJSON written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
