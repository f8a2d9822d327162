"""eptctl: train, store and serve EPT soft-prompt adapters on frozen Hugging Face models.

The library never imports typer or rich; the CLI in :mod:`eptctl.cli` is a thin layer over it.
"""

__version__ = "0.1.0"

from eptctl.core.errors import EptctlError  # noqa: E402  (light, no torch)

__all__ = ["__version__", "EptctlError"]
