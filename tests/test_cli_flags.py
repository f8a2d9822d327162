"""The configs are the single source of the training flags, and every flag an error message names exists."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import typer.main

from eptctl.cli.app import app
from eptctl.cli.options import flag_name
from eptctl.engine.config import TrainConfig
from eptctl.methods.config import EPTConfig

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# Flags of other programs that hints quote on purpose (pip, torchrun).
FOREIGN = {"--no-deps", "--force-reinstall", "--nproc-per-node"}


def commands() -> dict:
    """Every command of the CLI by its full name ("train", "db upgrade", ...)."""
    found = {}

    def walk(cmd, prefix: str) -> None:  # typer vendors its own click: duck-type the tree
        found[prefix.strip()] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{prefix} {name}")

    walk(typer.main.get_command(app), "")
    return found


def all_flags() -> set[str]:
    return {opt for cmd in commands().values() for p in cmd.params if p.param_type_name == "option"
            for opt in (*p.opts, *p.secondary_opts)}


def test_every_config_field_is_a_train_flag_with_its_default_and_help_or_library_only():
    train = {p.name: p for p in commands()["train"].params}
    for cls in (EPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True) is False:
                assert f.name not in train, f"{cls.__name__}.{f.name} is library-only but has a flag"
                continue
            assert f.name in train, f"{cls.__name__}.{f.name} has no flag on `eptctl train` and is not cli=False"
            option = train[f.name]
            assert flag_name(f.name) in option.opts
            assert option.default == f.default, f"{flag_name(f.name)}: default {option.default!r} != {f.default!r}"
            assert option.help == f.metadata["help"], f"{flag_name(f.name)}: help differs from the config's"


def test_config_errors_name_the_flag_a_user_typed():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["train", "rt-polarity", "--method", "dept", "--prompt-length", "10",
                                      "--short-length", "12", "--model", "tiny-random-llama"])
    assert result.exit_code == 2
    assert "--short-length (12) must be below --prompt-length (10)" in result.output


def _error_strings(path: Path) -> list[tuple[int, str]]:
    """Text of the string literals (f-strings included) passed to a call of a name ending in "Error"."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not name.endswith("Error"):
            continue
        for arg in (*node.args, *(k.value for k in node.keywords)):
            for sub in ast.walk(arg):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    out.append((sub.lineno, sub.value))
    return out


def test_every_flag_named_in_an_error_message_exists():
    flags = all_flags() | FOREIGN
    missing = []
    for package in ("eptctl", "registry"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, text in _error_strings(path):
                for flag in FLAG.findall(text):
                    if flag not in flags:
                        missing.append(f"{path.relative_to(ROOT)}:{line}: {flag}")
    assert missing == []


def test_the_flag_collector_finds_flags_in_error_calls(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('raise EptctlError(f"--batch-size must be {n}", hint="use --no-such-flag")\n'
                      'print("--not-an-error")\n')
    texts = [t for _, t in _error_strings(source)]
    assert FLAG.findall(" ".join(texts)) == ["--batch-size", "--no-such-flag"]
