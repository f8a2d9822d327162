import re
from pathlib import Path

from eptctl.cli.docs import render


def test_cli_reference_matches_real_help_output():
    expected = render()
    actual = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert actual == expected, "docs/cli.md is stale: run `python -m eptctl.cli.docs > docs/cli.md`"


def test_every_command_help_shows_an_example():
    text = render()
    sections = [s for s in text.split("## `")[1:] if not s.startswith("eptctl`")]
    missing = [s.split("`")[0] for s in sections if "Example:" not in s and not s.startswith("eptctl db`")]
    assert not missing, missing


def test_flags_show_no_value_type():
    """A flag takes no value: ``--help -h`` and ``--json`` show no ``<bool>`` (typer 0.29 prints one for every
    flag unless told otherwise), while options that take a value keep their type."""
    text = render()
    assert "<bool>" not in text
    assert re.search(r"--help\s+-h\s+Show this message and exit\.", text)
    assert "<int range>" in text and "<str>" in text
