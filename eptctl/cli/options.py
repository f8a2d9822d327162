"""Typer options generated from the config dataclasses, so the configs are the single source of the training flags.

A config field becomes ``--field-name`` (booleans: ``--field/--no-field``) with the field's default, the help
text in its ``metadata["help"]`` and the range in ``metadata["min"]``/``["max"]`` (the config's own validation then
refuses what a closed range cannot say, such as 0 for a learning rate); a field whose metadata says ``cli=False`` is
library-only and gets no flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Annotated

import typer


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: ``lr_prompt`` -> ``--lr-prompt``."""
    return "--" + field_name.replace("_", "-")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of config ``cls`` that are command-line flags (those with help text and without ``cli=False``)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata and f.metadata.get("cli", True)]


def config_parameters(cls: type, panel: str) -> list[inspect.Parameter]:
    """One keyword-only Typer option per flag field of ``cls``, with the field's type, default and help."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in cli_fields(cls):
        flag = flag_name(f.name)
        decls = [f"{flag}/--no-{flag[2:]}"] if hints[f.name] is bool else [flag]
        option = typer.Option(*decls, help=f.metadata["help"], rich_help_panel=panel, min=f.metadata.get("min"),
                              max=f.metadata.get("max"))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=Annotated[hints[f.name], option]))
    return params


def with_config_options(**groups: tuple[type, str]) -> Callable[[Callable], Callable]:
    """Decorate a command whose parameters ``NAME`` (one per group) receive built configs.

    ``groups``: parameter name -> (config class, help panel). The command's signature, as Typer sees it, has the
    config's flags in place of ``NAME``; the wrapper builds ``cls(**flags)`` (which validates and raises
    ``ConfigError`` naming the flag) and passes it as ``NAME``.
    """

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func, eval_str=True)
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name in groups:
                params += config_parameters(*groups[p.name])
            else:
                params.append(p)
        owned = {name: [f.name for f in cli_fields(cls)] for name, (cls, _) in groups.items()}

        def command(**kwargs):
            for name, (cls, _) in groups.items():
                kwargs[name] = cls(**{field: kwargs.pop(field) for field in owned[name]})
            return func(**kwargs)

        # Arguments without a default first; every option keyword-only, in the order the command declares them.
        plain = [p for p in params if p.default is p.empty]
        options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params if p.default is not p.empty]
        command.__signature__ = signature.replace(parameters=plain + options)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__qualname__, command.__doc__ = func.__name__, func.__qualname__, func.__doc__
        command.__module__ = func.__module__
        return command

    return decorate
