"""The floor every layer stands on: user-facing errors, the home folder, atomic file and folder writes, and the typed
events a long-running call reports through.

Imports the standard library only (no torch, no typer): ``registry/``, the CLI's start-up and every other layer
import from here, so it must stay light and must never import anything above it.
"""
